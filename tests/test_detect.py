"""Source detection with photutils on real images, feeding catalogue cutouts."""

import logging
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits

from glue_astrovlm.cutouts import cutouts_from_catalog, rgb_composite
from glue_astrovlm.detect import detect_sources
from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.sources import from_array, open_image


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


# ---------------------------------------------------------------- large images (issue 9)
@pytest.fixture(scope="module")
def m67(fits_dir):
    """A real DSS star field: compact sources whose centroids test the mapping back to full resolution."""
    return open_image(fits_dir / "M6707HH.fits")


@pytest.fixture(scope="module")
def m67_full(m67):
    return detect_sources(m67, max_sources=100)


def test_block_averaged_detection_reports_full_resolution_pixels(m67, m67_full, caplog):
    with caplog.at_level(logging.INFO, logger="glue_astrovlm.detect"):
        binned = detect_sources(m67, max_pixels=530 * 530, max_sources=20)
    assert m67_full.meta["downsample"] == 1 and binned.meta["downsample"] == 2
    assert "averaged over 2 x 2 pixel blocks" in caplog.text
    assert binned.colnames == m67_full.colnames
    x, y = np.asarray(binned["xcentroid"]), np.asarray(binned["ycentroid"])
    distance = np.hypot(x[:, None] - np.asarray(m67_full["xcentroid"])[None],
                        y[:, None] - np.asarray(m67_full["ycentroid"])[None])
    nearest = distance.argmin(axis=1)
    # block centres sit at (i + 0.5) * 2 - 0.5: without the half-block shift the median would be ~0.8 px
    assert np.median(distance.min(axis=1)) < 0.3
    flux = np.asarray(binned["segment_flux"]) / np.asarray(m67_full["segment_flux"])[nearest]
    area = np.asarray(binned["area"]) / np.asarray(m67_full["area"])[nearest]
    assert 0.95 < np.median(flux) < 1.15 and 0.95 < np.median(area) < 1.4  # per pixel, not per block
    sky = m67.celestial_wcs.pixel_to_world(x, y)
    assert np.all(sky.separation(binned["sky_centroid"]).arcsec < 1e-6)


class _Mosaic:
    """A virtual mosaic: a real image repeated ``reps x reps`` times, read lazily like a FITS section."""

    def __init__(self, tile: np.ndarray, reps: int):
        self.tile = tile
        self.shape = (tile.shape[0] * reps, tile.shape[1] * reps)
        self.dtype = tile.dtype
        self.ndim = 2

    def __getitem__(self, key):
        rows, cols = key
        y = np.arange(*rows.indices(self.shape[0])) % self.tile.shape[0]
        x = np.arange(*cols.indices(self.shape[1])) % self.tile.shape[1]
        return self.tile[np.ix_(y, x)]


def test_large_image_is_detected_in_bounded_memory(fits_dir):
    tile = fits.getdata(fits_dir / "M6707HH.fits")
    mosaic = from_array(_Mosaic(tile, 8), label="m67-mosaic")  # 8472 x 8472 pixels
    assert mosaic.shape == (8472, 8472)
    tracemalloc.start()
    try:
        table = detect_sources(mosaic, max_pixels=512 * 512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # one float64 copy of the image alone is 574 MB; detection at full resolution needs about 4.6 GB
    assert peak < 120e6, f"peak {peak / 1e6:.0f} MB"
    assert table.meta["downsample"] == 17 and len(table) == 500
    x, y = np.asarray(table["xcentroid"]), np.asarray(table["ycentroid"])
    assert x.min() >= 0 and y.min() >= 0 and x.max() < 8472 and y.max() < 8472
    assert x.max() > 7000 and y.max() > 7000  # sources over the whole mosaic, not only the first tiles


def test_detection_beyond_the_memory_budget_says_how_much_and_what_to_do(horsehead, monkeypatch):
    monkeypatch.setenv("ASTROVLM_MEMORY_LIMIT_GB", "0.01")
    with pytest.raises(AstroVLMError, match=r"Source detection on a 891 x 893 pixel map of .*HorseHead.fits "
                                            r"needs 50\.9 MB of memory, more than the 10\.0 MB this machine "
                                            r"can spare \(ASTROVLM_MEMORY_LIMIT_GB=0\.01\); pass a smaller "
                                            r"max_pixels"):
        detect_sources(horsehead)
    table = detect_sources(horsehead, max_pixels=200 * 200)  # a coarser map fits
    assert table.meta["downsample"] == 5


@pytest.mark.parametrize("max_pixels", [0, 100, 2.5e6, "big", True])
def test_max_pixels_must_be_a_whole_number(horsehead, max_pixels):
    with pytest.raises(AstroVLMError, match="max_pixels must be a whole number of pixels"):
        detect_sources(horsehead, max_pixels=max_pixels)
