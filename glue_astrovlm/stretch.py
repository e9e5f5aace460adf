"""Astronomical scaling of pixel values to the 0-1 range a model sees, with astropy.visualization."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import AstroVLMError

__all__ = ["Stretch", "DEFAULT_STRETCH", "INTERVALS", "STRETCHES"]

#: How display limits are chosen (`Stretch.interval`).
INTERVALS = ("zscale", "percentile", "minmax")
#: Transfer functions after the interval (`Stretch.stretch`).
STRETCHES = ("linear", "sqrt", "log", "asinh")


@dataclass(frozen=True)
class Stretch:
    """How pixel values become display values, as astronomers stretch images.

    Parameters
    ----------
    interval : {'zscale', 'percentile', 'minmax'}
        How the display limits are chosen. ``zscale`` is IRAF's algorithm
        (`astropy.visualization.ZScaleInterval`), the usual choice for survey images.
    stretch : {'linear', 'sqrt', 'log', 'asinh'}
        The transfer function applied after the interval maps values to 0-1.
    contrast : float
        ZScale contrast; 0.25 is what radio-llava used for FIRST/radio cutouts.
    percentile : float
        Percentage of pixels kept by the ``percentile`` interval.
    a : float or None
        Parameter of the ``log`` (default 1000) or ``asinh`` (default 0.1) stretch.
    """

    interval: str = "zscale"
    stretch: str = "linear"
    contrast: float = 0.25
    percentile: float = 99.5
    a: float | None = None

    def __post_init__(self):
        if self.interval not in INTERVALS:
            raise AstroVLMError(f"Unknown interval {self.interval!r}; use one of {', '.join(INTERVALS)}.")
        if self.stretch not in STRETCHES:
            raise AstroVLMError(f"Unknown stretch {self.stretch!r}; use one of {', '.join(STRETCHES)}.")
        if not 0 < self.percentile <= 100:
            raise AstroVLMError(f"percentile must be in (0, 100], got {self.percentile}.")
        if self.contrast <= 0:
            raise AstroVLMError(f"zscale contrast must be positive, got {self.contrast}.")

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

    def to_dict(self) -> dict:
        """The settings as plain values, for result tables and provenance."""
        return asdict(self)

    def describe(self) -> str:
        """Short text such as ``zscale(contrast=0.25)+linear``."""
        if self.interval == "zscale":
            interval = f"zscale(contrast={self.contrast:g})"
        elif self.interval == "percentile":
            interval = f"percentile({self.percentile:g})"
        else:
            interval = "minmax"
        stretch = self.stretch if self.a is None else f"{self.stretch}(a={self.a:g})"
        return f"{interval}+{stretch}"


#: What the engine uses unless told otherwise: zscale with contrast 0.25 and a linear stretch,
#: as radio-llava prepared FIRST cutouts.
DEFAULT_STRETCH = Stretch()
