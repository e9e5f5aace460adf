"""Is the automatic CPU precision the faster one for this model on this machine? (issue 14)

Side by side in one process, on the full-size SmolVLM-256M (random weights: speed is real, answers are
not) and real FIRST cutouts:

- classification throughput in float32 and in bfloat16, the two timed *interleaved* (one cutout in
  each precision, in turn), so that other jobs on the machine slow both alike;
- what `pick_dtype` chooses automatically, with its reason, and what the choice costs (the first time,
  when it measures, and then from its cache);
- the machine's matmul peak (a 2048^3 matmul in each precision) and the model's FLOPs per cutout
  (torch's FlopCounterMode), so that the throughput can be read as a percentage of the peak.

Run: ``python benchmarks/bench_precision.py --model-dir /tmp/smolvlm-256m-full --out precision.json``
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_classify import ensure_model, first_cutouts, label_set_for, machine_info  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "first_radio_galaxies" / "test"


def matmul_peak(dtype, size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of a ``size``-cubed matmul in ``dtype`` (median of ``repeats``)."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - began)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def flops_per_cutout(vlm, cutout, labels) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        vlm.classify([cutout], labels)
    return float(counter.get_total_flops())


def interleaved_throughput(vlms: dict, cutouts, labels) -> dict:
    """Seconds per cutout in each precision, one cutout at a time, alternating precisions."""
    times = {name: [] for name in vlms}
    for cutout in cutouts:
        for name, vlm in vlms.items():
            began = time.perf_counter()
            vlm.classify([cutout], labels)
            times[name].append(time.perf_counter() - began)
    return times


def automatic_choice(config) -> dict:
    """What pick_dtype chooses, and its cost measured (a fresh cache) and cached."""
    from glue_astrovlm.models.devices import pick_dtype

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("glue_astrovlm").addHandler(handler)
    logging.getLogger("glue_astrovlm").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["ASTROVLM_CONFIG_DIR"] = folder
        began = time.perf_counter()
        first = pick_dtype("cpu", None, config=config)
        measured = time.perf_counter() - began
        began = time.perf_counter()
        pick_dtype("cpu", None, config=config)
        cached = time.perf_counter() - began
    logging.getLogger("glue_astrovlm").removeHandler(handler)
    reason = next((r for r in records if r.startswith("CPU precision")), "")
    return {"dtype": str(first).replace("torch.", ""), "reason": reason, "first_seconds": measured,
            "cached_seconds": cached}


def vision_tower_eager_and_compiled(vlm, rounds: int = 4) -> dict:
    """Seconds per 512-px tile through the vision tower alone, eager and compiled, timed interleaved."""
    import torch

    tower = vlm.model.model.vision_model
    pixels = torch.randn(1, 3, 512, 512, dtype=vlm.dtype)
    started = time.perf_counter()
    compiled = torch.compile(tower)
    with torch.inference_mode():
        compiled(pixel_values=pixels)
        compile_seconds = time.perf_counter() - started
        tower(pixel_values=pixels)
        times = {"eager": [], "compiled": []}
        for _ in range(rounds):
            for name, run in (("eager", tower), ("compiled", compiled)):
                started = time.perf_counter()
                run(pixel_values=pixels)
                times[name].append(time.perf_counter() - started)
    return {"compile_and_first_seconds": compile_seconds,
            **{f"{name}_seconds": statistics.median(values) for name, values in times.items()}}


def main(argv=None) -> int:
    import torch

    from glue_astrovlm import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "smolvlm-256m-full")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=8, help="cutouts (each runs once per precision)")
    parser.add_argument("--k", type=int, default=4, help="labels per classification")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--vision-compile", action="store_true",
                        help="also time the vision tower alone, eager against torch.compile, in the chosen dtype")
    args = parser.parse_args(argv)

    model_dir, _ = ensure_model(args.model_dir)
    fp32 = load_model(model_dir, dtype="float32", batch_size=1)
    bf16 = copy.copy(fp32)
    bf16.model = copy.deepcopy(fp32.model).to(torch.bfloat16)
    bf16.dtype = torch.bfloat16
    labels = label_set_for(args.k)
    cutouts = first_cutouts(args.data_dir, args.n)
    vlms = {"float32": fp32, "bfloat16": bf16}
    interleaved_throughput(vlms, cutouts[:1], labels)  # warm-up
    times = interleaved_throughput(vlms, cutouts, labels)
    rate = {name: 1 / statistics.median(values) for name, values in times.items()}
    faster = max(rate, key=rate.get)
    choice = automatic_choice(fp32.model.config)
    peak = {name: matmul_peak(vlm.dtype) for name, vlm in vlms.items()}
    flops = flops_per_cutout(fp32, cutouts[0], labels)
    report = {
        "machine": machine_info(), "n": args.n, "k": args.k,
        "cutouts_per_s": rate, "faster": faster, "automatic": choice,
        "automatic_within_10pct": rate[choice["dtype"]] >= 0.9 * rate[faster],
        "matmul_peak_gflops": peak, "gflop_per_cutout": flops / 1e9,
        # of the precision chosen: an emulated bf16 matmul (no bf16 instructions) is no peak to compare with
        "percent_of_peak": 100 * flops * rate[choice["dtype"]] / (peak[choice["dtype"]] * 1e9),
        "load_average_end": list(os.getloadavg()),
    }
    if args.vision_compile:
        report["vision_tower"] = vision_tower_eager_and_compiled(vlms[choice["dtype"]])
        report["load_average_end"] = list(os.getloadavg())
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if report["automatic_within_10pct"] else 1


if __name__ == "__main__":
    sys.exit(main())
