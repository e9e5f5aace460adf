"""Cutouts for the model: at a position, around regions, at catalogue rows, or the whole image.

All builders are pure functions from an `~glue_astrovlm.sources.ImageSource` (or anything
:func:`~glue_astrovlm.sources.as_image_source` accepts) to `~glue_astrovlm.cutout_types.Cutout`
objects with full provenance. Geometry and the cutout WCS come from `astropy.nddata.Cutout2D`;
pixels are then read from the source's memory map or lazy FITS section, only the rows the cutout
covers, so the parent image is never loaded whole.

Pixel positions are 0-based ``(x, y)`` with row 0 at the bottom, as in astropy and regions.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from .cubes import as_2d_source
from .cutout_types import OUTSIDE_MODES, Cutout, Provenance
from .catalogs import read_table, row_ids, table_positions
from .errors import AstroVLMError, no_wcs_error
from .limits import check_memory
from .sources import ImageSource, rgb_composite
from .stretch import Stretch, stretch_for

# rgb_composite lives with the other sources and is re-exported here, beside the cutouts it feeds
__all__ = ["cutout_at", "cutouts_from_regions", "cutout_from_mask", "cutout_of_bounds", "cutouts_from_catalog",
           "whole_image", "rgb_composite", "OUTSIDE_MODES"]

log = logging.getLogger(__name__)


def _describe_position(position) -> str:
    from astropy.coordinates import SkyCoord

    if isinstance(position, SkyCoord):
        return f"{position.to_string('decimal', precision=5)} ({position.frame.name})"
    x, y = position
    return f"x={x:.1f}, y={y:.1f}"


def _pixel_position(source: ImageSource, position) -> tuple[float, float, Any]:
    """``(x, y, center_sky)`` for a pixel pair, `regions.PixCoord` or scalar `SkyCoord`."""
    from astropy.coordinates import SkyCoord
    from regions import PixCoord

    wcs = source.celestial_wcs
    if isinstance(position, SkyCoord):
        if not position.isscalar:
            raise AstroVLMError("cutout_at takes one position; use cutouts_from_catalog for many.")
        if wcs is None:
            raise no_wcs_error(source.label, f"the sky position {_describe_position(position)}")
        x, y = wcs.world_to_pixel(position)
        return float(x), float(y), position
    if isinstance(position, PixCoord):
        if not position.isscalar:
            raise AstroVLMError("cutout_at takes one PixCoord; use cutouts_from_catalog for many.")
        x, y = position.x, position.y
    else:
        try:
            x, y = (float(v) for v in position)
        except (TypeError, ValueError):
            raise AstroVLMError(f"Position {position!r} is not understood; give (x, y) pixels, a "
                                "regions.PixCoord or an astropy SkyCoord.") from None
    sky = wcs.pixel_to_world(x, y) if wcs is not None else None
    return float(x), float(y), sky


def _check_inside(source: ImageSource, x: float, y: float, what: str, on_sky: bool) -> None:
    ny, nx = source.image_shape
    if not (np.isfinite(x) and np.isfinite(y) and -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
        pixel = f" (pixel x={x:.1f}, y={y:.1f})" if on_sky else ""
        raise AstroVLMError(f"{what}{pixel} is outside the image {source.label}, which is {nx} x {ny} "
                            f"pixels (x 0..{nx - 1}, y 0..{ny - 1}). Choose a position inside it.")


def _pixel_size(source: ImageSource, size) -> tuple[int, int]:
    """``(ny, nx)`` in pixels from an int, a pair, or angular Quantities."""
    import astropy.units as u
    from astropy.wcs.utils import proj_plane_pixel_scales

    if isinstance(size, u.Quantity) and size.isscalar:
        size = (size, size)
    elif isinstance(size, u.Quantity):
        size = tuple(size)
    elif np.isscalar(size):
        size = (size, size)
    if len(size) != 2:
        raise AstroVLMError(f"size must be one number of pixels, (ny, nx), or an angle; got {size!r}.")
    wcs = source.celestial_wcs
    shape = []
    for axis, side in enumerate(size):  # axis 0 is y
        if isinstance(side, u.Quantity):
            if side.unit == u.pix:
                pixels = side.value
            elif side.unit.physical_type == "angle":
                if wcs is None:
                    raise no_wcs_error(source.label, f"an angular size of {side}")
                scale = proj_plane_pixel_scales(wcs)[1 - axis] * u.Unit(wcs.wcs.cunit[1 - axis] or "deg")
                pixels = (side / scale).decompose().value
            else:
                raise AstroVLMError(f"size {side} must be in pixels or an angle (e.g. 2 * u.arcmin).")
        else:
            pixels = side
        try:
            pixels = int(round(float(pixels)))
        except (TypeError, ValueError):
            raise AstroVLMError(f"size {side!r} is not a number of pixels.") from None
        if pixels < 1:
            raise AstroVLMError(f"size {side} is less than one pixel; give a larger size.")
        shape.append(pixels)
    return shape[0], shape[1]


def _extract(source: ImageSource, x: float, y: float, ny: int, nx: int):
    """Pixels (NaN-filled beyond the edges), cutout WCS and parent bbox of a box centred on (x, y)."""
    from astropy.nddata import Cutout2D
    from astropy.nddata.utils import NoOverlapError

    check_memory((ny, nx), bands=3 if source.is_rgb else 1, copies=6, what=f"A {nx} x {ny} pixel cutout",
                 shrink="give a smaller --size or region, or cut from a coarser (binned) image")
    # Cutout2D computes the geometry and the cutout WCS on a zero-byte stand-in of the parent's
    # shape; the pixels are then read from the source itself, only inside the overlap.
    stand_in = np.broadcast_to(np.float32(0), source.image_shape)
    # round away numerical noise of sky -> pixel conversions, which would otherwise move an even-sized
    # box centred on a pixel centre by one pixel
    x, y = round(float(x), 6), round(float(y), 6)
    try:
        geometry = Cutout2D(stand_in, (x, y), (ny, nx), wcs=source.celestial_wcs, mode="partial",
                            fill_value=np.nan)
    except NoOverlapError:  # callers check first; kept as a user error for safety
        raise AstroVLMError(f"A {nx} x {ny} box at x={x:.1f}, y={y:.1f} does not overlap {source.label}.") \
            from None
    big_y, big_x = geometry.slices_original
    small_y, small_x = geometry.slices_cutout
    pixels = source.read((Ellipsis, big_y, big_x) if source.is_rgb else (big_y, big_x))
    data = np.full(((3,) if source.is_rgb else ()) + (ny, nx), np.nan, dtype=pixels.dtype)
    data[..., small_y, small_x] = pixels
    xmin = big_x.start - small_x.start
    ymin = big_y.start - small_y.start
    return data, geometry.wcs, (int(xmin), int(xmin + nx), int(ymin), int(ymin + ny))


def _has_finite(data: np.ndarray, mask: np.ndarray | None = None) -> bool:
    finite = np.isfinite(data)
    if data.ndim == 3:
        finite = finite.any(axis=0)
    if mask is not None:
        finite = finite & mask
    return bool(finite.any())


def _provenance(source: ImageSource, bbox, x: float, y: float, sky, source_id: str, region=None,
                extra: dict | None = None) -> Provenance:
    return Provenance(source=source.label, hdu=source.hdu, cube=source.cube, bbox=bbox,
                      center_pixel=(float(x), float(y)), center_sky=sky, source_id=str(source_id),
                      region=region, parent_wcs=source.celestial_wcs, extra=dict(extra or {}))


def cutout_at(source, position, size, *, stretch: Stretch | None = None, source_id: str | None = None,
              cube: dict | None = None) -> Cutout:
    """One cutout centred on a position.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image or RGB composite (a cube needs ``cube=``).
    position : tuple of float, `regions.PixCoord` or `~astropy.coordinates.SkyCoord`
        Centre, as 0-based ``(x, y)`` pixels or on the sky (any frame; needs a celestial WCS).
    size : int, tuple of int, or `~astropy.units.Quantity`
        Side in pixels, ``(ny, nx)`` in pixels, or an angle (e.g. ``2 * u.arcmin``, needs a WCS).
    stretch : Stretch, optional
        How values become display levels; by default zscale (contrast 0.25) and linear for data, and
        the pixels as they are for a rendered picture (`glue_astrovlm.stretch.stretch_for`).
    source_id : str, optional
        Identifier for the result; by default the position as text.
    cube : dict, optional
        For a cube: arguments of :func:`~glue_astrovlm.cubes.reduce_cube`, e.g. ``dict(mode='moment0')``.

    Returns
    -------
    Cutout
        Pixels beyond the image edge are NaN (shown as background); ``provenance.bbox`` may then
        extend beyond the parent.

    Raises
    ------
    AstroVLMError
        Sky position or angular size without a celestial WCS, position outside the image, or a
        cutout holding no finite pixel.
    """
    from astropy.coordinates import SkyCoord

    source = as_2d_source(source, cube)
    stretch = stretch_for(source, stretch)
    x, y, sky = _pixel_position(source, position)
    on_sky = isinstance(position, SkyCoord)
    where = _describe_position(position if on_sky else (x, y))
    _check_inside(source, x, y, f"Position {where}", on_sky)
    ny, nx = _pixel_size(source, size)
    data, wcs, bbox = _extract(source, x, y, ny, nx)
    if not _has_finite(data):
        raise AstroVLMError(f"The cutout at {where} of {source.label} holds only NaN/blank pixels; choose "
                            "another position or a larger size.")
    if source_id is None:
        source_id = (position.to_string("decimal", precision=5).replace(" ", ",") if on_sky
                     else f"{x:.1f},{y:.1f}")
    return Cutout(data=data, provenance=_provenance(source, bbox, x, y, sky, source_id), wcs=wcs,
                  stretch=stretch)


def _read_regions(regions) -> list:
    from regions import Region, Regions

    if isinstance(regions, (str, os.PathLike)):
        path = os.fspath(regions)
        if not os.path.exists(path):
            raise AstroVLMError(f"No such region file: {path}.")
        suffix = os.path.splitext(path)[1].lower()
        fmt = {".reg": "ds9", ".crtf": "crtf"}.get(suffix)
        try:
            return list(Regions.read(path, format=fmt))
        except Exception as exc:  # the regions parsers raise many types
            raise AstroVLMError(f"Could not read regions from {path} ({exc}); give a DS9 (.reg) or "
                                "CRTF (.crtf) region file.") from None
    if isinstance(regions, Region):
        return [regions]
    if isinstance(regions, Regions):
        return list(regions)
    regions = list(regions)
    if not all(isinstance(r, Region) for r in regions):
        raise AstroVLMError("regions must be regions shapes, a regions.Regions or a DS9/CRTF file path.")
    return regions


def _mask_in_cutout(region_mask, bbox) -> np.ndarray:
    """Boolean mask (True inside the region) on the cutout's pixel grid, from a `regions.RegionMask`."""
    xmin, xmax, ymin, ymax = bbox
    mask = np.zeros((ymax - ymin, xmax - xmin), dtype=bool)
    box = region_mask.bbox
    inside = region_mask.data > 0
    x0, y0 = box.ixmin - xmin, box.iymin - ymin
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    hy = min(inside.shape[0] - sy0, mask.shape[0] - dy0)
    hx = min(inside.shape[1] - sx0, mask.shape[1] - dx0)
    if hy > 0 and hx > 0:
        mask[dy0:dy0 + hy, dx0:dx0 + hx] = inside[sy0:sy0 + hy, sx0:sx0 + hx]
    return mask


