"""Survey-scale throughput: rows/s of `tag_catalog` in one process against Ray with 1 and 2 actors.

The catalogue is the one the survey tests use, made bigger: ``--per-image`` rows (RA/Dec from each
image's WCS) on each of ``--images`` real FIRST (MiraBest) FITS files from
``../shared/data/fits/first_mirabest``. Every configuration tags the whole catalogue end to end into
a fresh output folder, with the same model folder:

local
    ``engine='local'``: one process, blocks of one image cut and scored in turn, with ``--threads``
    torch threads (default 1, as a one-CPU Ray actor has: on a 2-core machine under load, two
    intra-op threads made the tiny model about 9 times slower than one).
ray-1cpu, ray-2cpu
    ``engine='ray'`` on a local Ray started here (``ray.init(num_cpus=N+1)``: N one-CPU model actors
    and room for the cutting tasks), 1 and 2 CPU actors. Ray's start is timed apart; each run's time
    includes starting its actors and loading the model in them, as a user's run does.
ray-1gpu
    With ``--gpu`` on a machine with a GPU: one actor with ``num_gpus=1``; the GPU's utilisation is
    sampled with ``nvidia-smi`` every 0.2 s while it runs.

Reported: seconds end to end, rows/s, the start-up (time to the first finished rows: actors
starting, the model loading in them) and the steady rows/s after it; Ray's overhead per row, end to
end ``(t_ray - t_local) / rows`` and in the steady state ``1/rate_ray - 1/rate_local``. The model is
loaded once untimed first, so that the local run does not pay the imports and cold file reads alone.
The rows of every configuration are checked against the local ones (same labels and probabilities).
``--model tiny`` (default) is the tests' shrunk SmolVLM, where the model costs little and Ray's
overhead shows; ``--model full`` is the real 256M architecture. Weights are random: speed only.

Usage::

    python benchmarks/bench_survey.py --images 4 --per-image 24 --out survey.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASTROVLM_SHARED", REPO.parent / "shared"))
LABELS = ["FRI", "FRII", "Compact", "Bent"]


def make_catalogue(folder: Path, images: int, per_image: int) -> Path:
    from astropy.table import Table

    from glue_astrovlm import open_image

    files = sorted((SHARED / "data" / "fits" / "first_mirabest").glob("*.fits"))[:images]
    rows = {"id": [], "file": [], "ra": [], "dec": []}
    rng = np.random.default_rng(0)
    for index, path in enumerate(files):
        with open_image(path) as image:
            wcs = image.celestial_wcs
        for k in range(per_image):
            x, y = rng.uniform(40, 260, size=2)
            ra, dec = wcs.pixel_to_world_values(x, y)
            rows["id"].append(f"img{index}-{k:03d}")
            rows["file"].append(str(path))
            rows["ra"].append(float(ra))
            rows["dec"].append(float(dec))
    out = folder / "survey.parquet"
    Table(rows).write(out, format="parquet", overwrite=True)
    return out


def build_model(folder: Path, kind: str) -> Path:
    from glue_astrovlm.testing import build_smolvlm

    target = folder / f"smolvlm-{kind}"
    if not (target / "config.json").exists():
        build_smolvlm(target, tiny=kind == "tiny")
    return target


class GpuSampler:
    """Mean and peak GPU utilisation (nvidia-smi) while it runs."""

    def __init__(self):
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.values.append(float(out.stdout.split()[0]))
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(catalogue: Path, model: Path, out: Path, engine: str, actors: int | None, device: str) -> dict:
    from glue_astrovlm.survey import tag_catalog

    result = tag_catalog(catalogue, out, model=str(model), labels=LABELS, engine=engine, actors=actors, size=64,
                         load_options={"dtype": "float32" if device == "cpu" else "bfloat16", "device": device},
                         block_rows=16, shard_rows=256, progress=False)
    assert result.complete, result.summary()
    return {"seconds": result.seconds, "rows": result.total, "rows_per_s": result.total / result.seconds,
            "startup_s": result.first_rows_s, "steady_rows_per_s": result.steady_rows_per_s,
            "table": result.table()}


def _same(table, reference) -> float:
    assert list(table["row"]) == list(reference["row"]) and list(table["label"]) == list(reference["label"])
    columns = [c for c in table.colnames if c.startswith("p_")]
    return float(max(np.max(np.abs(table[c] - reference[c])) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--per-image", type=int, default=24)
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--gpu", action="store_true", help="also one GPU actor (needs a CUDA GPU)")
    parser.add_argument("--skip-cpu-actors", action="store_true", help="with --gpu: local and GPU only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the local run (default 1: what a one-CPU Ray actor gets)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-survey-"))
    catalogue = make_catalogue(work, args.images, args.per_image)
    model = build_model(Path(tempfile.gettempdir()) / "glue-astrovlm-bench", args.model)
    device = "cuda" if args.gpu else "cpu"
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "local_threads": args.threads,
              "load_before": os.getloadavg(), "model": args.model, "rows": args.images * args.per_image,
              "images": args.images, "runs": {}}
    import torch

    from glue_astrovlm import load_model

    torch.set_num_threads(args.threads)
    load_model(str(model), device=device).close()  # imports and file cache warm, as for the actors' workers
    local = run(catalogue, model, work / "local", "local", None, device)
    report["runs"]["local"] = {k: v for k, v in local.items() if k != "table"}
    configs = [] if args.skip_cpu_actors else [("ray-1cpu", 1, 0), ("ray-2cpu", 2, 0)]
    configs += [("ray-1gpu", 1, 1)] if args.gpu else []
    for name, actors, gpus in configs:
        began = time.perf_counter()
        ray.init(num_cpus=actors + 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - began
        sampler = GpuSampler() if gpus else None
        with sampler or _Nothing():
            measured = run(catalogue, model, work / name, "ray", actors, "cuda" if gpus else "cpu")
        ray.shutdown()
        entry = {k: v for k, v in measured.items() if k != "table"}
        entry.update(ray_start_s=started, max_abs_dp_vs_local=_same(measured["table"], local["table"]),
                     overhead_per_row_ms=1000 * (measured["seconds"] - local["seconds"]) / local["rows"],
                     steady_overhead_per_row_ms=1000 * (1 / measured["steady_rows_per_s"]
                                                        - 1 / local["steady_rows_per_s"]))
        if sampler is not None and sampler.values:
            entry.update(gpu_util_mean=float(np.mean(sampler.values)),
                         gpu_util_max=float(np.max(sampler.values)))
        report["runs"][name] = entry
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


if __name__ == "__main__":
    sys.exit(main())
