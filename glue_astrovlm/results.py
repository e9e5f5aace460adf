"""One result type for every task, and its conversions to astropy tables and region files."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .cutout_types import Provenance
from .errors import AstroVLMError

__all__ = ["Result", "results_to_table", "results_to_regions", "pixel_region", "class_colors", "write_table",
           "write_regions", "atomic_write", "probability_column"]

#: Colours per class, in label-set order; colour-blind friendly (Okabe-Ito) then extra.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
           "#999999", "#000000", "#88CCEE", "#AA4499", "#117733")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Result:
    """What a model said about one cutout.

    Attributes
    ----------
    task : {'classify', 'ask', 'describe'}
    provenance : Provenance or None
        Where the cutout came from (`None` for a bare array or PIL image).
    label : str or None
        Most probable label (classification only).
    confidence : float or None
        Probability of ``label``.
    probabilities : dict
        Label -> probability, summing to 1, in label-set order.
    answer : str
        Free text for ``ask``/``describe``; the label for ``classify``.
    prompt : str
        The exact text sent with the image.
    prompt_hash : str
        Short SHA-256 of ``prompt``.
    model : str
        Model id, path or endpoint (never an API key).
    adapter : str or None
        Name of the LoRA adapter used, if any.
    stretch : str
        The stretch the model saw, e.g. ``zscale(contrast=0.25)+linear``.
    image_tokens : int or None
        Number of image tokens the model spent on the cutout.
    time : str
        ISO 8601 UTC time of the result.
    """

    task: str
    provenance: Provenance | None = None
    label: str | None = None
    confidence: float | None = None
    probabilities: dict = field(default_factory=dict)
    answer: str = ""
    prompt: str = ""
    prompt_hash: str = ""
    model: str = ""
    adapter: str | None = None
    stretch: str = ""
    image_tokens: int | None = None
    time: str = field(default_factory=_now)

    def __repr__(self) -> str:
        where = f" {self.source_id!r}" if self.source_id else ""
        if self.task == "classify":
            probs = ", ".join(f"{k}={v:.3f}" for k, v in self.probabilities.items())
            return f"<Result classify{where}: {self.label} {self.confidence:.3f} ({probs})>"
        return f"<Result {self.task}{where}: {self.answer!r}>"

    @property
    def source_id(self) -> str:
        return self.provenance.source_id if self.provenance is not None else ""

    def short_label(self) -> str:
        """``'FRII 0.93'``: what glue and jdaviz show next to a subset or marker."""
        if self.label is None:
            return self.answer[:40]
        return f"{self.label} {self.confidence:.2f}"

    def to_row(self) -> dict:
        """The result as a flat dict of table columns."""
        prov = self.provenance
        sky = prov.center_sky if prov is not None else None
        row = {
            "source_id": self.source_id,
            "source": prov.source if prov is not None else "",
            "hdu": "" if prov is None or prov.hdu is None else str(prov.hdu),
            "cube": (prov.cube or "") if prov is not None else "",
            "x_pix": prov.center_pixel[0] if prov is not None else np.nan,
            "y_pix": prov.center_pixel[1] if prov is not None else np.nan,
            "ra": float(sky.icrs.ra.deg) if sky is not None else np.nan,
            "dec": float(sky.icrs.dec.deg) if sky is not None else np.nan,
            "bbox": ",".join(str(int(v)) for v in prov.bbox) if prov is not None else "",
            "task": self.task,
            "label": self.label or "",
            "confidence": np.nan if self.confidence is None else float(self.confidence),
        }
        for label, probability in self.probabilities.items():
            row[probability_column(label)] = float(probability)
        row.update(answer=self.answer, prompt_hash=self.prompt_hash, model=self.model,
                   adapter=self.adapter or "", stretch=self.stretch,
                   image_tokens=-1 if self.image_tokens is None else int(self.image_tokens), time=self.time)
        return row


def probability_column(label: str) -> str:
    """Column name for a label's probability: ``p_FRII``, ``p_round_smooth``."""
    return "p_" + re.sub(r"\W+", "_", label).strip("_")


