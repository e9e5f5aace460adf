"""Cubes to images: slices, sums, means and moment-0 maps of the real L1448 13CO cube."""

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from glue_astrovlm.cubes import as_2d_source, reduce_cube
from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.sources import from_array, open_image


@pytest.fixture(scope="module")
def cube_path(fits_dir):
    return fits_dir / "l1448_13co.fits"


@pytest.fixture(scope="module")
def cube(cube_path):
    return open_image(cube_path)


@pytest.fixture(scope="module")
def raw(cube_path):
    with fits.open(cube_path) as hdul:
        return hdul[0].data.astype(float), hdul[0].header.copy()


def _velocity_kms(header, channel):
    """Channel centre from the FITS header by hand (VOPT in m/s, 1-based CRPIX)."""
    return (header["CRVAL3"] + (channel + 1 - header["CRPIX3"]) * header["CDELT3"]) / 1000.0


def test_the_cube_is_spectral_first(cube):
    assert cube.is_cube and cube.shape == (53, 105, 105)
    assert list(cube.celestial_wcs.wcs.ctype) == ["RA---SFL", "DEC--SFL"]


def test_slice(cube, raw):
    data, _ = raw
    image = reduce_cube(cube, mode="slice", index=12)
    assert image.cube == "slice 12" and image.ndim == 2 and not image.is_cube
    np.testing.assert_allclose(image.read(), data[12])
    assert list(image.celestial_wcs.wcs.ctype) == ["RA---SFL", "DEC--SFL"]
    assert image.label == cube.label and image.hdu == 0


def test_slice_at_a_velocity(cube, raw):
    data, header = raw
    velocities = np.array([_velocity_kms(header, k) for k in range(53)])
    nearest = int(np.argmin(np.abs(velocities - 4.0)))
    image = reduce_cube(cube, mode="slice", index=4.0 * u.km / u.s)
    assert image.cube == f"slice {nearest}"
    np.testing.assert_allclose(image.read(), data[nearest])


def test_sum_and_mean(cube, raw):
    data, _ = raw
    summed = reduce_cube(cube, mode="sum", spectral_range=(3, 9))
    assert summed.cube == "sum 3:9"
    np.testing.assert_allclose(summed.read(), data[3:9].sum(axis=0), rtol=1e-6)
    mean = reduce_cube(cube, mode="mean")
    assert mean.cube == "mean 0:53"
    np.testing.assert_allclose(mean.read(), data.mean(axis=0), rtol=1e-6)


def test_moment0_by_channel(cube, raw):
    data, header = raw
    image = reduce_cube(cube, mode="moment0", spectral_range=(3, 9))
    dv = abs(header["CDELT3"]) / 1000.0  # km/s
    np.testing.assert_allclose(image.read(), data[3:9].sum(axis=0) * dv, rtol=1e-6)
    low, high = _velocity_kms(header, 3), _velocity_kms(header, 8)
    assert image.cube == f"moment0 3:9 ({low:.4g}..{high:.4g} km/s)"
    assert image.unit is None  # the cube has no BUNIT


def test_moment0_by_velocity_quantity(cube, raw):
    data, header = raw
    velocities = np.array([_velocity_kms(header, k) for k in range(53)])
    inside = np.flatnonzero((velocities >= 3.0) & (velocities <= 5.0))
    lo, hi = inside[0], inside[-1] + 1
    image = reduce_cube(cube, mode="moment0", spectral_range=(3, 5) * u.km / u.s)
    assert image.cube.startswith(f"moment0 {lo}:{hi} (")
    dv = abs(header["CDELT3"]) / 1000
    np.testing.assert_allclose(image.read(), data[lo:hi].sum(axis=0) * dv, rtol=1e-6)
    # same range in m/s and in reverse order
    again = reduce_cube(cube, mode="moment0", spectral_range=(5000 * u.m / u.s, 3000 * u.m / u.s))
    np.testing.assert_allclose(again.read(), image.read())


def test_moment0_unit_is_data_unit_times_velocity(cube, raw):
    data, _ = raw
    with_unit = from_array(data, wcs=cube.wcs, label="l1448", unit="K")
    image = reduce_cube(with_unit, mode="moment0", spectral_range=(10, 20))
    assert image.unit == "K km / s"


def test_nan_channels_are_ignored(cube, raw):
    data, _ = raw
    holes = data.copy()
    holes[4, 50, 50] = np.nan
    holes[:, 10, 10] = np.nan
    image = reduce_cube(from_array(holes, wcs=cube.wcs), mode="sum", spectral_range=(3, 9))
    assert image.read()[50, 50] == pytest.approx(data[[3, 5, 6, 7, 8], 50, 50].sum(), rel=1e-6)
    assert np.isnan(image.read()[10, 10])