def _region_bbox_text(box) -> str:
    return f"x {box.ixmin}..{box.ixmax - 1}, y {box.iymin}..{box.iymax - 1}"


def _pixel_shape(source: ImageSource, index: int, region):
    """The region in the source's pixels (sky regions through its WCS)."""
    from regions import PixelRegion, SkyRegion

    if isinstance(region, SkyRegion):
        if source.celestial_wcs is None:
            raise no_wcs_error(source.label, f"sky region {index} ({type(region).__name__})")
        region = region.to_pixel(source.celestial_wcs)
    if not isinstance(region, PixelRegion):
        raise AstroVLMError(f"Region {index} ({type(region).__name__}) is not a pixel or sky region.")
    return region


def _point_cutout(source: ImageSource, index: int, region, size, stretch: Stretch) -> Cutout | None:
    """A cutout of ``size`` around a region without area (a point or a line), or `None` without a size."""
    name = f"Region {index} ({type(region).__name__})"
    center = getattr(region, "center", None)
    if center is None and hasattr(region, "start"):
        center = type(region.start)((region.start.x + region.end.x) / 2, (region.start.y + region.end.y) / 2)
    if size is None or center is None:
        log.warning("%s has no area and is skipped; give a cutout size (--size) to send a box around it.", name)
        return None
    cutout = cutout_at(source, (float(center.x), float(center.y)), size, stretch=stretch, source_id=str(index))
    extra = {**cutout.provenance.extra, "region_index": index}
    if region.meta.get("text"):
        extra["text"] = region.meta["text"]
    return replace(cutout, provenance=replace(cutout.provenance, extra=extra))


