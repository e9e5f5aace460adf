"""Source detection with photutils on real images, feeding catalogue cutouts."""

import numpy as np
import pytest
from astropy.io import fits

from glue_astrovlm.cutouts import cutouts_from_catalog, rgb_composite
from glue_astrovlm.detect import detect_sources
from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.sources import open_image


@pytest.fixture(scope="module")
def horsehead(fits_dir):
    return open_image(fits_dir / "HorseHead.fits")


@pytest.fixture(scope="module")
def horsehead_sources(horsehead):
    return detect_sources(horsehead)


def test_columns_order_and_sky_positions(horsehead, horsehead_sources):
    table = horsehead_sources
    assert table.colnames == ["id", "xcentroid", "ycentroid", "sky_centroid", "ra", "dec", "area",
                              "segment_flux"]
    assert len(table) > 20
    flux = np.asarray(table["segment_flux"])
    assert np.all(np.diff(flux) <= 0) and flux[0] > 0
    sky = horsehead.celestial_wcs.pixel_to_world(table["xcentroid"], table["ycentroid"])
    assert np.all(sky.separation(table["sky_centroid"]).arcsec < 1e-6)
    np.testing.assert_allclose(table["ra"], sky.icrs.ra.deg)
    assert np.all(table["area"] >= 10)
    assert table.meta["nsigma"] == 5.0 and table.meta["background"].startswith("Background2D")


def test_brightest_source_sits_on_bright_pixels(horsehead, horsehead_sources):
    raw = fits.getdata(horsehead.label).astype(float)
    x, y = int(round(horsehead_sources["xcentroid"][0])), int(round(horsehead_sources["ycentroid"][0]))
    assert raw[y - 2:y + 3, x - 2:x + 3].mean() > np.percentile(raw, 90)


def test_catalogue_round_trip(horsehead, horsehead_sources):
    cutouts = cutouts_from_catalog(horsehead, horsehead_sources[:5], size=24)
    assert [c.provenance.source_id for c in cutouts] == [str(i) for i in horsehead_sources["id"][:5]]
    for cut, row in zip(cutouts, horsehead_sources[:5]):
        centre = (row["xcentroid"], row["ycentroid"])
        np.testing.assert_allclose(cut.provenance.center_pixel, centre, atol=1e-6)


def test_max_sources_keeps_the_brightest(fits_dir):
    table = detect_sources(fits_dir / "M6707HH.fits", max_sources=20)
    assert len(table) == 20 and table.meta["detected"] > 20
    assert np.all(np.diff(np.asarray(table["segment_flux"])) <= 0)


def test_first_radio_source_is_found_near_the_centre(fits_dir):
    path = sorted((fits_dir / "first_mirabest").glob("*.fits"))[1]
    table = detect_sources(path, nsigma=5)
    assert str(table["segment_flux"].unit) == "Jy / beam"
    distance = np.hypot(table["xcentroid"] - 149.5, table["ycentroid"] - 149.5)
    assert distance.min() < 30


def test_unit_less_and_without_wcs_and_cube(tmp_path, fits_dir):
    fits.PrimaryHDU(fits.getdata(fits_dir / "HorseHead.fits")).writeto(tmp_path / "plain.fits")
    table = detect_sources(tmp_path / "plain.fits")
    assert "sky_centroid" not in table.colnames and "ra" not in table.colnames
    moment = detect_sources(fits_dir / "l1448_13co.fits", cube=dict(mode="moment0"), nsigma=3)
    assert moment.meta["cube"].startswith("moment0 0:53")


def test_rgb_composite_detects_on_the_band_sum(fits_dir):
    rgb = rgb_composite(*(fits_dir / f"reprojected_sdss_{band}.fits.bz2" for band in "irg"))
    table = detect_sources(rgb, max_sources=50)
    assert len(table) == 50 and "ra" in table.colnames


def test_nothing_detected_suggests_lower_nsigma(horsehead):
    with pytest.raises(AstroVLMError, match="No sources above 1e\\+06 sigma.*lower nsigma"):
        detect_sources(horsehead, nsigma=1e6)
    with pytest.raises(AstroVLMError, match="nsigma and fwhm must be positive"):
        detect_sources(horsehead, nsigma=0)
