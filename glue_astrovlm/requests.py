"""What to send to a model: the engine `Request` that every front end fills, and `make_cutouts`.

The command line's options, the glue panel's choices, jdaviz's traitlets and the scripting objects
all end in one `Request`: which image, what part of it (``send``), how a cube becomes an image, the
stretch, the cutout size, the task and its labels or question, and the model. `make_cutouts` is the
one place that turns a request into cutouts, so a new way of choosing what to send is added here
(one branch) and in each front end (one line that fills the request).

The image is an engine source (`~glue_astrovlm.ImageSource`, a path, NDData or an array); glue and
jdaviz data become one through `glue_astrovlm.glue_bridge.sources.image_source_from_data`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .cutout_types import OUTSIDE_MODES, Cutout
from .detect import DETECT_MAX_PIXELS
from .errors import AstroVLMError
from .stretch import Stretch, stretch_for

__all__ = ["SEND_MODES", "TASKS", "DEFAULT_SIZE", "Detection", "Request", "CutoutSet", "make_cutouts"]

log = logging.getLogger("glue_astrovlm")

#: What a request can send, and what each needs:
#: ``image`` (the whole image), ``position`` (``position``), ``regions`` (``regions``), ``mask``
#: (``mask``: the pixels a boolean mask selects), ``view`` (``bounds``: the pixel limits a viewer
#: shows), ``catalog`` (``catalog``: one cutout per row) and ``detect`` (one per detected source).
SEND_MODES = ("image", "position", "regions", "mask", "view", "catalog", "detect")
#: What the model is asked to do.
TASKS = ("classify", "ask", "describe")
#: Side in pixels of catalogue, detection and position cutouts when the request gives no size.
DEFAULT_SIZE = 128

_NEEDS = {"position": "position", "regions": "regions", "mask": "mask", "view": "bounds", "catalog": "catalog"}


@dataclass(frozen=True)
class Detection:
    """How sources are found for ``send='detect'`` (see `glue_astrovlm.detect_sources`).

    Parameters
    ----------
    nsigma : float
        Threshold in units of the background RMS.
    max_sources : int
        At most this many sources, the brightest first.
    npixels : int
        Minimum number of connected pixels above the threshold.
    fwhm : float
        FWHM in pixels of the smoothing kernel.
    within : tuple of float, optional
        Keep only sources inside ``(x_min, x_max, y_min, y_max)`` pixels (e.g. a viewer's view).
    max_pixels : int
        Larger images are detected on a block-averaged map (positions stay full-resolution pixels),
        so that detection runs in bounded memory.
    """

    nsigma: float = 5.0
    max_sources: int = 500
    npixels: int = 10
    fwhm: float = 3.0
    within: tuple | None = None
    max_pixels: int = DETECT_MAX_PIXELS


@dataclass(frozen=True)
class Request:
    """Everything a run needs to know, from any front end. See `SEND_MODES` for what ``send`` needs.

    Parameters
    ----------
    image : ImageSource, path, NDData or array
        The image, RGB composite or cube to cut from.
    send : str
        What part of it to send (`SEND_MODES`).
    position : tuple of float, `regions.PixCoord` or `~astropy.coordinates.SkyCoord`
        For ``send='position'``.
    regions : region, `regions.Regions`, sequence of regions or path
        For ``send='regions'``.
    mask : numpy.ndarray
        For ``send='mask'``: a boolean image.
    bounds : tuple of float
        For ``send='view'``: ``(x_min, x_max, y_min, y_max)`` in the image's pixels.
    catalog : `~astropy.table.Table` or path
        For ``send='catalog'``.
    columns : dict
        Catalogue columns to use instead of the shared vocabulary: ``ra``, ``dec``, ``x``, ``y``, ``id``.
    detection : Detection
        For ``send='detect'``.
    size : int, tuple or `~astropy.units.Quantity`
        Cutout size for positions, catalogue rows, detections and region points.
    outside : {'keep', 'mask', 'dim'}
        What the model sees outside a region or mask.
    padding : float
        Margin around a region or mask, as a fraction of its size.
    skip_outside : bool
        Leave out catalogue rows outside the image or on blank pixels (with a warning) instead of failing.
    limit : int, optional
        At most this many cutouts (a preview needs one).
    max_size : int
        Largest side sent for ``send='image'``; bigger images are block-averaged.
    cube : dict, optional
        How a cube becomes an image: arguments of `glue_astrovlm.reduce_cube`.
    stretch : Stretch, optional
        How values become the model's display levels; by default `DEFAULT_STRETCH` for data and the
        pixels as they are for a rendered picture (`glue_astrovlm.stretch.stretch_for`).
    task : {'classify', 'ask', 'describe'}
    labels, preset, question
        The label set (or preset name) and question of ``classify``; the question of ``ask``; the
        instruction of ``describe`` (default: its built-in caption request).
    follow_ups : tuple of str
        Further questions of ``ask``: each cutout gets one conversation (`glue_astrovlm.Conversation`)
        of ``question`` and these, and every turn is a result.
    max_new_tokens : int
        Answer length of ``ask`` and ``describe``.
    model, adapter : str, optional
        Model and LoRA adapter to use; `None` keeps the session's.
    source_id : str, optional
        Identifier of the result of a single cutout (a subset's name, ``'view'``).
    extra : dict
        Added to every cutout's ``provenance.extra`` (what a front end needs back with the result).
    """

    image: Any = None
    send: str = "image"
    position: Any = None
    regions: Any = None
    mask: Any = None
    bounds: tuple | None = None
    catalog: Any = None
    columns: Mapping = field(default_factory=dict)
    detection: Detection = field(default_factory=Detection)
    size: Any = DEFAULT_SIZE
    outside: str = "keep"
    padding: float = 0.1
    skip_outside: bool = False
    limit: int | None = None
    max_size: int = 2048
    cube: Mapping | None = None
    stretch: Stretch | None = None
    task: str = "classify"
    labels: Any = None
    preset: str | None = None
    question: str | None = None
    follow_ups: tuple = ()
    max_new_tokens: int = 128
    model: str | None = None
    adapter: str | None = None
    source_id: str | None = None
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.send not in SEND_MODES:
            raise AstroVLMError(f"Unknown send {self.send!r}; use one of {', '.join(SEND_MODES)}.")
        if self.task not in TASKS:
            raise AstroVLMError(f"Unknown task {self.task!r}; use one of {', '.join(TASKS)}.")
        if self.outside not in OUTSIDE_MODES:
            raise AstroVLMError(f"outside must be one of {', '.join(OUTSIDE_MODES)}, got {self.outside!r}.")
        if self.stretch is not None and not isinstance(self.stretch, Stretch):
            raise AstroVLMError(f"stretch must be a glue_astrovlm.Stretch, got {type(self.stretch).__name__}.")
        needed = _NEEDS.get(self.send)
        if needed is not None and getattr(self, needed) is None:
            raise AstroVLMError(f"send={self.send!r} needs {needed}=...")
        if self.limit is not None and int(self.limit) < 1:
            raise AstroVLMError(f"limit must be at least 1, got {self.limit!r}.")
        unknown = set(self.columns) - {"ra", "dec", "x", "y", "id"}
        if unknown:
            raise AstroVLMError(f"Unknown catalogue column roles {sorted(unknown)}; use ra, dec, x, y and id.")

    def replace(self, **changes) -> "Request":
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass(frozen=True)
class CutoutSet:
    """The cutouts of a request, and the table of sources they came from (catalogue or detections).

    ``provenance.extra['row']`` of each cutout is its row in ``table``.
    """

    cutouts: list[Cutout]
    table: Any = None

    def __len__(self) -> int:
        return len(self.cutouts)


def _with_extra(cutouts: list[Cutout], request: Request) -> list[Cutout]:
    if not request.extra and request.source_id is None:
        return cutouts
    out = []
    for cutout in cutouts:
        provenance = replace(cutout.provenance, extra={**cutout.provenance.extra, **request.extra})
        if request.source_id is not None:
            provenance = replace(provenance, source_id=str(request.source_id))
        out.append(replace(cutout, provenance=provenance))
    return out


def _detections(source, detection: Detection):
    """Detected sources, brightest first, only those ``within`` the given limits when set."""
    from .detect import detect_sources

    limit = 10_000 if detection.within is not None else detection.max_sources
    table = detect_sources(source, nsigma=detection.nsigma, npixels=detection.npixels, fwhm=detection.fwhm,
                           max_sources=limit, max_pixels=detection.max_pixels)
    if detection.within is not None:
        x_min, x_max, y_min, y_max = detection.within
        inside = ((table["xcentroid"] >= x_min) & (table["xcentroid"] <= x_max)
                  & (table["ycentroid"] >= y_min) & (table["ycentroid"] <= y_max))
        table = table[inside]
        if len(table) == 0:
            raise AstroVLMError(f"No source above {detection.nsigma:g} sigma lies in the area searched of "
                                f"{source.label}; zoom out, pan, or lower the threshold.")
        table = table[: int(detection.max_sources)]
    keep = [name for name in ("id", "xcentroid", "ycentroid", "ra", "dec") if name in table.colnames]
    table = table[keep]
    table["id"] = [str(v) for v in table["id"]]
    blocks = int(table.meta.get("downsample", 1) or 1)
    log.info("Detected %d sources on %s%s", len(table), source.label,
             f" on a map averaged over {blocks} x {blocks} pixel blocks (positions are full-resolution pixels)"
             if blocks > 1 else "")
    return table


def _catalog_cutouts(source, table, request: Request) -> list[Cutout]:
    from .cutouts import cutouts_from_catalog

    columns = request.columns
    if request.send == "detect":  # detections are measured in pixels; their RA/Dec come from those
        columns = {"x": "xcentroid", "y": "ycentroid", "id": "id"}
    return cutouts_from_catalog(source, table, size=request.size, ra_col=columns.get("ra"),
                                dec_col=columns.get("dec"), x_col=columns.get("x"), y_col=columns.get("y"),
                                id_col=columns.get("id"), skip_outside=request.skip_outside,
                                stretch=request.stretch, limit=request.limit)


def make_cutouts(request: Request) -> CutoutSet:
    """The cutouts a request sends, in order, each with full provenance.

    Raises
    ------
    AstroVLMError
        Whatever keeps the request from being cut out (no WCS for sky positions, a region outside the
        image, blank pixels, a cube without ``cube=``, ...), with a message that says what to do.
    """
    from . import cutouts as cut
    from .catalogs import read_table
    from .cubes import as_2d_source

    if request.image is None:
        raise AstroVLMError("The request names no image; load an image or give a file.")
    source = as_2d_source(request.image, dict(request.cube) if request.cube is not None else None)
    request = request.replace(stretch=stretch_for(source, request.stretch))
    send, table = request.send, None
    if send == "image":
        cutouts = [cut.whole_image(source, max_size=request.max_size, stretch=request.stretch)]
    elif send == "position":
        cutouts = [cut.cutout_at(source, request.position, request.size, stretch=request.stretch)]
    elif send == "regions":
        cutouts = cut.cutouts_from_regions(source, request.regions, outside=request.outside,
                                           padding=request.padding, stretch=request.stretch,
                                           point_size=request.size)
    elif send == "mask":
        cutouts = [cut.cutout_from_mask(source, request.mask, outside=request.outside, padding=request.padding,
                                        stretch=request.stretch)]
    elif send == "view":
        cutouts = [cut.cutout_of_bounds(source, request.bounds, stretch=request.stretch)]
    else:  # catalog or detect
        table = read_table(request.catalog) if send == "catalog" else _detections(source, request.detection)
        cutouts = _catalog_cutouts(source, table, request)
    if request.limit is not None:
        cutouts = cutouts[: int(request.limit)]
    return CutoutSet(_with_extra(cutouts, request), table)
