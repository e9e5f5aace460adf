"""Cutouts from glue data: a subset, the visible area of a viewer, or each source of a catalogue."""

from __future__ import annotations

import numpy as np

from ..cutout_types import Cutout
from ..errors import AstroVLMError
from ..stretch import DEFAULT_STRETCH, Stretch

__all__ = ["image_source_from_data", "cutout_from_subset", "cutout_from_view", "catalog_table",
           "cutouts_from_catalog_data", "find_image_data"]


def _attribute(data, attribute=None):
    if attribute is None:
        if not data.main_components:
            raise AstroVLMError(f"{data.label} has no data components to send to a model.")
        return data.main_components[0]
    if isinstance(attribute, str):
        try:
            return data.id[attribute]
        except Exception:
            names = ", ".join(c.label for c in data.main_components)
            raise AstroVLMError(f"{data.label} has no component {attribute!r}; choose one of {names}.") from None
    return attribute


def image_source_from_data(data, attribute=None, *, cube: dict | None = None):
    """An engine `~glue_astrovlm.ImageSource` from a glue image or cube dataset.

    Parameters
    ----------
    data : glue.core.data.Data
        2-D image or 3-D cube (numpy order: spectral, y, x).
    attribute : str or ComponentID, optional
        Which component; defaults to the first main component.
    cube : dict, optional
        For cubes: ``dict(mode='slice', index=12)``, ``dict(mode='sum'|'mean'|'moment0',
        spectral_range=(a, b))``; see `glue_astrovlm.reduce_cube`.
    """
    from astropy.wcs import WCS

    from ..cubes import reduce_cube
    from ..sources import from_array

    if data.ndim not in (2, 3):
        raise AstroVLMError(f"{data.label} has {data.ndim} dimension(s); the model needs an image or a cube.")
    component = _attribute(data, attribute)
    values = np.asarray(data.get_component(component).data, dtype=float)
    wcs = data.coords if isinstance(data.coords, WCS) else None
    units = getattr(data.get_component(component), "units", None) or None
    source = from_array(values, wcs=wcs, label=data.label, unit=units)
    if data.ndim == 3:
        if cube is None:
            raise AstroVLMError(f"{data.label} is a cube: choose a slice, a spectral range sum/mean or moment 0.")
        source = reduce_cube(source, **cube)
    elif cube is not None:
        raise AstroVLMError(f"{data.label} is a 2-D image; cube options do not apply.")
    return source


def find_image_data(subset_or_data):
    """The glue Data behind a subset (or the data itself)."""
    return getattr(subset_or_data, "data", subset_or_data)


def cutout_from_subset(subset, *, attribute=None, cube: dict | None = None, outside: str = "keep",
                       padding: float = 0.1, stretch: Stretch = DEFAULT_STRETCH) -> Cutout:
    """The cutout of a spatial subset: its shape's bounding box, optionally masked or dimmed outside it.

    Subsets that are regions (rectangles, circles, polygons, ...) go through glue-astronomy's
    translator and `glue_astrovlm.cutouts_from_regions`; any other subset (e.g. a threshold on pixel
    values) uses its mask.
    """
    from ..cutouts import cutouts_from_regions
    from .regions import subset_to_region

    data = subset.data
    source = image_source_from_data(data, attribute, cube=cube)
    mask = subset.to_mask()
    if mask.ndim == 3:
        mask = mask.any(axis=0)
    if not mask.any():
        raise AstroVLMError(f"Subset {subset.label!r} selects no pixels of {data.label}; draw it on the image.")
    region = subset_to_region(subset)
    extra = {"glue_data": data.label, "glue_subset": subset.label}
    if region is not None and hasattr(region, "to_mask"):
        cutout = cutouts_from_regions(source, [region], outside=outside, padding=padding, stretch=stretch)[0]
    else:
        rows, cols = np.nonzero(mask)
        from regions import PixCoord, RectanglePixelRegion

        box = RectanglePixelRegion(PixCoord((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2),
                                   width=cols.max() - cols.min() + 1, height=rows.max() - rows.min() + 1)
        cutout = cutouts_from_regions(source, [box], outside="keep", padding=padding, stretch=stretch)[0]
        xmin, xmax, ymin, ymax = cutout.provenance.bbox
        sub_mask = np.zeros(cutout.shape, bool)
        ys, xs = slice(max(ymin, 0), min(ymax, mask.shape[0])), slice(max(xmin, 0), min(xmax, mask.shape[1]))
        sub_mask[ys.start - ymin:ys.stop - ymin, xs.start - xmin:xs.stop - xmin] = mask[ys, xs]
        from dataclasses import replace

        cutout = replace(cutout, mask=sub_mask, outside=outside)
    from dataclasses import replace

    provenance = replace(cutout.provenance, source_id=str(subset.label), extra={**cutout.provenance.extra, **extra})
    return replace(cutout, provenance=provenance)


def cutout_from_view(data, x_min: float, x_max: float, y_min: float, y_max: float, *, attribute=None,
                     cube: dict | None = None, stretch: Stretch = DEFAULT_STRETCH) -> Cutout:
    """The part of ``data`` visible in an image viewer with the given pixel limits ("current cutout")."""
    from dataclasses import replace

    from ..cutouts import cutout_at

    source = image_source_from_data(data, attribute, cube=cube)
    ny, nx = source.image_shape
    x0, x1 = max(float(x_min), -0.5), min(float(x_max), nx - 0.5)
    y0, y1 = max(float(y_min), -0.5), min(float(y_max), ny - 0.5)
    if x1 <= x0 or y1 <= y0:
        raise AstroVLMError(f"The viewer shows no part of {data.label}; zoom or pan onto the image.")
    size = (max(1, int(round(y1 - y0))), max(1, int(round(x1 - x0))))
    cutout = cutout_at(source, ((x0 + x1) / 2, (y0 + y1) / 2), size, stretch=stretch, source_id="view")
    provenance = replace(cutout.provenance, extra={**cutout.provenance.extra, "glue_data": data.label})
    return replace(cutout, provenance=provenance)


def catalog_table(catalog):
    """An astropy Table (with an ``_row`` column of glue row indices) from a glue catalogue dataset.

    The same reader as jdaviz's source lists: `.catalogs.catalog_table_from_data`.
    """
    from .catalogs import catalog_table_from_data

    return catalog_table_from_data(catalog)


def cutouts_from_catalog_data(image_data, catalog, *, size=64, attribute=None, cube: dict | None = None,
                              stretch: Stretch = DEFAULT_STRETCH, limit: int | None = None) -> list[Cutout]:
    """One cutout per catalogue source that falls on ``image_data`` (others are skipped); each keeps
    its catalogue row index.

    ``limit`` stops after that many cutouts (the panel's thumbnail needs only the first).
    """
    from .catalogs import cutouts_from_table

    out = cutouts_from_table(image_data, catalog_table(catalog), size=size, attribute=attribute, cube=cube,
                             stretch=stretch, extra={"glue_catalog": catalog.label}, limit=limit)
    if not out:
        raise AstroVLMError(f"No source of {catalog.label} falls on {image_data.label}.")
    return out
