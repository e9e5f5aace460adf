"""Images the engine can cut from: FITS files (plain or compressed), PNG/JPEG, NDData and arrays.

Everything that reads pixels goes through :class:`ImageSource`, which keeps big FITS images on disk
(memory-mapped, or as a lazy ``section`` for scaled and tile-compressed data) so that a 256-pixel
cutout of a 20,000-pixel mosaic reads only the rows it needs.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import AstroVLMError
from .limits import check_memory

if TYPE_CHECKING:
    import astropy.units as u
    from astropy.wcs import WCS

__all__ = ["ImageSource", "open_image", "from_nddata", "from_array", "as_image_source", "rgb_composite",
           "usable_celestial_wcs", "parse_unit", "block_average"]

log = logging.getLogger(__name__)

#: File name endings read with Pillow rather than astropy.io.fits.
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
#: Whole-file compression that astropy decompresses into memory (no memory mapping possible).
_STREAM_COMPRESSED = (".gz", ".bz2", ".zip")


@dataclass(frozen=True, eq=False)
class ImageSource:
    """Pixels and their coordinates, as read from a file, glue/jdaviz data, NDData or an array.

    Parameters
    ----------
    data : array-like
        Pixel values, row 0 at the bottom: ``(ny, nx)`` for an image, ``(nspec, ny, nx)`` (numpy
        order) for a cube, or ``(3, ny, nx)`` for an R, G, B composite (``rgb=True``). May be a
        numpy memmap or a lazy FITS ``section``; read pixels with :meth:`read`.
    wcs : `~astropy.wcs.WCS` or None
        The celestial WCS for an image or composite, the full WCS for a cube.
    label : str
        File path or data label, copied into each cutout's provenance.
    hdu : int, str or None
        FITS HDU index (or name, as the user gave it) the pixels came from.
    unit : str or None
        Unit of the pixel values (``BUNIT``), e.g. ``'MJy/sr'``.
    rgb : bool
        `True` when ``data`` holds three colour bands (R, G, B) rather than a cube.
    cube : str or None
        How a cube became this image (``'slice 12'``, ``'moment0 3:9 (...)'``), set by
        :func:`glue_astrovlm.cubes.reduce_cube`.
    display : bool
        `True` for a picture already rendered for display (an 8-bit PNG or JPEG): by default it goes
        to the model as it is, not stretched (`glue_astrovlm.stretch.stretch_for`).
    """

    data: Any = field(repr=False)
    wcs: Any = field(default=None, repr=False)
    label: str = "array"
    hdu: int | str | None = None
    unit: str | None = None
    rgb: bool = False
    cube: str | None = None
    display: bool = False
    _hdul: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        shape = tuple(int(n) for n in self.data.shape)
        ndim = len(shape)
        if ndim < 2:
            raise AstroVLMError(f"{self.label}: expected a 2-D image or a 3-D cube, got {ndim} dimension(s) "
                                f"with shape {shape} (a spectrum or a table column?); give pixels as "
                                "(ny, nx), e.g. a.reshape(ny, nx).")
        if ndim > 3:
            raise AstroVLMError(f"{self.label}: expected a 2-D image or a 3-D cube, got {ndim} dimensions "
                                f"with shape {shape}; take one plane of the extra axes first, e.g. a[0].")
        if 0 in shape:
            raise AstroVLMError(f"{self.label} has no pixels (shape {shape}); give a non-empty image.")
        dtype = getattr(self.data, "dtype", None)
        if dtype is not None:
            _check_pixel_type(np.dtype(dtype), self.label)
        if self.rgb and (ndim != 3 or self.data.shape[0] != 3):
            raise AstroVLMError(f"{self.label}: an RGB source needs data of shape (3, ny, nx), "
                                f"got {tuple(self.data.shape)}.")

    def __repr__(self) -> str:
        kind = "rgb" if self.rgb else ("cube" if self.is_cube else "image")
        wcs = "celestial WCS" if self.celestial_wcs is not None else "no celestial WCS"
        extra = f", cube={self.cube!r}" if self.cube else ""
        return (f"<ImageSource {self.label!r} hdu={self.hdu!r} {kind} shape={self.shape} "
                f"unit={self.unit!r} {wcs}{extra}>")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``data`` in numpy order."""
        return tuple(int(n) for n in self.data.shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions of ``data`` (3 for cubes and RGB composites)."""
        return len(self.shape)

    @property
    def is_cube(self) -> bool:
        """`True` for a 3-D cube (not an RGB composite), which needs a slice or collapse first."""
        return self.ndim == 3 and not self.rgb

    @property
    def is_rgb(self) -> bool:
        """`True` for a three-band R, G, B source."""
        return self.rgb

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the image plane."""
        return self.shape[-2:]

    @property
    def astropy_unit(self) -> "u.UnitBase | None":
        """``unit`` as an `astropy.units.Unit`, or `None` when absent or not understood.

        Accepts the upper-case FITS spellings radio data use (``'JY/BEAM'``).
        """
        return parse_unit(self.unit)

    @cached_property
    def celestial_wcs(self) -> "WCS | None":
        """The 2-D celestial `~astropy.wcs.WCS` of the image plane, or `None` when there is none usable.

        A WCS counts as usable when it has celestial axes (RA/Dec, Galactic, ...) with a real pixel
        scale; a default or purely linear pixel WCS does not.
        """
        if self.wcs is None:
            return None
        if self.is_cube:
            # keep the data's axis order (wcs.celestial may swap lon/lat)
            cube_wcs = self.wcs
            spec = cube_wcs.wcs.spec
            if spec >= 0 and cube_wcs.naxis == 3:
                return usable_celestial_wcs(cube_wcs.dropaxis(spec))
            return usable_celestial_wcs(cube_wcs.celestial if cube_wcs.has_celestial else None)
        return usable_celestial_wcs(self.wcs)

    def read(self, key: Any = Ellipsis) -> np.ndarray:
        """Read pixels as floats (FITS integer ``BLANK`` pixels are NaN).

        Only the requested part is read from disk. Use basic indexing only (integers and slices).

        Parameters
        ----------
        key : index, optional
            Numpy basic index into ``data``, e.g. ``np.s_[100:356, 200:456]``; the whole array by default.

        Returns
        -------
        numpy.ndarray
            Float32 for 8- and 16-bit integer and float32 data, float64 otherwise.
        """
        if key is Ellipsis:
            key = (slice(None),) * self.ndim
        values = np.asarray(self.data[key])
        return np.asarray(values, dtype=_float_type(values.dtype))

    def close(self) -> None:
        """Close the FITS file behind lazy data (memory-mapped arrays stay valid while referenced)."""
        if self._hdul is not None:
            self._hdul.close()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_pixel_type(dtype: np.dtype, label: str) -> None:
    """Refuse values that are not real numbers, saying how to turn them into pixels."""
    if dtype.kind in "fiu":
        return
    fixes = {
        "c": "complex values; pass np.abs(a) for the amplitude or a.real for the real part",
        "b": "booleans (a mask?), not pixel values; pass a.astype(np.float32) to show it as 0/1",
        "U": "text, not pixel values; convert it with a.astype(float) if the strings are numbers",
        "S": "bytes, not pixel values; convert it with a.astype(float) if they are numbers",
        "O": "Python objects (dtype=object), not numbers, e.g. from ragged lists or None values; give a "
             "numeric array such as np.asarray(a, dtype=float)",
        "V": "structured records; pass one numeric field, e.g. a['flux']",
        "M": "dates, not pixel values",
        "m": "time intervals, not pixel values",
    }
    raise AstroVLMError(f"{label} holds {fixes.get(dtype.kind, f'values of type {dtype}, not numbers')} "
                        f"(dtype {dtype}).")


def _float_type(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype.newbyteorder("=")
    return np.result_type(dtype, np.float32)


def parse_unit(text: str | None) -> "u.UnitBase | None":
    """An `astropy.units.Unit` from a ``BUNIT``-style string, or `None` when it is not understood."""
    import astropy.units as u

    if not text:
        return None
    candidates = (text, text.replace("JY", "Jy").replace("BEAM", "beam").replace("PIXEL", "pix"))
    for candidate in candidates:
        for fmt in (None, "fits"):
            try:
                return u.Unit(candidate, format=fmt)
            except ValueError:
                continue
    return None


def usable_celestial_wcs(wcs: "WCS | None") -> "WCS | None":
    """Return ``wcs`` if it is a usable 2-D celestial WCS, else `None`.

    Parameters
    ----------
    wcs : `~astropy.wcs.WCS` or None
        A two-axis WCS.

    Notes
    -----
    Rejected: no celestial axes, linear/pixel axes, and the all-default transformation (unit pixel
    scale in degrees at the origin) that astropy builds from headers with ``CTYPE`` but no scale.
    Plate solutions that wcslib translates (e.g. DSS ``PLTRAH``/``AMDX`` keywords) are accepted.
    """
    from astropy.wcs import WCS

    if wcs is None or not isinstance(wcs, WCS) or wcs.naxis != 2 or not wcs.has_celestial:
        return None
    core = wcs.wcs
    if any(not ctype.strip() for ctype in core.ctype):
        return None
    default_scale = (not core.has_cd()) and np.allclose(np.abs(core.cdelt), 1.0) \
        and np.allclose(core.get_pc(), np.eye(2))
    if default_scale and np.allclose(core.crval, 0.0) and np.allclose(core.crpix, 0.0):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            world = wcs.wcs_pix2world([[0.0, 0.0]], 0)
    except Exception:
        return None
    if not np.all(np.isfinite(world)):
        return None
    return wcs


def _quiet_wcs(header, fobj=None):
    """`~astropy.wcs.WCS` from a header, without the warnings astropy raises for old headers."""
    from astropy.io.fits.verify import VerifyWarning
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", VerifyWarning)
        try:
            return WCS(header, fobj=fobj)
        except Exception:
            try:
                return WCS(header)
            except Exception:
                return None


def _hdu_name(index: int, hdu) -> str:
    name = hdu.name or ""
    return f"{index} ({name})" if name else str(index)


def _has_image(hdu) -> bool:
    return bool(getattr(hdu, "is_image", False)) and hdu.header.get("NAXIS", 0) >= 2 and \
        all(n > 0 for n in (hdu.shape or ())) and len(hdu.shape or ()) >= 2


def _image_hdus_text(hdul) -> str:
    images = [f"{_hdu_name(i, h)} {' x '.join(str(n) for n in h.shape[::-1])}"
              for i, h in enumerate(hdul) if _has_image(h)]
    return ", ".join(images) if images else "none"


def _select_hdu(hdul, hdu, path: str):
    from astropy.io.fits import CompImageHDU

    if hdu is None:
        for index, candidate in enumerate(hdul):
            if _has_image(candidate):
                return index, candidate
        kinds = ", ".join(f"{_hdu_name(i, h)}: {type(h).__name__}" for i, h in enumerate(hdul))
        raise AstroVLMError(f"{path} holds no image with 2 or more dimensions (HDUs: {kinds}); "
                            "open a FITS file with image data.")
    try:
        chosen = hdul[hdu]
    except (KeyError, IndexError):
        names = ", ".join(_hdu_name(i, h) for i, h in enumerate(hdul))
        raise AstroVLMError(f"{path} has no HDU {hdu!r}; its HDUs are {names}. Image HDUs: "
                            f"{_image_hdus_text(hdul)}.") from None
    index = hdul.index(chosen)
    if not _has_image(chosen):
        kind = "a table" if not getattr(chosen, "is_image", False) and not isinstance(chosen, CompImageHDU) \
            else f"no 2-D image (NAXIS={chosen.header.get('NAXIS', 0)})"
        raise AstroVLMError(f"HDU {hdu!r} of {path} holds {kind}, not an image. Choose one of the image "
                            f"HDUs: {_image_hdus_text(hdul)}.")
    return index, chosen


def _is_scaled(hdu) -> bool:
    """Whether reading converts stored values (BSCALE/BZERO, or integer BLANK pixels to NaN)."""
    header = hdu.header
    integer_blank = header.get("BITPIX", 0) > 0 and "BLANK" in header
    return header.get("BSCALE", 1) != 1 or header.get("BZERO", 0) != 0 or integer_blank


class _DroppedAxes:
    """Lazy view of an array-like with length-1 axes (e.g. radio Stokes/frequency) dropped."""

    def __init__(self, base, drop: Sequence[int]):
        self.base = base
        self.drop = tuple(sorted(drop))
        self.shape = tuple(int(n) for i, n in enumerate(base.shape) if i not in self.drop)
        self.dtype = base.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
        if ellipsis:
            i = ellipsis[0]
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        full = list(key) + [slice(None)] * (self.ndim - len(key))
        for axis in self.drop:
            full.insert(axis, 0)
        return self.base[tuple(full)]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[(slice(None),) * self.ndim], dtype=dtype)


def _axis_names(wcs, ndim: int) -> list[str]:
    """Names of the numpy axes (``['STOKES', 'FREQ', 'DEC', 'RA']``) from the WCS, else ``'axis 0'``..."""
    ctypes = list(wcs.wcs.ctype) if wcs is not None and wcs.naxis == ndim else [""] * ndim
    return [ctypes[ndim - 1 - i].split("-")[0] or f"axis {i}" for i in range(ndim)]


def _drop_degenerate_axes(data, wcs, label: str):
    """Drop length-1 axes in front of the image plane (radio Stokes/frequency) from the data and the WCS.

    They may sit anywhere before the last two (numpy) axes: ``(1, nspec, ny, nx)``, ``(nspec, 1, ny, nx)``
    and ``(1, 1, ny, nx)`` become a cube, a cube and an image.
    """
    shape = tuple(int(n) for n in data.shape)
    ndim = len(shape)
    drop = [i for i in range(ndim - 2) if shape[i] == 1]
    if ndim - len(drop) > 3:
        lengths = ", ".join(f"{name} {n}" for name, n in zip(_axis_names(wcs, ndim), shape))
        raise AstroVLMError(f"{label}: data of shape {shape} ({lengths}, numpy order) has more than 3 "
                            "non-degenerate axes; write out a 2-D image or a 3-D cube first, e.g. one "
                            "Stokes plane with data[0].")
    if not drop:
        return data, wcs
    if wcs is not None and wcs.naxis <= ndim:
        keep = [ndim - i for i in range(ndim) if i not in drop]  # FITS axis numbers, 1-based
        wcs = wcs.sub(sorted(k for k in keep if k <= wcs.naxis))
    if isinstance(data, np.ndarray):
        return np.squeeze(data, axis=tuple(drop)), wcs  # a view: memory maps stay memory maps
    return _DroppedAxes(data, drop), wcs


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (astropy's and Pillow's may span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def _image_data(chosen, path: Path, label: str):
    """The pixels of an image HDU as lazily as its storage allows, with the last pixel read as a check."""
    from astropy.io.fits import CompImageHDU
    from astropy.utils.exceptions import AstropyUserWarning

    header = chosen.header
    if isinstance(chosen, CompImageHDU):
        data = chosen.section  # decompresses only the tiles a cutout touches
    elif path.suffix.lower() in _STREAM_COMPRESSED:
        check_memory(chosen.shape, itemsize=abs(int(header.get("BITPIX", 64))) // 8, copies=2,
                     what=f"Decompressing {label}",
                     shrink="decompress it to a plain .fits file first (e.g. with gunzip or bunzip2), which "
                            "is then read from disk only where cutouts need it")
        data = chosen.data  # decompressed into memory: gzip/bzip2 streams cannot be mapped
    elif _is_scaled(chosen):
        data = chosen.section  # applies BSCALE/BZERO and BLANK (as NaN) to the rows that are read
    else:
        with warnings.catch_warnings():
            # files larger than the address space allows read-only are mapped copy-on-write instead
            warnings.filterwarnings("ignore", "Could not memory map array", AstropyUserWarning)
            data = chosen.data  # memory-mapped
    # touch the last pixel so that truncated files fail here, not in the middle of a batch
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "File may have been truncated", AstropyUserWarning)
        np.asarray(data[tuple(n - 1 for n in data.shape)])
    return data


def _open_fits(path: Path, hdu) -> ImageSource:
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning
    from astropy.utils.exceptions import AstropyUserWarning

    label = str(path)
    try:
        with warnings.catch_warnings():
            # truncated or padded files warn before they fail; the error below says it in one line
            warnings.simplefilter("ignore", VerifyWarning)
            warnings.simplefilter("ignore", AstropyUserWarning)
            # memmap=None maps uncompressed data as memmap=True would, but lets sections of scaled
            # (BSCALE/BZERO/BLANK) images be read; astropy refuses those under an explicit memmap=True
            hdul = fits.open(path, memmap=None, lazy_load_hdus=False)
    except (OSError, ValueError, TypeError, EOFError, IndexError) as exc:
        raise AstroVLMError(f"Could not read {label} as FITS ({_one_line(exc)}). Check that the file is "
                            "complete and is FITS (.fits, .fits.gz, .fits.bz2, .fz) or PNG/JPEG.") from None
    try:
        index, chosen = _select_hdu(hdul, hdu, label)
        header = chosen.header
        try:
            data = _image_data(chosen, path, label)
        except (OSError, ValueError, TypeError, IndexError, EOFError) as exc:
            raise AstroVLMError(f"Could not read the image data of {label} (HDU {hdu!r}): {_one_line(exc)}. "
                                "The file may be truncated or corrupt; download it again.") from None
        wcs = _quiet_wcs(header, fobj=hdul)
        data, wcs = _drop_degenerate_axes(data, wcs, label)
        if wcs is not None and len(data.shape) == 2:
            wcs = usable_celestial_wcs(wcs.celestial if wcs.naxis != 2 and wcs.has_celestial else wcs)
        unit = header.get("BUNIT") or None
        chosen_hdu = index if hdu is None or isinstance(hdu, (int, np.integer)) else hdu
        return ImageSource(data=data, wcs=wcs, label=label, hdu=chosen_hdu, unit=unit, _hdul=hdul)
    except AstroVLMError:
        hdul.close()
        raise


def _open_picture(path: Path) -> ImageSource:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            width, height = picture.size
            check_memory((height, width), bands=3, itemsize=4, copies=3,
                         what=f"Decoding the {width} x {height} pixel picture {path}",
                         shrink="convert it to FITS (read from disk only where cutouts need it) or scale "
                                "it down")
            display = picture.mode not in ("I", "I;16", "I;16B", "I;16L", "F")  # 8 bits a channel
            if picture.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                pixels = np.asarray(picture, dtype=np.float32)
            else:
                pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    except Image.DecompressionBombError as exc:
        raise AstroVLMError(f"{path} is too large a picture to decode safely ({_one_line(exc)}); convert it "
                            "to FITS or scale it down.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise AstroVLMError(f"Could not read {path} as an image ({_one_line(exc)}). Check that the file is a "
                            "complete PNG/JPEG or FITS file; download or export it again.") from None
    if pixels.ndim == 3:
        if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]):
            pixels = pixels[..., 0]  # a greyscale picture saved as RGB
        else:
            pixels = np.ascontiguousarray(np.moveaxis(pixels, -1, 0)[:, ::-1])
            return ImageSource(data=pixels, label=str(path), rgb=True, display=display)
    return ImageSource(data=np.ascontiguousarray(pixels[::-1]), label=str(path), display=display)