def _region_cutout(source: ImageSource, index: int, region, outside: str, padding: float, stretch: Stretch,
                   point_size) -> Cutout | None:
    """The cutout of one region: its bounding box plus padding, with the region as the mask."""
    region = _pixel_shape(source, index, region)
    name = f"Region {index} ({type(region).__name__})"
    ny_img, nx_img = source.image_shape
    try:
        box = region.bounding_box
        check_memory(box.shape, copies=4, what=name, shrink="draw a smaller region")
        region_mask = region.to_mask(mode="center")
    except (NotImplementedError, ValueError, AttributeError):
        return _point_cutout(source, index, region, point_size, stretch)
    if box.ixmax <= 0 or box.iymax <= 0 or box.ixmin >= nx_img or box.iymin >= ny_img:
        raise AstroVLMError(f"{name} lies outside the image {source.label}: it spans {_region_bbox_text(box)}, "
                            f"while the image covers x 0..{nx_img - 1}, y 0..{ny_img - 1} ({nx_img} x {ny_img} "
                            "pixels). Check the region's coordinates and that it belongs to this image.")
    if region_mask.data.sum() == 0:
        return _point_cutout(source, index, region, point_size, stretch)
    pad_x = int(math.ceil(padding * (box.ixmax - box.ixmin)))
    pad_y = int(math.ceil(padding * (box.iymax - box.iymin)))
    nx = box.ixmax - box.ixmin + 2 * pad_x
    ny = box.iymax - box.iymin + 2 * pad_y
    # centre chosen so that Cutout2D's box starts exactly at (ixmin - pad_x, iymin - pad_y)
    data, cut_wcs, bbox = _extract(source, box.ixmin - pad_x + nx / 2, box.iymin - pad_y + ny / 2, ny, nx)
    mask = _mask_in_cutout(region_mask, bbox)
    if not _has_finite(data, mask):
        raise AstroVLMError(f"{name} covers only NaN/blank pixels of {source.label}; nothing to show "
                            "the model. Move the region onto valid data.")
    center = getattr(region, "center", None)
    if center is not None:
        x, y = float(center.x), float(center.y)
    else:
        x, y = (box.ixmin + box.ixmax - 1) / 2, (box.iymin + box.iymax - 1) / 2
    sky = source.celestial_wcs.pixel_to_world(x, y) if source.celestial_wcs is not None else None
    extra = {"region_index": index}
    if region.meta.get("text"):
        extra["text"] = region.meta["text"]
    provenance = _provenance(source, bbox, x, y, sky, str(index), region, extra)
    return Cutout(data=data, provenance=provenance, wcs=cut_wcs, stretch=stretch, mask=mask, outside=outside)


