"""Find sources in an image with photutils image segmentation, to cut one cutout per source."""

from __future__ import annotations

import logging
import warnings

from typing import TYPE_CHECKING

import numpy as np

from .errors import AstroVLMError
from .cubes import as_2d_source
from .sources import ImageSource

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["detect_sources"]

log = logging.getLogger(__name__)


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
                   max_sources: int = 500, cube: dict | None = None) -> "Table":
    """Detect sources by thresholding the smoothed, background-subtracted image.

    Parameters
    ----------
    source : ImageSource, path, NDData or array
        A 2-D image, or an RGB composite (sources are detected on the sum of its bands). A cube needs
        ``cube=``. The image is loaded whole for detection.
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

    Returns
    -------
    `~astropy.table.Table`
        Sorted by ``segment_flux``, brightest first, with columns ``id`` (segment label),
        ``xcentroid``, ``ycentroid`` (0-based pixels), ``sky_centroid``, ``ra``, ``dec`` (ICRS degrees;
        only with a celestial WCS), ``area`` (pixels) and ``segment_flux`` (background-subtracted,
        in the image's unit). ``meta`` records the detection settings. Feed it to
        :func:`~glue_astrovlm.cutouts.cutouts_from_catalog`.

    Raises
    ------
    AstroVLMError
        If the settings are invalid, the image holds no finite pixels, or nothing is detected.
    """
    import astropy.units as u
    from astropy.convolution import convolve
    from astropy.table import Table
    from photutils.segmentation import SourceCatalog, make_2dgaussian_kernel
    from photutils.segmentation import detect_sources as segment
    from photutils.utils.exceptions import NoDetectionsWarning

    if not nsigma > 0 or int(npixels) < 1 or not fwhm > 0 or int(max_sources) < 1:
        raise AstroVLMError(f"nsigma and fwhm must be positive and npixels, max_sources at least 1; got "
                            f"nsigma={nsigma}, npixels={npixels}, fwhm={fwhm}, max_sources={max_sources}.")
    source: ImageSource = as_2d_source(source, cube)
    image = source.read()
    if source.is_rgb:
        image = np.sum(image, axis=0)  # NaN in any band makes the pixel NaN
    image = np.asarray(image, dtype=float)
    finite = np.isfinite(image)
    if not finite.any():
        raise AstroVLMError(f"{source.label} holds only NaN/blank pixels; nothing to detect.")

    background, rms, method = _background(image, finite)
    if np.all(np.asarray(rms) <= 0):
        raise AstroVLMError(f"{source.label} has no background noise (constant image); nothing to detect.")
    subtracted = np.where(finite, image - background, 0.0)
    size = 2 * int(np.ceil(2 * fwhm)) + 1
    kernel = make_2dgaussian_kernel(fwhm, size=size)
    smoothed = convolve(subtracted, kernel, mask=~finite, normalize_kernel=True)
    threshold = nsigma * np.asarray(rms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)  # replaced by the error below
        segments = segment(smoothed, threshold, int(npixels), mask=~finite)
    if segments is None:
        raise AstroVLMError(f"No sources above {nsigma:g} sigma with at least {npixels} connected pixels in "
                            f"{source.label}; try a lower nsigma (e.g. 3) or npixels.")
    catalog = SourceCatalog(subtracted, segments, convolved_data=smoothed, mask=~finite,
                            wcs=source.celestial_wcs)
    names = ["label", "x_centroid", "y_centroid", "area", "segment_flux"]
    if source.celestial_wcs is not None:
        names.insert(3, "sky_centroid")
    table = Table(catalog.to_table(columns=names))  # a plain Table, not photutils' QTable subclass
    # the names this project's catalogues use (photutils < 3 spelling), recognised by cutouts_from_catalog
    table.rename_columns(["label", "x_centroid", "y_centroid"], ["id", "xcentroid", "ycentroid"])
    if source.astropy_unit is not None:
        table["segment_flux"].unit = source.astropy_unit
    if "sky_centroid" in table.colnames:
        icrs = table["sky_centroid"].icrs
        table.add_column(icrs.ra.deg, name="ra", index=4)
        table.add_column(icrs.dec.deg, name="dec", index=5)
        table["ra"].unit = table["dec"].unit = u.deg
    table.sort("segment_flux", reverse=True)
    if len(table) > max_sources:
        log.info("Keeping the %d brightest of %d sources in %s", max_sources, len(table), source.label)
        table = table[: int(max_sources)]
    table.meta.update({"source": source.label, "hdu": source.hdu, "cube": source.cube, "nsigma": nsigma,
                       "npixels": int(npixels), "fwhm": fwhm, "background": method,
                       "detected": int(segments.n_labels)})
    return table