#: First bytes of the picture formats Pillow reads here (WebP also has "WEBP" at byte 8).
_PICTURE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a", b"BM",
                  b"RIFF")
_FITS_MAGIC = b"SIMPLE"
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"PK\x03\x04")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _check_regular_file(path: Path) -> bytes:
    """Refuse, from ``stat`` alone, what is not a non-empty regular file; return a file's first bytes."""
    try:
        info = path.stat()  # follows symbolic links; never opens the file
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise AstroVLMError(f"No such file: {path}{where}. Check the path.") from None
    except OSError as exc:
        raise AstroVLMError(f"Cannot open {path}: {exc.strerror or _one_line(exc)}. Check the path and "
                            "its permissions.") from None
    if stat.S_ISDIR(info.st_mode):
        raise AstroVLMError(f"{path} is a folder; give the path of a FITS, PNG or JPEG file.")
    if not stat.S_ISREG(info.st_mode):
        raise AstroVLMError(f"{path} is a {_file_kind(info.st_mode)}, not a regular file; images are read "
                            "from files only. Give the path of a FITS, PNG or JPEG file.")
    if info.st_size == 0:
        raise AstroVLMError(f"{path} is empty (0 bytes); the download or copy that made it failed. Get the "
                            "file again.")
    try:
        with open(path, "rb") as handle:
            return handle.read(16)
    except OSError as exc:
        raise AstroVLMError(f"Cannot read {path}: {exc.strerror or _one_line(exc)}. Check its "
                            "permissions.") from None