def results_to_table(results: Sequence[Result]):
    """An astropy `~astropy.table.Table` with one row per result.

    Columns: source_id, source, hdu, cube, x_pix, y_pix, ra, dec (deg, ICRS), bbox, task, label,
    confidence, one ``p_<label>`` per label, answer, prompt_hash, model, adapter, stretch,
    image_tokens and time. Probability columns missing from a row (mixed label sets) are NaN.
    """
    from astropy.table import Table

    if not results:
        raise AstroVLMError("There are no results to write.")
    rows = [result.to_row() for result in results]
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    data = {name: [row.get(name, np.nan) for row in rows] for name in columns}
    table = Table(data)
    for name in ("x_pix", "y_pix"):
        table[name].unit = "pix"
    for name in ("ra", "dec"):
        table[name].unit = "deg"
    table.meta["generator"] = "glue-astrovlm"
    return table


def class_colors(labels: Iterable[str]) -> dict[str, str]:
    """A fixed colour per label, in label-set order."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def results_to_regions(results: Sequence[Result], labels: Sequence[str] | None = None, sky: bool = True):
    """A `regions.Regions` with one shape per result, coloured by class and labelled ``'FRII 0.93'``.

    The shape is the cutout's source region when there is one, otherwise its bounding box. Each
    shape's ``meta`` carries ``text`` (``'FRII 0.93'``) and the tags ``astrovlm``,
    ``source_id=...``, ``label=...`` and ``confidence=...``; its ``visual`` carries the class colour. With ``sky=True`` shapes are written in sky coordinates where the
    cutout knows its position on the sky.
    """
    from regions import Regions

    if labels is None:
        labels = []
        for result in results:
            labels += [label for label in result.probabilities if label not in labels]
    colors = class_colors(labels)
    shapes = []
    for result in results:
        prov = result.provenance
        region = pixel_region(result)
        if region is None:
            continue
        parent_wcs = prov.parent_wcs
        if sky and parent_wcs is not None and hasattr(region, "to_sky"):
            region = region.to_sky(parent_wcs)
        region = region.copy()
        region.meta["text"] = result.short_label()
        # regions accepts only DS9/CRTF meta keys: class, confidence and source id travel as tags
        tags = ["astrovlm", f"source_id={result.source_id}"]
        if result.label is not None:
            tags += [f"label={result.label}", f"confidence={result.confidence:.4f}"]
        region.meta["tag"] = tags
        region.visual["color"] = colors.get(result.label, "green")
        shapes.append(region)
    if not shapes:
        raise AstroVLMError("No result has a position to write as a region (they came from bare images).")
    return Regions(shapes)


def pixel_region(result: Result):
    """The shape a result belongs to, in its parent image's pixels: the cutout's source region, or its
    bounding box; `None` for results from bare images."""
    from regions import PixCoord, RectanglePixelRegion

    prov = result.provenance
    if prov is None:
        return None
    if prov.region is not None:
        return prov.region
    xmin, xmax, ymin, ymax = prov.bbox
    return RectanglePixelRegion(PixCoord((xmin + xmax - 1) / 2, (ymin + ymax - 1) / 2),
                                width=xmax - xmin, height=ymax - ymin)


def atomic_write(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename it.

    A crash never leaves a half-written file, and an existing file is kept unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise AstroVLMError(f"{path} already exists; choose another output name or pass --overwrite.")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_table(results_or_table, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write results as ECSV (``.ecsv``) or FITS (``.fits``), atomically."""
    from astropy.table import Table

    table = results_or_table if isinstance(results_or_table, Table) else results_to_table(results_or_table)
    suffix = Path(path).suffix.lower()
    formats = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits"}
    if suffix not in formats:
        raise AstroVLMError(f"Unknown table format {suffix!r}; use .ecsv or .fits.")
    return atomic_write(path, lambda tmp: table.write(tmp, format=formats[suffix], overwrite=True), overwrite)


def write_regions(results_or_regions, path: str | os.PathLike, overwrite: bool = False,
                  labels: Sequence[str] | None = None) -> Path:
    """Write a DS9 (``.reg``) or CRTF (``.crtf``) region file, atomically."""
    from regions import Regions

    regions = (results_or_regions if isinstance(results_or_regions, Regions)
               else results_to_regions(results_or_regions, labels=labels))
    suffix = Path(path).suffix.lower()
    formats = {".reg": "ds9", ".crtf": "crtf"}
    if suffix not in formats:
        raise AstroVLMError(f"Unknown region format {suffix!r}; use .reg (DS9) or .crtf (CASA).")
    return atomic_write(path, lambda tmp: regions.write(tmp, format=formats[suffix], overwrite=True),
                        overwrite)