def test_errors_say_what_is_valid(cube, fits_dir):
    with pytest.raises(AstroVLMError, match=r"out of range: valid channels are 0\.\.52"):
        reduce_cube(cube, mode="slice", index=53)
    with pytest.raises(AstroVLMError, match="needs index="):
        reduce_cube(cube, mode="slice")
    with pytest.raises(AstroVLMError, match="empty"):
        reduce_cube(cube, mode="sum", spectral_range=(5, 5))
    with pytest.raises(AstroVLMError, match=r"outside the cube: valid channels are 0\.\.52"):
        reduce_cube(cube, mode="sum", spectral_range=(50, 60))
    with pytest.raises(AstroVLMError, match="holds no channel"):
        reduce_cube(cube, mode="sum", spectral_range=(50, 60) * u.km / u.s)
    with pytest.raises(AstroVLMError, match="cannot be converted"):
        reduce_cube(cube, mode="sum", spectral_range=(1, 2) * u.GHz)
    with pytest.raises(AstroVLMError, match="Unknown cube mode"):
        reduce_cube(cube, mode="max")
    with pytest.raises(AstroVLMError, match="2-D image .* not a cube"):
        reduce_cube(fits_dir / "HorseHead.fits", mode="sum")


def test_cube_without_spectral_axis_in_its_wcs_is_reduced_by_channel(cube, raw):
    data, _ = raw
    no_spectral = WCS(naxis=3)
    no_spectral.wcs.ctype = ["RA---SFL", "DEC--SFL", "LINEAR"]
    no_spectral.wcs.cdelt = cube.wcs.wcs.cdelt
    no_spectral.wcs.crval = cube.wcs.wcs.crval
    no_spectral.wcs.crpix = cube.wcs.wcs.crpix
    for source in (from_array(data, wcs=no_spectral), from_array(data)):
        image = reduce_cube(source, mode="sum", spectral_range=(1, 4))
        assert image.cube == "sum 1:4"
        np.testing.assert_allclose(image.read(), data[1:4].sum(axis=0), rtol=1e-6)
    image = reduce_cube(from_array(data), mode="sum", spectral_axis=0, spectral_range=(3, 9))
    np.testing.assert_allclose(image.read(), data[3:9].sum(axis=0), rtol=1e-6)
    with pytest.raises(AstroVLMError, match="moment0 needs channel widths"):
        reduce_cube(from_array(data), mode="moment0", spectral_axis=0)


def test_spectral_axis_last_in_numpy_order(raw):
    data, _ = raw
    moved = np.moveaxis(data, 0, -1)  # (y, x, spectral)
    image = reduce_cube(from_array(moved), mode="slice", index=7, spectral_axis=2)
    np.testing.assert_allclose(image.read(), data[7])


def test_as_2d_source_requires_cube_argument_for_cubes(cube, fits_dir):
    with pytest.raises(AstroVLMError, match="reduce_cube.*cube=dict"):
        as_2d_source(cube)
    assert as_2d_source(cube, cube=dict(mode="slice", index=3)).cube == "slice 3"
    with pytest.raises(AstroVLMError, match="not a cube"):
        as_2d_source(fits_dir / "HorseHead.fits", cube=dict(mode="sum"))


# ---------------------------------------------------------------- cubes as astronomers have them (issue 9)
@pytest.fixture(scope="module")
def l1448(cube_path):
    """The real cube's stored (float32) data and header."""
    with fits.open(cube_path) as hdul:
        return hdul[0].data.copy(), hdul[0].header.copy()


def _insert_length1_axis(header, fits_axis: int, ctype: str):
    """A copy of a 3-axis cube header with a length-1 axis inserted as FITS axis ``fits_axis`` (3 or 4)."""
    out = header.copy()
    out["NAXIS"] = out["WCSAXES"] = 4
    keys = ("CTYPE", "CRVAL", "CDELT", "CRPIX", "CUNIT")
    if fits_axis == 3:  # the spectral axis moves to 4, as in CASA images (RA, DEC, STOKES, FREQ)
        for key in keys:
            out[f"{key}4"] = header[f"{key}3"]
    for key, value in zip(keys, (ctype, 1.0, 1.0, 1.0, "")):
        out[f"{key}{fits_axis}"] = value
    return out


