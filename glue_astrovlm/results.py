"""One result type for every task, its conversions to astropy tables and region files, and `export`.

Every front end writes its results with `export` (``PREFIX.ecsv`` or ``.fits``, plus ``PREFIX.reg``
or ``.crtf``): the formats, their suffixes and the overwrite rule live here once.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .cutout_types import Provenance
from .errors import AstroVLMError

log = logging.getLogger("glue_astrovlm")

__all__ = ["Result", "results_to_table", "results_to_regions", "pixel_region", "class_colors", "write_table",
           "write_regions", "atomic_write", "export", "probability_column", "probability_columns", "result_key",
           "TABLE_FORMATS", "REGION_FORMATS", "output_path"]

#: Result table formats: name -> file suffix (astropy writes them).
TABLE_FORMATS = {"ecsv": ".ecsv", "fits": ".fits"}
#: Region file formats: name -> file suffix (``regions`` writes them; DS9 and CASA read them).
REGION_FORMATS = {"ds9": ".reg", "crtf": ".crtf"}
_ASTROPY_TABLE_FORMAT = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits"}
_SUFFIX_FORMAT = {suffix: name for name, suffix in {**TABLE_FORMATS, **REGION_FORMATS}.items()}

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
    label_set : str
        The label set a classification used (and why, when it was suggested for the data).
    time : str
        ISO 8601 UTC time of the result.
    turn : int or None
        The 1-based turn of a conversation (`glue_astrovlm.Conversation`); `None` for a lone question.
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
    label_set: str = ""
    turn: int | None = None

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

    def to_row(self, columns: dict | None = None) -> dict:
        """The result as a flat dict of table columns.

        ``columns`` maps each label to its probability column (`probability_columns`); by default the
        result's own labels are named alone.
        """
        columns = columns or probability_columns(self.probabilities)
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
            "label_set": self.label_set,
        }
        for label, probability in self.probabilities.items():
            row[columns[label]] = float(probability)
        row.update(answer=self.answer, prompt_hash=self.prompt_hash, model=self.model,
                   adapter=self.adapter or "", stretch=self.stretch,
                   image_tokens=-1 if self.image_tokens is None else int(self.image_tokens), time=self.time)
        if self.turn is not None:  # conversations only: tables of lone answers keep their columns
            row.update(turn=int(self.turn), question=self.prompt)
        return row


def probability_column(label: str) -> str:
    """Column name for a label's probability: ``p_FRII``, ``p_round_smooth``.

    Labels that differ only in punctuation or symbols share this name; a table uses
    `probability_columns`, which keeps every label's column apart.
    """
    return "p_" + re.sub(r"\W+", "_", label).strip("_")


def probability_columns(labels) -> dict[str, str]:
    """One distinct probability column per label, in label order: ``{'FR-I': 'p_FR_I', 'FR I': 'p_FR_I_2'}``.

    Labels with no letter or digit (an emoji) get ``p_label<N>``, N their position from 1.
    """
    columns: dict[str, str] = {}
    taken: set[str] = set()
    for index, label in enumerate(labels, start=1):
        base = probability_column(label)
        base = base if base != "p_" else f"p_label{index}"
        name, n = base, 2
        while name.lower() in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name.lower())
        columns[label] = name
    return columns


def result_key(provenance_or_row) -> str:
    """What identifies a cutout across runs (file, HDU, cube plane, source id and box): finished rows of
    a table and cutouts still to do compare equal by this key, so a resumed run skips the former."""
    if isinstance(provenance_or_row, Provenance):
        prov = provenance_or_row
        parts = [prov.source, "" if prov.hdu is None else str(prov.hdu), prov.cube or "", prov.source_id,
                 ",".join(str(int(v)) for v in prov.bbox)]
    else:
        row = provenance_or_row
        parts = ["" if np.ma.is_masked(row[name]) else str(row[name])
                 for name in ("source", "hdu", "cube", "source_id", "bbox")]
    return "|".join(parts)


#: Table metadata key: how many answers are empty (the model wrote only whitespace), written as "".
EMPTY_ANSWERS_KEY = "astrovlm_empty_answers"


def empty_answers_note(results: Sequence[Result]) -> str | None:
    """A line saying how many answers are empty, or None when none is."""
    answers = [r for r in results if r.task != "classify"]
    empty = sum(1 for r in answers if not (r.answer or "").strip())
    if not empty:
        return None
    return (f"{empty} of {len(answers)} answer(s) are empty (the model wrote only whitespace); they are "
            f'written as "" and counted in the table\'s {EMPTY_ANSWERS_KEY} (astropy reads an empty text '
            'cell back as masked; Table.read(..., fill_values=[]) keeps it "").')


def results_to_table(results: Sequence[Result]):
    """An astropy `~astropy.table.Table` with one row per result.

    Columns: source_id, source, hdu, cube, x_pix, y_pix, ra, dec (deg, ICRS), bbox, task, label,
    confidence, label_set, one ``p_<label>`` per label (`probability_columns`: distinct even for labels that
    differ only in punctuation; ``meta['probability_columns']`` maps each back to its exact label),
    answer, prompt_hash, model, adapter, stretch, image_tokens and time. Probability columns missing
    from a row (mixed label sets) are NaN.
    """
    from astropy.table import Table

    if not results:
        raise AstroVLMError("There are no results to write.")
    labels: list[str] = []
    for result in results:
        labels += [label for label in result.probabilities if label not in labels]
    prob_columns = probability_columns(labels)
    rows = [result.to_row(prob_columns) for result in results]
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
    empty = sum(1 for r in results if r.task != "classify" and not (r.answer or "").strip())
    if empty:  # written as ""; astropy reads an empty text cell back as masked
        table.meta[EMPTY_ANSWERS_KEY] = empty
    if prob_columns:
        table.meta["probability_columns"] = {column: label for label, column in prob_columns.items()}
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


def _temporary_beside(path: Path) -> Path:
    """A new empty file next to ``path``, created with the usual mode (0666 less the umask)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise AstroVLMError(f"Could not create a temporary file next to {path}.")


