"""Memory a request may use: refuse a cutout, map or detection that would not fit, before allocating it.

A 100,000-pixel cutout or a region with a radius of a million pixels would otherwise end in numpy's
``MemoryError`` (or in the kernel's out-of-memory killer) after minutes of work. The allocation points
(cutout extraction, whole-image reads, cube collapses, source detection) call :func:`check_memory`
first, which compares what the request needs with what this machine can spare and says how to make
the request smaller.

The budget is a fraction (:data:`MEMORY_FRACTION`) of the memory available now: ``MemAvailable`` in
``/proc/meminfo``, capped by a container's cgroup limit, or ``psutil`` elsewhere. The environment
variable ``ASTROVLM_MEMORY_LIMIT_GB`` replaces it with a fixed number of gigabytes (10^9 bytes), for
shared machines, batch jobs and tests.
"""

from __future__ import annotations

import os
import time
from fractions import Fraction
from typing import Sequence

from .errors import AstroVLMError

__all__ = ["check_memory", "memory_budget", "MEMORY_FRACTION", "MEMORY_LIMIT_ENV"]

#: Fraction of the available memory one request may use.
MEMORY_FRACTION = 0.75
#: Environment variable that sets the budget in gigabytes (10^9 bytes) instead.
MEMORY_LIMIT_ENV = "ASTROVLM_MEMORY_LIMIT_GB"

_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2^63
_cache: tuple[float, int | None] = (-1.0, None)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free() -> int | None:
    """Bytes left under this container's cgroup memory limit (v2, then v1), or None without a limit."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < _UNLIMITED:
            return max(0, limit - usage)
    return None


def _available_bytes() -> int | None:
    """Memory available to this process now, or None where it cannot be found out."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            import psutil  # macOS and Windows; optional

            available = int(psutil.virtual_memory().available)
        except Exception:  # noqa: BLE001 - not installed, or no answer on this platform
            try:
                available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (AttributeError, ValueError, OSError):
                return None
    cgroup = _cgroup_free()
    return available if cgroup is None else min(available, cgroup)


def memory_budget() -> tuple[int | None, str]:
    """The bytes one request may use, and where that number comes from.

    Returns
    -------
    budget : int or None
        Bytes; `None` when the available memory cannot be found out (no check is made then).
    origin : str
        ``'ASTROVLM_MEMORY_LIMIT_GB=4'`` or ``'75% of the 16.0 GB available'``, for messages.

    Raises
    ------
    AstroVLMError
        If ``ASTROVLM_MEMORY_LIMIT_GB`` is set but is not a positive number.
    """
    global _cache

    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        try:
            limit = float(text)
        except ValueError:
            limit = float("nan")
        if not limit > 0 or limit == float("inf"):
            raise AstroVLMError(f"{MEMORY_LIMIT_ENV} must be a positive number of gigabytes (e.g. 8), got "
                                f"{text!r}; fix or unset it.")
        return int(limit * 1e9), f"{MEMORY_LIMIT_ENV}={text}"
    now = time.monotonic()
    if now - _cache[0] > 1.0:  # a catalogue of many cutouts checks often; /proc is read once a second
        _cache = (now, _available_bytes())
    available = _cache[1]
    if available is None:
        return None, "unknown"
    return int(available * MEMORY_FRACTION), \
        f"{MEMORY_FRACTION:.0%} of the {_amount(available)} available now"


def _amount(nbytes: float) -> str:
    if nbytes >= 10 ** 18:  # absurd requests (a size of 1e300 pixels) must not overflow the message
        return f"more than {10 ** 6} TB"
    if nbytes >= 1e12:
        return f"{nbytes / 1e12:.1f} TB"
    if nbytes >= 1e8:
        return f"{nbytes / 1e9:.1f} GB"
    return f"{nbytes / 1e6:.1f} MB"


def check_memory(shape: Sequence[int], *, bands: int = 1, itemsize: int = 8, copies: float = 1,
                 what: str = "This request", shrink: str = "make the request smaller") -> int:
    """Raise before allocating if ``shape`` arrays would need more memory than this machine can spare.

    Parameters
    ----------
    shape : sequence of int
        Pixels of one plane, e.g. ``(ny, nx)``.
    bands : int, optional
        Planes of that shape held at once (3 for an RGB composite).
    itemsize : int, optional
        Bytes per value (8 for float64, 4 for float32).
    copies : float, optional
        How many arrays of ``bands x shape x itemsize`` the operation holds at its peak (its working
        copies: read pixels, NaN-filled result, stretch and RGB conversion, ...).
    what : str, optional
        What is being made, for the message: ``'A 100000 x 100000 pixel cutout'``.
    shrink : str, optional
        How the user makes the request smaller, for the message.

    Returns
    -------
    int
        The estimated bytes.

    Raises
    ------
    AstroVLMError
        ``'<what> needs 80.0 GB of memory, more than the 12.0 GB this machine can spare (...); <shrink>.'``
    """
    pixels = 1
    for n in shape:
        pixels *= max(0, int(n))
    # exact integer arithmetic: a float would overflow for absurd shapes before the comparison
    need = int(pixels * max(1, int(bands)) * int(itemsize) * Fraction(copies))
    budget, origin = memory_budget()
    if budget is not None and need > budget:
        raise AstroVLMError(f"{what} needs {_amount(need)} of memory, more than the {_amount(budget)} this "
                            f"machine can spare ({origin}); {shrink}.")
    return need
