"""Shared fixtures: the real data in ../shared and tiny real transformers models built from real configs."""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("ASTROVLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session", autouse=True)
def isolated_config(tmp_path_factory):
    """No test reads or writes the user's real configuration (the recent-models list): every test, and
    every process a test starts, uses a configuration folder of its own."""
    folder = tmp_path_factory.mktemp("astrovlm-config")
    previous = os.environ.get("ASTROVLM_CONFIG_DIR")
    os.environ["ASTROVLM_CONFIG_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("ASTROVLM_CONFIG_DIR", None)
    else:
        os.environ["ASTROVLM_CONFIG_DIR"] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real astronomical data (../shared/data, or $ASTROVLM_SHARED_DATA)."""
    path = Path(os.environ.get("ASTROVLM_SHARED_DATA", SHARED / "data"))
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is not available")
    return path


@pytest.fixture(scope="session")
def fits_dir(shared_data) -> Path:
    return shared_data / "fits"


FIRST_CLASSES = ("FRI", "FRII", "Compact", "Bent")


@pytest.fixture(scope="session")
def first_subset(shared_data, tmp_path_factory):
    """``first_subset(split, per_class)``: the first real FIRST PNGs of each class of a split, copied
    into one folder per class (the layout `astrovlm eval` and `astrovlm finetune` read)."""
    import shutil

    def make(split: str, per_class: int) -> Path:
        root = tmp_path_factory.mktemp(f"first-{split}-{per_class}")
        for label in FIRST_CLASSES:
            (root / label).mkdir()
            for path in sorted((shared_data / "first_radio_galaxies" / split / label).glob("*.png"))[:per_class]:
                shutil.copy(path, root / label / path.name)
        return root

    return make


@pytest.fixture(scope="session")
def tiny_smolvlm_dir(tmp_path_factory) -> Path:
    """A SmolVLM (Idefics3) with the real tokenizer, processor and template, shrunk, random weights."""
    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG, build_smolvlm

    if not SHARED_SMOLVLM_CONFIG.is_dir():
        pytest.skip(f"model configuration {SHARED_SMOLVLM_CONFIG} is not available")
    return build_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    """A LLaVA-1.5-style model (CLIP + Llama), tiny, random weights."""
    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG, build_llava

    if not SHARED_SMOLVLM_CONFIG.is_dir():
        pytest.skip(f"model configuration {SHARED_SMOLVLM_CONFIG} is not available")
    return build_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_smolvlm(tiny_smolvlm_dir):
    """The tiny SmolVLM loaded through load_model in float32, as a user would load a saved model."""
    from glue_astrovlm import load_model

    return load_model(tiny_smolvlm_dir, dtype="float32")
