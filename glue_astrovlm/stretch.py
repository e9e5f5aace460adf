"""Astronomical scaling of pixel values to the 0-1 range a model sees, with astropy.visualization.

Data (FITS, arrays, NDData) are stretched the way astronomers stretch them (`DEFAULT_STRETCH`:
zscale, linear). A picture that is already rendered for display (an 8-bit PNG or JPEG) goes to the
model as it is (`DISPLAYED`), unless a stretch is asked for: `stretch_for` makes that choice. The three
bands of a colour image share one interval and keep their ratios (``rgb='joint'``, after Lupton et al.
2004); scaling each band on its own is an explicit choice (``rgb='per-band'``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import AstroVLMError

__all__ = ["Stretch", "DEFAULT_STRETCH", "DISPLAYED", "INTERVALS", "STRETCHES", "RGB_MODES", "AUTO", "stretch_for",
           "chosen_stretch"]

#: How display limits are chosen (`Stretch.interval`); ``display`` takes the pixels as display levels
#: already (0-255, or 0-1 for floats), as in a rendered picture.
INTERVALS = ("zscale", "percentile", "minmax", "display")
#: The panels' first interval choice: the stretch `stretch_for` picks (data stretched, pictures as they are).
AUTO = "auto"
#: How the three bands of a colour image are scaled (`Stretch.rgb`).
RGB_MODES = ("joint", "per-band")
#: Transfer functions after the interval (`Stretch.stretch`).
STRETCHES = ("linear", "sqrt", "log", "asinh")


@dataclass(frozen=True)
class Stretch:
    """How pixel values become display values, as astronomers stretch images.

    Parameters
    ----------
    interval : {'zscale', 'percentile', 'minmax', 'display'}
        How the display limits are chosen. ``zscale`` is IRAF's algorithm
        (`astropy.visualization.ZScaleInterval`), the usual choice for survey images; ``display`` keeps
        the pixels of a rendered picture as they are (limits 0-255, or 0-1 for data in that range).
    stretch : {'linear', 'sqrt', 'log', 'asinh'}
        The transfer function applied after the interval maps values to 0-1.
    contrast : float
        ZScale contrast; 0.25 is what radio-llava used for FIRST/radio cutouts.
    percentile : float
        Percentage of pixels kept by the ``percentile`` interval.
    a : float or None
        Parameter of the ``log`` (default 1000) or ``asinh`` (default 0.1) stretch.
    rgb : {'joint', 'per-band'}
        Colour images: one interval for all three bands, with a non-linear stretch applied to their
        mean intensity so that colour ratios survive (as `astropy.visualization.make_lupton_rgb`
        does), or each band scaled on its own (which changes colours).
    """

    interval: str = "zscale"
    stretch: str = "linear"
    contrast: float = 0.25
    percentile: float = 99.5
    a: float | None = None
    rgb: str = "joint"

    def __post_init__(self):
        if self.interval not in INTERVALS:
            raise AstroVLMError(f"Unknown interval {self.interval!r}; use one of {', '.join(INTERVALS)}.")
        if self.stretch not in STRETCHES:
            raise AstroVLMError(f"Unknown stretch {self.stretch!r}; use one of {', '.join(STRETCHES)}.")
        if not 0 < self.percentile <= 100:
            raise AstroVLMError(f"percentile must be in (0, 100], got {self.percentile}.")
        if self.contrast <= 0:
            raise AstroVLMError(f"zscale contrast must be positive, got {self.contrast}.")
        if self.rgb not in RGB_MODES:
            raise AstroVLMError(f"Unknown rgb mode {self.rgb!r}; use one of {', '.join(RGB_MODES)}.")

    def _interval(self):
        from astropy.visualization import MinMaxInterval, PercentileInterval, ZScaleInterval

        if self.interval == "zscale":
            return ZScaleInterval(contrast=self.contrast)
        if self.interval == "percentile":
            return PercentileInterval(self.percentile)
        return MinMaxInterval()

    def _stretch(self):
        from astropy.visualization import AsinhStretch, LinearStretch, LogStretch, SqrtStretch

        if self.stretch == "linear":
            return LinearStretch()
        if self.stretch == "sqrt":
            return SqrtStretch()
        if self.stretch == "log":
            return LogStretch(a=self.a if self.a is not None else 1000.0)
        return AsinhStretch(a=self.a if self.a is not None else 0.1)

    def limits(self, values: np.ndarray) -> tuple[float, float]:
        """Display limits (vmin, vmax) computed from the finite values of ``values``."""
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            raise AstroVLMError("The cutout has no finite pixels (all NaN or inf); choose another position "
                                "or region, or check the data's blank values.")
        if self.interval == "display":  # 0-1 only for fractional values in that range (jdaviz's pictures)
            unit_range = finite.min() >= 0 and finite.max() <= 1 and np.any(finite != np.round(finite))
            return 0.0, 1.0 if unit_range else 255.0
        vmin, vmax = self._interval().get_limits(finite)
        if not vmax > vmin:  # flat image: keep it displayable
            vmin, vmax = float(finite.min()), float(finite.min()) + 1.0
        return float(vmin), float(vmax)

    def apply(self, values: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
        """Scale ``values`` to floats in [0, 1]; NaN and inf become 0 (the background).

        Parameters
        ----------
        values : numpy.ndarray
            Pixel values in any unit.
        limits : tuple of float, optional
            Precomputed (vmin, vmax), for example shared by the three bands of an RGB composite.
        """
        values = np.asarray(values, dtype=float)
        vmin, vmax = limits if limits is not None else self.limits(values)
        scaled = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
        scaled = np.where(np.isfinite(values), scaled, 0.0)
        return np.clip(self._stretch()(scaled, clip=True), 0.0, 1.0)

    def apply_rgb(self, bands: np.ndarray) -> np.ndarray:
        """Scale the three bands ``(3, ny, nx)`` of a colour image to [0, 1] (see ``rgb``)."""
        if self.rgb == "per-band":
            return np.stack([self.apply(band) for band in bands])
        values = np.asarray(bands, dtype=float)
        vmin, vmax = self.limits(values)
        norm = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
        norm = np.where(np.isfinite(values), norm, 0.0)
        if self.stretch == "linear":
            return norm
        intensity = norm.mean(axis=0)
        stretched = self._stretch()(np.clip(intensity, 0.0, 1.0), clip=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(intensity > 0, stretched / intensity, 0.0)
        out = norm * factor
        peak = out.max(axis=0)
        out = out / np.where(peak > 1.0, peak, 1.0)  # a saturated pixel keeps its colour
        return np.clip(out, 0.0, 1.0)

    def to_dict(self) -> dict:
        """The settings as plain values, for result tables and provenance."""
        return asdict(self)

    def describe(self, rgb: bool = False) -> str:
        """Short text such as ``zscale(contrast=0.25)+linear``; for a colour image ``rgb=True`` adds how
        the bands were scaled (``...+linear, rgb joint``)."""
        if self.interval == "display":
            text = "as displayed"
        else:
            if self.interval == "zscale":
                interval = f"zscale(contrast={self.contrast:g})"
            elif self.interval == "percentile":
                interval = f"percentile({self.percentile:g})"
            else:
                interval = "minmax"
            stretch = self.stretch if self.a is None else f"{self.stretch}(a={self.a:g})"
            text = f"{interval}+{stretch}"
        return f"{text}, rgb {self.rgb}" if rgb else text


#: What the engine uses for data unless told otherwise: zscale with contrast 0.25 and a linear
#: stretch, as radio-llava prepared FIRST cutouts.
DEFAULT_STRETCH = Stretch()
#: What the engine uses for rendered pictures (8-bit PNG/JPEG) unless told otherwise: their pixels.
DISPLAYED = Stretch(interval="display")


def stretch_for(source, stretch: "Stretch | None" = None) -> Stretch:
    """``stretch`` when given, else `DISPLAYED` for a rendered picture (``source.display``) and
    `DEFAULT_STRETCH` for data."""
    if stretch is not None:
        if not isinstance(stretch, Stretch):
            raise AstroVLMError(f"stretch must be a glue_astrovlm.Stretch, got {type(stretch).__name__}.")
        return stretch
    return DISPLAYED if getattr(source, "display", False) else DEFAULT_STRETCH


def chosen_stretch(interval: str, stretch: str) -> "Stretch | None":
    """The stretch a panel's two menus name: `None` (automatic) for the interval `AUTO`."""
    return None if interval == AUTO else Stretch(interval=interval, stretch=stretch)
