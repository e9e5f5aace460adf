"""A real glue DataCollection with a real FITS image, shared by the glue bridge's tests."""

import pytest

pytest.importorskip("glue")
pytest.importorskip("glue_astronomy")


@pytest.fixture()
def horsehead(fits_dir):
    """``(data_collection, image)`` with HorseHead.fits loaded by glue's own reader."""
    from glue.core import DataCollection
    from glue.core.data_factories import load_data

    loaded = load_data(str(fits_dir / "HorseHead.fits"))
    image = loaded[0] if isinstance(loaded, list) else loaded
    return DataCollection([image]), image


@pytest.fixture()
def cube(fits_dir):
    """The L1448 13CO cube as glue reads it."""
    from glue.core.data_factories import load_data

    loaded = load_data(str(fits_dir / "l1448_13co.fits"))
    return loaded[0] if isinstance(loaded, list) else loaded
