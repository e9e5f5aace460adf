"""Where a local model runs and in which precision."""

from __future__ import annotations

import functools
import logging
import time

from ..errors import AstroVLMError

__all__ = ["pick_device", "pick_dtype"]

log = logging.getLogger("glue_astrovlm")


def pick_device(device: str | None = None) -> str:
    """The torch device to use: the one asked for, else CUDA, then Apple MPS, then CPU."""
    import torch

    if device is not None:
        device = str(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise AstroVLMError(f"Device {device!r} was requested but torch sees no CUDA GPU; "
                                "use --device cpu, or install a CUDA build of torch.")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise AstroVLMError("Device 'mps' was requested but is not available; use --device cpu.")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@functools.lru_cache(maxsize=None)
def _cpu_bf16_is_faster(hidden_size: int) -> bool:
    """Time a matmul shaped like the model's MLP in float32 and bfloat16 on this CPU."""
    import torch

    a32 = torch.randn(128, hidden_size)
    b32 = torch.randn(hidden_size, 4 * hidden_size)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = a32.to(dtype), b32.to(dtype)
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        timings[dtype] = time.perf_counter() - start
    faster = timings[torch.bfloat16] < timings[torch.float32]
    log.info("CPU matmul (hidden %d): float32 %.2f ms, bfloat16 %.2f ms -> %s", hidden_size,
             timings[torch.float32] * 200, timings[torch.bfloat16] * 200, "bfloat16" if faster else "float32")
    return faster


def pick_dtype(device: str, dtype=None, hidden_size: int = 576):
    """The torch dtype: the one asked for, else bfloat16 on CUDA (float16 if unsupported), float16 on MPS,
    and on CPU whichever of float32/bfloat16 is measured faster on this machine."""
    import torch

    if dtype is not None and dtype != "auto":
        if isinstance(dtype, str):
            try:
                return getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype))
            except AttributeError:
                raise AstroVLMError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.") from None
        return dtype
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16 if _cpu_bf16_is_faster(int(hidden_size)) else torch.float32
