"""Shared fixtures: the real data in ../shared and tiny real transformers models built from real configs."""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Nor the user's Hugging Face cache: set before huggingface_hub is imported, which reads it once. A
# panel that opens loads a model that is in the cache ahead of time; in a test that is never a real one.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="astrovlm-test-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)

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
def tiny_encoder(tmp_path_factory):
    """A tiny BERT encoder with random weights and a real tokenizer, for the embedding similarity."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG

    if not SHARED_SMOLVLM_CONFIG.is_dir():
        pytest.skip(f"model configuration {SHARED_SMOLVLM_CONFIG} is not available")
    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(SHARED_SMOLVLM_CONFIG)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_smolvlm(tiny_smolvlm_dir):
    """The tiny SmolVLM loaded through load_model in float32, as a user would load a saved model."""
    from glue_astrovlm import load_model

    return load_model(tiny_smolvlm_dir, dtype="float32")


# ----------------------------------------------------------------------------- a real served model
SERVER_START_LIMIT = 120.0  # seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory):
    """A tiny SmolVLM (Idefics3) with the real tokenizer, processor and chat template, random weights of
    its own (another seed than ``tiny_smolvlm_dir``: a judge served from it is a different model)."""
    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG, build_smolvlm

    if not SHARED_SMOLVLM_CONFIG.is_dir():
        pytest.skip(f"model configuration {SHARED_SMOLVLM_CONFIG} is not available")
    return build_smolvlm(tmp_path_factory.mktemp("served-smolvlm"), seed=1)


@pytest.fixture(scope="session")
def served(served_model_dir, tmp_path_factory):
    """``transformers serve`` pinned to the tiny SmolVLM on 127.0.0.1; yields its API root URL.

    SmolVLM's processor (Idefics3) cannot encode the control-token-sanitised prompts of /v1/systemone in
    transformers 5.23, so the server gets a decision config that turns that sanitising off.
    """
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    folder = tmp_path_factory.mktemp("served")
    decision_config = folder / "decision.json"
    decision_config.write_text('{"sanitize_control_tokens": false}\n')
    (folder / "hf-cache").mkdir()
    port = free_port()
    # offline, and an empty cache: the server has nothing to download and nothing else to list
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_CACHE": str(folder / "hf-cache"), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(served_model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--decision-config", str(decision_config)]
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_LIMIT
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start within {SERVER_START_LIMIT:g} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield {"url": f"http://127.0.0.1:{port}/v1", "model": str(served_model_dir), "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
