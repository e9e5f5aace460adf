"""Spectral cubes to images: one channel, a sum or mean over channels, or a moment-0 map.

A cube is an `~glue_astrovlm.sources.ImageSource` whose data are ``(nspec, ny, nx)`` in numpy order
(a FITS cube with ``CTYPE3 = 'VOPT'``, for example; radio cubes with a length-1 Stokes axis are read
as such cubes by `~glue_astrovlm.sources.open_image`). The reduced image keeps the cube's celestial WCS
and carries a short description (``'moment0 3:9 (-1.2..3.4 km/s)'``) into every cutout's provenance.

A cube without a spectral axis in its WCS (no ``CTYPE3``, or a plain array) is still reduced by
channel number: its channel axis is the one that is not celestial, numpy axis 0 when nothing says
otherwise. Spectral values (``-1.5 km/s``) and moment-0 maps need a spectral WCS.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .errors import AstroVLMError
from .limits import check_memory
from .sources import ImageSource, as_image_source, usable_celestial_wcs

__all__ = ["reduce_cube", "as_2d_source", "CUBE_MODES"]

log = logging.getLogger(__name__)

#: The ways a cube becomes an image.
CUBE_MODES = ("slice", "sum", "mean", "moment0")


def _spectral_axis(source: ImageSource, spectral_axis: int | None) -> tuple[int, Any]:
    """The numpy axis of the spectral coordinate and its 1-axis WCS (or None when unknown)."""
    wcs = source.wcs
    wcs_spec = wcs.wcs.spec if wcs is not None and wcs.naxis == 3 else -1
    if spectral_axis is None:
        if wcs_spec >= 0:
            return 2 - wcs_spec, wcs.sub([wcs_spec + 1])
        axis = 0
        if wcs is not None and wcs.naxis == 3 and wcs.wcs.lng >= 0 and wcs.wcs.lat >= 0:
            axis = 2 - ({0, 1, 2} - {wcs.wcs.lng, wcs.wcs.lat}).pop()  # the one axis not on the sky
        log.info("%s has no spectral axis in its WCS; using numpy axis %d (%d channels) as the channel axis",
                 source.label, axis, source.shape[axis])
        return axis, None
    if isinstance(spectral_axis, bool) or spectral_axis not in (0, 1, 2, -1, -2, -3):
        raise AstroVLMError(f"spectral_axis must be a numpy axis 0, 1 or 2 of the cube, "
                            f"got {spectral_axis!r}.")
    axis = spectral_axis % 3
    spec_wcs = wcs.sub([2 - axis + 1]) if wcs_spec == 2 - axis else None
    return axis, spec_wcs


def _display_unit(spec_wcs):
    import astropy.units as u

    unit = u.Unit(spec_wcs.wcs.cunit[0] or "")
    if unit.physical_type == "speed":
        return unit, u.km / u.s
    return unit, unit


def _unit_text(unit) -> str:
    return unit.to_string().replace(" / ", "/")


def _world(spec_wcs, pixels) -> np.ndarray:
    return spec_wcs.wcs_pix2world(np.asarray(pixels, dtype=float)[:, None], 0)[:, 0]


def _channel_of(value, spec_wcs, nchan: int, what: str) -> float:
    """Fractional channel of a spectral Quantity."""
    import astropy.units as u

    if spec_wcs is None:
        raise AstroVLMError(f"{what} is a spectral value but the cube has no spectral WCS; give channel "
                            f"numbers (0..{nchan - 1}) instead.")
    wcs_unit, _ = _display_unit(spec_wcs)
    try:
        native = value.to_value(wcs_unit, equivalencies=u.spectral())
    except u.UnitConversionError:
        raise AstroVLMError(f"{what} {value} cannot be converted to the cube's spectral unit "
                            f"{_unit_text(wcs_unit)}; give it in {_unit_text(wcs_unit)}.") from None
    pixel = float(spec_wcs.wcs_world2pix([[native]], 0)[0, 0])
    if not np.isfinite(pixel):
        raise AstroVLMError(f"{what} {value} does not fall on the cube's spectral axis, which covers "
                            f"{_coverage(spec_wcs, nchan)}.")
    return pixel


def _coverage(spec_wcs, nchan: int) -> str:
    if spec_wcs is None:
        return f"channels 0..{nchan - 1}"
    wcs_unit, shown = _display_unit(spec_wcs)
    ends = (_world(spec_wcs, [0, nchan - 1]) * wcs_unit).to_value(shown)
    return f"channels 0..{nchan - 1} ({min(ends):.4g}..{max(ends):.4g} {_unit_text(shown)})"


def _channel_range(spectral_range, spec_wcs, nchan: int) -> tuple[int, int, bool]:
    """``(lo, hi, given_as_quantity)`` channels, ``hi`` exclusive."""
    import astropy.units as u

    if spectral_range is None:
        return 0, nchan, False
    if isinstance(spectral_range, u.Quantity):
        spectral_range = list(spectral_range.flatten())
    if isinstance(spectral_range, (str, bytes)) or not hasattr(spectral_range, "__len__") \
            or len(spectral_range) != 2:
        raise AstroVLMError(f"spectral_range must be two values (start, stop), got {spectral_range!r}.")
    start, stop = spectral_range
    if isinstance(start, u.Quantity) or isinstance(stop, u.Quantity):
        if not (isinstance(start, u.Quantity) and isinstance(stop, u.Quantity)):
            raise AstroVLMError("Give both ends of spectral_range as Quantities, or both as channel numbers.")
        pixels = sorted([_channel_of(start, spec_wcs, nchan, "spectral_range"),
                         _channel_of(stop, spec_wcs, nchan, "spectral_range")])
        lo = max(int(np.ceil(pixels[0] - 1e-9)), 0)
        hi = min(int(np.floor(pixels[1] + 1e-9)) + 1, nchan)
        if hi <= lo:
            raise AstroVLMError(f"spectral_range {start}..{stop} holds no channel of the cube, which covers "
                                f"{_coverage(spec_wcs, nchan)}.")
        return lo, hi, True
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, stop)):
        raise AstroVLMError(f"spectral_range channels must be integers (start, stop), got "
                            f"{spectral_range!r}; or give Quantities such as (-1, 3) * u.km / u.s.")
    start, stop = int(start), int(stop)
    if stop < start:
        raise AstroVLMError(f"spectral_range ({start}, {stop}) is reversed: stop must be larger than start "
                            f"(stop is exclusive), e.g. ({stop}, {start}); valid channels are "
                            f"0..{nchan - 1}.")
    if stop == start:
        raise AstroVLMError(f"spectral_range ({start}, {stop}) is empty: stop is exclusive, so ({start}, "
                            f"{start + 1}) is channel {start} alone; valid channels are 0..{nchan - 1}.")
    if not 0 <= start < nchan or not 0 < stop <= nchan:
        raise AstroVLMError(f"spectral_range ({start}, {stop}) is outside the cube: valid channels are "
                            f"0..{nchan - 1} (stop is exclusive, at most {nchan}).")
    return start, stop, False


def _plane_key(axis: int, channel: int) -> tuple:
    key = [slice(None)] * 3
    key[axis] = channel
    return tuple(key)


def reduce_cube(source, mode: str = "slice", index: int | Any | None = None,
                spectral_range: tuple | Any | None = None,
                spectral_axis: int | None = None) -> ImageSource:
    """Turn a 3-D cube into a 2-D image that cutouts can be taken from.

    Parameters
    ----------
    source : ImageSource, path or array
        A cube, data ``(nspec, ny, nx)`` in numpy order (or another order with ``spectral_axis``).
    mode : {'slice', 'sum', 'mean', 'moment0'}
        ``slice``: one channel. ``sum``/``mean``: NaN-ignoring sum or mean over channels, in the data's
        unit. ``moment0``: integrated intensity, the sum of ``data * |dv|`` with ``dv`` each channel's
        width from the spectral WCS (in km/s for velocity axes), unit ``data unit * km/s``.
    index : int or `~astropy.units.Quantity`, optional
        The channel for ``slice`` (0-based), or a spectral value whose nearest channel is used.
    spectral_range : tuple, optional
        Channels to collapse: ``(start, stop)`` integers with ``stop`` exclusive (as a Python slice),
        or two spectral Quantities, e.g. ``(-1, 3) * u.km / u.s``, selecting the channels whose centres
        lie between them. All channels by default.
    spectral_axis : int, optional
        Numpy axis (0, 1 or 2) of the spectral coordinate when the WCS does not say. Without it, a
        cube whose WCS has no spectral axis uses the axis that is not celestial (numpy axis 0 when
        there is no celestial WCS either), by channel number only.

    Returns
    -------
    ImageSource
        2-D image with the cube's celestial WCS and ``cube`` set to a description such as
        ``'slice 12'``, ``'sum 3:9'`` or ``'moment0 3:9 (-1.2..3.4 km/s)'``.

    Raises
    ------
    AstroVLMError
        For a 2-D input, an unknown mode, an index or range outside the cube (the message lists the
        channels, ``0..N-1``), an empty or reversed range, spectral values or ``moment0`` on a cube
        without a spectral WCS, or planes too large for the memory this machine can spare.
    """
    source = as_image_source(source)
    if source.is_rgb:
        raise AstroVLMError(f"{source.label} is an RGB composite, not a cube; take cutouts from it directly.")
    if not source.is_cube:
        raise AstroVLMError(f"{source.label} is a 2-D image of shape {source.shape}, not a cube; take "
                            "cutouts from it directly, without reduce_cube or cube=.")
    if mode not in CUBE_MODES:
        raise AstroVLMError(f"Unknown cube mode {mode!r}; use one of {', '.join(CUBE_MODES)}.")
    axis, spec_wcs = _spectral_axis(source, spectral_axis)
    plane = tuple(n for i, n in enumerate(source.shape) if i != axis)
    check_memory(plane, copies=2 if mode == "slice" else 5,
                 what=f"A {mode} of the {plane[1]} x {plane[0]} pixel planes of {source.label}",
                 shrink="cut the cube to a smaller region first (e.g. with spectral-cube's subcube)")
    wcs_2d = None
    if source.wcs is not None and source.wcs.naxis == 3:
        wcs_2d = usable_celestial_wcs(source.wcs.dropaxis(2 - axis))
    elif axis == 0:
        wcs_2d = source.celestial_wcs
    if mode == "slice":
        if spectral_range is not None:
            raise AstroVLMError("mode='slice' takes index=, not spectral_range=; use mode='sum', 'mean' or "
                                "'moment0' to collapse a range of channels.")
        channel = _slice_channel(source, index, spec_wcs, source.shape[axis])
        image, unit, description = source.read(_plane_key(axis, channel)), source.unit, f"slice {channel}"
    else:
        if index is not None:
            raise AstroVLMError(f"mode={mode!r} takes spectral_range=, not index=; use mode='slice' for one "
                                "channel.")
        image, unit, description = _collapse(source, mode, axis, spec_wcs, spectral_range, plane)
    return ImageSource(data=image, wcs=wcs_2d, label=source.label, hdu=source.hdu, unit=unit,
                       cube=description)


def _slice_channel(source: ImageSource, index, spec_wcs, nchan: int) -> int:
    """The channel that ``index`` (a channel number or a spectral value) names."""
    import astropy.units as u

    if index is None:
        raise AstroVLMError(f"mode='slice' needs index=<channel>; {source.label} has "
                            f"{_coverage(spec_wcs, nchan)}.")
    if isinstance(index, u.Quantity):
        channel = int(np.round(_channel_of(index, spec_wcs, nchan, "index")))
        if not 0 <= channel < nchan:
            raise AstroVLMError(f"index {index} is outside the cube, which covers {_coverage(spec_wcs, nchan)}.")
        return channel
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        if not 0 <= int(index) < nchan:
            raise AstroVLMError(f"Channel index {int(index)} is out of range: valid channels are 0..{nchan - 1}.")
        return int(index)
    raise AstroVLMError(f"index must be a channel number or a spectral Quantity, got {index!r}.")


def _collapse(source: ImageSource, mode: str, axis: int, spec_wcs, spectral_range, plane):
    """``(image, unit, description)`` of a sum, mean or moment 0 over the channels of ``spectral_range``."""
    lo, hi, as_quantity = _channel_range(spectral_range, spec_wcs, source.shape[axis])
    weights = np.ones(hi - lo)
    unit = source.unit
    world_text = ""
    if spec_wcs is not None:
        wcs_unit, shown = _display_unit(spec_wcs)
        centres = (_world(spec_wcs, np.arange(lo, hi)) * wcs_unit).to_value(shown)
        world_text = f" ({centres.min():.4g}..{centres.max():.4g} {_unit_text(shown)})"
    if mode == "moment0":
        if spec_wcs is None:
            raise AstroVLMError(f"moment0 needs channel widths from a spectral WCS, which {source.label} "
                                "lacks; use mode='sum' instead.")
        edges = (_world(spec_wcs, np.arange(lo, hi + 1) - 0.5) * wcs_unit).to_value(shown)
        weights = np.abs(np.diff(edges))
        data_unit = source.astropy_unit
        unit = None if data_unit is None else (data_unit * shown).to_string()
    total = np.zeros(plane, dtype=float)
    count = np.zeros(total.shape, dtype=np.int32)
    for weight, channel in zip(weights, range(lo, hi)):
        values = source.read(_plane_key(axis, channel))
        finite = np.isfinite(values)
        total += np.where(finite, values * weight, 0.0)
        count += finite
    with np.errstate(invalid="ignore", divide="ignore"):
        image = total / count if mode == "mean" else total
    image[count == 0] = np.nan
    description = f"{mode} {lo}:{hi}"
    if mode == "moment0" or as_quantity:
        description += world_text
    return image, unit, description


def as_2d_source(source, cube: dict | None = None) -> ImageSource:
    """The source as a 2-D image (or RGB composite) ready for cutouts, reducing a cube with ``cube=``.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        An image, RGB composite or cube.
    cube : dict, optional
        Arguments of :func:`reduce_cube`, e.g. ``dict(mode='moment0', spectral_range=(3, 9))``;
        required for a cube and refused for anything else.

    Raises
    ------
    AstroVLMError
        A cube without ``cube=``, or ``cube=`` with an image.
    """
    source = as_image_source(source)
    if cube is not None:
        if not isinstance(cube, dict):
            raise AstroVLMError(f"cube= takes a dict of reduce_cube arguments, e.g. "
                                f"cube=dict(mode='slice', index=12); got {cube!r}.")
        if not source.is_cube:
            raise AstroVLMError(f"cube={cube!r} was given but {source.label} is not a cube (shape "
                                f"{source.shape}); leave out cube=.")
        return reduce_cube(source, **cube)
    if source.is_cube:
        raise AstroVLMError(
            f"{source.label} is a cube of shape {source.shape}; cutouts need an image. Call "
            "reduce_cube(source, mode='slice', index=...) first, or pass cube=dict(mode='slice', index=...) "
            "(modes: slice, sum, mean, moment0).")
    return source
