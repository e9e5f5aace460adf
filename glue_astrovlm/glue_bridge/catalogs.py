"""Source lists for tagging: catalogue datasets (also jdaviz's catalogue importer and Catalog Search
results), table files and detected sources, each turned into one cutout per source on a glue image.

Catalogues are read by conventional column names, and the column choices that jdaviz's catalogue
importer records in the dataset's metadata (``_jdaviz_loader_ra_col`` and friends) and component
units (RA in hours) are honoured. glue and jdaviz both read catalogues here, so every front end
tags sources the same way.
"""

from __future__ import annotations

import numpy as np

from ..cutout_types import Cutout
from ..errors import AstroVLMError
from ..stretch import DEFAULT_STRETCH, Stretch

__all__ = ["has_positions", "catalog_table_from_data", "cutouts_from_table", "detected_sources_table"]

_RA = ("ra", "raj2000", "_raj2000", "ra_deg", "right ascension (degrees)", "skycoord_ra")
_DEC = ("dec", "dej2000", "_dej2000", "dec_deg", "declination (degrees)", "skycoord_dec")
_X = ("x", "xcentroid", "x_centroid", "x_coord", "x_pix", "x_image")
_Y = ("y", "ycentroid", "y_centroid", "y_coord", "y_pix", "y_image")
_ID = ("id", "source_id", "object id", "name", "label", "objid")

# jdaviz's catalogue importer records which columns it used here
_META_COLUMNS = {"ra": "_jdaviz_loader_ra_col", "dec": "_jdaviz_loader_dec_col",
                 "x": "_jdaviz_loader_x_col", "y": "_jdaviz_loader_y_col", "id": "_jdaviz_id_col"}


def _components(data) -> dict:
    return {c.label: c for c in data.main_components}


def _find(names: dict, meta: dict, key: str, candidates) -> str | None:
    chosen = meta.get(_META_COLUMNS[key])
    if chosen in names:
        return chosen
    lower = {name.lower(): name for name in names}
    return next((lower[c] for c in candidates if c in lower), None)


def _columns(data) -> dict:
    names = _components(data)
    meta = getattr(data, "meta", {}) or {}
    return {key: _find(names, meta, key, candidates)
            for key, candidates in (("ra", _RA), ("dec", _DEC), ("x", _X), ("y", _Y), ("id", _ID))}


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
    """An astropy Table with the positions and ids of a glue catalogue dataset.

    Parameters
    ----------
    catalog : glue.core.data.Data
        A 1-D dataset with RA/Dec (degrees, or any angle unit recorded on the component) or 0-based
        pixel x/y columns; jdaviz's column choices in the metadata take precedence over names.

    Returns
    -------
    `~astropy.table.Table`
        Columns ``ra``, ``dec`` (degrees) and/or ``x``, ``y`` (pixels), ``id`` (text) and ``_row``
        (the glue row index, so results can be written back to the dataset).
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
    table["_row"] = np.arange(catalog.size)
    return table


def cutouts_from_table(image_data, table, *, size=64, attribute=None, cube: dict | None = None,
                       stretch: Stretch = DEFAULT_STRETCH, extra: dict | None = None,
                       limit: int | None = None) -> list[Cutout]:
    """One cutout per table row that falls on ``image_data``; rows outside it are skipped.

    Parameters
    ----------
    image_data : glue.core.data.Data
        The image or cube (with ``cube=``) to cut from.
    table : `~astropy.table.Table` or path
        Positions as in `glue_astrovlm.cutouts_from_catalog`; a ``_row`` column, if present, is
        kept in each cutout's ``provenance.extra['catalog_row']``.
    size : int or Quantity
        Cutout size.
    extra : dict, optional
        Added to every cutout's ``provenance.extra`` (e.g. the catalogue's name).
    limit : int, optional
        Stop after this many cutouts (a preview needs one).
    """
    from dataclasses import replace

    from ..cutouts import cutouts_from_catalog
    from .cutouts import image_source_from_data

    source = image_source_from_data(image_data, attribute, cube=cube)
    cutouts = cutouts_from_catalog(source, table, size=size, stretch=stretch, skip_outside=True, limit=limit)
    rows = table["_row"] if not isinstance(table, str) and "_row" in getattr(table, "colnames", ()) else None
    out = []
    for cutout in cutouts:
        added = {**cutout.provenance.extra, "glue_data": image_data.label, **(extra or {})}
        if rows is not None:
            added["catalog_row"] = int(rows[cutout.provenance.extra["row"]])
        out.append(replace(cutout, provenance=replace(cutout.provenance, extra=added)))
    return out


def detected_sources_table(image_data, *, attribute=None, cube: dict | None = None, bounds=None,
                           nsigma: float = 5.0, max_sources: int = 50):
    """Sources detected on ``image_data`` (see `glue_astrovlm.detect_sources`), optionally only those
    inside ``bounds = (x_min, x_max, y_min, y_max)`` in the image's pixels (e.g. a viewer's view).

    Returns the detection table, brightest first, with ``id``, ``xcentroid``, ``ycentroid`` and, with
    a celestial WCS, ``ra``/``dec``.
    """
    from ..detect import detect_sources
    from .cutouts import image_source_from_data

    source = image_source_from_data(image_data, attribute, cube=cube)
    table = detect_sources(source, nsigma=nsigma, max_sources=10_000 if bounds is not None else max_sources)
    if bounds is not None:
        x_min, x_max, y_min, y_max = bounds
        inside = ((table["xcentroid"] >= x_min) & (table["xcentroid"] <= x_max)
                  & (table["ycentroid"] >= y_min) & (table["ycentroid"] <= y_max))
        table = table[inside]
        if len(table) == 0:
            raise AstroVLMError(f"No source above {nsigma:g} sigma lies in the current view of "
                                f"{image_data.label}; zoom out, pan, or lower the threshold.")
        table = table[: int(max_sources)]
    keep = [name for name in ("id", "xcentroid", "ycentroid", "ra", "dec") if name in table.colnames]
    table = table[keep]
    table["id"] = [str(v) for v in table["id"]]
    return table