def open_image(path: str | os.PathLike, hdu: int | str | None = None) -> ImageSource:
    """Open a FITS file (plain, ``.gz``, ``.bz2`` or tile-compressed) or a PNG/JPEG picture.

    Uncompressed FITS data stay on disk: unscaled data are memory-mapped and scaled
    (``BSCALE``/``BZERO``) or tile-compressed data are read lazily through the HDU ``section``, so a
    cutout reads only the rows it needs. Files compressed as a whole (``.gz``, ``.bz2``) are
    decompressed into memory.

    Parameters
    ----------
    path : str or path-like
        The file. Its first bytes decide between FITS and picture, so a FITS file saved under a
        picture's name (or the reverse) still opens; the name decides when the content is unknown.
    hdu : int, str or None, optional
        FITS HDU index or ``EXTNAME``; by default the first HDU holding an image with 2 or more axes.
        Length-1 axes in front of the image plane (radio Stokes/frequency) are dropped, wherever they
        are: ``NAXIS4 = 1`` Stokes cubes become cubes, ``NAXIS3 = NAXIS4 = 1`` images become images.

    Returns
    -------
    ImageSource
        PNG/JPEG pictures are flipped so that row 0 is the bottom, as in FITS; colour pictures become
        ``(3, ny, nx)`` RGB sources, pictures whose three channels are equal become greyscale.

    Raises
    ------
    AstroVLMError
        If the file is missing, not a regular file (a folder, device or pipe: refused without reading),
        empty or unreadable, the HDU does not exist, or it holds no image.
    """
    path = Path(path).expanduser()
    head = _check_regular_file(path)
    is_picture = head.startswith(_PICTURE_MAGIC) and (not head.startswith(b"RIFF") or head[8:12] == b"WEBP")
    is_fits = head.startswith(_FITS_MAGIC)
    named_picture = path.suffix.lower() in _PIL_SUFFIXES
    if is_fits and named_picture:
        log.warning("%s is named like a picture but holds FITS; reading it as FITS.", path)
    if is_picture or (named_picture and not is_fits):
        if hdu is not None:
            raise AstroVLMError(f"{path} is a picture, not FITS; leave out hdu={hdu!r}.")
        if is_picture and not named_picture:
            log.warning("%s holds a PNG/JPEG-style picture despite its name; reading it as a picture.", path)
        return _open_picture(path)
    if not is_fits and not head.startswith(_COMPRESSED_MAGIC):
        raise AstroVLMError(f"Could not read {path} as FITS or as a PNG/JPEG picture: it starts with "
                            f"{head[:12]!r}, where FITS starts with 'SIMPLE  ='. The download may have saved "
                            "an error page, or the file is damaged; get it again.")
    return _open_fits(path, hdu)


