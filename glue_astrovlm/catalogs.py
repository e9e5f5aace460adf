"""Catalogues: reading tables and finding their position, id, file, label and caption columns.

One vocabulary of column names serves every front end and every task: ``astrovlm classify
--catalog``, tagging in glue and jdaviz, and the datasets of ``astrovlm eval`` and ``finetune``. A
table that one of them accepts, the others accept too. Names are matched without regard to case;
an explicit column name always wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import AstroVLMError, no_wcs_error

__all__ = ["SKY_COLUMNS", "PIXEL_COLUMNS", "ID_COLUMNS", "FILE_COLUMNS", "LABEL_COLUMNS", "CAPTION_COLUMNS",
           "TABLE_READ_FORMATS", "read_table", "find_column", "find_pair", "skycoord_column", "row_ids",
           "Positions", "table_positions"]

#: RA/Dec (or Galactic) column pairs, in order of preference.
SKY_COLUMNS = (("ra", "dec"), ("raj2000", "dej2000"), ("_raj2000", "_dej2000"), ("ra_deg", "dec_deg"),
               ("radeg", "dedeg"), ("alpha_j2000", "delta_j2000"), ("skycoord_ra", "skycoord_dec"),
               ("right ascension (degrees)", "declination (degrees)"), ("glon", "glat"))
#: 0-based pixel column pairs (photutils, SExtractor and jdaviz names).
PIXEL_COLUMNS = (("x", "y"), ("xcentroid", "ycentroid"), ("x_centroid", "y_centroid"), ("xcenter", "ycenter"),
                 ("x_coord", "y_coord"), ("x_pix", "y_pix"), ("x_image", "y_image"))
#: Source identifiers; without one, rows are named by their number.
ID_COLUMNS = ("id", "source_id", "object id", "name", "objid", "object", "label")
#: Image files of a dataset table.
FILE_COLUMNS = ("file", "filename", "path", "image", "file_name")
#: Class labels of a dataset table or a labelled catalogue.
LABEL_COLUMNS = ("label", "class", "labels", "category", "morphology")
#: Captions of an image-caption table.
CAPTION_COLUMNS = ("caption", "text", "description")
#: What `read_table` reads (by astropy's unified I/O).
TABLE_READ_FORMATS = "ECSV, CSV with a header line, FITS, VOTable or Parquet"


def read_table(table, what: str = "catalogue"):
    """An astropy `~astropy.table.Table` from a table or a file (ECSV, CSV, FITS, VOTable, Parquet).

    Raises
    ------
    AstroVLMError
        A missing or unreadable file, in one line (astropy's own message can list every format it
        knows), or an object that is not a table.
    """
    from astropy.table import Table

    if isinstance(table, (str, os.PathLike)):
        path = Path(table).expanduser()
        if not path.is_file():
            raise AstroVLMError(f"No such {what} file: {path}." if not path.exists() else
                                f"{path} is not a regular file; give the {what} as a table file.")
        try:
            if path.suffix.lower() == ".csv":
                return Table.read(path, format="ascii.csv")
            return Table.read(path)
        except Exception as error:  # astropy's readers raise many types
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise AstroVLMError(f"Could not read a table from {path} ({first[:200]}); give the {what} as "
                                f"{TABLE_READ_FORMATS}.") from None
    if isinstance(table, Table):
        return table
    try:
        return Table(table)
    except Exception:
        raise AstroVLMError(f"Cannot read a {what} from a {type(table).__name__}; pass an astropy Table or a "
                            "table file path.") from None


def _names(table_or_names) -> list[str]:
    return list(getattr(table_or_names, "colnames", table_or_names))


def find_column(table_or_names, candidates: Iterable[str], given: str | None = None,
                where: str = "the catalogue") -> str | None:
    """The column to use: ``given`` (which must exist), else the first of ``candidates`` present."""
    names = _names(table_or_names)
    if given is not None:
        if given not in names:
            raise AstroVLMError(f"No column {given!r} in {where}; its columns are {', '.join(names)}.")
        return given
    lower = {name.lower(): name for name in names}
    return next((lower[c.lower()] for c in candidates if c.lower() in lower), None)


def find_pair(table_or_names, pairs: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The first pair of columns (e.g. RA/Dec) that is present, with the table's own spelling."""
    for first, second in pairs:
        a, b = find_column(table_or_names, [first]), find_column(table_or_names, [second])
        if a and b:
            return a, b
    return None


def skycoord_column(table) -> str | None:
    """A `~astropy.coordinates.SkyCoord` column (e.g. photutils' ``sky_centroid``), if there is one."""
    from astropy.coordinates import SkyCoord

    return next((name for name in table.colnames if isinstance(table[name], SkyCoord)), None)