@pytest.fixture(scope="module", params=[4, 3], ids=["stokes-axis-4", "stokes-axis-3"])
def stokes_cube(request, l1448, tmp_path_factory):
    """The L1448 cube as a radio 4-D cube with a length-1 Stokes axis (NAXIS4 = 1, or NAXIS3 = 1)."""
    data, header = l1448
    fits_axis = request.param
    four_d = data[None] if fits_axis == 4 else data[:, None]
    path = tmp_path_factory.mktemp("stokes") / f"l1448_stokes{fits_axis}.fits"
    fits.PrimaryHDU(four_d, header=_insert_length1_axis(header, fits_axis, "STOKES")).writeto(path)
    assert fits.getheader(path)["NAXIS"] == 4
    return open_image(path)


def test_4d_cube_with_a_length1_stokes_axis_is_a_cube_with_both_wcs(stokes_cube, cube):
    assert stokes_cube.is_cube and stokes_cube.shape == (53, 105, 105)
    assert list(stokes_cube.wcs.wcs.ctype) == ["RA---SFL", "DEC--SFL", "VOPT"]
    assert list(stokes_cube.celestial_wcs.wcs.ctype) == ["RA---SFL", "DEC--SFL"]
    np.testing.assert_allclose(stokes_cube.celestial_wcs.wcs.crval, cube.celestial_wcs.wcs.crval)


@pytest.mark.parametrize("mode, kwargs", [
    ("slice", dict(index=12)),
    ("slice", dict(index=4.0 * u.km / u.s)),
    ("sum", dict(spectral_range=(3, 9))),
    ("mean", dict()),
    ("moment0", dict(spectral_range=(3, 9))),
    ("moment0", dict(spectral_range=(3, 5) * u.km / u.s)),
])
def test_4d_stokes_cube_reduces_as_the_3d_cube(stokes_cube, cube, mode, kwargs):
    expected = reduce_cube(cube, mode=mode, **kwargs)
    image = reduce_cube(stokes_cube, mode=mode, **kwargs)
    assert image.cube == expected.cube and image.unit == expected.unit
    np.testing.assert_allclose(image.read(), expected.read(), rtol=1e-6)
    assert list(image.celestial_wcs.wcs.ctype) == ["RA---SFL", "DEC--SFL"]
    np.testing.assert_allclose(image.celestial_wcs.wcs.crpix, expected.celestial_wcs.wcs.crpix)


def test_single_plane_with_degenerate_third_and_fourth_axes_is_an_image(l1448, tmp_path):
    data, header = l1448
    plane = _insert_length1_axis(header, 4, "STOKES")  # VOPT (1 channel) and STOKES, as FIRST images have
    path = tmp_path / "l1448_plane.fits"
    fits.PrimaryHDU(data[None, 20:21], header=plane).writeto(path)
    image = open_image(path)
    assert image.ndim == 2 and not image.is_cube and image.shape == (105, 105)
    assert list(image.celestial_wcs.wcs.ctype) == ["RA---SFL", "DEC--SFL"]
    np.testing.assert_array_equal(image.read(), data[20])
    with pytest.raises(AstroVLMError, match="2-D image .* not a cube"):
        reduce_cube(image, mode="slice", index=0)


def test_4d_cube_with_four_stokes_planes_names_its_axes(l1448, tmp_path):
    data, header = l1448
    full = _insert_length1_axis(header, 4, "STOKES")
    path = tmp_path / "l1448_iquv.fits"
    fits.PrimaryHDU(np.repeat(data[None, :, :8, :8], 4, axis=0), header=full).writeto(path)
    with pytest.raises(AstroVLMError, match=r"STOKES 4, VOPT 53, .*more than 3 non-degenerate.*data\[0\]"):
        open_image(path)


def test_array_with_leading_length1_axes_is_a_cube(l1448):
    data, _ = l1448
    source = from_array(data[None, None])
    assert source.is_cube and source.shape == (53, 105, 105)
    np.testing.assert_array_equal(reduce_cube(source, mode="slice", index=7).read(), data[7])


@pytest.fixture(scope="module")
def no_spectral_wcs_cube(l1448, tmp_path_factory):
    """The cube written without CTYPE3/CUNIT3: a celestial WCS and a third axis nobody described."""
    data, header = l1448
    header = header.copy()
    for key in ("CTYPE3", "CUNIT3", "CRVAL3", "CDELT3", "CRPIX3", "SPECSYS"):
        header.remove(key, ignore_missing=True)
    path = tmp_path_factory.mktemp("nospec") / "l1448_no_ctype3.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    return open_image(path)


