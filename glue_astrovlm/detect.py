"""Find sources in an image with photutils image segmentation, to cut one cutout per source.

Detection needs the whole image in memory several times over (background mesh, smoothing,
segmentation: about 64 bytes per pixel). Images larger than ``max_pixels`` are therefore averaged
over square pixel blocks first, read a tile at a time, and the sources found on that map are reported
in full-resolution pixels; ``meta['downsample']`` records the block size.
"""

from __future__ import annotations

import logging
import math
import warnings

from typing import TYPE_CHECKING

import numpy as np

from .errors import AstroVLMError
from .cubes import as_2d_source
from .limits import check_memory
from .sources import ImageSource, block_average

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["detect_sources", "DETECT_MAX_PIXELS"]

log = logging.getLogger(__name__)

#: Largest image (in pixels) detected on at full resolution; larger ones are block-averaged first.
DETECT_MAX_PIXELS = 4096 * 4096
#: Peak working memory of detection per pixel of the map detected on (float64 copies), measured.
_BYTES_PER_PIXEL = 64


def _block_factor(ny: int, nx: int, max_pixels: int) -> int:
    """The smallest block size that brings a ``ny x nx`` image down to ``max_pixels`` or fewer."""
    factor = max(1, math.ceil(math.sqrt(ny * nx / max_pixels)))
    while -(-ny // factor) * -(-nx // factor) > max_pixels:
        factor += 1
    return factor


def _background(image: np.ndarray, finite: np.ndarray):
    """Background and background RMS: a 2-D mesh when the image is large enough, else global."""
    from astropy.stats import SigmaClip, sigma_clipped_stats
    from photutils.background import Background2D, MedianBackground

    ny, nx = image.shape
    box = max(16, min(ny, nx) // 8)
    if min(ny, nx) >= 4 * box:
        try:
            # exclude_percentile=50: crowded fields lose many pixels per box to sigma clipping
            mesh = Background2D(image, box, coverage_mask=~finite, filter_size=(3, 3), exclude_percentile=50,
                                sigma_clip=SigmaClip(sigma=3.0), bkg_estimator=MedianBackground())
            return mesh.background, mesh.background_rms, f"Background2D(box={box})"
        except ValueError:
            pass  # too few unmasked pixels per box: fall back to global statistics
    _, median, std = sigma_clipped_stats(image[finite], sigma=3.0)
    return float(median), float(std), "sigma-clipped median"


def detect_sources(source, *, nsigma: float = 5.0, npixels: int = 10, fwhm: float = 3.0,
                   max_sources: int = 500, cube: dict | None = None,
                   max_pixels: int = DETECT_MAX_PIXELS) -> "Table":
    """Detect sources by thresholding the smoothed, background-subtracted image.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image, or an RGB composite (sources are detected on the sum of its bands). A cube needs
        ``cube=``. Up to ``max_pixels`` pixels, the image is loaded whole for detection.
    nsigma : float, optional
        Detection threshold in units of the background RMS.
    npixels : int, optional
        Minimum number of connected pixels above the threshold.
    fwhm : float, optional
        FWHM in pixels of the Gaussian kernel that smooths the image before thresholding.
    max_sources : int, optional
        Keep at most this many sources, the brightest first.
    cube : dict, optional
        For a cube: arguments of :func:`~glue_astrovlm.cubes.reduce_cube`.
    max_pixels : int, optional
        Larger images are averaged over ``f x f`` pixel blocks (NaN ignored; the smallest ``f`` that
        fits) and detection runs on that map, with ``npixels / f**2`` connected blocks and a kernel of
        ``fwhm / f`` blocks (at least 1). Positions, areas and fluxes are reported in full-resolution
        pixels; faint compact sources may be missed, so detect on a region of the image for full
        resolution. Default 4096 x 4096 (about 1 GB of working memory, seconds to a minute).

    Returns
    -------
    `~astropy.table.Table`
        Sorted by ``segment_flux``, brightest first, with columns ``id`` (segment label),
        ``xcentroid``, ``ycentroid`` (0-based pixels), ``sky_centroid``, ``ra``, ``dec`` (ICRS degrees;
        only with a celestial WCS), ``area`` (pixels) and ``segment_flux`` (background-subtracted,
        in the image's unit). ``meta`` records the detection settings and ``downsample``, the block
        size ``f`` of the map detected on (1: full resolution). Feed it to
        :func:`~glue_astrovlm.cutouts.cutouts_from_catalog`.

    Raises
    ------
    AstroVLMError
        If the settings are invalid, the image holds no finite pixels, nothing is detected, or the
        map would need more memory than this machine can spare (the message says how much).
    """
    if not nsigma > 0 or int(npixels) < 1 or not fwhm > 0 or int(max_sources) < 1:
        raise AstroVLMError(f"nsigma and fwhm must be positive and npixels, max_sources at least 1; got "
                            f"nsigma={nsigma}, npixels={npixels}, fwhm={fwhm}, max_sources={max_sources}.")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1024:
        raise AstroVLMError(f"max_pixels must be a whole number of pixels, at least 1024 (32 x 32), got "
                            f"{max_pixels!r}.")
    source: ImageSource = as_2d_source(source, cube)
    image, factor = _detection_map(source, int(max_pixels))
    map_npixels = max(1, math.ceil(int(npixels) / factor ** 2))
    map_fwhm = max(1.0, float(fwhm) / factor) if factor > 1 else float(fwhm)
    if factor > 1:
        log.info("%s is larger than max_pixels=%d: detecting on a map averaged over %d x %d pixel blocks "
                 "(npixels %d, fwhm %.3g there); results are in full-resolution pixels", source.label,
                 max_pixels, factor, factor, map_npixels, map_fwhm)
    table, method, detected = _segment(source, image, nsigma, map_npixels, map_fwhm, npixels)
    _to_full_resolution(source, table, factor)
    table.sort("segment_flux", reverse=True)
    if len(table) > max_sources:
        log.info("Keeping the %d brightest of %d sources in %s", max_sources, len(table), source.label)
        table = table[: int(max_sources)]
    table.meta.update({"source": source.label, "hdu": source.hdu, "cube": source.cube, "nsigma": nsigma,
                       "npixels": int(npixels), "fwhm": fwhm, "background": method, "detected": detected,
                       "downsample": factor})
    return table


def _detection_map(source: ImageSource, max_pixels: int):
    """The image to detect on (block-averaged beyond ``max_pixels``; RGB bands summed) and its block size."""
    ny, nx = source.image_shape
    factor = _block_factor(ny, nx, max_pixels)
    map_shape = (-(-ny // factor), -(-nx // factor))
    read_bytes = 3 * 8 if source.is_rgb and factor == 1 else 0  # the three bands before they are summed
    check_memory(map_shape, itemsize=1, copies=_BYTES_PER_PIXEL + read_bytes,
                 what=f"Source detection on a {map_shape[1]} x {map_shape[0]} pixel map of {source.label}",
                 shrink=f"pass a smaller max_pixels (now {max_pixels}; --detect-max-pixels), or detect on a "
                        "region of the image")
    image = source.read() if factor == 1 else block_average(source, factor)
    if source.is_rgb:
        image = np.sum(image, axis=0)  # NaN in any band makes the pixel NaN
    return np.asarray(image, dtype=float), factor


def _segment(source: ImageSource, image: np.ndarray, nsigma: float, npixels: int, fwhm: float, asked_npixels):
    """Segment the smoothed, background-subtracted map: ``(table in map pixels, background method, count)``."""
    from astropy.convolution import convolve
    from astropy.table import Table
    from photutils.segmentation import SourceCatalog, make_2dgaussian_kernel
    from photutils.segmentation import detect_sources as segment
    from photutils.utils.exceptions import NoDetectionsWarning

    finite = np.isfinite(image)
    if not finite.any():
        raise AstroVLMError(f"{source.label} holds only NaN/blank pixels; nothing to detect.")
    background, rms, method = _background(image, finite)
    if np.all(np.asarray(rms) <= 0):
        raise AstroVLMError(f"{source.label} has no background noise (constant image); nothing to detect.")
    subtracted = np.where(finite, image - background, 0.0)
    kernel = make_2dgaussian_kernel(fwhm, size=2 * int(np.ceil(2 * fwhm)) + 1)
    smoothed = convolve(subtracted, kernel, mask=~finite, normalize_kernel=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)  # replaced by the error below
        segments = segment(smoothed, nsigma * np.asarray(rms), npixels, mask=~finite)
    if segments is None:
        raise AstroVLMError(f"No sources above {nsigma:g} sigma with at least {asked_npixels} connected pixels "
                            f"in {source.label}; try a lower nsigma (e.g. 3) or npixels.")
    catalog = SourceCatalog(subtracted, segments, convolved_data=smoothed, mask=~finite)
    names = ["label", "x_centroid", "y_centroid", "area", "segment_flux"]
    table = Table(catalog.to_table(columns=names))  # a plain Table, not photutils' QTable subclass
    # the names this project's catalogues use (photutils < 3 spelling), recognised by cutouts_from_catalog
    table.rename_columns(["label", "x_centroid", "y_centroid"], ["id", "xcentroid", "ycentroid"])
    return table, method, int(segments.n_labels)


def _to_full_resolution(source: ImageSource, table, factor: int) -> None:
    """Map a map's positions, areas and fluxes to the full image, and add units and sky positions."""
    import astropy.units as u

    if factor > 1:  # block centres to full-resolution pixels; per-block means to per-pixel sums
        for name in ("xcentroid", "ycentroid"):
            table[name] = (np.asarray(table[name], dtype=float) + 0.5) * factor - 0.5
        table["area"] = table["area"] * factor ** 2
        table["segment_flux"] = table["segment_flux"] * factor ** 2
    if source.astropy_unit is not None:
        table["segment_flux"].unit = source.astropy_unit
    if source.celestial_wcs is not None:
        sky = source.celestial_wcs.pixel_to_world(np.asarray(table["xcentroid"]), np.asarray(table["ycentroid"]))
        table.add_column(sky, name="sky_centroid", index=3)
        icrs = table["sky_centroid"].icrs
        table.add_column(icrs.ra.deg, name="ra", index=4)
        table.add_column(icrs.dec.deg, name="dec", index=5)
        table["ra"].unit = table["dec"].unit = u.deg
