"""Where a local model runs and in which precision."""

from __future__ import annotations

import logging

from ..errors import AstroVLMError

__all__ = ["pick_device", "pick_dtype", "available_devices"]

log = logging.getLogger("glue_astrovlm")

#: Weight precisions a model can be loaded in, by the names `pick_dtype` accepts.
_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16",
                "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16"}


def _mps_available(torch) -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """The devices torch can run a model on here: ``cpu``, ``cuda`` and ``cuda:N`` per GPU, ``mps``."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available(torch):
        devices.append("mps")
    return devices


def _check_device(device: str) -> str:
    """``device`` in torch's spelling (lower case), if this machine has it; else an `AstroVLMError`."""
    import torch

    text = device.strip().lower()
    kind, colon, index = text.partition(":")
    valid = ", ".join(available_devices())
    if kind not in ("cpu", "cuda", "mps") or (colon and not index.isdigit()) or (kind != "cuda" and index
                                                                                 not in ("", "0")):
        hint = " (torch calls NVIDIA GPUs 'cuda')" if kind in ("gpu", "nvidia") else ""
        raise AstroVLMError(f"Unknown device {device!r}{hint}; use one of: {valid}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise AstroVLMError(f"Device {device!r} was requested but torch sees no CUDA GPU; use one of: "
                            f"{valid} (or install a CUDA build of torch).")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise AstroVLMError(f"Device {device!r} was requested but torch sees {count} CUDA GPU(s); use one "
                            f"of: {valid}.")
    if kind == "mps" and not _mps_available(torch):
        raise AstroVLMError(f"Device 'mps' was requested but is not available; use one of: {valid}.")
    return text


def pick_device(device: str | None = None) -> str:
    """The torch device to use: the one asked for, else CUDA, then Apple MPS, then CPU.

    Parameters
    ----------
    device : str, optional
        ``'cpu'``, ``'cuda'``, ``'cuda:1'`` or ``'mps'`` (any case); `None` or ``'auto'`` picks one.

    Raises
    ------
    AstroVLMError
        If ``device`` is not a device name, or this machine does not have it; the message lists the
        devices it has.
    """
    import torch

    if device is not None and not (isinstance(device, str) and device.strip().lower() == "auto"):
        if not isinstance(device, str):
            raise AstroVLMError(f"The device must be a name such as 'cuda' or 'cpu', got {device!r}.")
        return _check_device(device)
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available(torch):
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype=None, hidden_size: int = 576, config=None):
    """The torch dtype: the one asked for, else bfloat16 on CUDA (float16 if unsupported), float16 on MPS,
    and on CPU whichever of float32/bfloat16 is faster for this model on this machine
    (`glue_astrovlm.models.precision`: measured once on a vision block of the model's shape, then cached).

    Raises
    ------
    AstroVLMError
        If ``dtype`` is neither ``'auto'``, a floating-point precision's name nor a floating-point
        ``torch.dtype``.
    """
    import torch

    if dtype is not None and dtype != "auto":
        if isinstance(dtype, str) and dtype.strip().lower() in _DTYPE_NAMES:
            return getattr(torch, _DTYPE_NAMES[dtype.strip().lower()])
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            return dtype
        raise AstroVLMError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16 (or 'auto').")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    from types import SimpleNamespace

    from .precision import cpu_dtype

    shape_from = config if config is not None else SimpleNamespace(hidden_size=int(hidden_size))
    return getattr(torch, cpu_dtype(shape_from))
