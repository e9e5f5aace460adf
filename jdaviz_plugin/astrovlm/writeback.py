"""Writing AstroVLM results into a jdaviz app: subsets and coloured markers, and removing them again.

- **Subsets** go through the Subset Tools plugin's ``import_region``, either one subset per class
  (the union of its sources' boxes) or one per source. jdaviz allows only letters, digits and spaces
  in subset labels, so a class such as ``"edge-on disk"`` becomes ``"AstroVLM edge on disk"``; the
  full class name is kept in the image dataset's ``meta['astrovlm_subsets']`` and in the results.
- **Markers** go to every image viewer that shows the image and supports ``add_markers`` (Imviz
  and the deconfigged App; Cubeviz's cube viewers do not), one marker layer per class, coloured with
  the class colour of `glue_astrovlm.results.class_colors`.
- Only what these functions wrote is ever removed: the user's own subsets are never touched.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Sequence

from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.results import Result, class_colors, pixel_region

__all__ = ["SUBSET_PREFIX", "MARKER_PREFIX", "META_KEY", "safe_subset_label", "write_subsets",
           "write_markers", "remove_subsets", "remove_markers", "image_viewers_showing"]

SUBSET_PREFIX = "AstroVLM"
MARKER_PREFIX = "AstroVLM markers"
#: Key of the image dataset's metadata that maps subset labels to full class names.
META_KEY = "astrovlm_subsets"


def safe_subset_label(name: str, taken: Iterable[str] = (), prefix: str = SUBSET_PREFIX) -> str:
    """A jdaviz-valid subset label (ASCII letters, digits, single spaces) for a class name.

    ``'galaxy/AGN'`` becomes ``'AstroVLM galaxy AGN'``; accents are dropped (``'é'`` -> ``'e'``), and
    a number is appended when the label is already in ``taken`` (compared case-insensitively, as
    jdaviz does).
    """
    ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    words = re.sub(r"[^A-Za-z0-9]+", " ", ascii_name).split()
    base = " ".join([prefix] + (words or ["class"]))
    taken = {t.lower() for t in taken}
    label, n = base, 2
    while label.lower() in taken:
        label, n = f"{base} {n}", n + 1
    return label


def _subset_tools(viz):
    try:
        return viz.plugins["Subset Tools"]
    except KeyError:
        raise AstroVLMError("This jdaviz app has no Subset Tools plugin, so results cannot become subsets; "
                            "switch 'Write subsets' off.") from None


def _existing_labels(app) -> set:
    labels = {g.label for g in app.data_collection.subset_groups}
    labels |= {d.label for d in app.data_collection}
    return labels | set(getattr(app, "_reserved_labels", ()))


def write_subsets(viz, image_data, results: Sequence[Result], labels: Sequence[str], *,
                  per: str = "class") -> tuple[dict[str, str], list[str]]:
    """Create subsets for tagged sources through Subset Tools' ``import_region``.

    Parameters
    ----------
    viz : jdaviz helper
        ``Imviz``, ``Cubeviz`` or ``App`` (anything with ``.plugins`` and ``._app``).
    image_data : glue.core.data.Data
        The image or cube the sources were cut from (its pixels are the regions' pixels).
    results : sequence of Result
        Classification results with positions.
    labels : sequence of str
        The label set, in order (sets the class colours).
    per : {'class', 'source'}
        One subset per class (union of its sources) or one per source.

    Returns
    -------
    written : dict
        Subset label -> full class name; also stored in ``image_data.meta['astrovlm_subsets']``.
    subset_of_result : list of str
        The subset label of each result, in order ('' for a result without a position).
    """
    if per not in ("class", "source"):
        raise AstroVLMError(f"per must be 'class' or 'source', got {per!r}.")
    app = viz._app
    tools = _subset_tools(viz)
    colors = class_colors(labels)
    taken = _existing_labels(app)
    written: dict[str, str] = {}
    subset_of_result = [""] * len(results)
    groups: list[tuple[str, str, list]] = []  # (subset label, class, regions)
    for name in labels:
        shapes = [(i, pixel_region(r)) for i, r in enumerate(results) if r.label == name]
        shapes = [(i, s) for i, s in shapes if s is not None]
        if not shapes:
            continue
        if per == "class":
            label = safe_subset_label(name, taken)
            taken.add(label)
            groups.append((label, name, [s for _, s in shapes]))
            for i, _ in shapes:
                subset_of_result[i] = label
        else:
            for i, shape in shapes:
                label = safe_subset_label(f"{name} {results[i].source_id}", taken)
                taken.add(label)
                groups.append((label, name, [shape]))
                subset_of_result[i] = label
    for label, name, shapes in groups:
        modes = ["new"] + ["or"] * (len(shapes) - 1)
        bad = tools.import_region(shapes, combination_mode=modes, subset_label=label, max_num_regions=None,
                                  refdata_label=image_data.label, return_bad_regions=True)
        if bad:
            reasons = "; ".join(sorted({str(reason) for _, reason in bad}))
            raise AstroVLMError(f"jdaviz could not make {len(bad)} region(s) of class {name!r} into a subset "
                                f"({reasons}).")
        group = next((g for g in app.data_collection.subset_groups if g.label == label), None)
        if group is not None:
            group.style.color = colors[name]
        written[label] = name
    image_data.meta[META_KEY] = {**dict(image_data.meta.get(META_KEY, {})), **written}
    return written, subset_of_result


def remove_subsets(viz, subset_labels: Iterable[str], image_data=None) -> list[str]:
    """Delete the given subsets (those the plugin wrote) if they still exist; returns the removed labels."""
    app = viz._app
    present = {g.label for g in app.data_collection.subset_groups}
    removed = [label for label in subset_labels if label in present]
    if removed:
        app.delete_subsets(subset_labels=removed)
    if image_data is not None and META_KEY in image_data.meta:
        kept = {k: v for k, v in image_data.meta[META_KEY].items() if k not in removed}
        image_data.meta[META_KEY] = kept
    return removed


def image_viewers_showing(viz, data) -> dict:
    """The viewers of ``viz`` (``{viewer id: viewer}``) that show ``data`` and can draw markers."""
    viewers = {}
    for viewer_id, viewer in viz._app._viewer_store.items():
        if not hasattr(viewer, "add_markers"):
            continue
        if any(layer.layer is data or getattr(layer.layer, "label", None) == data.label
               for layer in viewer.layers):
            viewers[viewer_id] = viewer
    return viewers


def write_markers(viz, image_data, results: Sequence[Result], labels: Sequence[str]) -> dict[str, list[str]]:
    """One marker layer per class, in the class colour, in every viewer that shows ``image_data`` and
    supports markers. Returns ``{viewer id: [marker names]}`` (empty when no viewer supports markers)."""
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    viewers = image_viewers_showing(viz, image_data)
    colors = class_colors(labels)
    use_sky = getattr(viz._app, "_align_by", "pixels") == "wcs"
    written: dict[str, list[str]] = {}
    for viewer_id, viewer in viewers.items():
        suffix = f" {viewer_id}" if len(viewers) > 1 else ""
        previous = dict(viewer.marker)
        names = []
        try:
            for name in labels:
                chosen = [r for r in results if r.label == name and r.provenance is not None]
                if not chosen:
                    continue
                marker_name = safe_subset_label(name, prefix=MARKER_PREFIX) + suffix
                viewer.marker = {"color": colors[name], "alpha": 0.9, "markersize": 12, "fill": False}
                if use_sky and all(r.provenance.center_sky is not None for r in chosen):
                    coords = SkyCoord([r.provenance.center_sky for r in chosen])
                    viewer.add_markers(Table({"coord": coords}), use_skycoord=True, marker_name=marker_name)
                else:
                    table = Table({"x": [r.provenance.center_pixel[0] for r in chosen],
                                   "y": [r.provenance.center_pixel[1] for r in chosen]})
                    viewer.add_markers(table, marker_name=marker_name)
                names.append(marker_name)
        finally:
            viewer.marker = previous
        written[viewer_id] = names
    return written


def remove_markers(viz, markers: dict[str, list[str]]) -> None:
    """Remove marker layers written by `write_markers` (``{viewer id: [names]}``) that still exist."""
    store = viz._app._viewer_store
    for viewer_id, names in markers.items():
        viewer = store.get(viewer_id)
        if viewer is None:
            continue
        for name in names:
            if name in getattr(viewer, "_marktags", ()):
                viewer.remove_markers(marker_name=name)
