"""Labelled image collections for `astrovlm eval` and `astrovlm finetune`.

Five forms of data on disk become one `ImageDataset`:

- a folder with one sub-folder per class (``FRI/``, ``FRII/``, ...) of PNG, JPEG or FITS images;
- a table (ECSV, CSV, FITS, VOTable) with a file column and a label column, optionally with
  ``ra``/``dec`` or ``x``/``y`` positions and a ``size`` for a cutout of each file;
- FITS images with a catalogue of positions and labels (`load_fits_catalog`);
- LLaVA-style conversation JSON (``[{"image": ..., "conversations": [{"from": "human", ...}]}]``),
  the format of AstroLLaVA and radio-llava;
- image-caption pairs: a table with file and caption columns, or JSON Lines.

Every item turns into a `~glue_astrovlm.Cutout` through the engine's own sources, cutouts and
stretch (`ImageItem.cutout`), so that evaluation, fine-tuning and the viewers see the same pixels.
Loaders check the data before any model work: missing or unreadable files, empty classes, unknown
labels and malformed conversations raise `~glue_astrovlm.AstroVLMError` naming the bad entries.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .catalogs import (CAPTION_COLUMNS, FILE_COLUMNS, LABEL_COLUMNS, PIXEL_COLUMNS, SKY_COLUMNS, find_column,
                       find_pair, read_table)
from .errors import AstroVLMError
from .labelsets import LabelSet
from .stretch import Stretch

__all__ = ["ImageItem", "ImageDataset", "load_dataset", "load_image_folders", "load_image_table",
           "load_fits_catalog", "load_llava_json", "load_captions", "check_images", "IMAGE_SUFFIXES", "DATASET_KINDS"]

log = logging.getLogger("glue_astrovlm")

#: File endings read as images (pictures through Pillow, the rest through astropy.io.fits).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".fits", ".fit", ".fts", ".fits.gz",
                  ".fits.bz2", ".fits.fz", ".fz")
#: What a dataset holds: class labels, multi-turn conversations or captions.
DATASET_KINDS = ("classification", "conversation", "caption")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant"}


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in IMAGE_SUFFIXES)


def _id_list(values: Sequence[str], limit: int = 10) -> str:
    values = [str(v) for v in values]
    text = ", ".join(values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset, with what it is labelled with.

    Parameters
    ----------
    path : pathlib.Path
        The image file (PNG, JPEG or FITS).
    label : str or None
        Class label (classification data).
    caption : str or None
        Caption (image-caption data).
    conversation : tuple of (role, text) or None
        Turns, ``role`` being ``'user'`` or ``'assistant'``; the image goes with the first user turn.
    position : tuple of float, `~astropy.coordinates.SkyCoord` or None
        Centre of the cutout, as 0-based ``(x, y)`` pixels or on the sky; `None` for the image centre.
    size : int, tuple of int, `~astropy.units.Quantity` or None
        Cutout size (as in `~glue_astrovlm.cutout_at`); `None` for the whole image.
    hdu : int, str or None
        FITS HDU.
    item_id : str
        Identifier, by default the file name without its suffix (plus the catalogue row).
    corrected : tuple of (bool or None) or None
        For each assistant turn of ``conversation``: the ``"corrected"`` flag an export by
        `~glue_astrovlm.write_llava_json` gives it (``False``: the model's own, uncorrected answer),
        `None` where the data does not say.
    """

    path: Path
    label: str | None = None
    caption: str | None = None
    conversation: tuple[tuple[str, str], ...] | None = None
    position: Any = None
    size: Any = None
    hdu: int | str | None = None
    item_id: str = ""
    corrected: tuple | None = None

    def cutout(self, stretch: Stretch | None = None, crop: float = 1.0):
        """The `~glue_astrovlm.Cutout` a model sees for this item.

        Parameters
        ----------
        stretch : Stretch, optional
            How pixel values become display levels; by default zscale (contrast 0.25) and linear for
            data, and the pixels as they are for rendered pictures (PNG, JPEG).
        crop : float
            Fraction of the image (or of the cutout size) kept around the centre, in (0, 1]. FIRST
            images put a small source in the middle of a 300-pixel field: ``crop=0.5`` keeps the
            central 150 pixels so that the source stays large after the processor's resize.
        """
        from .cutouts import cutout_at, whole_image
        from .sources import open_image

        if not 0 < crop <= 1:
            raise AstroVLMError(f"crop must be a fraction in (0, 1], got {crop}.")
        extra = {"file": str(self.path), "true_label": self.label or ""}
        with open_image(self.path, hdu=self.hdu) as source:  # the file is closed again, also on errors
            if self.position is None and self.size is None and crop == 1:
                cutout = whole_image(source, stretch=stretch)
            else:
                ny, nx = source.image_shape
                position = self.position if self.position is not None else ((nx - 1) / 2, (ny - 1) / 2)
                size = self.size if self.size is not None else (ny, nx)
                if crop != 1:
                    size = _scaled_size(size, crop)
                cutout = cutout_at(source, position, size, stretch=stretch, source_id=self.item_id)
        provenance = replace(cutout.provenance, source_id=self.item_id,
                             extra={**cutout.provenance.extra, **extra})
        return replace(cutout, provenance=provenance)

    def turns(self) -> tuple[tuple[str, str], ...]:
        """The conversation of a conversation or caption item (caption items ask `DESCRIBE_PROMPT`)."""
        if self.conversation is not None:
            return self.conversation
        if self.caption is not None:
            from .models.base import DESCRIBE_PROMPT

            return (("user", DESCRIBE_PROMPT), ("assistant", self.caption))
        raise AstroVLMError(f"{self.item_id} has no conversation or caption.")


