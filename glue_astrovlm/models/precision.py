"""The precision a model runs in on a CPU: float32 or bfloat16, whichever is faster for this model here.

bfloat16 halves the memory traffic, and on CPUs with bf16 instructions (Intel AMX or AVX512-BF16,
Arm BF16) it is about 2.5x faster than float32; without them torch emulates it and it is slower. The
choice is made from evidence that load on the machine does not flip:

- the CPU's bf16 instructions, read from the operating system;
- one transformer block shaped like the model's vision tower at its real tile size, run in both
  precisions *interleaved* (float32, bfloat16, float32, ...), so that other jobs slow both alike, and
  compared by the median of the per-round ratios.

bfloat16 is chosen only when it is clearly faster (`BF16_MARGIN`), so the choice is never more than
10% slower than the faster precision. The choice is cached per machine, torch version and block
shape in the configuration folder, so it costs nothing after the first load, and it is logged at
INFO with its reason.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["BlockShape", "BF16_MARGIN", "bf16_instructions", "block_shape", "choose_cpu_dtype",
           "measure_block", "cpu_dtype"]

log = logging.getLogger("glue_astrovlm")

#: bfloat16 is chosen when its median time is below this fraction of float32's.
BF16_MARGIN = 0.9
#: CPU flags that mean bf16 arithmetic in hardware (Linux /proc/cpuinfo names; Arm's is "bf16").
_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
_ROUNDS = 5
_MAX_TOKENS = 256  # a quarter of a SmolVLM tile: the same matrix shapes, a quarter of the time
#: Rounds stop early once both precisions are this far apart in every round (load cannot flip that).
_CLEAR = 1.5


@dataclass(frozen=True)
class BlockShape:
    """A transformer block: ``tokens`` image tokens of width ``hidden``, MLP width ``intermediate``."""

    tokens: int
    hidden: int
    intermediate: int

    def key(self) -> str:
        return f"{self.tokens}x{self.hidden}x{self.intermediate}"


def bf16_instructions(cpuinfo: str | None = None) -> list[str]:
    """The bf16 instructions this CPU reports (``amx_bf16``, ``avx512_bf16``, Arm's ``bf16``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return [flag for flag in _BF16_FLAGS if flag in flags]


def block_shape(config) -> BlockShape:
    """The shape of one vision-tower block of a model, from its configuration (at its real tile size)."""
    vision = getattr(config, "vision_config", None) or config
    hidden = int(getattr(vision, "hidden_size", 768) or 768)
    intermediate = int(getattr(vision, "intermediate_size", 4 * hidden) or 4 * hidden)
    image_size = getattr(vision, "image_size", 512) or 512
    patch = getattr(vision, "patch_size", 16) or 16
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    tokens = max(16, min(_MAX_TOKENS, (int(image_size) // int(patch)) ** 2))
    return BlockShape(tokens, hidden, intermediate)


def _block(shape: BlockShape, dtype):
    import torch

    torch.manual_seed(0)
    layers = torch.nn.ModuleDict({
        "qkv": torch.nn.Linear(shape.hidden, 3 * shape.hidden), "out": torch.nn.Linear(shape.hidden, shape.hidden),
        "up": torch.nn.Linear(shape.hidden, shape.intermediate),
        "down": torch.nn.Linear(shape.intermediate, shape.hidden)})
    return layers.to(dtype).eval()


def _forward(layers, x):
    import torch

    heads = max(1, x.shape[-1] // 64)
    q, k, v = layers["qkv"](x).chunk(3, dim=-1)
    split = (x.shape[0], x.shape[1], heads, -1)
    q, k, v = (t.reshape(split).transpose(1, 2) for t in (q, k, v))
    attended = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
    x = x + layers["out"](attended)
    return x + layers["down"](torch.nn.functional.gelu(layers["up"](x)))


def measure_block(shape: BlockShape, rounds: int = _ROUNDS) -> dict[str, list[float]]:
    """Seconds per forward of one block in float32 and bfloat16, timed in interleaved rounds."""
    import torch

    blocks = {name: _block(shape, getattr(torch, name)) for name in ("float32", "bfloat16")}
    inputs = {name: torch.randn(1, shape.tokens, shape.hidden).to(getattr(torch, name)) for name in blocks}
    times: dict[str, list[float]] = {name: [] for name in blocks}
    with torch.inference_mode():
        for name in blocks:  # warm-up: kernels chosen, caches filled
            _forward(blocks[name], inputs[name])
        for _ in range(rounds):
            for name in blocks:
                began = time.perf_counter()
                _forward(blocks[name], inputs[name])
                times[name].append(time.perf_counter() - began)
            ratios = [b / f for f, b in zip(times["float32"], times["bfloat16"])]
            if len(ratios) >= 2 and (min(ratios) > _CLEAR or max(ratios) < 1 / _CLEAR):
                break  # one precision is far ahead in every round: more rounds cannot change the choice
    return times


def choose_cpu_dtype(instructions: list[str], times: dict[str, list[float]]) -> tuple[str, str]:
    """``(dtype name, reason)`` from the CPU's bf16 instructions and interleaved block timings.

    The median of the per-round ratios bfloat16/float32 decides: bfloat16 when it is below
    `BF16_MARGIN` (clearly faster), float32 otherwise, so the choice is within 10% of the faster.
    """
    ratios = [b / f for f, b in zip(times["float32"], times["bfloat16"]) if f > 0]
    if not ratios:
        return "float32", "no timing could be made; float32 is exact everywhere"
    ratio = statistics.median(ratios)
    hardware = ", ".join(instructions) if instructions else "no bf16 instructions (emulated)"
    faster = "bfloat16" if ratio < BF16_MARGIN else "float32"
    speed = (f"bfloat16 takes {ratio:.2f}x the time of float32 on a vision block (median of {len(ratios)} "
             f"interleaved rounds)")
    if faster == "bfloat16":
        return "bfloat16", f"{speed}; CPU: {hardware}"
    return "float32", f"{speed}, not below {BF16_MARGIN}; CPU: {hardware}"


def _cache_file() -> Path:
    from ..settings import config_folder

    return config_folder() / "cpu-precision.json"


def _machine() -> str:
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{name} | {os.cpu_count()} cores | torch {torch.__version__}"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict) -> None:
    from ..results import atomic_write

    text = json.dumps(cache, indent=1)
    try:
        atomic_write(_cache_file(), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
    except Exception as error:  # noqa: BLE001 - a read-only configuration folder must not stop a load
        log.info("Could not cache the CPU precision choice: %s", error)


def cpu_dtype(config) -> str:
    """``'float32'`` or ``'bfloat16'`` for this model on this CPU (measured once, then cached)."""
    shape = block_shape(config)
    key = f"{_machine()} | block {shape.key()}"
    cache = _read_cache()
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("dtype") in ("float32", "bfloat16"):
        log.info("CPU precision %s (cached): %s", entry["dtype"], entry.get("reason", ""))
        return entry["dtype"]
    instructions = bf16_instructions()
    times = measure_block(shape)
    dtype, reason = choose_cpu_dtype(instructions, times)
    log.info("CPU precision %s: %s", dtype, reason)
    cache[key] = {"dtype": dtype, "reason": reason, "shape": asdict(shape), "times": times}
    _write_cache(cache)
    return dtype
