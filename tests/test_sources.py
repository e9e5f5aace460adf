"""Reading images: FITS (plain, compressed, scaled), PNG/JPEG, NDData and arrays."""

import mmap
import os
import re
import threading
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import CCDData
from PIL import Image

from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.sources import (ImageSource, as_image_source, block_average, from_array, from_nddata,
                                   open_image)


def _is_memory_mapped(array) -> bool:
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


@pytest.fixture(scope="module")
def horsehead_raw(fits_dir):
    with fits.open(fits_dir / "HorseHead.fits") as hdul:
        return hdul[0].data.copy(), hdul[0].header.copy()


def test_horsehead_is_memory_mapped_int16_with_tan_wcs(fits_dir):
    source = open_image(fits_dir / "HorseHead.fits")
    assert source.shape == (893, 891) and source.ndim == 2 and not source.is_cube
    assert source.data.dtype == np.dtype(">i2")
    assert _is_memory_mapped(source.data)
    assert list(source.celestial_wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    assert source.hdu == 0 and source.label.endswith("HorseHead.fits")
    pixels = source.read(np.s_[10:12, 20:23])
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, np.asarray(source.data[10:12, 20:23], dtype=np.float32))
    source.close()


def test_binary_table_hdu_is_refused_with_the_image_hdus_listed(fits_dir):
    for hdu in (1, "er.mask"):
        with pytest.raises(AstroVLMError, match=r"table, not an image.*0 \(PRIMARY\) 891 x 893"):
            open_image(fits_dir / "HorseHead.fits", hdu=hdu)


def test_unknown_hdu_names_the_hdus(fits_dir):
    with pytest.raises(AstroVLMError, match=r"no HDU 7; its HDUs are 0 \(PRIMARY\), 1 \(er.mask\)"):
        open_image(fits_dir / "HorseHead.fits", hdu=7)
    with pytest.raises(AstroVLMError, match="no HDU 'SCI'"):
        open_image(fits_dir / "HorseHead.fits", hdu="SCI")
    assert open_image(fits_dir / "HorseHead.fits", hdu="PRIMARY").shape == (893, 891)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_missing_and_corrupt_files(tmp_path, fits_dir):
    with pytest.raises(AstroVLMError, match="No such file"):
        open_image(tmp_path / "nothing.fits")
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not FITS " * 400)
    with pytest.raises(AstroVLMError, match="Could not read .* as FITS"):
        open_image(garbage)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes((fits_dir / "HorseHead.fits").read_bytes()[: 2880 * 5])
    with pytest.raises(AstroVLMError, match="truncated or corrupt"):
        open_image(truncated)
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG not really")
    with pytest.raises(AstroVLMError, match="Could not read .* as an image"):
        open_image(broken_png)


def test_m67_dss_plate_solution_is_translated_by_wcslib(fits_dir):
    # M6707HH.fits has no CTYPE/CRVAL keywords, only the DSS plate solution (PLTRAH, AMDX...), which
    # wcslib translates. The object position in the header must land on the object pixel.
    source = open_image(fits_dir / "M6707HH.fits")
    header = fits.getheader(fits_dir / "M6707HH.fits")
    assert "CTYPE1" not in header
    wcs = source.celestial_wcs
    assert wcs is not None
    m67 = SkyCoord(header["OBJCTRA"], header["OBJCTDEC"], unit=(u.hourangle, u.deg))
    x, y = wcs.world_to_pixel(m67)
    # OBJCTX/Y are 1-based plate pixels; CNPIX is the plate pixel of the image corner
    assert abs(x - (header["OBJCTX"] - header["CNPIX1"] - 1)) < 1.0
    assert abs(y - (header["OBJCTY"] - header["CNPIX2"] - 1)) < 1.0


def test_image_without_wcs_keywords_has_no_celestial_wcs(tmp_path, fits_dir):
    plain = tmp_path / "m67_plain.fits"
    fits.PrimaryHDU(fits.getdata(fits_dir / "M6707HH.fits")).writeto(plain)
    source = open_image(plain)
    assert source.wcs is None and source.celestial_wcs is None
    assert "no celestial WCS" in repr(source)


