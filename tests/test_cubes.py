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


def test_wrong_cube_axes_ask_for_spectral_axis(cube, raw):
    data, _ = raw
    no_spectral = WCS(naxis=3)
    no_spectral.wcs.ctype = ["RA---SFL", "DEC--SFL", "LINEAR"]
    no_spectral.wcs.cdelt = cube.wcs.wcs.cdelt
    no_spectral.wcs.crval = cube.wcs.wcs.crval
    no_spectral.wcs.crpix = cube.wcs.wcs.crpix
    for source in (from_array(data, wcs=no_spectral), from_array(data)):
        with pytest.raises(AstroVLMError, match="Wrong cube axes.*spectral_axis="):
            reduce_cube(source, mode="sum")
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
