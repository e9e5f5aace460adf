"""Fixtures for the fine-tuning tests: a few real FIRST images in class folders."""

import shutil

import pytest

CLASSES = ("FRI", "FRII", "Compact", "Bent")


@pytest.fixture(scope="session")
def first_small(shared_data, tmp_path_factory):
    """One real FIRST PNG per class from the train split, in class folders (4 images)."""
    root = tmp_path_factory.mktemp("first-small")
    for label in CLASSES:
        (root / label).mkdir()
        path = sorted((shared_data / "first_radio_galaxies" / "train" / label).glob("*.png"))[0]
        shutil.copy(path, root / label / path.name)
    return root
