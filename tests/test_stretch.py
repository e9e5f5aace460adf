"""Stretches (astropy.visualization) and the image the model sees."""

import numpy as np
import pytest
from astropy.io import fits

from glue_astrovlm.cutout_types import Cutout, Provenance
from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.stretch import DEFAULT_STRETCH, Stretch


@pytest.fixture(scope="module")
def horsehead(fits_dir):
    return fits.getdata(fits_dir / "HorseHead.fits").astype(float)[300:400, 300:400]


@pytest.mark.parametrize("interval", ["zscale", "percentile", "minmax"])
@pytest.mark.parametrize("curve", ["linear", "sqrt", "log", "asinh"])
def test_every_stretch_maps_to_unit_range_monotonically(horsehead, interval, curve):
    stretch = Stretch(interval=interval, stretch=curve)
    levels = stretch.apply(horsehead)
    assert levels.shape == horsehead.shape and levels.min() >= 0 and levels.max() <= 1
    order = np.argsort(horsehead, axis=None)
    assert np.all(np.diff(levels.ravel()[order]) >= 0)  # brighter pixels never get darker levels
    assert levels.max() == 1.0 and levels.min() == 0.0 or interval == "zscale"
    if interval == "minmax":
        assert levels.ravel()[order[0]] == 0 and levels.ravel()[order[-1]] == 1


def test_limits(horsehead):
    ramp = np.arange(1001.0)
    assert Stretch(interval="minmax").limits(ramp) == (0.0, 1000.0)
    low, high = Stretch(interval="percentile", percentile=90).limits(ramp)
    assert low == pytest.approx(50) and high == pytest.approx(950)
    low, high = DEFAULT_STRETCH.limits(horsehead)
    assert horsehead.min() <= low < high <= horsehead.max()
    # a lower zscale contrast widens the display range
    wide = Stretch(contrast=0.05).limits(horsehead)
    assert wide[1] - wide[0] >= high - low


def test_curves_differ_at_mid_grey():
    ramp = np.linspace(0, 1, 101)
    middle = {curve: Stretch(interval="minmax", stretch=curve).apply(ramp)[50]
              for curve in ("linear", "sqrt", "log", "asinh")}
    assert middle["linear"] == pytest.approx(0.5)
    assert middle["sqrt"] == pytest.approx(np.sqrt(0.5))
    assert middle["log"] > middle["sqrt"] and middle["asinh"] > middle["linear"]


def test_nan_and_inf_become_background():
    values = np.array([[1.0, 2.0, np.nan], [np.inf, -np.inf, 3.0]])
    levels = Stretch(interval="minmax").apply(values)
    assert levels[0, 2] == 0 and levels[1, 0] == 0 and levels[1, 1] == 0
    assert levels[1, 2] == 1 and levels[0, 0] == 0


def test_all_nan_is_a_user_error():
    with pytest.raises(AstroVLMError, match="no finite pixels"):
        DEFAULT_STRETCH.apply(np.full((4, 4), np.nan))
    cut = Cutout(np.full((4, 4), np.nan), Provenance(source="blank"))
    with pytest.raises(AstroVLMError, match="no finite pixels"):
        cut.to_image()


def test_flat_image_stays_displayable():
    assert np.all(Stretch(interval="minmax").apply(np.full((3, 3), 7.0)) == 0)


def test_bad_settings_are_refused():
    with pytest.raises(AstroVLMError, match="Unknown interval"):
        Stretch(interval="histeq")
    with pytest.raises(AstroVLMError, match="Unknown stretch"):
        Stretch(stretch="gamma")
    with pytest.raises(AstroVLMError, match="percentile"):
        Stretch(interval="percentile", percentile=0)
    assert DEFAULT_STRETCH.describe() == "zscale(contrast=0.25)+linear"
    assert Stretch(interval="percentile", percentile=99, stretch="asinh", a=0.3).describe() == \
        "percentile(99)+asinh(a=0.3)"


def test_to_image_puts_row_zero_at_the_bottom():
    data = np.zeros((4, 6))
    data[0, :] = 10.0  # row 0 is the bottom in FITS
    data[-1, -1] = 5.0
    image = Cutout(data, Provenance(source="ramp"), stretch=Stretch(interval="minmax")).to_image()
    assert image.size == (6, 4) and image.mode == "RGB"
    assert image.getpixel((0, 3)) == (255, 255, 255)  # bottom-left of the picture
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((5, 0)) == (128, 128, 128)  # top-right: the last row


def test_rgb_bands_go_to_their_channels():
    data = np.zeros((3, 2, 2))
    data[0, 0, 0] = 1.0  # red, bottom-left
    data[2, 1, 1] = 1.0  # blue, top-right
    image = Cutout(data, Provenance(source="rgb"), stretch=Stretch(interval="minmax")).to_image()
    assert image.getpixel((0, 1)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (0, 0, 255)
