"""From what is selected in glue (a subset, a viewer's view, a catalogue dataset, detected sources)
to the engine's `~glue_astrovlm.requests.Request`.

These functions only read glue's state, so front ends call them on the GUI thread; the pixel work
happens later, when the request runs (`glue_astrovlm.requests.make_cutouts`, on any thread). The glue
image becomes an engine source that reads only the cutouts' pixels.
"""

from __future__ import annotations

from ..errors import AstroVLMError
from ..requests import Detection, Request
from .catalogs import catalog_table_from_data
from .regions import subset_to_region
from .sources import image_source_from_data

__all__ = ["subset_request", "view_request", "catalog_request", "detect_request"]


def subset_request(subset, *, attribute=None, **options) -> Request:
    """A request for the cutout of a spatial subset.

    Subsets that are shapes (rectangles, circles, polygons, ...) go through glue-astronomy's translator
    and become a region; any other subset (e.g. a threshold on pixel values) is sent by its mask.
    ``options`` are further `Request` fields (``cube``, ``stretch``, ``outside``, ``task``, ...).
    """
    data = subset.data
    mask = subset.to_mask()
    if mask.ndim == 3:
        mask = mask.any(axis=0)
    if not mask.any():
        raise AstroVLMError(f"Subset {subset.label!r} selects no pixels of {data.label}; draw it on the image.")
    region = subset_to_region(subset)
    common = dict(image=image_source_from_data(data, attribute), source_id=str(subset.label),
                  extra={"glue_data": data.label, "glue_subset": subset.label})
    if region is not None and hasattr(region, "to_mask"):
        return Request(send="regions", regions=[region], **common, **options)
    return Request(send="mask", mask=mask, **common, **options)


def view_request(data, bounds, *, attribute=None, **options) -> Request:
    """A request for what an image viewer shows of ``data``: ``bounds = (x_min, x_max, y_min, y_max)``
    in its pixels (see `glue_astrovlm.glue_bridge.views.view_bounds`)."""
    return Request(image=image_source_from_data(data, attribute), send="view", bounds=tuple(bounds),
                   source_id="view", extra={"glue_data": data.label}, **options)


def catalog_request(image_data, catalog, *, attribute=None, **options) -> Request:
    """A request for one cutout per source of a glue catalogue dataset that falls on ``image_data``
    (sources outside it are left out); each result keeps its catalogue row (``provenance.extra['row']``)."""
    return Request(image=image_source_from_data(image_data, attribute), send="catalog",
                   catalog=catalog_table_from_data(catalog), skip_outside=True,
                   extra={"glue_data": image_data.label, "glue_catalog": catalog.label}, **options)


def detect_request(image_data, *, nsigma: float = 5.0, max_sources: int = 200, within=None, attribute=None,
                   **options) -> Request:
    """A request for one cutout per source detected on ``image_data`` (only inside ``within``, pixel
    limits ``(x_min, x_max, y_min, y_max)``, when given)."""
    detection = Detection(nsigma=float(nsigma), max_sources=int(max_sources),
                          within=tuple(within) if within is not None else None)
    return Request(image=image_source_from_data(image_data, attribute), send="detect", detection=detection,
                   extra={"glue_data": image_data.label}, **options)
