"""glue catalogue datasets (also jdaviz's catalogue importer and Catalog Search results) as tables.

Columns are found with the engine's one vocabulary (`glue_astrovlm.catalogs`), so a table that the
command line accepts is accepted in glue and jdaviz too. The column choices that jdaviz's catalogue
importer records in the dataset's metadata (``_jdaviz_loader_ra_col`` and friends) win, and
component units (RA in hours) are honoured.
"""

from __future__ import annotations

import numpy as np

from ..catalogs import ID_COLUMNS, PIXEL_COLUMNS, SKY_COLUMNS, find_column, find_pair
from ..errors import AstroVLMError

__all__ = ["has_positions", "catalog_table_from_data"]

# jdaviz's catalogue importer records which columns it used here
_META_COLUMNS = {"ra": "_jdaviz_loader_ra_col", "dec": "_jdaviz_loader_dec_col",
                 "x": "_jdaviz_loader_x_col", "y": "_jdaviz_loader_y_col", "id": "_jdaviz_id_col"}


def _columns(data) -> dict:
    """Component names for ``ra``, ``dec``, ``x``, ``y`` and ``id`` (`None` where there is none)."""
    names = [c.label for c in data.main_components]
    meta = getattr(data, "meta", {}) or {}
    chosen = {key: meta.get(entry) if meta.get(entry) in names else None for key, entry in _META_COLUMNS.items()}
    sky, pixel = find_pair(names, SKY_COLUMNS), find_pair(names, PIXEL_COLUMNS)
    if not (chosen["ra"] and chosen["dec"]) and sky:
        chosen["ra"], chosen["dec"] = sky
    if not (chosen["x"] and chosen["y"]) and pixel:
        chosen["x"], chosen["y"] = pixel
    chosen["id"] = chosen["id"] or find_column(names, ID_COLUMNS)
    return chosen


def has_positions(data) -> bool:
    """`True` for a 1-D glue dataset with sky (RA/Dec) or pixel (x/y) position columns."""
    if getattr(data, "ndim", 0) != 1:
        return False
    cols = _columns(data)
    return bool((cols["ra"] and cols["dec"]) or (cols["x"] and cols["y"]))


def _degrees(data, name: str) -> np.ndarray:
    import astropy.units as u

    values = np.asarray(data[name], dtype=float)
    unit = getattr(data.get_component(name), "units", None) or "deg"
    try:
        return (values * u.Unit(unit)).to_value(u.deg)
    except (ValueError, u.UnitsError):
        raise AstroVLMError(f"Column {name!r} of {data.label} has unit {unit!r}, which is not an angle; "
                            "give RA/Dec in degrees or hours.") from None


def catalog_table_from_data(catalog):
    """An astropy Table with the positions and ids of a glue catalogue dataset, one row per glue row.

    Parameters
    ----------
    catalog : glue.core.data.Data
        A 1-D dataset with RA/Dec (degrees, or any angle unit recorded on the component) or 0-based
        pixel x/y columns; jdaviz's column choices in the metadata take precedence over names.

    Returns
    -------
    `~astropy.table.Table`
        Columns ``ra``, ``dec`` (degrees) and/or ``x``, ``y`` (pixels) and ``id`` (text). Row ``i`` is
        glue row ``i``, so catalogue cutouts' ``provenance.extra['row']`` is the dataset's row.
    """
    from astropy.table import Table

    if getattr(catalog, "ndim", 0) != 1:
        raise AstroVLMError(f"{catalog.label} is not a table; choose a catalogue dataset.")
    cols = _columns(catalog)
    table = Table()
    if cols["ra"] and cols["dec"]:
        table["ra"] = _degrees(catalog, cols["ra"])
        table["dec"] = _degrees(catalog, cols["dec"])
    if cols["x"] and cols["y"]:
        table["x"] = np.asarray(catalog[cols["x"]], dtype=float)
        table["y"] = np.asarray(catalog[cols["y"]], dtype=float)
    if not table.colnames:
        names = ", ".join(c.label for c in catalog.main_components)
        raise AstroVLMError(f"{catalog.label} has no position columns (it has {names}); it needs RA/Dec or "
                            "x/y columns.")
    ids = np.asarray(catalog[cols["id"]]) if cols["id"] else np.arange(catalog.size)
    table["id"] = [str(v) for v in ids]
    return table