def test_bscale_bzero_integers_come_out_scaled_and_lazy(tmp_path, horsehead_raw):
    raw, _ = horsehead_raw
    path = tmp_path / "scaled.fits"
    hdu = fits.PrimaryHDU(raw.astype(np.int16))
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    hdu.writeto(path)
    with fits.open(path, do_not_scale_image_data=True) as check:  # stored integers untouched
        np.testing.assert_array_equal(check[0].data, raw)
    source = open_image(path)
    assert isinstance(source.data, fits.hdu.image.Section)
    np.testing.assert_allclose(source.read(np.s_[100:110, 200:205]), raw[100:110, 200:205] * 0.5 + 100.0)
    source.close()


def test_integer_blank_pixels_read_as_nan(tmp_path, horsehead_raw):
    raw, _ = horsehead_raw
    data = raw.astype(np.int16)
    data[5, 7] = -32768
    hdu = fits.PrimaryHDU(data)
    hdu.header["BLANK"] = -32768
    hdu.writeto(tmp_path / "blank.fits")
    source = open_image(tmp_path / "blank.fits")
    pixels = source.read(np.s_[4:7, 6:9])
    assert np.isnan(pixels[1, 1]) and np.isfinite(pixels).sum() == 8
    assert pixels[0, 0] == raw[4, 6]


def test_gzip_and_tile_compressed_fits(tmp_path, horsehead_raw):
    raw, header = horsehead_raw
    gz = tmp_path / "horsehead.fits.gz"
    fits.PrimaryHDU(raw, header=header).writeto(gz)
    source = open_image(gz)
    np.testing.assert_array_equal(source.read(np.s_[300:310, 400:410]), raw[300:310, 400:410])
    assert source.celestial_wcs is not None

    fz = tmp_path / "horsehead.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(raw, compression_type="RICE_1")]).writeto(fz)
    source = open_image(fz)  # the empty primary HDU is skipped
    assert source.hdu == 1
    assert type(source.data).__name__ == "CompImageSection"
    np.testing.assert_array_equal(source.read(np.s_[300:310, 400:410]), raw[300:310, 400:410])


def test_bz2_sdss_frame(fits_dir):
    source = open_image(fits_dir / "reprojected_sdss_g.fits.bz2")
    assert source.shape == (496, 682) and source.unit == "nanomaggy"
    assert source.celestial_wcs is not None


def test_degenerate_radio_axes_are_dropped(tmp_path, fits_dir):
    path = next((fits_dir / "first_mirabest").glob("*.fits"))
    data = fits.getdata(path)
    header = open_image(path).celestial_wcs.to_header()
    header["CTYPE3"], header["CRVAL3"], header["CDELT3"], header["CRPIX3"] = "FREQ", 1.4e9, 1e6, 1.0
    header["CTYPE4"], header["CRVAL4"], header["CDELT4"], header["CRPIX4"] = "STOKES", 1.0, 1.0, 1.0
    fits.PrimaryHDU(data[None, None], header=header).writeto(tmp_path / "radio4d.fits")
    source = open_image(tmp_path / "radio4d.fits")
    assert source.shape == (300, 300) and not source.is_cube
    assert source.celestial_wcs.naxis == 2
    np.testing.assert_array_equal(source.read(np.s_[140:142, 150:152]), data[140:142, 150:152])


def test_png_is_flipped_so_row_zero_is_the_bottom(shared_data):
    path = next((shared_data / "first_radio_galaxies" / "test" / "FRI").glob("*.png"))
    picture = np.asarray(Image.open(path), dtype=np.float32)
    source = open_image(path)
    assert source.shape == picture.shape and not source.is_rgb and source.celestial_wcs is None
    np.testing.assert_array_equal(source.data[0], picture[-1])
    np.testing.assert_array_equal(source.data[-1], picture[0])


def test_colour_jpeg_becomes_three_bands(shared_data):
    path = next((shared_data / "gz2_spiral" / "spirals").glob("*.jpg"))
    picture = np.asarray(Image.open(path), dtype=np.float32)
    source = open_image(path)
    assert source.is_rgb and source.shape == (3, 424, 424)
    np.testing.assert_array_equal(source.data[:, 0, :], picture[-1].T)
    with pytest.raises(AstroVLMError, match="leave out hdu"):
        open_image(path, hdu=1)


def test_from_nddata_masks_to_nan_and_keeps_unit_and_wcs(fits_dir):
    path = next((fits_dir / "first_mirabest").glob("*.fits"))
    data = fits.getdata(path)
    mask = np.zeros(data.shape, bool)
    mask[:10, :20] = True
    ccd = CCDData(data, unit="Jy/beam", wcs=open_image(path).celestial_wcs, mask=mask)
    source = from_nddata(ccd, label="first")
    assert source.unit == "Jy / beam" and source.label == "first"
    assert np.isnan(source.read()[:10, :20]).all() and np.isfinite(source.read()[10:, 20:]).all()
    assert source.celestial_wcs is not None


