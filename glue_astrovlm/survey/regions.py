"""Region files of a survey run: one per image, from the rows of the merged table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["regions_per_image"]


def _results(rows, wcs, probability_columns: dict):
    from ..cutout_types import Provenance
    from ..results import Result

    results = []
    for row in rows:
        bbox = tuple(int(v) for v in str(row["bbox"]).split(",")) if row["bbox"] else (0, 0, 0, 0)
        provenance = Provenance(
            source=str(row["source"]),
            bbox=bbox,
            center_pixel=(float(row["x_pix"]), float(row["y_pix"])),
            source_id=str(row["source_id"]),
            parent_wcs=wcs,
        )
        probabilities = {
            label: float(row[column])
            for label, column in probability_columns.items()
            if column in row.colnames and np.isfinite(row[column])
        }
        confidence = float(row["confidence"]) if np.isfinite(row["confidence"]) else None
        results.append(
            Result(
                task=str(row["task"]),
                provenance=provenance,
                label=str(row["label"]) or None,
                confidence=confidence,
                probabilities=probabilities,
                answer=str(row["answer"]),
            )
        )
    return results


def regions_per_image(table, probability_columns: dict, labels=None):
    """``(file stem, regions.Regions)`` for each image of the table's rows, in sky coordinates where the
    image has a celestial WCS (read from its header only)."""
    from ..results import results_to_regions
    from ..sources import open_image

    stems: set[str] = set()
    for source in dict.fromkeys(str(s) for s in table["source"]):
        rows = table[table["source"] == source]
        try:
            with open_image(source) as image:
                wcs = image.celestial_wcs
        except Exception:  # noqa: BLE001 - an image gone since it was cut: pixel regions still mark the rows
            wcs = None
        stem = Path(source).name.split(".")[0] or "image"
        name, n = stem, 2
        while name in stems:
            name, n = f"{stem}_{n}", n + 1
        stems.add(name)
        yield name, results_to_regions(_results(rows, wcs, probability_columns), labels=labels)