def cutouts_from_regions(source, regions, *, outside: str = "keep", padding: float = 0.1,
                         stretch: Stretch | None = None, cube: dict | None = None,
                         point_size=None) -> list[Cutout]:
    """One cutout per region: its bounding box plus padding, with the region as the cutout's mask.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image or RGB composite (a cube needs ``cube=``).
    regions : `regions.Region`, `regions.Regions`, sequence of regions, or path
        Pixel or sky shapes, or a DS9 (``.reg``) or CRTF (``.crtf``) file. Sky shapes need a celestial WCS.
    outside : {'keep', 'mask', 'dim'}, optional
        What the model sees outside the region: the pixels as they are, background, or dimmed to 30%.
    padding : float, optional
        Margin added on each side, as a fraction of the region's bounding-box width and height.
    stretch : Stretch, optional
        How values become display levels (by default as in `cutout_at`).
    cube : dict, optional
        For a cube: arguments of :func:`~glue_astrovlm.cubes.reduce_cube`.
    point_size : int, tuple or Quantity, optional
        Regions without area (points, lines) become cutouts of this size around their centre;
        without it they are skipped with a warning.

    Returns
    -------
    list of Cutout
        In region order; ``provenance.source_id`` is the region's index (``'0'``, ``'1'``, ...),
        ``provenance.region`` the shape in the parent's pixel frame, and ``provenance.extra`` holds
        ``region_index`` and the region's ``text`` when it has one.

    Raises
    ------
    AstroVLMError
        Sky regions without a celestial WCS, a region entirely outside the image (with the image's
        extent), a region covering only NaN pixels, or no region left to send.
    """
    if outside not in OUTSIDE_MODES:
        raise AstroVLMError(f"outside must be one of {', '.join(OUTSIDE_MODES)}, got {outside!r}.")
    if not (isinstance(padding, (int, float)) and padding >= 0):
        raise AstroVLMError(f"padding is a fraction of the region size (e.g. 0.1), got {padding!r}.")
    source = as_2d_source(source, cube)
    stretch = stretch_for(source, stretch)
    shapes = _read_regions(regions)
    if not shapes:
        raise AstroVLMError("No regions given; draw or load at least one region.")
    cutouts = [_region_cutout(source, index, region, outside, padding, stretch, point_size)
               for index, region in enumerate(shapes)]
    cutouts = [cutout for cutout in cutouts if cutout is not None]
    if not cutouts:
        raise AstroVLMError("Every region is a point or a line, which has no area to cut out; give a cutout "
                            "size (--size 64) to send a box around each.")
    return cutouts