def test_cube_without_spectral_wcs_takes_channel_numbers(no_spectral_wcs_cube, l1448):
    data, _ = l1448
    for source in (no_spectral_wcs_cube, from_array(data)):
        image = reduce_cube(source, mode="slice", index=3)
        assert image.cube == "slice 3"
        np.testing.assert_array_equal(image.read(), data[3])
        summed = reduce_cube(source, mode="sum", spectral_range=(1, 4))
        assert summed.cube == "sum 1:4"
        np.testing.assert_allclose(summed.read(), data[1:4].sum(axis=0, dtype=float), rtol=1e-6)
    assert image.celestial_wcs is None  # the plain array has no WCS at all
    kept = reduce_cube(no_spectral_wcs_cube, mode="mean", spectral_range=(0, 53))
    assert list(kept.celestial_wcs.wcs.ctype) == ["RA---SFL", "DEC--SFL"]


@pytest.mark.parametrize("kwargs", [dict(mode="slice", index=4 * u.km / u.s),
                                    dict(mode="sum", spectral_range=(1, 3) * u.km / u.s)])
def test_cube_without_spectral_wcs_refuses_spectral_values(no_spectral_wcs_cube, kwargs):
    with pytest.raises(AstroVLMError, match=r"no spectral WCS; give channel numbers \(0\.\.52\)"):
        reduce_cube(no_spectral_wcs_cube, **kwargs)


def test_cube_without_spectral_wcs_refuses_moment0(no_spectral_wcs_cube):
    with pytest.raises(AstroVLMError, match="moment0 needs channel widths from a spectral WCS.*mode='sum'"):
        reduce_cube(no_spectral_wcs_cube, mode="moment0")


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="slice", index=53), r"Channel index 53 is out of range: valid channels are 0\.\.52"),
    (dict(mode="slice", index=-1), r"Channel index -1 is out of range: valid channels are 0\.\.52"),
    (dict(mode="sum", spectral_range=(9, 3)), r"\(9, 3\) is reversed.*\(3, 9\).*valid channels are 0\.\.52"),
    (dict(mode="mean", spectral_range=(5, 5)), r"\(5, 5\) is empty.*valid channels are 0\.\.52"),
    (dict(mode="moment0", spectral_range=(40, 80)), r"outside the cube: valid channels are 0\.\.52"),
    (dict(mode="sum", spectral_range=(-3, 2)), r"outside the cube: valid channels are 0\.\.52"),
    (dict(mode="slice", index=True), r"index must be a channel number"),
])
def test_bad_channels_are_explained_by_channel_not_by_wcs(cube, no_spectral_wcs_cube, l1448, kwargs, message):
    sources = [cube, no_spectral_wcs_cube]
    if kwargs["mode"] != "moment0":
        sources.append(from_array(l1448[0]))
    for source in sources:
        with pytest.raises(AstroVLMError, match=message) as error:
            reduce_cube(source, **kwargs)
        assert "WCS" not in str(error.value)


def test_collapsing_a_cube_too_large_for_memory_is_refused(cube, monkeypatch):
    monkeypatch.setenv("ASTROVLM_MEMORY_LIMIT_GB", "0.0003")  # 300 kB; a 105 x 105 float64 plane is 88 kB
    with pytest.raises(AstroVLMError, match=r"A moment0 of the 105 x 105 pixel planes of .*l1448_13co.fits "
                                            r"needs 0\.4 MB of memory, more than the 0\.3 MB .*cut the cube "
                                            r"to a smaller region first"):
        reduce_cube(cube, mode="moment0")
    assert reduce_cube(cube, mode="slice", index=3).shape == (105, 105)  # one plane, two copies: 176 kB


def test_scaled_integer_stokes_cube_is_read_lazily(l1448, tmp_path):
    """BSCALE/BZERO data are read through a FITS section, here behind the dropped Stokes axis."""
    from glue_astrovlm.cutouts import whole_image

    data, header = l1448
    scaled = _insert_length1_axis(header, 3, "STOKES")
    hdu = fits.PrimaryHDU(np.round(np.nan_to_num(data[:, None]) * 1000).astype(np.int16), header=scaled)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.001, 0.0
    hdu.writeto(tmp_path / "l1448_int16.fits")
    cube = open_image(tmp_path / "l1448_int16.fits")
    assert cube.is_cube and cube.shape == (53, 105, 105) and not isinstance(cube.data, np.ndarray)
    expected = np.round(np.nan_to_num(data[30]) * 1000) * 0.001
    np.testing.assert_allclose(cube.read(np.s_[30]), expected, atol=1e-6)
    np.testing.assert_allclose(cube.read((Ellipsis, slice(0, 5), slice(0, 5)))[30], expected[:5, :5], atol=1e-6)
    image = reduce_cube(cube, mode="slice", index=30)
    np.testing.assert_allclose(image.read(), expected, atol=1e-6)
    assert whole_image(image).shape == (105, 105)
