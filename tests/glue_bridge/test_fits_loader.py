"""FITS files glue's own reader refuses (the FIRST survey's COMMENT cards hold tabs) load in glue."""

import numpy as np
import pytest
from astropy.io import fits

pytest.importorskip("glue")

from glue.core.data_factories import find_factory, load_data  # noqa: E402
from glue.core.data_factories.fits import fits_reader  # noqa: E402

from glue_astrovlm.glue_bridge.fits_loader import lenient_fits_reader, register  # noqa: E402


@pytest.fixture(scope="module")
def mirabest(fits_dir):
    return sorted((fits_dir / "first_mirabest").glob("*.fits"))[0]


def test_glue_alone_refuses_a_first_image(mirabest):
    with pytest.raises(fits.verify.VerifyError):
        fits_reader(str(mirabest))


def test_a_first_image_loads_in_glue_with_its_pixels_and_wcs(mirabest, fits_dir):
    register()
    assert find_factory(str(mirabest)) is lenient_fits_reader
    assert find_factory(str(fits_dir / "HorseHead.fits")) is fits_reader  # glue's own reader otherwise
    data = load_data(str(mirabest))
    with fits.open(mirabest) as hdulist:
        pixels = hdulist[0].data
    assert data.shape == pixels.shape[-2:]
    np.testing.assert_array_equal(data[data.main_components[0]], np.squeeze(pixels))
    assert list(data.coords.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