def cutout_from_mask(source, mask, *, outside: str = "keep", padding: float = 0.1,
                     stretch: Stretch | None = None, cube: dict | None = None, source_id: str = "mask") -> Cutout:
    """The cutout of the pixels a boolean mask selects (e.g. a glue subset on pixel values).

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image or RGB composite (a cube needs ``cube=``).
    mask : numpy.ndarray
        Boolean ``(ny, nx)`` on the image's pixels (a cube's 3-D mask is collapsed over channels).
    outside, padding, stretch, cube
        As in `cutouts_from_regions`; the bounding box of the selected pixels plays the region.
    source_id : str, optional
        Identifier of the result.
    """
    from regions import PixCoord, RectanglePixelRegion

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 3:
        mask = mask.any(axis=0)
    if not mask.any():
        raise AstroVLMError(f"The selection {source_id!r} holds no pixels; draw it on the image.")
    rows, cols = np.nonzero(mask)
    box = RectanglePixelRegion(PixCoord((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2),
                               width=cols.max() - cols.min() + 1, height=rows.max() - rows.min() + 1)
    cutout = cutouts_from_regions(source, [box], padding=padding, stretch=stretch, cube=cube)[0]
    xmin, xmax, ymin, ymax = cutout.provenance.bbox
    sub_mask = np.zeros(cutout.shape, bool)
    ys, xs = slice(max(ymin, 0), min(ymax, mask.shape[0])), slice(max(xmin, 0), min(xmax, mask.shape[1]))
    sub_mask[ys.start - ymin:ys.stop - ymin, xs.start - xmin:xs.stop - xmin] = mask[ys, xs]
    provenance = replace(cutout.provenance, source_id=str(source_id))
    return replace(cutout, mask=sub_mask, outside=outside, provenance=provenance)


def cutout_of_bounds(source, bounds, *, stretch: Stretch | None = None, cube: dict | None = None,
                     source_id: str = "view") -> Cutout:
    """The part of an image inside pixel limits ``(x_min, x_max, y_min, y_max)``, e.g. what a viewer shows.

    The limits are clipped to the image; nothing visible raises `AstroVLMError`.
    """
    source = as_2d_source(source, cube)
    x_min, x_max, y_min, y_max = (float(v) for v in bounds)
    ny, nx = source.image_shape
    x0, x1 = max(x_min, -0.5), min(x_max, nx - 0.5)
    y0, y1 = max(y_min, -0.5), min(y_max, ny - 0.5)
    if x1 <= x0 or y1 <= y0:
        raise AstroVLMError(f"The area x {x_min:g}..{x_max:g}, y {y_min:g}..{y_max:g} shows no part of "
                            f"{source.label} ({nx} x {ny} pixels); zoom or pan onto the image.")
    size = (max(1, int(round(y1 - y0))), max(1, int(round(x1 - x0))))
    return cutout_at(source, ((x0 + x1) / 2, (y0 + y1) / 2), size, stretch=stretch, source_id=source_id)


def _id_list(ids: Sequence[str], limit: int = 20) -> str:
    text = ", ".join(ids[:limit])
    return text + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def cutouts_from_catalog(source, table, *, size, ra_col: str | None = None, dec_col: str | None = None,
                         x_col: str | None = None, y_col: str | None = None, id_col: str | None = None,
                         skip_outside: bool = False, stretch: Stretch | None = None,
                         cube: dict | None = None, limit: int | None = None) -> list[Cutout]:
    """One cutout per catalogue row, centred on the row's position.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image or RGB composite (a cube needs ``cube=``).
    table : `~astropy.table.Table` or path
        The catalogue, or an ECSV, FITS, VOTable or CSV file.
    size : int, tuple of int, or `~astropy.units.Quantity`
        Cutout size, as in :func:`cutout_at`.
    ra_col, dec_col : str, optional
        Sky position columns (degrees unless the column has a unit; sexagesimal strings allowed).
    x_col, y_col : str, optional
        Pixel position columns, 0-based.
    id_col : str, optional
        Identifier column; by default the first of ``id``, ``source_id``, ``name``, ``label``, else
        the row number.
    skip_outside : bool, optional
        If `False` (default), rows outside the image or over NaN-only pixels raise one error listing
        their ids. If `True`, those rows are left out of the result and a warning naming them is
        logged; compare ``provenance.source_id`` or ``provenance.extra['row']`` to see which remain.
    stretch : Stretch, optional
        How values become display levels (by default as in `cutout_at`).
    cube : dict, optional
        For a cube: arguments of :func:`~glue_astrovlm.cubes.reduce_cube`.
    limit : int, optional
        Stop after this many cutouts (for a preview of a long catalogue); rows after them are not
        read or checked for blank pixels.

    Returns
    -------
    list of Cutout
        In table order; ``provenance.extra['row']`` is the row number.

    Notes
    -----
    Without explicit columns, a `~astropy.coordinates.SkyCoord` column (e.g. ``sky_centroid``) or an
    ``ra``/``dec``, ``RAJ2000``/``DEJ2000`` or ``GLON``/``GLAT`` pair is used when the image has a
    celestial WCS; otherwise ``x``/``y``, ``xcentroid``/``ycentroid`` and similar pixel columns.
    """
    source = as_2d_source(source, cube)
    stretch = stretch_for(source, stretch)
    table = read_table(table)
    if len(table) == 0:
        raise AstroVLMError("The catalogue has no rows.")
    positions = table_positions(table, source.celestial_wcs, source.label, ra_col=ra_col, dec_col=dec_col,
                                x_col=x_col, y_col=y_col)
    x, y, sky = positions.x, positions.y, positions.sky
    ids = row_ids(table, id_col)
    inside, outside_ids = _rows_inside(source, positions, ids, skip_outside)
    ny, nx = _pixel_size(source, size)
    cutouts, blank_ids = [], []
    for row in np.flatnonzero(inside):
        if limit is not None and len(cutouts) >= limit:
            break
        data, wcs, bbox = _extract(source, x[row], y[row], ny, nx)
        if not _has_finite(data):
            blank_ids.append(ids[row])
            continue
        row_sky = sky[row] if sky is not None else None
        provenance = _provenance(source, bbox, x[row], y[row], row_sky, ids[row], extra={"row": int(row)})
        cutouts.append(Cutout(data=data, provenance=provenance, wcs=wcs, stretch=stretch))
    _report_skipped(source, outside_ids, blank_ids, skip_outside, found=len(cutouts))
    return cutouts


def _rows_inside(source: ImageSource, positions, ids, skip_outside: bool):
    """Which rows fall on the image, and the ids of those that do not (an error unless skipped)."""
    ny_img, nx_img = source.image_shape
    x, y = positions.x, positions.y
    with np.errstate(invalid="ignore"):
        inside = (x >= -0.5) & (x < nx_img - 0.5) & (y >= -0.5) & (y < ny_img - 0.5)  # NaN is outside
    outside_ids = [ids[i] for i in np.flatnonzero(~inside)]
    if outside_ids and not skip_outside:
        raise AstroVLMError(f"{len(outside_ids)} catalogue rows ({positions.columns}) lie outside the image "
                            f"{source.label} ({nx_img} x {ny_img} pixels): ids {_id_list(outside_ids)}. Pass "
                            "skip_outside=True (--skip-outside) to leave them out, or use a catalogue for this "
                            "field.")
    return inside, outside_ids


def _report_skipped(source: ImageSource, outside_ids, blank_ids, skip_outside: bool, found: int) -> None:
    if blank_ids and not skip_outside:
        raise AstroVLMError(f"{len(blank_ids)} catalogue rows fall on NaN-only pixels of {source.label}: ids "
                            f"{_id_list(blank_ids)}. Pass skip_outside=True (--skip-outside) to leave them out.")
    skipped = outside_ids + blank_ids
    if skipped:
        log.warning("Skipped %d catalogue rows outside %s or on blank pixels: %s", len(skipped), source.label,
                    _id_list(skipped))
    if not found:
        raise AstroVLMError(f"No catalogue row lies on valid pixels of {source.label}; check that the "
                            "catalogue and the image cover the same field.")


def _block_mean(source: ImageSource, factor: int) -> np.ndarray:
    """NaN-ignoring mean over ``factor x factor`` blocks, read a strip of rows at a time."""
    ny, nx = source.image_shape
    bands = 3 if source.is_rgb else 1
    oy, ox = -(-ny // factor), -(-nx // factor)
    out = np.empty((bands, oy, ox), dtype=np.float32)
    block_rows = max(1, 8_000_000 // (factor * factor * ox))
    for start in range(0, oy, block_rows):
        stop = min(oy, start + block_rows)
        y0, y1 = start * factor, min(ny, stop * factor)
        rows = source.read((Ellipsis, slice(y0, y1), slice(None)))
        rows = rows.reshape(bands, y1 - y0, nx)
        padded = np.full((bands, (stop - start) * factor, ox * factor), np.nan, dtype=np.float32)
        padded[:, : y1 - y0, :nx] = rows
        blocks = padded.reshape(bands, stop - start, factor, ox, factor)
        finite = np.isfinite(blocks)
        count = finite.sum(axis=(2, 4))
        total = np.where(finite, blocks, 0).sum(axis=(2, 4), dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, start:stop] = np.where(count > 0, total / count, np.nan)
    return out if source.is_rgb else out[0]


def _block_wcs(wcs, factor: int, shape: tuple[int, int]):
    """The WCS of an image block-averaged by ``factor`` (at block centres), or None if it cannot be made.

    The linear part is rescaled; distortions (SIP, lookup tables, wcslib's TPD translation of DSS
    plate solutions) are not, so the result is checked against the parent and dropped when it
    disagrees by more than a tenth of a block. Provenance always keeps the parent's WCS.
    """
    if wcs is None or wcs.sip is not None:
        return None
    blocked = wcs.deepcopy()
    # 1-based FITS pixel p of the parent lies at (p - 0.5) / factor + 0.5 in the blocked image
    blocked.wcs.crpix = (wcs.wcs.crpix - 0.5) / factor + 0.5
    if wcs.wcs.has_cd():
        blocked.wcs.cd = wcs.wcs.cd * factor
    else:
        blocked.wcs.cdelt = wcs.wcs.cdelt * factor
    oy, ox = -(-shape[0] // factor), -(-shape[1] // factor)
    blocked.array_shape = (oy, ox)
    blocked.wcs.set()
    x = np.array([0, ox - 1, 0, ox - 1, ox // 2], dtype=float)
    y = np.array([0, 0, oy - 1, oy - 1, oy // 2], dtype=float)
    centres = (x * factor + (factor - 1) / 2, y * factor + (factor - 1) / 2)
    try:
        px, py = blocked.world_to_pixel(wcs.pixel_to_world(*centres))
    except Exception:
        return None
    return blocked if np.all(np.hypot(px - x, py - y) < 0.1) else None


def whole_image(source, *, max_size: int = 2048, stretch: Stretch | None = None,
                cube: dict | None = None) -> Cutout:
    """The whole image as one cutout, block-averaged when it is larger than ``max_size``.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image or RGB composite (a cube needs ``cube=``).
    max_size : int, optional
        Largest side in pixels sent on; bigger images are averaged over ``f x f`` blocks (NaN
        ignored) with the smallest integer ``f`` that fits. Default 2048.
    stretch : Stretch, optional
        How values become display levels (by default as in `cutout_at`).
    cube : dict, optional
        For a cube: arguments of :func:`~glue_astrovlm.cubes.reduce_cube`.

    Returns
    -------
    Cutout
        ``provenance.source_id`` is ``'image'``, ``provenance.bbox`` the full image, and
        ``provenance.extra['downsample']`` the block factor ``f`` (1 when not reduced). The cutout's
        WCS follows the blocks when the parent's WCS can be resampled.
    """
    if int(max_size) < 1:
        raise AstroVLMError(f"max_size must be at least 1 pixel, got {max_size}.")
    source = as_2d_source(source, cube)
    stretch = stretch_for(source, stretch)
    ny, nx = source.image_shape
    factor = max(1, -(-max(ny, nx) // int(max_size)))
    check_memory((ny if factor == 1 else min(ny, factor), nx), bands=3 if source.is_rgb else 1, copies=6,
                 what=f"The whole image {source.label} ({nx} x {ny} pixels)",
                 shrink="send cutouts or regions of it instead, or a coarser (binned) image")
    wcs = source.celestial_wcs
    if factor == 1:
        data = source.read()
    else:
        data = _block_mean(source, factor)
        wcs = _block_wcs(wcs, factor, (ny, nx))
    if not _has_finite(data):
        raise AstroVLMError(f"{source.label} holds only NaN/blank pixels; nothing to show the model.")
    x, y = (nx - 1) / 2, (ny - 1) / 2
    sky = source.celestial_wcs.pixel_to_world(x, y) if source.celestial_wcs is not None else None
    provenance = _provenance(source, (0, nx, 0, ny), x, y, sky, "image", extra={"downsample": factor})
    return Cutout(data=data, provenance=provenance, wcs=wcs, stretch=stretch)
