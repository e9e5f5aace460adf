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


def test_a_rendered_picture_goes_to_the_model_as_it_is_unless_a_stretch_is_asked(shared_data):
    from PIL import Image

    from glue_astrovlm import open_image, whole_image
    from glue_astrovlm.stretch import DISPLAYED, stretch_for

    jpg = sorted((shared_data / "gz2_spiral" / "spirals").glob("*.jpg"))[0]
    source = open_image(jpg)
    assert source.display and stretch_for(source) is DISPLAYED
    cut = whole_image(source)
    np.testing.assert_array_equal(np.asarray(cut.to_image()), np.asarray(Image.open(jpg).convert("RGB")))
    assert cut.stretch_text() == "as displayed, rgb joint"
    asked = whole_image(source, stretch=Stretch())  # an explicit stretch still applies
    assert not np.array_equal(np.asarray(asked.to_image()), np.asarray(Image.open(jpg).convert("RGB")))


def test_data_keep_the_astronomers_stretch_by_default(fits_dir):
    from glue_astrovlm import open_image
    from glue_astrovlm.stretch import DEFAULT_STRETCH, stretch_for

    source = open_image(fits_dir / "HorseHead.fits")
    assert not source.display and stretch_for(source) is DEFAULT_STRETCH
    assert stretch_for(source, Stretch(interval="minmax")).interval == "minmax"
    with pytest.raises(AstroVLMError, match="must be a glue_astrovlm.Stretch"):
        stretch_for(source, "zscale")


def test_display_limits_are_0_255_or_0_1_for_fractions():
    assert Stretch(interval="display").limits(np.array([0.0, 10.0, 200.0])) == (0.0, 255.0)
    assert Stretch(interval="display").limits(np.array([0.0, 0.25, 0.6])) == (0.0, 1.0)
    assert Stretch(interval="display").limits(np.array([0.0, 1.0])) == (0.0, 255.0)  # 8-bit 0/1, not fractions


@pytest.mark.parametrize("stretch", ["linear", "asinh", "sqrt", "log"])
def test_colour_images_keep_their_band_ratios(stretch):
    rng = np.random.default_rng(3)
    intensity = rng.uniform(0.05, 1.0, (32, 32))
    ratios = np.array([1.0, 0.6, 0.3])  # a red object on a sky of 0 (ratios hold above the black level)
    bands = ratios[:, None, None] * intensity * 1000.0
    bands[:, :2, :2] = 0.0
    out = Stretch(interval="minmax", stretch=stretch).apply_rgb(bands)
    bright = out[0] > 0.05
    np.testing.assert_allclose(out[1][bright] / out[0][bright], 0.6, rtol=1e-6)
    np.testing.assert_allclose(out[2][bright] / out[0][bright], 0.3, rtol=1e-6)
    per_band = Stretch(interval="minmax", stretch=stretch, rgb="per-band").apply_rgb(bands)
    assert np.abs(per_band[2][bright] / per_band[0][bright] - 0.3).max() > 0.1  # each band to full range
    with pytest.raises(AstroVLMError, match="Unknown rgb mode"):
        Stretch(rgb="lupton")


def test_an_sdss_composite_keeps_its_colours(fits_dir):
    """A colour FITS composite (SDSS i, r, g) keeps its band ratios in what the model sees."""
    from glue_astrovlm import cutout_at, rgb_composite

    rgb = rgb_composite(*(fits_dir / f"reprojected_sdss_{band}.fits.bz2" for band in "irg"))
    cut = cutout_at(rgb, (300, 250), 96, stretch=Stretch(interval="percentile", percentile=99.5, stretch="asinh"))
    levels = cut.stretch.apply_rgb(cut.data)
    black = cut.stretch.limits(cut.data)[0]  # one black level for the three bands
    data = np.nan_to_num(cut.data) - black
    lit = (levels.min(axis=0) > 0.01) & (levels.max(axis=0) < 0.999)
    assert lit.sum() > 100
    np.testing.assert_allclose(levels[1][lit] / levels[0][lit], data[1][lit] / data[0][lit], rtol=1e-5)
    np.testing.assert_allclose(levels[2][lit] / levels[0][lit], data[2][lit] / data[0][lit], rtol=1e-5)