def _scaled_size(size, crop: float):
    import astropy.units as u

    if isinstance(size, u.Quantity):
        return size * crop
    if isinstance(size, (tuple, list)):
        return tuple(max(1, int(round(s * crop))) for s in size)
    return max(1, int(round(size * crop)))


@dataclass
class ImageDataset:
    """A collection of images with labels, captions or conversations.

    Attributes
    ----------
    items : list of ImageItem
        The images, in a fixed order.
    kind : {'classification', 'conversation', 'caption'}
        What the items carry.
    source : str
        Where the data came from (folder, table or JSON path), for reports and model cards.
    labels : tuple of str
        The class labels present (classification), in the data's order (folder order, or first
        appearance in a table).
    """

    items: list[ImageItem]
    kind: str
    source: str = ""
    labels: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in DATASET_KINDS:
            raise AstroVLMError(f"Unknown dataset kind {self.kind!r}; use one of {', '.join(DATASET_KINDS)}.")
        if not self.items:
            raise AstroVLMError(f"The data set {self.source or ''} holds no images.".replace("  ", " "))
        if self.kind == "classification" and not self.labels:
            seen: list[str] = []
            for item in self.items:
                if item.label not in seen:
                    seen.append(item.label)
            self.labels = tuple(seen)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __repr__(self) -> str:
        what = f", labels={list(self.labels)}" if self.kind == "classification" else ""
        return f"<ImageDataset {self.kind} n={len(self)} from {self.source!r}{what}>"

    @property
    def true_labels(self) -> list[str]:
        """The label of every item (classification data)."""
        self._require_labels()
        return [item.label for item in self.items]

    def class_counts(self) -> dict[str, int]:
        """Images per label, in label order."""
        self._require_labels()
        counts = {label: 0 for label in self.labels}
        for item in self.items:
            counts[item.label] = counts.get(item.label, 0) + 1
        return counts

    def _require_labels(self) -> None:
        if self.kind != "classification":
            raise AstroVLMError(f"{self.source} holds {self.kind} data, not class labels; evaluation needs a "
                                "folder per class or a table with a label column.")

    def label_set(self, given: LabelSet | None = None) -> LabelSet:
        """The label set to train or evaluate with, checked against the data.

        Parameters
        ----------
        given : LabelSet, optional
            The user's label set; every label in the data must be one of its labels. By default a
            label set of the data's own labels with the default question.

        Raises
        ------
        AstroVLMError
            If the data hold labels that ``given`` lacks.
        """
        self._require_labels()
        if given is None:
            return LabelSet(tuple(self.labels))
        unknown = [label for label in self.labels if label not in given.labels]
        if unknown:
            raise AstroVLMError(f"The data in {self.source} have labels {unknown} that are not in the label set "
                                f"{list(given.labels)}. Rename the folders or label column, or pass --labels "
                                "with every class.")
        return given

    def sample(self, limit: int | None = None, seed: int = 0) -> "ImageDataset":
        """At most ``limit`` items drawn at random without replacement (the data's order is kept).

        ``limit=None`` returns the dataset itself. The draw depends only on ``seed``, so runs that
        compare models on a subset compare them on the same images.
        """
        if limit is None or limit >= len(self.items):
            return self
        if limit < 1:
            raise AstroVLMError(f"--limit must be at least 1, got {limit}.")
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(self.items), size=int(limit), replace=False))
        items = [self.items[i] for i in chosen]
        labels = tuple(label for label in self.labels if any(i.label == label for i in items))
        return ImageDataset(items, self.kind, self.source, labels or self.labels,
                            {**self.meta, "limit": int(limit), "seed": int(seed)})

    def describe(self) -> dict:
        """A JSON-ready summary: source, kind, number of images and images per class."""
        summary = {"source": self.source, "kind": self.kind, "n": len(self.items), **self.meta}
        if self.kind == "classification":
            summary["class_counts"] = self.class_counts()
        return summary


