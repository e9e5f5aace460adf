"""Cutout builders on real FITS: positions, regions, catalogues, whole images, RGB, cubes, memory."""

import logging
import tracemalloc

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales
from regions import (CircleSkyRegion, CirclePixelRegion, PixCoord, PointPixelRegion, RectanglePixelRegion,
                     Regions)

from glue_astrovlm.cutouts import (cutout_at, cutouts_from_catalog, cutouts_from_regions, rgb_composite,
                                   whole_image)
from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.sources import from_array, open_image
from glue_astrovlm.stretch import Stretch


@pytest.fixture(scope="module")
def horsehead(fits_dir):
    return open_image(fits_dir / "HorseHead.fits")


@pytest.fixture(scope="module")
def horsehead_raw(fits_dir):
    return fits.getdata(fits_dir / "HorseHead.fits").astype(np.float32)


@pytest.fixture(scope="module")
def sdss_rgb(fits_dir):
    return rgb_composite(*(fits_dir / f"reprojected_sdss_{band}.fits.bz2" for band in "irg"))


def test_pixel_cutout_values_and_provenance(horsehead, horsehead_raw):
    cut = cutout_at(horsehead, (400, 300), 64)
    np.testing.assert_array_equal(cut.data, horsehead_raw[268:332, 368:432])
    prov = cut.provenance
    assert prov.bbox == (368, 432, 268, 332)
    assert prov.center_pixel == (400.0, 300.0)
    assert prov.hdu == 0 and prov.cube is None and prov.source.endswith("HorseHead.fits")
    assert prov.source_id == "400.0,300.0"
    assert prov.parent_wcs is horsehead.celestial_wcs
    assert prov.center_sky.separation(horsehead.celestial_wcs.pixel_to_world(400, 300)).arcsec < 1e-6
    # the cutout WCS is the parent's, shifted
    parent = horsehead.celestial_wcs.pixel_to_world(373, 277)
    assert cut.wcs.pixel_to_world(5, 9).separation(parent).arcsec < 1e-6
    assert cut.to_image().size == (64, 64)


def test_non_square_size_and_pixcoord(horsehead, horsehead_raw):
    cut = cutout_at(horsehead, PixCoord(200, 500), (20, 40), source_id="knot")
    assert cut.shape == (20, 40) and cut.provenance.source_id == "knot"
    np.testing.assert_array_equal(cut.data, horsehead_raw[490:510, 180:220])


def test_sky_position_and_angular_size(horsehead):
    wcs = horsehead.celestial_wcs
    target = wcs.pixel_to_world(400, 300)
    cut = cutout_at(horsehead, target, 2 * u.arcmin)
    scale = proj_plane_pixel_scales(wcs)[0] * 3600  # arcsec per pixel
    side = round(120 / scale)
    assert cut.shape == (side, side)
    x, y = cut.provenance.center_pixel
    assert abs(x - 400) < 1e-6 and abs(y - 300) < 1e-6
    assert cut.provenance.center_sky is target


def test_edge_cutout_is_nan_filled_with_bbox_beyond_parent(horsehead, horsehead_raw):
    cut = cutout_at(horsehead, (5, 5), 64)
    assert cut.provenance.bbox == (-27, 37, -27, 37)
    assert np.isnan(cut.data[:27]).all() and np.isnan(cut.data[:, :27]).all()
    np.testing.assert_array_equal(cut.data[27:, 27:], horsehead_raw[:37, :37])
    assert np.asarray(cut.to_image())[-1, 0].tolist() == [0, 0, 0]  # NaN corner is background


def test_position_outside_names_position_and_size(horsehead):
    with pytest.raises(AstroVLMError, match=r"x=-50\.0, y=5\.0 is outside .*891 x 893 pixels"):
        cutout_at(horsehead, (-50, 5), 64)
    far = SkyCoord(10, 10, unit="deg")
    with pytest.raises(AstroVLMError, match=r"10\.00000 10\.00000 \(icrs\) \(pixel x=.*outside"):
        cutout_at(horsehead, far, 64)


def test_no_wcs_sky_position_error_but_pixels_work(tmp_path, fits_dir):
    path = tmp_path / "m67_pixels_only.fits"
    raw = fits.getdata(fits_dir / "M6707HH.fits")
    fits.PrimaryHDU(raw).writeto(path)  # the plate data without the DSS plate solution
    source = open_image(path)
    with pytest.raises(AstroVLMError, match=r"no celestial WCS.*give pixel positions \(x y\)"):
        cutout_at(source, SkyCoord("08h51m20.1s +11d48m43s"), 64)
    with pytest.raises(AstroVLMError, match="no celestial WCS"):
        cutout_at(source, (500, 500), 2 * u.arcmin)
    cut = cutout_at(source, (500, 500), 64)
    np.testing.assert_array_equal(cut.data, raw[468:532, 468:532])
    assert cut.wcs is None and cut.provenance.center_sky is None and cut.provenance.parent_wcs is None