def test_from_array_and_dispatch(fits_dir):
    array = np.arange(12.0).reshape(3, 4)
    source = from_array(array, label="ramp")
    assert source.image_shape == (3, 4) and source.celestial_wcs is None
    assert as_image_source(source) is source
    assert as_image_source(array).shape == (3, 4)
    assert as_image_source(str(fits_dir / "HorseHead.fits")).shape == (893, 891)
    assert as_image_source(fits_dir / "HorseHead.fits", hdu=0).hdu == 0
    quantity = from_array(array * u.mJy)
    assert quantity.unit == "mJy"
    masked = from_array(np.ma.masked_greater(array, 10))
    assert np.isnan(masked.read()[2, 3])
    assert isinstance(source, ImageSource)
    with pytest.raises(AstroVLMError, match="Cannot read an image from a dict"):
        as_image_source({"not": "an image"})
    with pytest.raises(AstroVLMError, match="2-D image or a 3-D cube"):
        from_array(np.zeros(5))


# ---------------------------------------------------------------- bad inputs (issue 9)
@pytest.mark.parametrize("array, message", [
    (np.array([[1, None], [2, 3]], dtype=object),
     r"Python objects \(dtype=object\).*np\.asarray\(a, dtype=float\)"),
    (np.ones((4, 4)) * (1 + 2j), r"complex values; pass np\.abs\(a\) .* or a\.real"),
    (np.ones((4, 4), dtype=bool), r"booleans \(a mask\?\).*a\.astype\(np\.float32\)"),
    (np.array([["1", "2"], ["3", "4"]]), r"text, not pixel values.*a\.astype\(float\)"),
    (np.array([[b"1", b"2"], [b"3", b"4"]]), r"bytes, not pixel values"),
    (np.zeros((4, 4), dtype=[("flux", "f4"), ("err", "f4")]), r"structured records.*a\['flux'\]"),
])
def test_arrays_of_what_are_not_real_numbers_are_refused(array, message):
    for make in (from_array, as_image_source, lambda a: from_array(np.ma.masked_array(a))):
        with pytest.raises(AstroVLMError, match=message):
            make(array)


@pytest.mark.parametrize("shape, message", [
    ((5,), r"2-D image or a 3-D cube, got 1 dimension\(s\) .*a\.reshape\(ny, nx\)"),
    ((), r"2-D image or a 3-D cube, got 0 dimension"),
    ((2, 2, 3, 4, 5), r"\(2, 2, 3, 4, 5\) .*has more than 3 non-degenerate axes"),
    ((0, 5), r"has no pixels \(shape \(0, 5\)\)"),
    ((3, 0, 4), r"has no pixels \(shape \(3, 0, 4\)\)"),
])
def test_arrays_of_the_wrong_shape_are_refused(shape, message):
    with pytest.raises(AstroVLMError, match=message):
        from_array(np.zeros(shape, dtype=np.float32))


def test_degenerate_axes_of_a_5d_array_are_dropped_and_ragged_lists_refused():
    image = from_array(np.arange(20.0).reshape(1, 1, 1, 4, 5))
    assert image.shape == (4, 5) and not image.is_cube
    with pytest.raises(AstroVLMError, match="ragged lists"):
        from_array([[1.0, 2.0], [3.0]])


def test_nan_only_data_keeps_its_clear_error():
    from glue_astrovlm.cutouts import whole_image

    with pytest.raises(AstroVLMError, match="holds only NaN/blank pixels"):
        whole_image(from_array(np.full((8, 8), np.nan)))


def _open_in_thread(path, seconds: float = 5.0):
    """open_image(path) in a thread, so that a read that blocks (a FIFO) fails the test, not hangs it."""
    outcome = {}

    def run():
        try:
            outcome["source"] = open_image(path)
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"open_image({path}) blocked: it read a file it should have refused"
    return outcome


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_what_is_not_a_regular_file_is_refused_without_reading(tmp_path, kind):
    if kind == "device":
        path, message = "/dev/zero", r"/dev/zero is a character device, not a regular file"
        if not os.path.exists(path):
            pytest.skip("no /dev/zero here")
    elif kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes here")
        path, message = tmp_path / "pipe.fits", r"pipe.fits is a named pipe \(FIFO\), not a regular file"
        os.mkfifo(path)
    else:
        path, message = tmp_path, r"is a folder; give the path of a FITS, PNG or JPEG file"
    outcome = _open_in_thread(path)
    assert isinstance(outcome.get("error"), AstroVLMError), outcome
    assert re.search(message, str(outcome["error"])), str(outcome["error"])


