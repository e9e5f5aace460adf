"""Requests too large for memory are refused before allocating, with the amount and how to shrink them."""

import numpy as np
import pytest
from astropy.io import fits
from regions import CirclePixelRegion, PixCoord

from glue_astrovlm.cutouts import cutout_at, cutouts_from_regions, whole_image
from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.limits import MEMORY_LIMIT_ENV, check_memory, memory_budget
from glue_astrovlm.sources import from_array, open_image


def _sparse_fits(path, shape, bitpix=-32):
    """A FITS image of ``shape`` (numpy order) whose data are a hole in the file: huge, but no disk used."""
    header = fits.PrimaryHDU(data=np.zeros((1,) * len(shape), dtype=np.float32)).header
    header["BITPIX"] = bitpix
    for axis, n in enumerate(reversed(shape), start=1):
        header[f"NAXIS{axis}"] = n
    header.tofile(path)
    with open(path, "r+b") as handle:
        end = handle.seek(0, 2)
        handle.truncate(end + -(-int(np.prod(shape, dtype=np.int64)) * abs(bitpix) // 8 // 2880) * 2880)
    return path


@pytest.fixture
def budget_8gb(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "8")


def test_the_message_gives_the_amount_and_the_way_out(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "12")
    with pytest.raises(AstroVLMError, match=r"^A big map needs 80\.0 GB of memory, more than the 12\.0 GB "
                                            r"this machine can spare \(ASTROVLM_MEMORY_LIMIT_GB=12\); ask "
                                            r"for less\.$"):
        check_memory((100_000, 100_000), itemsize=8, what="A big map", shrink="ask for less")
    assert check_memory((1000, 1000), bands=3, itemsize=4, copies=2) == 24_000_000
    assert check_memory((1000, 1000), copies=2.5) == 20_000_000
    with pytest.raises(AstroVLMError, match=r"needs more than 1000000 TB of memory"):
        check_memory((10 ** 300, 10 ** 300), copies=1.5)


@pytest.mark.parametrize("value", ["lots", "0", "-3", "nan", "inf"])
def test_a_bad_memory_limit_variable_is_named(monkeypatch, value):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, value)
    with pytest.raises(AstroVLMError, match="ASTROVLM_MEMORY_LIMIT_GB must be a positive number of "):
        memory_budget()


def test_without_the_variable_the_budget_is_a_share_of_available_memory(monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    budget, origin = memory_budget()
    if budget is None:
        pytest.skip("this platform does not report its available memory")
    assert budget > 0 and origin.startswith("75% of the ") and origin.endswith(" available now")


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """A memory-mapped 100,000 x 100,000 float32 FITS image (40 GB that take no disk space)."""
    path = _sparse_fits(tmp_path_factory.mktemp("huge") / "huge.fits", (100_000, 100_000))
    return open_image(path)


def test_a_100000_pixel_cutout_is_refused_before_allocating(huge, budget_8gb):
    assert huge.shape == (100_000, 100_000)
    with pytest.raises(AstroVLMError, match=r"A 100000 x 100000 pixel cutout needs 480\.0 GB of memory, more "
                                            r"than the 8\.0 GB .* give a smaller --size or region"):
        cutout_at(huge, (50_000, 50_000), 100_000)
    small = cutout_at(huge, (50_000, 50_000), 64)  # the same image still gives ordinary cutouts
    assert small.shape == (64, 64) and np.all(small.data == 0)


def test_a_region_a_million_pixels_wide_is_refused(huge, budget_8gb):
    region = CirclePixelRegion(PixCoord(50_000, 50_000), radius=1e6)
    with pytest.raises(AstroVLMError, match=r"Region 0 \(CirclePixelRegion\) needs .* TB of memory, more "
                                            r"than the 8\.0 GB .*; draw a smaller region"):
        cutouts_from_regions(huge, [region])


def test_whole_image_of_a_huge_virtual_image_is_refused(budget_8gb):
    virtual = from_array(np.broadcast_to(np.float32(1), (20_000, 2_000_000)), label="virtual")
    with pytest.raises(AstroVLMError, match=r"The whole image virtual \(2000000 x 20000 pixels\) needs .* GB "
                                            r"of memory, .* send cutouts or regions of it instead"):
        whole_image(virtual)


def test_whole_image_of_a_wide_memory_mapped_fits_is_refused(tmp_path, budget_8gb):
    wide = open_image(_sparse_fits(tmp_path / "wide.fits", (1000, 2_000_000)))
    with pytest.raises(AstroVLMError, match=r"The whole image .*wide.fits \(2000000 x 1000 pixels\) needs"):
        whole_image(wide)


def test_whole_image_within_the_budget_is_made(fits_dir, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.5")
    cutout = whole_image(fits_dir / "HorseHead.fits")
    assert cutout.shape == (893, 891)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0.01")  # 891 x 893 x 8 bytes x 6 copies is 38 MB
    with pytest.raises(AstroVLMError, match=r"needs 38\.2 MB of memory, more than the 10\.0 MB"):
        whole_image(fits_dir / "HorseHead.fits")