def from_array(array, wcs=None, label: str = "array", unit: str | None = None,
               rgb: bool = False, display: bool = False) -> ImageSource:
    """An `ImageSource` from a numpy array (row 0 at the bottom).

    Parameters
    ----------
    array : array-like
        ``(ny, nx)``, ``(nspec, ny, nx)`` cube, or ``(3, ny, nx)`` with ``rgb=True``, of real numbers
        (integers or floats). A masked array's masked pixels and a `~astropy.units.Quantity`'s unit are
        honoured. Length-1 axes in front of the image plane of a 4-D or 5-D array are dropped.
    wcs : `~astropy.wcs.WCS`, optional
        Celestial WCS of an image, full WCS of a cube.
    label : str, optional
        Name used in provenance.
    unit : str, optional
        Unit of the values (taken from a Quantity when not given).
    rgb : bool, optional
        `True` when a 3-D array holds R, G, B bands.
    display : bool, optional
        `True` when the values are display levels of a rendered picture (0-255), sent as they are.

    Raises
    ------
    AstroVLMError
        For arrays that are not 2-D or 3-D (after dropping length-1 axes), that are empty, or whose
        values are not real numbers (complex, boolean, text, objects); the message says how to convert.
    """
    import astropy.units as u

    if isinstance(array, u.Quantity):
        unit = unit or array.unit.to_string()
        array = array.value
    if isinstance(array, np.ma.MaskedArray):
        _check_pixel_type(array.dtype, label)
        array = np.ma.filled(array.astype(_float_type(array.dtype)), np.nan)
    elif not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
        try:
            array = np.asarray(array)
        except (ValueError, TypeError) as exc:
            raise AstroVLMError(f"{label}: could not make an array of pixels ({_one_line(exc)}); rows of "
                                "different lengths (ragged lists) cannot be an image.") from None
    if len(array.shape) > 3:
        array, wcs = _drop_degenerate_axes(array, wcs, label)
    if wcs is not None and len(array.shape) == 2 and not rgb:
        wcs = usable_celestial_wcs(wcs) if wcs.naxis == 2 else usable_celestial_wcs(wcs.celestial)
    return ImageSource(data=array, wcs=wcs, label=label, unit=unit, rgb=rgb, display=display)


