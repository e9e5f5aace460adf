"""Results back from the rows of a survey table: as `Result` objects per image (for glue and jdaviz
write-back) and as region files, one per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["regions_per_image", "rows_to_results", "results_per_image"]


def _image_wcs(source: str):
    from ..sources import open_image

    try:
        with open_image(source) as image:
            return image.celestial_wcs
    except Exception:  # noqa: BLE001 - an image gone since it was cut: pixel positions still mark the rows
        return None


def _text(row, name: str) -> str:
    value = row[name] if name in row.colnames else ""
    return "" if np.ma.is_masked(value) else str(value)


def rows_to_results(rows, wcs, probability_columns: dict) -> list:
    """`Result` objects of rows of a survey table (one image), with their catalogue row in
    ``provenance.extra['row']``; ``probability_columns`` maps each label to its column."""
    from astropy.coordinates import SkyCoord

    from ..cutout_types import Provenance
    from ..results import Result

    results = []
    for row in rows:
        bbox = tuple(int(v) for v in _text(row, "bbox").split(",")) if row["bbox"] else (0, 0, 0, 0)
        sky = (SkyCoord(float(row["ra"]), float(row["dec"]), unit="deg")
               if np.isfinite(row["ra"]) and np.isfinite(row["dec"]) else None)
        provenance = Provenance(source=_text(row, "source"), bbox=bbox,
                                center_pixel=(float(row["x_pix"]), float(row["y_pix"])), center_sky=sky,
                                source_id=_text(row, "source_id"), parent_wcs=wcs, extra={"row": int(row["row"])})
        probabilities = {label: float(row[column]) for label, column in probability_columns.items()
                         if column in row.colnames and np.isfinite(row[column])}
        confidence = float(row["confidence"]) if np.isfinite(row["confidence"]) else None
        results.append(Result(task=_text(row, "task"), provenance=provenance, label=_text(row, "label") or None,
                              confidence=confidence, probabilities=probabilities, answer=_text(row, "answer"),
                              prompt_hash=_text(row, "prompt_hash"), model=_text(row, "model"),
                              adapter=_text(row, "adapter") or None, stretch=_text(row, "stretch"),
                              label_set=_text(row, "label_set")))
    return results


def results_per_image(table, probability_columns: dict):
    """``(image file, [Result, ...])`` for each image of a survey table, in order of first row."""
    for source in dict.fromkeys(str(s) for s in table["source"]):
        rows = table[table["source"] == source]
        yield source, rows_to_results(rows, _image_wcs(source), probability_columns)


#: Image suffixes left out of a region file's name (the longest first).
IMAGE_SUFFIXES = (".fits.gz", ".fits.bz2", ".fits.fz", ".fit.gz", ".fits", ".fit", ".fts", ".fz")


def image_stem(source: str) -> str:
    """An image's file name without its FITS suffix: ``100_010.451-009.284_0.0529_0080.60`` for
    ``100_010.451-009.284_0.0529_0080.60.fits`` (file names of survey cutouts hold dots)."""
    name = Path(source).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name or "image"


def regions_per_image(table, probability_columns: dict, labels=None):
    """``(file stem, regions.Regions, image file)`` for each image of the table's rows, in sky
    coordinates where the image has a celestial WCS (read from its header only)."""
    from ..results import results_to_regions

    stems: set[str] = set()
    for source, results in results_per_image(table, probability_columns):
        stem = image_stem(source)
        name, n = stem, 2
        while name in stems:
            name, n = f"{stem}_{n}", n + 1
        stems.add(name)
        yield name, results_to_regions(results, labels=labels), source