def row_ids(table, id_col: str | None = None, where: str = "the catalogue") -> list[str]:
    """One identifier per row: ``id_col``, else the first of `ID_COLUMNS`, else the row number."""
    id_col = find_column(table, ID_COLUMNS, id_col, where)
    return [str(v) for v in table[id_col]] if id_col else [str(i) for i in range(len(table))]


def _values(table, name: str) -> np.ndarray:
    column = table[name]
    if hasattr(column, "filled"):
        column = column.filled(np.nan) if column.dtype.kind == "f" else column.filled()
    return np.asarray(column)


@dataclass(frozen=True)
class Positions:
    """Pixel positions of a table's rows on one image, with their sky positions when known.

    Attributes
    ----------
    x, y : numpy.ndarray
        0-based pixels (NaN where a row has none).
    sky : `~astropy.coordinates.SkyCoord` or None
        The rows' sky positions (from the table, or from the image's WCS).
    columns : str
        Which columns were read, for messages (``'columns RAJ2000, DEJ2000'``).
    """

    x: np.ndarray
    y: np.ndarray
    sky: Any
    columns: str


def _sky_to_pixels(coords, wcs, image_label: str, columns: str) -> Positions:
    if wcs is None:
        raise no_wcs_error(image_label, f"the catalogue's sky positions ({columns})")
    x, y = wcs.world_to_pixel(coords)
    return Positions(np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)), coords, columns)


def _sky_from_columns(table, ra_col: str, dec_col: str):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    frame = "galactic" if ra_col.lower() == "glon" else "icrs"
    ra, dec = table[ra_col], table[dec_col]
    try:
        if ra.dtype.kind in "US":
            return SkyCoord(np.asarray(ra), np.asarray(dec), unit=(u.hourangle, u.deg), frame=frame)
        ra_q = u.Quantity(_values(table, ra_col), ra.unit or u.deg)
        dec_q = u.Quantity(_values(table, dec_col), dec.unit or u.deg)
        return SkyCoord(ra_q, dec_q, frame=frame)
    except (ValueError, u.UnitsError) as error:
        raise AstroVLMError(f"Could not read sky positions from columns {ra_col}, {dec_col} ({error}); give "
                            "degrees or sexagesimal strings.") from None


def _choose_columns(table, has_wcs: bool, ra_col, dec_col, x_col, y_col):
    """``('skycoord', name)``, ``('sky', (ra, dec))`` or ``('pixel', (x, y))`` for this table and image."""
    if (x_col is None) != (y_col is None) or (ra_col is None) != (dec_col is None):
        raise AstroVLMError("Give both x and y columns, or both RA and Dec columns.")
    if x_col is not None:
        return "pixel", (find_column(table, (), x_col), find_column(table, (), y_col))
    if ra_col is not None:
        return "sky", (find_column(table, (), ra_col), find_column(table, (), dec_col))
    sky_col, sky_pair, pixel_pair = skycoord_column(table), find_pair(table, SKY_COLUMNS), \
        find_pair(table, PIXEL_COLUMNS)
    if (sky_col or sky_pair) and (has_wcs or pixel_pair is None):
        return ("skycoord", sky_col) if sky_col else ("sky", sky_pair)
    if pixel_pair is not None:
        return "pixel", pixel_pair
    raise AstroVLMError(f"Found no position columns in the catalogue (columns: {', '.join(table.colnames)}). "
                        "Name them ra/dec (degrees) or x/y (0-based pixels), or say which columns hold the "
                        "positions (--ra-col/--dec-col or --x-col/--y-col; ra_col=... in Python).")


def table_positions(table, wcs, image_label: str, *, ra_col: str | None = None, dec_col: str | None = None,
                    x_col: str | None = None, y_col: str | None = None) -> Positions:
    """Where each row of a catalogue falls on an image.

    Parameters
    ----------
    table : `~astropy.table.Table`
        The catalogue.
    wcs : `~astropy.wcs.WCS` or None
        The image's celestial WCS (sky positions need it).
    image_label : str
        The image's name, for messages.
    ra_col, dec_col, x_col, y_col : str, optional
        Explicit columns. Without them a `~astropy.coordinates.SkyCoord` column or a pair of
        `SKY_COLUMNS` is used when the image has a celestial WCS (or the table has no pixels);
        otherwise a pair of `PIXEL_COLUMNS`. RA/Dec are degrees unless the column has a unit;
        sexagesimal strings are read as hours and degrees.
    """
    kind, names = _choose_columns(table, wcs is not None, ra_col, dec_col, x_col, y_col)
    if kind == "skycoord":
        return _sky_to_pixels(table[names], wcs, image_label, f"column {names}")
    if kind == "sky":
        return _sky_to_pixels(_sky_from_columns(table, *names), wcs, image_label, f"columns {', '.join(names)}")
    x, y = (_values(table, name).astype(float) for name in names)
    sky = wcs.pixel_to_world(x, y) if wcs is not None else None
    return Positions(x, y, sky, f"columns {', '.join(names)}")
