"""Fixtures for the fine-tuning tests: a few real FIRST images in class folders."""

import pytest


@pytest.fixture(scope="session")
def first_small(first_subset):
    """One real FIRST PNG per class from the train split, in class folders (4 images)."""
    return first_subset("train", 1)