def _writable_parent(path: Path) -> None:
    parent = path.parent
    for folder in [parent, *parent.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise AstroVLMError(f"Cannot write {path}: {folder} is a file, not a folder. Choose another "
                                    "output name (--out).")
            break
    parent.mkdir(parents=True, exist_ok=True)


def atomic_write(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename it.

    A crash never leaves a half-written file, an existing file is kept unless ``overwrite``, and the
    file gets the usual permissions (0644 under the usual umask 022), like any other tool's.

    Raises
    ------
    AstroVLMError
        The file exists (without ``overwrite``), is a folder, or cannot be written (read-only or full
        file system, a parent that is a file), with the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise AstroVLMError(f"{path} is a folder; choose another output name (--out).")
    if path.exists() and not overwrite:
        raise AstroVLMError(f"{path} already exists; choose another output name or pass --overwrite.")
    tmp = None
    try:
        _writable_parent(path)
        tmp = _temporary_beside(path)
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise AstroVLMError(f"Could not write {path}: {error.strerror or error}. Choose a folder you can write "
                            "to, or free some space.") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return path


def output_path(prefix: str | os.PathLike, format: str) -> Path:
    """``PREFIX`` plus the suffix of a table or region format (`TABLE_FORMATS`, `REGION_FORMATS`)."""
    suffixes = {**TABLE_FORMATS, **REGION_FORMATS}
    if format not in suffixes:
        raise AstroVLMError(f"Unknown output format {format!r}; use one of {', '.join(suffixes)}.")
    prefix = Path(prefix)
    if not prefix.name:
        raise AstroVLMError("The output name is empty; give a file name prefix such as --out results.")
    return prefix.with_name(prefix.name + suffixes[format])


def _format_of(path: str | os.PathLike, kinds: dict, what: str) -> str:
    suffix = Path(path).suffix.lower()
    suffix = ".fits" if suffix == ".fit" else suffix
    name = _SUFFIX_FORMAT.get(suffix)
    if name not in kinds:
        known = ", ".join(f"{s} ({n})" for n, s in kinds.items())
        raise AstroVLMError(f"Unknown {what} format {suffix!r}; use {known}.")
    return name


def write_table(results_or_table, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write results as ECSV (``.ecsv``) or FITS (``.fits``), atomically."""
    from astropy.table import Table

    _format_of(path, TABLE_FORMATS, "table")
    table = results_or_table if isinstance(results_or_table, Table) else results_to_table(results_or_table)
    astropy_format = _ASTROPY_TABLE_FORMAT[Path(path).suffix.lower()]
    return atomic_write(path, lambda tmp: table.write(tmp, format=astropy_format, overwrite=True), overwrite)


def write_regions(results_or_regions, path: str | os.PathLike, overwrite: bool = False,
                  labels: Sequence[str] | None = None) -> Path:
    """Write a DS9 (``.reg``) or CRTF (``.crtf``) region file, atomically."""
    from regions import Regions

    fmt = _format_of(path, REGION_FORMATS, "region")
    from regions import PixelRegion

    regions = (results_or_regions if isinstance(results_or_regions, Regions)
               else results_to_regions(results_or_regions, labels=labels))
    if fmt == "crtf" and any(isinstance(shape, PixelRegion) for shape in regions):
        raise AstroVLMError("CRTF region files hold sky coordinates only, and these results have none (the image "
                            "has no celestial WCS); write a DS9 file (.reg, --region-format ds9) instead.")
    return atomic_write(path, lambda tmp: regions.write(tmp, format=fmt, overwrite=True), overwrite)


def export(results: Sequence[Result], prefix: str | os.PathLike, *, formats: Sequence[str] = ("ecsv", "ds9"),
           overwrite: bool = False, labels: Sequence[str] | None = None, table=None) -> list[Path]:
    """Write results as ``PREFIX.<table suffix>`` and ``PREFIX.<region suffix>``; returns the paths written.

    Parameters
    ----------
    results : sequence of Result
    prefix : path-like
        File name without suffix.
    formats : sequence of str
        At most one of `TABLE_FORMATS` and one of `REGION_FORMATS`.
    overwrite : bool
        Replace existing files; otherwise nothing is written when any of them exists.
    labels : sequence of str, optional
        The label set, in order (fixes the region colours).
    table : `~astropy.table.Table`, optional
        The table to write instead of ``results_to_table(results)`` (e.g. with a front end's own columns).

    Results without a position (bare arrays) give no region file; the table is still written.
    """
    if not results:
        raise AstroVLMError("There are no results to export yet.")
    paths = {fmt: output_path(prefix, fmt) for fmt in formats}
    kinds = [fmt in TABLE_FORMATS for fmt in formats]
    if sum(kinds) > 1 or len(kinds) - sum(kinds) > 1:
        raise AstroVLMError(f"Give at most one table and one region format, got {list(formats)}.")
    if not overwrite:
        existing = [str(path) for path in paths.values() if path.exists()]
        if existing:
            raise AstroVLMError(f"{' and '.join(existing)} already exists; choose another name or pass "
                                "overwrite=True (--overwrite).")
    written = []
    for fmt, path in paths.items():
        if fmt in TABLE_FORMATS:
            written.append(write_table(table if table is not None else results, path, overwrite=overwrite))
        elif any(result.provenance is not None for result in results):
            try:
                written.append(write_regions(results, path, overwrite=overwrite, labels=labels))
            except AstroVLMError as error:  # the table is the result; say why there is no region file
                log.warning("No region file written: %s", error)
    return written
