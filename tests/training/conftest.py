"""Fixtures for the fine-tuning tests: a few real FIRST images in class folders."""

import pytest


@pytest.fixture(scope="session")
def first_small(first_subset):
    """One real FIRST PNG per class from the train split, in class folders (4 images)."""
    return first_subset("train", 1)


@pytest.fixture()
def umask():
    """``umask(mask)`` sets the process umask for this test; the previous one comes back afterwards."""
    import os

    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)