def from_nddata(nddata, label: str = "nddata") -> ImageSource:
    """An `ImageSource` from `~astropy.nddata.NDData` or `~astropy.nddata.CCDData`.

    Uses ``.data``, ``.wcs`` (FITS WCS only) and ``.unit``; pixels where ``.mask`` is `True` become NaN.
    """
    from astropy.wcs import WCS

    data = np.asarray(nddata.data)
    if nddata.mask is not None and np.any(nddata.mask):
        data = data.astype(_float_type(data.dtype), copy=True)
        data[np.broadcast_to(np.asarray(nddata.mask, dtype=bool), data.shape)] = np.nan
    wcs = nddata.wcs if isinstance(nddata.wcs, WCS) else None
    unit = nddata.unit.to_string() if nddata.unit is not None else None
    return from_array(data, wcs=wcs, label=label, unit=unit)


def as_image_source(obj, hdu: int | str | None = None) -> ImageSource:
    """Turn a path, `ImageSource`, NDData/CCDData or numpy array into an `ImageSource`.

    Parameters
    ----------
    obj : str, path-like, ImageSource, NDData or array-like
        What to read pixels from.
    hdu : int, str or None, optional
        FITS HDU, only for paths.
    """
    from astropy.nddata import NDData

    if isinstance(obj, ImageSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return open_image(obj, hdu=hdu)
    if isinstance(obj, NDData):
        return from_nddata(obj, label=str(getattr(obj, "meta", {}).get("label", "nddata")))
    if isinstance(obj, np.ndarray):
        return from_array(obj)
    raise AstroVLMError(f"Cannot read an image from a {type(obj).__name__}; pass a file path, an "
                        "ImageSource, NDData/CCDData or a numpy array.")


class _BandStack:
    """Lazy ``(3, ny, nx)`` view of three 2-D sources; reads only the requested pixels of each band."""

    def __init__(self, bands: Sequence[ImageSource]):
        self.bands = tuple(bands)
        self.shape = (3,) + tuple(bands[0].image_shape)
        self.dtype = np.result_type(*(b.read((slice(0, 1), slice(0, 1))).dtype for b in bands))
        self.ndim = 3

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if key and key[0] is Ellipsis:
            key = (slice(None),) * (3 - len(key) + 1) + key[1:]
        band_key, rest = key[0], key[1:] or (slice(None), slice(None))
        if isinstance(band_key, (int, np.integer)):
            return self.bands[band_key].read(rest)
        return np.stack([band.read(rest) for band in self.bands[band_key]]).astype(self.dtype, copy=False)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:, :, :], dtype=dtype)