# ----------------------------------------------------------------------------- checks
def _check_files(paths: Iterable[Path], what: str) -> None:
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise AstroVLMError(f"{len(missing)} image(s) listed in {what} do not exist: {_id_list(missing)}. "
                            "Fix the paths (relative paths are read from the table's folder, or --image-root).")


def _unique_ids(items: list[ImageItem]) -> list[ImageItem]:
    """Make item ids unique (the same file may appear twice, e.g. two catalogue rows)."""
    seen: dict[str, int] = {}
    out = []
    for item in items:
        count = seen.get(item.item_id, 0)
        seen[item.item_id] = count + 1
        out.append(item if count == 0 else replace(item, item_id=f"{item.item_id}#{count}"))
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ----------------------------------------------------------------------------- loaders
def load_image_folders(root: str | os.PathLike, labels: Sequence[str] | None = None) -> ImageDataset:
    """A folder with one sub-folder of images per class.

    Parameters
    ----------
    root : path-like
        ``root/FRI/*.png``, ``root/FRII/*.fits``, ...: each sub-folder name is a label.
    labels : sequence of str, optional
        Only these classes (sub-folders), in this order; by default every sub-folder, sorted by name.

    Raises
    ------
    AstroVLMError
        If the folder does not exist, has no class folders, a class folder holds no image, or a
        requested class has no folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AstroVLMError(f"No such folder: {root}.")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: (p.name.casefold(), p.name))
    if labels is not None:
        by_name = {p.name: p for p in folders}
        absent = [label for label in labels if label not in by_name]
        if absent:
            raise AstroVLMError(f"{root} has no class folder for {absent}; its class folders are "
                                f"{[p.name for p in folders]}.")
        folders = [by_name[label] for label in labels]
    if not folders:
        raise AstroVLMError(f"{root} has no class sub-folders. Put the images of each class in a folder named "
                            "after the class (e.g. data/FRI/*.png, data/FRII/*.png).")
    items, empty, ignored = [], [], []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if _is_image_file(p)]
        ignored += [p.name for p in files if not _is_image_file(p)]
        if not images:
            empty.append(folder.name)
        items += [ImageItem(path=p, label=folder.name, item_id=f"{folder.name}/{_stem(p)}") for p in images]
    if empty:
        raise AstroVLMError(f"Class folder(s) {empty} in {root} hold no PNG, JPEG or FITS image. Remove the "
                            "empty folders or add images.")
    if ignored:
        log.warning("Ignored %d file(s) in %s that are not images: %s", len(ignored), root, _id_list(ignored))
    return ImageDataset(items, "classification", str(root), tuple(f.name for f in folders))


def _cell(value) -> str:
    if np.ma.is_masked(value):
        return ""
    if isinstance(value, bytes):
        value = value.decode()
    return str(value).strip()


def _row_position(table, row, ra_col, dec_col, x_col, y_col):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    if ra_col and dec_col:
        ra, dec = table[ra_col][row], table[dec_col][row]
        frame = "galactic" if ra_col.lower() == "glon" else "icrs"
        if isinstance(ra, str):
            return SkyCoord(ra, dec, unit=(u.hourangle, u.deg), frame=frame)
        return SkyCoord(float(ra), float(dec), unit=(table[ra_col].unit or u.deg, table[dec_col].unit or u.deg),
                        frame=frame)
    if x_col and y_col:
        return (float(table[x_col][row]), float(table[y_col][row]))
    return None


def _table_columns(table, path, file_col, label_col, caption_col) -> dict:
    """The columns a dataset table is read by; explicit names win over the shared vocabulary."""
    columns = {"file": find_column(table, FILE_COLUMNS, file_col, path),
               "label": find_column(table, LABEL_COLUMNS, label_col, path),
               "caption": find_column(table, CAPTION_COLUMNS, caption_col, path),
               "sky": find_pair(table, SKY_COLUMNS), "pixel": find_pair(table, PIXEL_COLUMNS),
               "size": find_column(table, ["size"]), "hdu": find_column(table, ["hdu"])}
    if columns["file"] is None:
        raise AstroVLMError(f"{path} has no file column ({'/'.join(FILE_COLUMNS)}); columns are "
                            f"{', '.join(table.colnames)}.")
    if columns["label"] is None and columns["caption"] is None:
        raise AstroVLMError(f"{path} has neither a label column ({'/'.join(LABEL_COLUMNS)}) nor a caption column "
                            f"({'/'.join(CAPTION_COLUMNS)}); columns are {', '.join(table.colnames)}.")
    return columns


def _table_item(table, row: int, columns: dict, root: Path, size) -> ImageItem | None:
    """The item of one table row, or `None` when its file name or label/caption is empty."""
    name = _cell(table[columns["file"]][row])
    file = Path(name).expanduser()
    file = file if file.is_absolute() else root / file
    labelled = columns["label"] is not None
    value = _cell(table[columns["label"] if labelled else columns["caption"]][row])
    if not name or not value:
        return None
    sky, pixel = columns["sky"] or (None, None), columns["pixel"] or (None, None)
    position = _row_position(table, row, *sky, *pixel)
    row_size = int(table[columns["size"]][row]) if columns["size"] is not None and position is not None else None
    if position is not None and row_size is None:
        row_size = size if size is not None else 128
    hdu = _cell(table[columns["hdu"]][row]) if columns["hdu"] is not None else None
    hdu = int(hdu) if hdu is not None and hdu.lstrip("-").isdigit() else (hdu or None)
    item_id = _stem(file) if position is None else f"{_stem(file)}:{row}"
    return ImageItem(path=file, label=value if labelled else None, caption=None if labelled else value,
                     position=position, size=row_size, hdu=hdu, item_id=item_id)


def load_image_table(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                     file_col: str | None = None, label_col: str | None = None,
                     caption_col: str | None = None, size=None) -> ImageDataset:
    """A table of image files with labels (classification) or captions (image-caption pairs).

    Parameters
    ----------
    path : path-like
        ECSV, CSV (with a header line), FITS, VOTable or Parquet.
    image_root : path-like, optional
        Folder that relative file names are read from; by default the table's folder.
    file_col, label_col, caption_col : str, optional
        Column names; by default the first of `~glue_astrovlm.catalogs.FILE_COLUMNS`,
        ``LABEL_COLUMNS`` and ``CAPTION_COLUMNS`` (``file``, ``label``/``class``, ``caption``, ...).
    size : int, tuple or `~astropy.units.Quantity`, optional
        Cutout size for rows with a position (any RA/Dec or pixel pair of the shared catalogue
        vocabulary, `~glue_astrovlm.catalogs.SKY_COLUMNS` / ``PIXEL_COLUMNS``); a ``size`` column
        (pixels) wins. Rows with a position and no size get 128 pixels.

    Raises
    ------
    AstroVLMError
        Missing columns, empty labels or captions, or files that do not exist.
    """
    path = Path(path).expanduser()
    table = read_table(path, "dataset table")
    if len(table) == 0:
        raise AstroVLMError(f"The table {path} has no rows.")
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    columns = _table_columns(table, path, file_col, label_col, caption_col)
    items, empty_rows = [], []
    for row in range(len(table)):
        item = _table_item(table, row, columns, root, size)
        if item is None:
            empty_rows.append(str(row))
        else:
            items.append(item)
    if empty_rows:
        what = "label" if columns["label"] else "caption"
        raise AstroVLMError(f"Rows {_id_list(empty_rows)} of {path} have an empty file name or {what}. Every "
                            "image must be labelled; remove those rows or fill them in.")
    _check_files([item.path for item in items], str(path))
    kind = "classification" if columns["label"] else "caption"
    return ImageDataset(_unique_ids(items), kind, str(path))


def load_fits_catalog(image: str | os.PathLike, catalog, *, label_col: str | None = None, size=64,
                      hdu: int | str | None = None) -> ImageDataset:
    """Labelled cutouts of one FITS image at the positions of a catalogue.

    Parameters
    ----------
    image : path-like
        The FITS image (sky positions need its celestial WCS).
    catalog : path-like or `~astropy.table.Table`
        Rows with ``ra``/``dec`` (degrees, or any pair that `~glue_astrovlm.cutouts_from_catalog`
        recognises) or ``x``/``y`` pixels, and a label column.
    label_col : str, optional
        Label column; by default ``label``/``class``.
    size : int, tuple or `~astropy.units.Quantity`
        Cutout size (default 64 pixels).
    hdu : int or str, optional
        FITS HDU.

    Raises
    ------
    AstroVLMError
        Unreadable image or catalogue, no label column, rows without a label, or rows outside the image.
    """
    from astropy.table import Table

    from .cutouts import cutouts_from_catalog
    from .sources import open_image

    image = Path(image).expanduser()
    source = open_image(image, hdu=hdu)
    table = read_table(catalog)
    where = catalog if not isinstance(catalog, Table) else "the catalogue"
    label_col = find_column(table, LABEL_COLUMNS, label_col, where)
    if label_col is None:
        raise AstroVLMError(f"{where} has no label column ({'/'.join(LABEL_COLUMNS)}); columns are "
                            f"{', '.join(table.colnames)}. Pass --label-column.")
    labels = [_cell(v) for v in table[label_col]]
    unlabelled = [str(i) for i, label in enumerate(labels) if not label]
    if unlabelled:
        raise AstroVLMError(f"Rows {_id_list(unlabelled)} of {where} have no label; every image must be labelled.")
    # Positions are checked (inside the image, finite pixels) by the engine's catalogue cutouts:
    # a row that cannot be cut raises here rather than being skipped later.
    cutouts = cutouts_from_catalog(source, table, size=size)
    items = []
    for cutout in cutouts:
        row = cutout.provenance.extra["row"]
        position = cutout.provenance.center_sky if cutout.provenance.center_sky is not None \
            else cutout.provenance.center_pixel
        items.append(ImageItem(path=image, label=labels[row], position=position, size=size, hdu=hdu,
                               item_id=f"{_stem(image)}:{cutout.provenance.source_id}"))
    return ImageDataset(_unique_ids(items), "classification", f"{image} + {where}")


def _conversation_turns(entry: dict, index: int, path: Path) -> tuple[tuple[str, str], ...]:
    turns = entry.get("conversations", entry.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise AstroVLMError(f"Entry {index} of {path} has no 'conversations' list.")
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise AstroVLMError(f"Entry {index} of {path}: each turn must be an object with 'from' and 'value'.")
        role = _ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        text = turn.get("value", turn.get("content"))
        if role is None or not isinstance(text, str):
            raise AstroVLMError(f"Entry {index} of {path}: turn {turn!r} needs 'from' (human/gpt) and a text "
                                "'value'.")
        text = text.replace("<image>", "").strip()
        if not text:
            raise AstroVLMError(f"Entry {index} of {path} has an empty {role} turn.")
        out.append((role, text))
    if out[0][0] != "user":
        raise AstroVLMError(f"Entry {index} of {path} must start with a human turn.")
    for previous, current in zip(out, out[1:]):
        if previous[0] == current[0]:
            raise AstroVLMError(f"Entry {index} of {path}: turns must alternate between human and gpt.")
    if not any(role == "assistant" for role, _ in out):
        raise AstroVLMError(f"Entry {index} of {path} has no gpt (answer) turn to learn from.")
    return tuple(out)


def _corrected_flags(entry: dict) -> tuple:
    """The ``"corrected"`` flag of each assistant turn (`write_llava_json` writes it), None if absent."""
    flags = []
    for turn in entry.get("conversations", entry.get("messages")) or []:
        if not isinstance(turn, dict):
            continue
        if _ROLES.get(str(turn.get("from", turn.get("role", ""))).lower()) == "assistant":
            flag = turn.get("corrected")
            flags.append(flag if isinstance(flag, bool) else None)
    return tuple(flags)


def load_llava_json(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> ImageDataset:
    """LLaVA-style conversation data (AstroLLaVA, radio-llava).

    Parameters
    ----------
    path : path-like
        A JSON list of ``{"id": ..., "image": "rel/path.png", "conversations": [{"from": "human",
        "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}``; a JSON Lines
        file with one such object per line works too.
    image_root : path-like, optional
        Folder that image paths are relative to; by default the JSON file's folder.

    Notes
    -----
    The ``<image>`` placeholder is removed from the text: the image always goes with the first human
    turn, where the model's chat template puts it.
    """
    path = Path(path).expanduser()
    entries = _read_json_entries(path)
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    items = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("image"):
            raise AstroVLMError(f"Entry {index} of {path} has no 'image'; every conversation needs one image.")
        image = entry["image"]
        if isinstance(image, list):
            if len(image) != 1:
                raise AstroVLMError(f"Entry {index} of {path} has {len(image)} images; one image per conversation "
                                    "is supported.")
            image = image[0]
        file = Path(image).expanduser()
        file = file if file.is_absolute() else root / file
        items.append(ImageItem(path=file, conversation=_conversation_turns(entry, index, path),
                               item_id=str(entry.get("id", _stem(file))),
                               corrected=_corrected_flags(entry)))
    _check_files([item.path for item in items], str(path))
    return ImageDataset(_unique_ids(items), "conversation", str(path))


def _read_json_entries(path: Path) -> list:
    if not path.is_file():
        raise AstroVLMError(f"No such file: {path}.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".jsonl":
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise AstroVLMError(f"{path} is not valid JSON: {error}.") from None
    if isinstance(entries, dict):
        entries = entries.get("data", entries.get("annotations", [entries]))
    if not isinstance(entries, list) or not entries:
        raise AstroVLMError(f"{path} holds no entries; expected a list of objects.")
    return entries


def load_captions(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> ImageDataset:
    """Image-caption pairs from a table (file and caption columns) or JSON Lines (``image``, ``caption``).

    Parameters
    ----------
    path : path-like
        ``.jsonl`` (or ``.json``) with ``{"image": ..., "caption": ...}`` objects, or a table.
    image_root : path-like, optional
        Folder that relative image paths are read from; by default the file's folder.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in {".jsonl", ".json"}:
        dataset = load_image_table(path, image_root=image_root)
        if dataset.kind != "caption":
            raise AstroVLMError(f"{path} has labels, not captions; it is classification data.")
        return dataset
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    items = []
    for index, entry in enumerate(_read_json_entries(path)):
        image = entry.get("image", entry.get("file")) if isinstance(entry, dict) else None
        caption = entry.get("caption", entry.get("text")) if isinstance(entry, dict) else None
        if not image or not isinstance(caption, str) or not caption.strip():
            raise AstroVLMError(f"Entry {index} of {path} needs an 'image' and a non-empty 'caption'.")
        file = Path(image).expanduser()
        file = file if file.is_absolute() else root / file
        items.append(ImageItem(path=file, caption=caption.strip(), item_id=_stem(file)))
    _check_files([item.path for item in items], str(path))
    return ImageDataset(_unique_ids(items), "caption", str(path))


def load_dataset(spec: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                 labels: Sequence[str] | None = None) -> ImageDataset:
    """Open training or evaluation data, recognising its form from the path.

    - a folder: one sub-folder per class (`load_image_folders`);
    - ``.json``: LLaVA conversations (`load_llava_json`), or captions when entries have ``caption``;
    - ``.jsonl``: captions, or conversations when lines have ``conversations``;
    - any other file: a table with a label or a caption column (`load_image_table`).

    For FITS images with a catalogue of positions use `load_fits_catalog`.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_image_folders(path, labels)
    if not path.exists():
        raise AstroVLMError(f"No such data folder or file: {path}.")
    suffix = path.suffix.lower()
    if suffix in {".json", ".jsonl"}:
        entries = _read_json_entries(path)
        first = entries[0] if isinstance(entries[0], dict) else {}
        if "conversations" in first or "messages" in first:
            return load_llava_json(path, image_root=image_root)
        return load_captions(path, image_root=image_root)
    return load_image_table(path, image_root=image_root)


# ----------------------------------------------------------------------------- image checks
def _image_problem(item: ImageItem, crop: float) -> str | None:
    """Why ``item`` cannot be shown to a model (unreadable, outside the image, blank), or `None`."""
    try:
        data = item.cutout(crop=crop).data  # decodes the file and cuts as training does; no stretch
    except AstroVLMError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - image decoders raise many types; each is reported
        return f"cannot be read ({type(error).__name__}: {error})"
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return "holds no finite pixel (all NaN or blank)"
    if finite.min() == finite.max():
        return f"is blank: every pixel is {finite.flat[0]:g}"
    return None


def check_images(dataset: ImageDataset, *, crop: float = 1.0, what: str = "", limit: int = 10) -> None:
    """Read every image of ``dataset`` as a model gets it, and report all that cannot be used at once.

    Each file is decoded (PNG, JPEG or FITS, with its HDU), its cutout is cut (a catalogue position
    must fall inside the image) and its pixels must not be blank (all NaN, or all one value). Pixels
    are not kept, and nothing is stretched, so that a whole data set is checked in seconds before a
    model loads.

    Parameters
    ----------
    dataset : ImageDataset
    crop : float
        Central fraction kept, as in training (see `ImageItem.cutout`).
    what : str
        What the data are for the message, e.g. ``'training'`` or ``'validation'``.
    limit : int
        How many bad images the message lists (all are counted).

    Raises
    ------
    AstroVLMError
        If any image cannot be used; the message names the first ``limit`` with the reason, and the count.
    """
    from concurrent.futures import ThreadPoolExecutor

    bad = []
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # decoders release the GIL
        problems = list(pool.map(lambda item: _image_problem(item, crop), dataset.items))
    for item, problem in zip(dataset.items, problems):
        if problem is not None:
            bad.append(f"{item.item_id} ({item.path}): {problem}" if str(item.path) not in problem
                       else f"{item.item_id}: {problem}")
    if bad:
        more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
        listed = "\n  ".join(bad[:limit]) + more
        name = f"{what} images" if what else "images"
        raise AstroVLMError(f"{len(bad)} of the {len(dataset)} {name} in {dataset.source} cannot be used:\n  "
                            f"{listed}\nReplace or remove them, then run again.")