@pytest.mark.parametrize("name", ["empty.fits", "empty.png", "empty"])
def test_an_empty_file_says_it_is_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(AstroVLMError, match=r"is empty \(0 bytes\); the download or copy .* failed"):
        open_image(tmp_path / name)


def _one_clear_line(path) -> str:
    """The message of open_image's error, checked to be one line, raised without any warning first."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would escape as another exception and fail the test
        with pytest.raises(AstroVLMError) as error:
            open_image(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("nbytes", [100, 2880, 2880 * 5 + 17])
def test_truncated_fits_is_one_clear_line(tmp_path, fits_dir, nbytes):
    path = tmp_path / "cut.fits"
    path.write_bytes((fits_dir / "HorseHead.fits").read_bytes()[:nbytes])
    assert re.search(r"Could not read .*(as FITS|image data).*(complete|truncated)", _one_clear_line(path))


def test_pictures_that_are_not_pictures(tmp_path, shared_data, fits_dir):
    page = tmp_path / "galaxy.png"
    page.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    assert re.search(r"Could not read .*galaxy.png as an image \(.*\)\. Check that the file is a complete",
                     _one_clear_line(page))
    half = tmp_path / "half.png"
    original = next((shared_data / "first_radio_galaxies" / "test" / "FRI").glob("*.png")).read_bytes()
    half.write_bytes(original[: len(original) // 2])
    assert "Could not read" in _one_clear_line(half)
    page_as_fits = tmp_path / "galaxy.fits"
    page_as_fits.write_bytes(page.read_bytes())
    assert re.search(r"galaxy.fits as FITS or as a PNG/JPEG picture: it starts with b'<!DOCTYPE ht'.*"
                     r"error page", _one_clear_line(page_as_fits))


def test_content_decides_between_fits_and_picture(tmp_path, shared_data, fits_dir, caplog):
    fits_named_png = tmp_path / "horsehead.png"
    fits_named_png.write_bytes((fits_dir / "HorseHead.fits").read_bytes())
    with caplog.at_level("WARNING", logger="glue_astrovlm.sources"):
        source = open_image(fits_named_png)
    assert source.shape == (893, 891) and source.celestial_wcs is not None
    assert "holds FITS" in caplog.text
    png = next((shared_data / "first_radio_galaxies" / "test" / "FRI").glob("*.png"))
    png_named_fits = tmp_path / "first.fits"
    png_named_fits.write_bytes(png.read_bytes())
    np.testing.assert_array_equal(open_image(png_named_fits).read(), open_image(png).read())


@pytest.mark.parametrize("tile_pixels", [4_000_000, 1000], ids=["one-tile", "many-tiles"])
def test_block_average_ignores_nan_and_handles_partial_edge_blocks(horsehead_raw, monkeypatch, tile_pixels):
    import glue_astrovlm.sources as sources

    monkeypatch.setattr(sources, "_BLOCK_TILE_PIXELS", tile_pixels)  # 1000: tiles of 1 x 62 blocks
    raw, _ = horsehead_raw
    data = raw.astype(np.float32)
    data[:7, :5] = np.nan  # one block entirely blank, one partly
    ny, nx = data.shape  # 893 x 891: the last row and column of blocks are partial
    padded = np.full((-(-ny // 4) * 4, -(-nx // 4) * 4), np.nan, dtype=np.float32)
    padded[:ny, :nx] = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-NaN block
        expected = np.nanmean(padded.reshape(padded.shape[0] // 4, 4, padded.shape[1] // 4, 4), axis=(1, 3))
    binned = block_average(from_array(data), 4)
    assert binned.shape == (224, 223) and binned.dtype == np.float32
    np.testing.assert_allclose(binned, expected, rtol=1e-6)
    assert np.isnan(binned[0, 0]) and np.isfinite(binned[1, 1])


def test_block_average_of_a_colour_picture_averages_each_band(shared_data):
    picture = open_image(next((shared_data / "gz2_spiral" / "spirals").glob("*.jpg")))
    binned = block_average(picture, 5)
    assert picture.is_rgb and binned.shape == (3, 85, 85)
    for band in range(3):
        np.testing.assert_array_equal(binned[band], block_average(from_array(picture.data[band]), 5))
