"""Survey catalogues: one row per source, each naming the image file that holds it.

A survey catalogue is any table `glue_astrovlm.catalogs.read_table` reads (ECSV, CSV, FITS, VOTable,
Parquet) with a file column (`~glue_astrovlm.catalogs.FILE_COLUMNS`: ``file``, ``filename``,
``path``, ...), a position (``ra``/``dec`` or ``x``/``y``, the shared vocabulary) and, optionally, a
``size`` column (pixels, or an angle when the column has an angular unit). Relative file names are
read from the table's folder.

`work_blocks` cuts the rows into blocks of one image each, so that every engine opens a file once
per block; the blocks are plain lists and strings, ready to be sent to other processes or machines.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..catalogs import FILE_COLUMNS, ID_COLUMNS, find_column, read_table
from ..errors import AstroVLMError

__all__ = ["SurveyCatalog", "read_survey", "work_blocks", "SIZE_COLUMNS"]

#: Per-row cutout sizes: pixels, or an angle when the column has an angular unit.
SIZE_COLUMNS = ("size", "cutout_size", "size_pix")


class SurveyCatalog:
    """A survey catalogue, its rows resolved to files and positions.

    Attributes
    ----------
    table : `~astropy.table.Table`
        The catalogue as read.
    files : list of str
        Each row's image file, absolute.
    ids : list of str
        Each row's source id (the id column, else the row number).
    kind : {'sky', 'pixel'}
        Whether ``a, b`` are ICRS RA/Dec in degrees or 0-based pixels.
    a, b : numpy.ndarray
        The positions.
    sizes : numpy.ndarray or None
        ``(n, 2)`` sizes ``(ny, nx)`` in ``size_unit``, or None for the default size.
    size_unit : {'pix', 'arcsec'}
    """

    def __init__(self, table, files, ids, kind, a, b, sizes, size_unit, where: str):
        self.table, self.files, self.ids, self.kind = table, files, ids, kind
        self.a, self.b, self.sizes, self.size_unit, self.where = a, b, sizes, size_unit, where

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """A hash of what the rows send (files, ids, positions, sizes): a resumed run checks that the
        catalogue it continues is the one it started on, not one edited since."""
        import hashlib
        import json

        digest = hashlib.sha256()
        digest.update(json.dumps([self.files, self.ids, self.kind, self.size_unit]).encode("utf-8"))
        for values in (self.a, self.b, self.sizes):
            digest.update(b"|" if values is None else np.ascontiguousarray(values, dtype="<f8").tobytes())
        return digest.hexdigest()


def _files(table, file_col, root: Path) -> list[str]:
    column = find_column(table, FILE_COLUMNS, file_col)
    if column is None:
        raise AstroVLMError(
            f"The survey catalogue has no file column (one of {', '.join(FILE_COLUMNS)}); its "
            f"columns are {', '.join(table.colnames)}. Add one naming each row's image, or "
            "give an image FILE to cut every row from one image."
        )
    files = []
    for value in table[column]:
        text = "" if np.ma.is_masked(value) else str(value).strip()
        path = Path(text).expanduser()
        files.append(str(path if path.is_absolute() or not text else (root / path)) if text else "")
    return files


def _positions(table, columns: dict):
    """``('sky', ra, dec)`` in ICRS degrees or ``('pixel', x, y)``, via the shared column vocabulary."""
    from ..catalogs import _choose_columns, _sky_from_columns, _values

    kind, names = _choose_columns(
        table, True, columns.get("ra"), columns.get("dec"), columns.get("x"), columns.get("y")
    )
    if kind == "pixel":
        return "pixel", _values(table, names[0]).astype(float), _values(table, names[1]).astype(float)
    sky = table[names] if kind == "skycoord" else _sky_from_columns(table, *names)
    icrs = sky.icrs
    return "sky", np.asarray(icrs.ra.deg, float), np.asarray(icrs.dec.deg, float)


def _sizes(table, size_col):
    import astropy.units as u

    column = find_column(table, SIZE_COLUMNS, size_col)
    if column is None:
        return None, "pix"
    values = np.asarray(
        table[column].filled(np.nan) if hasattr(table[column], "filled") else table[column], dtype=float
    )
    unit = table[column].unit
    if unit is not None and unit.physical_type == "angle":
        values, size_unit = (values * unit).to_value(u.arcsec), "arcsec"
    else:
        size_unit = "pix"
    return np.repeat(values[:, None], 2, axis=1), size_unit


def read_survey(
    catalog,
    *,
    columns: dict | None = None,
    file_col: str | None = None,
    size_col: str | None = None,
    root: str | os.PathLike | None = None,
) -> SurveyCatalog:
    """Read a survey catalogue.

    Parameters
    ----------
    catalog : `~astropy.table.Table` or path
        ECSV, CSV, FITS, VOTable or Parquet.
    columns : dict, optional
        Explicit ``ra``, ``dec``, ``x``, ``y`` and ``id`` columns (as `~glue_astrovlm.requests.Request`).
    file_col, size_col : str, optional
        Explicit file and size columns.
    root : path-like, optional
        Folder that relative file names start from (default: the table's folder, else the current one).
    """
    columns = dict(columns or {})
    where = str(catalog) if isinstance(catalog, (str, os.PathLike)) else "the survey catalogue"
    table = read_table(catalog, "survey catalogue")
    if len(table) == 0:
        raise AstroVLMError(f"The survey catalogue {where} has no rows.")
    if root is None:
        root = (
            Path(catalog).expanduser().resolve().parent
            if isinstance(catalog, (str, os.PathLike))
            else Path.cwd()
        )
    files = _files(table, file_col, Path(root))
    id_col = find_column(table, ID_COLUMNS, columns.get("id"))
    ids = [str(v) for v in table[id_col]] if id_col else [str(i) for i in range(len(table))]
    kind, a, b = _positions(table, columns)
    sizes, size_unit = _sizes(table, size_col)
    return SurveyCatalog(table, files, ids, kind, a, b, sizes, size_unit, where)


def work_blocks(catalog: SurveyCatalog, *, skip=frozenset(), block_rows: int = 64) -> list[dict]:
    """The rows still to do, in blocks of at most ``block_rows`` rows of one image each.

    Each block is a dict of plain values: ``file``, ``rows`` (row numbers in the catalogue), ``ids``,
    ``kind``, ``a``, ``b``, ``sizes`` (``[]`` for the default size) and ``size_unit``. Blocks come in
    order of each file's first row, and rows in table order within a file.
    """
    by_file: dict[str, list[int]] = {}
    for row, path in enumerate(catalog.files):
        if row not in skip:
            by_file.setdefault(path, []).append(row)
    blocks = []
    for path, rows in by_file.items():
        for start in range(0, len(rows), max(1, int(block_rows))):
            chunk = rows[start : start + block_rows]
            blocks.append(
                {
                    "file": path,
                    "rows": chunk,
                    "ids": [catalog.ids[r] for r in chunk],
                    "kind": catalog.kind,
                    "a": [float(catalog.a[r]) for r in chunk],
                    "b": [float(catalog.b[r]) for r in chunk],
                    "sizes": []
                    if catalog.sizes is None
                    else [[float(v) for v in catalog.sizes[r]] for r in chunk],
                    "size_unit": catalog.size_unit,
                }
            )
    return blocks