def test_m67_sky_position_through_dss_plate_solution(fits_dir):
    source = open_image(fits_dir / "M6707HH.fits")
    header = fits.getheader(fits_dir / "M6707HH.fits")
    cut = cutout_at(source, SkyCoord(header["OBJCTRA"], header["OBJCTDEC"], unit=(u.hourangle, u.deg)), 100)
    x, y = cut.provenance.center_pixel
    assert abs(x - 528.9) < 1 and abs(y - 528.8) < 1


def test_galactic_car_image_takes_galactic_and_icrs_positions(fits_dir):
    source = open_image(fits_dir / "spitzer_example_image.fits")
    raw = fits.getdata(fits_dir / "spitzer_example_image.fits")
    galactic = source.celestial_wcs.pixel_to_world(500, 250)
    assert galactic.frame.name == "galactic"
    target = SkyCoord(galactic.l, galactic.b, frame="galactic")
    cut = cutout_at(source, target, 50)
    np.testing.assert_array_equal(cut.data, raw[225:275, 475:525])
    assert cut.provenance.source_id.startswith(f"{galactic.l.deg:.5f},")
    in_icrs = cutout_at(source, target.icrs, 50)
    assert in_icrs.provenance.bbox == cut.provenance.bbox


def test_first_radio_cutout_at_catalogue_position_from_file_name(fits_dir):
    path = sorted((fits_dir / "first_mirabest").glob("*.fits"))[0]
    _, radec, _, _ = path.stem.split("_")
    ra, dec = float(radec[:7]), float(radec[7:])
    source = open_image(path)
    assert source.unit == "JY/BEAM"
    cut = cutout_at(source, SkyCoord(ra, dec, unit="deg", frame="fk5"), 96)
    x, y = cut.provenance.center_pixel
    assert abs(x - 149.5) < 1.5 and abs(y - 149.5) < 1.5  # the FIRST cutouts are centred on the source
    raw = fits.getdata(path)
    xmin, xmax, ymin, ymax = cut.provenance.bbox
    np.testing.assert_array_equal(cut.data, raw[ymin:ymax, xmin:xmax])


def test_all_nan_cutout_is_refused(horsehead_raw):
    holes = horsehead_raw.copy()
    holes[100:300, 100:300] = np.nan
    with pytest.raises(AstroVLMError, match=r"x=200\.0, y=200\.0 .*only NaN"):
        cutout_at(from_array(holes), (200, 200), 50)


def test_compressed_copies_give_the_same_cutout(tmp_path, fits_dir, horsehead, horsehead_raw):
    with fits.open(fits_dir / "HorseHead.fits") as hdul:
        hdul.writeto(tmp_path / "hh.fits.gz")
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(hdul[0].data, header=hdul[0].header)]).writeto(
            tmp_path / "hh.fits.fz")
    target = horsehead.celestial_wcs.pixel_to_world(333, 444)
    plain = cutout_at(horsehead, target, 40)
    for name in ("hh.fits.gz", "hh.fits.fz"):
        cut = cutout_at(tmp_path / name, target, 40)
        np.testing.assert_array_equal(cut.data, plain.data)
        assert cut.provenance.bbox == plain.provenance.bbox


