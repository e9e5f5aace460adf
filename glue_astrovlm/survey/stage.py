"""The CPU stage of a survey run: a block of rows of one image becomes rendered model inputs.

`cut_block` opens the block's file once (memory-mapped FITS), cuts, stretches and renders each row
with the same functions as ``astrovlm classify --catalog`` (`~glue_astrovlm.cutout_at`,
`~glue_astrovlm.Cutout.to_image`), and returns one plain record per row: the provenance columns of
the results table, the picture as an ``(ny, nx, 3)`` uint8 array, and ``error`` (empty, or why the
row could not be cut out). Both engines run it, so they send the model the same pixels.
"""

from __future__ import annotations

import numpy as np

from ..errors import AstroVLMError

__all__ = ["cut_block", "PROVENANCE_COLUMNS", "NO_IMAGE"]

#: The columns of a results table that say where a cutout came from (`Result.to_row`'s first ones).
PROVENANCE_COLUMNS = ("source_id", "source", "hdu", "cube", "x_pix", "y_pix", "ra", "dec", "bbox")
#: The picture of a row that could not be cut out.
NO_IMAGE = np.zeros((1, 1, 3), dtype=np.uint8)


def _record(row: int, source_id: str, path: str, error: str = "", **known) -> dict:
    record = {
        "row": int(row),
        "source_id": source_id,
        "source": path,
        "hdu": "",
        "cube": "",
        "x_pix": np.nan,
        "y_pix": np.nan,
        "ra": np.nan,
        "dec": np.nan,
        "bbox": "",
        "stretch": "",
        "error": error,
        "image": NO_IMAGE,
    }
    record.update(known)
    return record


def _size(block: dict, index: int, default):
    import astropy.units as u

    if not block["sizes"]:
        return default
    ny, nx = block["sizes"][index]
    if np.isnan(ny):  # no size given for this row (a blank or masked cell)
        return default
    if not (np.isfinite(ny) and ny > 0):
        raise AstroVLMError(f"size must be positive and finite (the size column holds {ny:g}).")
    if block["size_unit"] == "arcsec":
        return (ny * u.arcsec, nx * u.arcsec)
    return (int(round(ny)), int(round(nx)))


def _position(block: dict, index: int):
    a, b = block["a"][index], block["b"][index]
    if not (np.isfinite(a) and np.isfinite(b)):
        raise AstroVLMError("the row has no position (blank or NaN)")
    if block["kind"] == "sky":
        from astropy.coordinates import SkyCoord

        return SkyCoord(a, b, unit="deg", frame="icrs")
    return (a, b)


def _one(source, block: dict, index: int, size, stretch) -> dict:
    from ..cutouts import cutout_at
    from ..results import Result

    row, source_id = block["rows"][index], block["ids"][index]
    try:
        cutout = cutout_at(
            source, _position(block, index), _size(block, index, size), stretch=stretch, source_id=source_id
        )
    except AstroVLMError as error:
        return _record(row, source_id, block["file"], str(error), **_sky_of(block, index))
    known = Result(task="", provenance=cutout.provenance).to_row()
    known = {name: known[name] for name in PROVENANCE_COLUMNS if name not in ("source_id", "source")}
    return _record(
        row,
        source_id,
        block["file"],
        stretch=cutout.stretch_text(),
        image=np.asarray(cutout.to_image(), dtype=np.uint8),
        **known,
    )


def _sky_of(block: dict, index: int) -> dict:
    if block["kind"] == "sky":
        return {"ra": float(block["a"][index]), "dec": float(block["b"][index])}
    return {"x_pix": float(block["a"][index]), "y_pix": float(block["b"][index])}


def cut_block(block: dict, *, size=128, stretch=None, hdu=None) -> list[dict]:
    """One record per row of ``block`` (see `~glue_astrovlm.survey.catalog.work_blocks`), in order.

    A file that cannot be opened fails every row of the block with the reason; a row outside its
    image, on blank pixels or without a position fails alone. Nothing raises.
    """
    from ..sources import open_image
    from ..stretch import stretch_for

    path = block["file"]
    try:
        if not path:
            raise AstroVLMError("the row names no image file")
        source = open_image(path, hdu=hdu)
        if source.is_cube:
            raise AstroVLMError(f"{path} is a cube; survey runs cut 2-D images")
    except AstroVLMError as error:
        return [
            _record(row, source_id, path, str(error), **_sky_of(block, i))
            for i, (row, source_id) in enumerate(zip(block["rows"], block["ids"]))
        ]
    try:
        chosen = stretch_for(source, stretch)
        return [_one(source, block, i, size, chosen) for i in range(len(block["rows"]))]
    finally:
        source.close()
