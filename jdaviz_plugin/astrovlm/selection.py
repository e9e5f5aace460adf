"""From the AstroVLM plugin's choices in a jdaviz app to the engine's `~glue_astrovlm.requests.Request`.

Everything here is a thin lookup in jdaviz (which viewer, which subset, which channel is shown)
followed by one call into the glue bridge's request builders; cutting, reducing and detecting happen
when the request runs, in the engine.
"""

from __future__ import annotations

from glue_astrovlm.cubes import CUBE_MODES as ENGINE_CUBE_MODES
from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.glue_bridge.selections import catalog_request, detect_request, subset_request, view_request
from glue_astrovlm.glue_bridge.sources import image_source_from_data
from glue_astrovlm.glue_bridge.views import displayed_slice, view_bounds
from glue_astrovlm.requests import Request

__all__ = ["CUBE_MODES", "SEND_VIEW", "SEND_SUBSET", "TAG_CATALOG", "TAG_FILE", "TAG_DETECT",
           "is_range_subset", "cube_options", "spectral_range", "view_request_of", "subset_request_of",
           "tag_request"]

#: Cube choices shown in the plugin and the engine's `reduce_cube` mode behind each (one per engine mode).
CUBE_MODES = dict(zip(("Displayed slice", "Sum", "Mean", "Moment 0"), ENGINE_CUBE_MODES))
SEND_VIEW, SEND_SUBSET = "Viewer area", "Spatial subset"
TAG_CATALOG, TAG_FILE, TAG_DETECT = "Catalogue in jdaviz", "Table file", "Detected in view"
ENTIRE_SPECTRUM = "Entire Spectrum"


def is_range_subset(subset) -> bool:
    """`True` for a range subset, i.e. a spectral range in Cubeviz.

    jdaviz 5.0.2's own ``is_spectral`` filter calls ranges on cubes whose spectral axis is not
    ``WAVE`` (velocity cubes such as L1448's ``VOPT``) 'temporal', so ranges are recognised here by
    their subset state.
    """
    from glue.core.subset import RangeSubsetState

    state = getattr(subset, "subset_state", None)
    while hasattr(state, "state1"):
        state = state.state1
    return isinstance(state, RangeSubsetState)


def spectral_range(viz, subset_label: str | None):
    """``(lower, upper)`` Quantities of a spectral subset, or `None` for the entire spectrum."""
    if not subset_label or subset_label == ENTIRE_SPECTRUM:
        return None
    regions = viz.plugins["Subset Tools"].get_regions(list_of_subset_labels=[subset_label])
    region = regions.get(subset_label)
    if region is None or not hasattr(region, "lower"):
        raise AstroVLMError(f"{subset_label!r} is not a spectral subset; choose a spectral range drawn on the "
                            "spectrum viewer, or 'Entire Spectrum'.")
    return region.lower, region.upper


def _viewer_showing_cube(viz, data, preferred=None):
    candidates = ([preferred] if preferred is not None else []) + list(viz._app._viewer_store.values())
    for viewer in candidates:
        state = getattr(viewer, "state", None)
        if state is not None and getattr(state, "reference_data", None) is data:
            return viewer
    return None


def cube_options(viz, data, mode: str, *, viewer=None, spectral_subset: str | None = None) -> dict | None:
    """The engine's ``cube=`` dict for ``data`` (`None` for a 2-D image).

    ``'Displayed slice'`` reads the channel an image viewer shows (``viewer`` first, else any viewer
    with the cube as reference data); the other modes collapse ``spectral_subset`` (all channels by
    default).
    """
    if data.ndim != 3:
        return None
    if mode not in CUBE_MODES:
        raise AstroVLMError(f"Unknown cube option {mode!r}; use one of {', '.join(CUBE_MODES)}.")
    if CUBE_MODES[mode] == "slice":
        shown = _viewer_showing_cube(viz, data, viewer)
        if shown is None:
            raise AstroVLMError(f"No viewer shows {data.label}, so there is no displayed slice; show the cube "
                                "in an image viewer, or choose Sum or Moment 0.")
        return {"mode": "slice", "index": displayed_slice(shown.state, data)}
    return {"mode": CUBE_MODES[mode], "spectral_range": spectral_range(viz, spectral_subset)}


def view_request_of(data, viewer, **options) -> Request:
    """The request for what ``viewer`` shows of ``data``."""
    if viewer is None:
        raise AstroVLMError("Choose an image viewer to send its visible area.")
    return view_request(data, view_bounds(viewer.state, data), **options)


def subset_request_of(app, data, subset_label: str, **options) -> Request:
    """The request for a spatial subset of ``data``."""
    if not subset_label:
        raise AstroVLMError("There is no spatial subset: draw one on the image (or import a region) first.")
    group = next((g for g in app.data_collection.subset_groups if g.label == subset_label), None)
    if group is None:
        raise AstroVLMError(f"No subset named {subset_label!r}.")
    subset = next((s for s in group.subsets if s.data is data), None)
    if subset is None:
        raise AstroVLMError(f"Subset {subset_label!r} is not defined on {data.label}.")
    return subset_request(subset, **options)


def tag_request(app, data, source: str, *, catalog: str | None = None, table_file: str | None = None,
                viewer=None, nsigma: float = 5.0, max_sources: int = 50, **options) -> tuple[Request, object]:
    """The request for the sources to tag, and the glue catalogue dataset behind them (or `None`).

    Parameters
    ----------
    source : {'Catalogue in jdaviz', 'Table file', 'Detected in view'}
        Where the positions come from.
    catalog : str
        Label of a catalogue dataset in the app (e.g. loaded with ``format='Catalog'`` or the Catalog
        Search results), for ``'Catalogue in jdaviz'``.
    table_file : str
        Path of an ECSV, FITS, VOTable or CSV table with RA/Dec or x/y columns, for ``'Table file'``.
    viewer : jdaviz viewer, optional
        For ``'Detected in view'``: only sources in its visible area are kept (whole image without).
    options
        Further `Request` fields: ``size``, ``cube``, ``stretch``, ``limit`` (a thumbnail needs one), ...
    """
    if source == TAG_CATALOG:
        if not catalog:
            raise AstroVLMError("No catalogue is loaded: load one (format='Catalog'), run Catalog Search, or "
                                "choose 'Table file' or 'Detected in view'.")
        catalog_data = app.data_collection[catalog]
        return catalog_request(data, catalog_data, **options), catalog_data
    if source == TAG_FILE:
        if not table_file:
            raise AstroVLMError("Give the path of a table file (ECSV, FITS, VOTable or CSV) with RA/Dec or x/y.")
        return Request(image=image_source_from_data(data), send="catalog", catalog=str(table_file),
                       skip_outside=True, extra={"glue_data": data.label}, **options), None
    if source == TAG_DETECT:
        within = None
        if viewer is not None and any(layer.layer is data for layer in viewer.layers):
            within = view_bounds(viewer.state, data)
        return detect_request(data, nsigma=nsigma, max_sources=max_sources, within=within, **options), None
    raise AstroVLMError(f"Unknown source list {source!r}; use {TAG_CATALOG!r}, {TAG_FILE!r} or {TAG_DETECT!r}.")