def _same_grid(a, b, shape) -> bool:
    """Whether two celestial WCS put the image corners and centre at the same sky positions (to 0.5 px)."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    ny, nx = shape
    x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
    y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    sky_a = a.pixel_to_world(x, y)
    sky_b = b.pixel_to_world(x, y)
    scale = float(np.min(proj_plane_pixel_scales(a)))  # degrees per pixel
    return bool(np.all(sky_a.separation(sky_b).deg < 0.5 * scale))


def rgb_composite(r, g, b, *, label: str | None = None) -> ImageSource:
    """A three-band R, G, B source from three images on the same pixel grid.

    For example SDSS ``i`` as red, ``r`` as green and ``g`` as blue. The bands stay lazy: a cutout
    reads only its pixels from each file. Each band is stretched with its own limits (see
    `~glue_astrovlm.cutout_types.Cutout.scaled`).

    Parameters
    ----------
    r, g, b : ImageSource, path, NDData or array
        2-D images of identical shape, e.g. reprojected onto one grid.
    label : str, optional
        Name used in provenance; by default ``'rgb(<r>, <g>, <b>)'``.

    Returns
    -------
    ImageSource
        ``rgb=True``, data ``(3, ny, nx)``, the celestial WCS of the first band that has one.

    Raises
    ------
    AstroVLMError
        If a band is not 2-D, the shapes differ, or the WCS of the bands disagree.
    """
    bands = [as_image_source(band) for band in (r, g, b)]
    for colour, band in zip("RGB", bands):
        if band.ndim != 2:
            raise AstroVLMError(f"The {colour} band {band.label} has shape {band.shape}; each band must be "
                                "a 2-D image (reduce cubes with reduce_cube first).")
    shapes = {band.image_shape for band in bands}
    if len(shapes) > 1:
        listing = ", ".join(f"{c}: {band.label} {band.image_shape[1]} x {band.image_shape[0]}"
                            for c, band in zip("RGB", bands))
        raise AstroVLMError(f"The three bands differ in shape ({listing}); reproject them onto one pixel "
                            "grid first (e.g. with reproject.reproject_interp).")
    with_wcs = [band for band in bands if band.celestial_wcs is not None]
    for band in with_wcs[1:]:
        if not _same_grid(with_wcs[0].celestial_wcs, band.celestial_wcs, band.image_shape):
            raise AstroVLMError(f"{band.label} and {with_wcs[0].label} have the same shape but different "
                                "WCS; reproject them onto one pixel grid first (e.g. with "
                                "reproject.reproject_interp).")
    units = {band.unit for band in bands}
    return ImageSource(data=_BandStack(bands), wcs=with_wcs[0].celestial_wcs if with_wcs else None,
                       label=label or f"rgb({bands[0].label}, {bands[1].label}, {bands[2].label})",
                       unit=units.pop() if len(units) == 1 else None, rgb=True)


#: Pixels read at once by `block_average` (about 40 bytes each of working memory).
_BLOCK_TILE_PIXELS = 4_000_000


def block_average(source, factor: int) -> np.ndarray:
    """The image averaged over ``factor x factor`` pixel blocks (NaN ignored), read a tile at a time.

    Memory stays bounded whatever the image size: tiles of about four million pixels (or one block,
    when blocks are larger) are read, reduced and released in turn.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image or an RGB composite.
    factor : int
        Side of the blocks in pixels (1 reads the image as it is).

    Returns
    -------
    numpy.ndarray
        float32, ``(ceil(ny / factor), ceil(nx / factor))``, or ``(3, ...)`` for an RGB composite. Block
        ``(j, i)`` covers pixels ``y`` in ``[j f, (j + 1) f)`` and ``x`` in ``[i f, (i + 1) f)``; its
        centre is at full-resolution pixel ``((i + 0.5) f - 0.5, (j + 0.5) f - 0.5)``. Blocks with no
        finite pixel are NaN.
    """
    source = as_image_source(source)
    if source.is_cube:
        raise AstroVLMError(f"{source.label} is a cube; reduce it to an image first (reduce_cube).")
    factor = int(factor)
    if factor < 1:
        raise AstroVLMError(f"The block size must be at least 1 pixel, got {factor}.")
    ny, nx = source.image_shape
    bands = 3 if source.is_rgb else 1
    lead = (slice(None),) if source.is_rgb else ()
    oy, ox = -(-ny // factor), -(-nx // factor)
    out = np.empty((bands, oy, ox), dtype=np.float32)
    cols = max(1, min(ox, _BLOCK_TILE_PIXELS // (factor * factor)))  # blocks per tile along x
    rows = max(1, _BLOCK_TILE_PIXELS // (factor * factor * cols))
    for by0 in range(0, oy, rows):
        by1 = min(oy, by0 + rows)
        y0, y1 = by0 * factor, min(ny, by1 * factor)
        for bx0 in range(0, ox, cols):
            bx1 = min(ox, bx0 + cols)
            x0, x1 = bx0 * factor, min(nx, bx1 * factor)
            pixels = source.read(lead + (slice(y0, y1), slice(x0, x1))).reshape(bands, y1 - y0, x1 - x0)
            whole = (bands, (by1 - by0) * factor, (bx1 - bx0) * factor)
            if pixels.shape != whole:  # partial blocks at the top and right edges
                padded = np.full(whole, np.nan, dtype=pixels.dtype)
                padded[:, : y1 - y0, : x1 - x0] = pixels
                pixels = padded
            blocks = pixels.reshape(bands, by1 - by0, factor, bx1 - bx0, factor)
            finite = np.isfinite(blocks)
            if finite.all():  # the common case, twice as fast
                out[:, by0:by1, bx0:bx1] = blocks.sum(axis=(2, 4), dtype=np.float64) / (factor * factor)
                continue
            count = finite.sum(axis=(2, 4))
            total = np.where(finite, blocks, 0).sum(axis=(2, 4), dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, by0:by1, bx0:bx1] = np.where(count > 0, total / count, np.nan)
    return out if source.is_rgb else out[0]
