"""The value objects that travel from sources to models to results: `Provenance` and `Cutout`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .stretch import DEFAULT_STRETCH, Stretch

__all__ = ["Provenance", "Cutout", "OUTSIDE_MODES"]

#: What a cutout shows outside the region it was built from: the pixels as they are, background, or
#: the pixels dimmed to 30%.
OUTSIDE_MODES = ("keep", "mask", "dim")


@dataclass(frozen=True)
class Provenance:
    """Where a cutout came from, so that its result can be written back to the right place.

    Parameters
    ----------
    source : str
        File path, glue data label or jdaviz data label.
    hdu : int, str or None
        FITS HDU index or name, if the source is a FITS file.
    cube : str or None
        How a cube became an image, e.g. ``'slice 12'``, ``'sum 3:9'``, ``'moment0 3:9'``; `None` for 2-D data.
    bbox : tuple of int
        ``(xmin, xmax, ymin, ymax)`` of the cutout in the parent image's 0-based pixels, max exclusive.
    center_pixel : tuple of float
        ``(x, y)`` of the requested position in the parent image's 0-based pixels.
    center_sky : `~astropy.coordinates.SkyCoord` or None
        The same position on the sky, when the parent has a celestial WCS.
    source_id : str
        Identifier of the source (catalogue row id, region index, or ``'image'``).
    region : `regions.Region` or None
        The region the cutout was built from, in the parent's pixel frame.
    parent_wcs : `~astropy.wcs.WCS` or None
        Celestial WCS of the parent image (2-D), used to write results back in sky coordinates.
    extra : dict
        Anything a front end wants back with the result (e.g. glue subset label, catalogue row index).
    """

    source: str
    hdu: int | str | None = None
    cube: str | None = None
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    center_pixel: tuple[float, float] = (0.0, 0.0)
    center_sky: Any = None
    source_id: str = "image"
    region: Any = None
    parent_wcs: Any = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Cutout:
    """A model-ready piece of an image, with its stretch and provenance.

    Parameters
    ----------
    data : numpy.ndarray
        Pixel values, shape ``(ny, nx)`` or ``(3, ny, nx)`` for an R, G, B composite, row 0 at the
        bottom (FITS/astropy ``origin='lower'`` convention).
    provenance : Provenance
        Where it came from.
    wcs : `~astropy.wcs.WCS` or None
        The cutout's own celestial WCS.
    stretch : Stretch
        How values become display levels for the model.
    mask : numpy.ndarray or None
        Boolean ``(ny, nx)`` array, `True` inside the region the cutout was built from.
    outside : {'keep', 'mask', 'dim'}
        What happens to pixels outside ``mask`` in the model's image: kept, set to background, or dimmed.
    """

    data: np.ndarray
    provenance: Provenance
    wcs: Any = None
    stretch: Stretch = DEFAULT_STRETCH
    mask: np.ndarray | None = None
    outside: str = "keep"

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the cutout."""
        return tuple(self.data.shape[-2:])

    @property
    def is_rgb(self) -> bool:
        return self.data.ndim == 3

    def stretch_text(self) -> str:
        """What was done to the pixels, as results record it (``'zscale(contrast=0.25)+linear'``,
        ``'as displayed, rgb joint'``)."""
        return self.stretch.describe(rgb=self.is_rgb)

    def with_stretch(self, stretch: Stretch) -> "Cutout":
        """The same cutout scaled another way."""
        return replace(self, stretch=stretch)

    def scaled(self) -> np.ndarray:
        """Display levels in [0, 1], shape ``(ny, nx, 3)``, row 0 at the top (as shown on screen)."""
        if self.is_rgb:  # one interval for the three bands, colour ratios kept (unless rgb='per-band')
            rgb = np.moveaxis(self.stretch.apply_rgb(self.data), 0, -1)
        else:
            level = self.stretch.apply(self.data)
            rgb = np.repeat(level[..., None], 3, axis=-1)
        if self.mask is not None and self.outside != "keep":
            factor = 0.0 if self.outside == "mask" else 0.3
            rgb = np.where(self.mask[..., None], rgb, rgb * factor)
        return rgb[::-1]

    def to_image(self):
        """The RGB `PIL.Image.Image` the model sees, north up as displayed by ds9, glue and jdaviz."""
        from PIL import Image

        return Image.fromarray(np.round(self.scaled() * 255).astype(np.uint8))