def _sparse_mosaic(path, n=8000, bzero=None):
    """An n x n int16 FITS mosaic written without holding it in memory, with a marked 10 x 10 patch."""
    header = fits.Header()
    header["SIMPLE"], header["BITPIX"], header["NAXIS"] = True, 16, 2
    header["NAXIS1"], header["NAXIS2"] = n, n
    if bzero is not None:
        header["BZERO"], header["BSCALE"] = bzero, 1.0
    for key, value in dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=n / 2,
                           CRPIX2=n / 2, CDELT1=-1e-4, CDELT2=1e-4, CUNIT1="deg", CUNIT2="deg").items():
        header[key] = value
    text = header.tostring().encode("ascii")
    data_bytes = n * n * 2
    with open(path, "wb") as handle:
        handle.write(text)
        for row in range(4000, 4010):
            handle.seek(len(text) + (row * n + 4000) * 2)
            handle.write(np.full(10, 1234, dtype=">i2").tobytes())
        handle.truncate(len(text) + -(-data_bytes // 2880) * 2880)
    return data_bytes


@pytest.mark.parametrize("bzero", [None, 32768])
def test_cutout_of_big_mosaic_reads_only_its_pixels(tmp_path, bzero):
    path = tmp_path / "mosaic.fits"
    size = _sparse_mosaic(path, bzero=bzero)
    tracemalloc.start()
    try:
        source = open_image(path)
        cut = cutout_at(source, SkyCoord(150.0, 2.0, unit="deg"), 256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 20, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB image"
    offset = 32768 if bzero else 0
    xmin, _, ymin, _ = cut.provenance.bbox
    patch = cut.data[4000 - ymin:4010 - ymin, 4000 - xmin:4010 - xmin]
    np.testing.assert_array_equal(patch, 1234 + offset)
    assert np.count_nonzero(cut.data != offset) == 100
    source.close()


def test_circle_region_mask_and_outside_modes(horsehead):
    circle = CirclePixelRegion(PixCoord(400, 300), radius=20)
    keep, = cutouts_from_regions(horsehead, circle)
    masked, = cutouts_from_regions(horsehead, circle, outside="mask")
    dimmed, = cutouts_from_regions(horsehead, [circle], outside="dim")
    assert keep.provenance.bbox == (375, 426, 275, 326)  # 41 px box (380..420) + ceil(4.1) = 5 px each side
    assert keep.mask.shape == keep.shape and keep.mask.sum() == circle.to_mask(mode="center").data.sum()
    assert keep.mask[24, 24] and not keep.mask[0, 0]
    assert keep.provenance.region is circle and keep.provenance.source_id == "0"
    inside = keep.mask[::-1]  # scaled() is shown top row first
    np.testing.assert_allclose(masked.scaled()[inside], keep.scaled()[inside])
    assert np.all(masked.scaled()[~inside] == 0) and keep.scaled()[~inside].max() > 0
    np.testing.assert_allclose(dimmed.scaled()[~inside], 0.3 * keep.scaled()[~inside])


def test_ds9_and_crtf_region_files_with_sky_shapes(tmp_path, horsehead):
    target = horsehead.celestial_wcs.pixel_to_world(400, 300)
    ds9 = tmp_path / "shapes.reg"
    ds9.write_text("# Region file format: DS9\nicrs\n"
                   f"circle({target.ra.deg:.7f},{target.dec.deg:.7f},20\") # text={{horse}}\n"
                   "image\nbox(101,201,30,10,0)\n")
    sky_circle, box = cutouts_from_regions(horsehead, ds9, padding=0)
    assert sky_circle.provenance.extra == {"region_index": 0, "text": "horse"}
    x, y = sky_circle.provenance.center_pixel
    assert abs(x - 400) < 1e-3 and abs(y - 300) < 1e-3
    assert box.provenance.bbox == (85, 116, 195, 206)  # DS9 is 1-based; edges on pixel centres count
    crtf = tmp_path / "shapes.crtf"
    crtf.write_text("#CRTFv0\nbox[[85pix, 195pix], [114pix, 204pix]]\n")
    crtf_box, = cutouts_from_regions(horsehead, crtf, padding=0)
    assert crtf_box.shape == (10, 30)


def test_sky_region_needs_wcs(tmp_path, fits_dir):
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(fits.getdata(fits_dir / "HorseHead.fits")).writeto(path)
    region = CircleSkyRegion(SkyCoord(85.25, -2.46, unit="deg"), 30 * u.arcsec)
    with pytest.raises(AstroVLMError, match="no celestial WCS.*sky region 0"):
        cutouts_from_regions(path, Regions([region]))


def test_region_outside_point_region_and_nan_region(horsehead, horsehead_raw):
    inside = CirclePixelRegion(PixCoord(100, 100), radius=10)
    outside = RectanglePixelRegion(PixCoord(2000, 100), width=20, height=20)
    with pytest.raises(AstroVLMError, match=r"Region 1 \(RectanglePixelRegion\) lies outside the image .*spans "
                                            r"x 1990\.\.2010.*covers x 0\.\.890, y 0\.\.892 \(891 x 893 pixels\)"):
        cutouts_from_regions(horsehead, [inside, outside])


def test_point_regions_are_skipped_or_get_a_box(horsehead, caplog):
    inside = CirclePixelRegion(PixCoord(100, 100), radius=10)
    point = PointPixelRegion(PixCoord(10, 12))
    with pytest.raises(AstroVLMError, match="Every region is a point or a line.*--size"):
        cutouts_from_regions(horsehead, point)
    with caplog.at_level(logging.WARNING, logger="glue_astrovlm.cutouts"):
        kept = cutouts_from_regions(horsehead, [point, inside])
    assert [c.provenance.source_id for c in kept] == ["1"] and "Region 0 (PointPixelRegion) has no area" in caplog.text
    boxed = cutouts_from_regions(horsehead, [point, inside], point_size=16)
    assert [c.provenance.source_id for c in boxed] == ["0", "1"]
    assert boxed[0].shape == (16, 16) and boxed[0].provenance.center_pixel == (10.0, 12.0)
    assert boxed[0].provenance.extra["region_index"] == 0


def test_nan_region_and_unknown_outside_mode(horsehead, horsehead_raw):
    inside = CirclePixelRegion(PixCoord(100, 100), radius=10)
    holes = horsehead_raw.copy()
    holes[80:121, 80:121] = np.nan  # the circle, not its padding
    with pytest.raises(AstroVLMError, match="Region 0 .*only NaN"):
        cutouts_from_regions(from_array(holes), inside)
    with pytest.raises(AstroVLMError, match="outside must be one of"):
        cutouts_from_regions(horsehead, inside, outside="hide")


def test_catalogue_with_sky_columns(tmp_path, horsehead, horsehead_raw):
    sky = horsehead.celestial_wcs.pixel_to_world([100, 400, 700], [150, 300, 800])
    table = Table({"Name": ["a", "b", "c"], "RAJ2000": sky.ra.deg, "DEJ2000": sky.dec.deg})
    table.write(tmp_path / "cat.ecsv")
    cutouts = cutouts_from_catalog(horsehead, tmp_path / "cat.ecsv", size=20)
    assert [c.provenance.source_id for c in cutouts] == ["a", "b", "c"]
    assert [c.provenance.extra["row"] for c in cutouts] == [0, 1, 2]
    np.testing.assert_allclose(cutouts[1].provenance.center_pixel, (400, 300), atol=1e-6)
    np.testing.assert_array_equal(cutouts[1].data, horsehead_raw[290:310, 390:410])


def test_catalogue_with_pixel_columns_skycoord_column_and_csv(tmp_path, horsehead):
    pixels = Table({"xcentroid": [50.0, 60.0], "ycentroid": [70.0, 80.0]})
    cutouts = cutouts_from_catalog(horsehead, pixels, size=(10, 12))
    assert [c.provenance.source_id for c in cutouts] == ["0", "1"] and cutouts[0].shape == (10, 12)
    assert cutouts[1].provenance.center_pixel == (60.0, 80.0)
    skycol = Table({"id": [7], "sky_centroid": horsehead.celestial_wcs.pixel_to_world([300], [310])})
    cut, = cutouts_from_catalog(horsehead, skycol, size=16)
    assert cut.provenance.source_id == "7"
    np.testing.assert_allclose(cut.provenance.center_pixel, (300, 310), atol=1e-6)
    (tmp_path / "cat.csv").write_text("label,x,y\nalpha,100,200\n")
    cut, = cutouts_from_catalog(horsehead, tmp_path / "cat.csv", size=16)
    assert cut.provenance.source_id == "alpha" and cut.provenance.center_pixel == (100.0, 200.0)


def test_catalogue_rows_outside_raise_or_are_skipped(horsehead, caplog):
    table = Table({"id": ["in", "out1", "out2"], "x": [10.0, -100.0, 5000.0], "y": [10.0, 10.0, 10.0]})
    with pytest.raises(AstroVLMError, match="2 catalogue rows .* ids out1, out2.*skip_outside=True"):
        cutouts_from_catalog(horsehead, table, size=8)
    with caplog.at_level(logging.WARNING, logger="glue_astrovlm.cutouts"):
        cutouts = cutouts_from_catalog(horsehead, table, size=8, skip_outside=True)
    assert [c.provenance.source_id for c in cutouts] == ["in"]
    assert "out1, out2" in caplog.text
    with pytest.raises(AstroVLMError, match="no position columns"):
        cutouts_from_catalog(horsehead, Table({"flux": [1.0]}), size=8)


def test_catalogue_limit_stops_after_the_first_valid_rows(horsehead):
    table = Table({"id": ["out", "a", "b", "c"], "x": [-100.0, 10.0, 20.0, 30.0], "y": [10.0, 10.0, 10.0, 10.0]})
    first = cutouts_from_catalog(horsehead, table, size=8, skip_outside=True, limit=2)
    every = cutouts_from_catalog(horsehead, table, size=8, skip_outside=True)
    assert [c.provenance.source_id for c in first] == ["a", "b"]
    assert [c.provenance.source_id for c in every] == ["a", "b", "c"]
    np.testing.assert_array_equal(first[1].data, every[1].data)


def test_whole_image_small_and_block_averaged(horsehead, horsehead_raw, fits_dir):
    full = whole_image(horsehead)
    np.testing.assert_array_equal(full.data, horsehead_raw)
    assert full.provenance.bbox == (0, 891, 0, 893) and full.provenance.extra["downsample"] == 1
    assert full.provenance.source_id == "image"
    small = whole_image(horsehead, max_size=300)
    assert small.provenance.extra["downsample"] == 3 and small.shape == (298, 297)
    assert small.data[10, 20] == pytest.approx(horsehead_raw[30:33, 60:63].mean(), rel=1e-6)
    assert small.data[-1, -1] == pytest.approx(horsehead_raw[891:, 888:].mean(), rel=1e-6)  # partial block
    spitzer = open_image(fits_dir / "spitzer_example_image.fits")
    blocked = whole_image(spitzer, max_size=256)
    f = blocked.provenance.extra["downsample"]
    assert f == 5
    centre = spitzer.celestial_wcs.pixel_to_world(7 * f + (f - 1) / 2, 11 * f + (f - 1) / 2)
    assert blocked.wcs.pixel_to_world(7, 11).separation(centre).arcsec < 1e-3


def test_rgb_composite_of_sdss_frames(sdss_rgb, fits_dir):
    assert sdss_rgb.is_rgb and sdss_rgb.shape == (3, 496, 682) and sdss_rgb.unit == "nanomaggy"
    cut = cutout_at(sdss_rgb, (300, 200), 64)
    assert cut.is_rgb and cut.data.shape == (3, 64, 64)
    for band, name in enumerate("irg"):
        raw = fits.getdata(fits_dir / f"reprojected_sdss_{name}.fits.bz2")
        np.testing.assert_array_equal(cut.data[band], raw[168:232, 268:332])
    image = np.asarray(cut.to_image())
    assert image.shape == (64, 64, 3) and not np.array_equal(image[..., 0], image[..., 2])
    target = sdss_rgb.celestial_wcs.pixel_to_world(300, 200)
    assert cutout_at(sdss_rgb, target, 64).provenance.bbox == cut.provenance.bbox
    assert whole_image(sdss_rgb, max_size=200).data.shape == (3, 124, 171)


def test_rgb_composite_refuses_mismatched_bands(fits_dir):
    with pytest.raises(AstroVLMError, match="differ in shape.*reproject"):
        rgb_composite(fits_dir / "reprojected_sdss_i.fits.bz2", fits_dir / "HorseHead.fits",
                      fits_dir / "reprojected_sdss_g.fits.bz2")
    g = open_image(fits_dir / "reprojected_sdss_g.fits.bz2")
    shifted = g.celestial_wcs.deepcopy()
    shifted.wcs.crpix = shifted.wcs.crpix + [3, 0]
    with pytest.raises(AstroVLMError, match="different WCS.*reproject"):
        rgb_composite(g, from_array(g.read(), wcs=shifted, label="shifted"), g)


def test_cubes_need_cube_argument(fits_dir):
    cube = fits_dir / "l1448_13co.fits"
    with pytest.raises(AstroVLMError, match=r"cube of shape \(53, 105, 105\).*reduce_cube"):
        cutout_at(cube, (50, 50), 20)
    cut = cutout_at(cube, (50, 50), 20, cube=dict(mode="moment0", spectral_range=(3, 9)))
    assert cut.provenance.cube.startswith("moment0 3:9 (") and cut.provenance.parent_wcs is not None
    raw = fits.getdata(cube)
    np.testing.assert_allclose(cut.data, raw[3:9, 40:60, 40:60].sum(axis=0) * 0.06642361, rtol=1e-5)
    circle = CirclePixelRegion(PixCoord(50, 50), 10)
    regions = cutouts_from_regions(cube, circle, cube=dict(mode="slice", index=20))
    assert regions[0].provenance.cube == "slice 20"
    with pytest.raises(AstroVLMError, match="not a cube"):
        cutout_at(fits_dir / "HorseHead.fits", (50, 50), 20, cube=dict(mode="sum"))


def test_stretch_is_carried_and_checked(horsehead):
    stretch = Stretch(interval="percentile", stretch="asinh")
    assert cutout_at(horsehead, (100, 100), 16, stretch=stretch).stretch is stretch
    with pytest.raises(AstroVLMError, match="stretch must be"):
        cutout_at(horsehead, (100, 100), 16, stretch="asinh")
