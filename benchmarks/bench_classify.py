"""Classification speed and memory of glue-astrovlm against three baselines, in one process.

Every method runs on the same FIRST radio-galaxy cutouts (8 per class from the test split, sorted
file names), stretched by the engine (zscale, linear), and on the same model object: the full-size
SmolVLM-256M-Instruct architecture with random weights, loaded through `glue_astrovlm.load_model`
as a user loads a downloaded model. Methods:

ours
    ``vlm.classify(cutouts, labels)``: one 512-px tile (64 image tokens) per cutout, the
    image-plus-prompt prefix run once per cutout and the K label continuations scored from its KV
    cache in one more forward pass.
generate
    Baseline 1, the script way (e.g. radio-llava's evaluation scripts): the processor's default
    tiling (16 tiles + a global view), ``model.generate(max_new_tokens=10)`` one image at a time,
    then the label parsed out of the text. Slow, so it runs on ``--n-baseline1`` images; rates are
    per cutout so ratios stay fair.
bruteforce
    Baseline 2: one complete forward pass (image, prompt and label) per label
    (`glue_astrovlm.models.scoring.score_labels_bruteforce`), single tile like ours, so the ratio
    isolates the KV-cache reuse.
decision
    Baseline 3: transformers' ``pipeline("decision")`` built on the same model, a ``choice``
    question with the cutout as an asset, options lettered A, B, ... and scored from next-token
    logits. Single tile like ours (the pipeline's processor copy has ``do_image_splitting=False``).

Timing: a warm-up on a few images, then ``--repeats`` timed runs per method; reported rates are
medians. Ours runs first, for every K, so that its peak memory is measured before any baseline
has run; the remaining repeats of all methods are interleaved round by round, so that a change of
background load on the machine hits every method alike.

The weights are random: no accuracy is measured or reported. What the run shows is speed, memory,
token counts, and that the cached scoring equals the brute-force reference.

Usage::

    python benchmarks/bench_classify.py --n 32 --k 4 10 --out results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASTROVLM_SHARED", REPO.parent / "shared"))
DEFAULT_DATA = SHARED / "data" / "first_radio_galaxies" / "test"
DEFAULT_MODEL_DIR = Path(tempfile.gettempdir()) / "glue-astrovlm-bench" / "smolvlm-256m-random-seed0"
CLASSES = ("FRI", "FRII", "Compact", "Bent")
METHODS = ("ours", "bruteforce", "decision", "generate")
TITLES = {
    "ours": "ours: classify, KV-cache label scoring, 1 tile",
    "bruteforce": "baseline 2: 1 forward pass per label, 1 tile",
    "decision": 'baseline 3: pipeline("decision"), letters, 1 tile',
    "generate": "baseline 1: default tiling + generate + parse",
}
#: label-set preset used for each K; other K take the first K labels of galaxy10-decals.
PRESET_FOR_K = {4: "radio-morphology", 10: "galaxy10-decals"}
MB = 1024 * 1024

log = logging.getLogger("bench_classify")


# --------------------------------------------------------------------------- machine and memory
def machine_info() -> dict:
    """CPU model, cores, RAM, library versions and threads: the machine the numbers belong to."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = sorted(set(re.findall(r"\b(avx512\w*|avx2|amx\w*|fma)\b", text)))
        flags = " ".join(found)
    except OSError:
        pass
    ram = None
    try:
        import psutil

        ram = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "ram_gib": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def ru_maxrss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


class RSSSampler:
    """Largest RSS seen by a background thread (every ``interval`` s) while the context is open."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            if self._stop.wait(self.interval):
                break
        self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / MB


# --------------------------------------------------------------------------- inputs
def ensure_model(model_dir: Path) -> tuple[Path, bool]:
    """The random-weight full-size SmolVLM-256M in ``model_dir``, built in a child process if missing.

    Building in a child keeps the build's memory out of this process's peak RSS.
    """
    if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
        return model_dir, False
    if model_dir.exists() and any(model_dir.iterdir()):
        sys.exit(f"{model_dir} exists but holds no saved model (config.json + model.safetensors); "
                 "pass an empty or new --model-dir.")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = model_dir.with_name(model_dir.name + ".partial")
    print(f"Building the full-size SmolVLM-256M (random weights) in {model_dir} ...", flush=True)
    code = ("import sys; from glue_astrovlm.testing import build_smolvlm; "
            "build_smolvlm(sys.argv[1], tiny=False, seed=0)")
    subprocess.run([sys.executable, "-c", code, str(partial)], check=True)
    partial.rename(model_dir)
    return model_dir, True


def first_cutouts(data_dir: Path, n: int) -> list:
    """``n`` FIRST cutouts, spread evenly over the four classes, sorted file names, as `Cutout` objects.

    The PNGs are greyscale display images with row 0 at the top; they are flipped to the FITS
    convention (row 0 at the bottom) so that the engine's stretch path shows them the right way up.
    """
    from PIL import Image

    from glue_astrovlm import Cutout, Provenance

    per_class = [n // len(CLASSES) + (i < n % len(CLASSES)) for i in range(len(CLASSES))]
    cutouts = []
    for name, count in zip(CLASSES, per_class):
        paths = sorted((data_dir / name).glob("*.png"))[:count]
        if len(paths) < count:
            sys.exit(f"{data_dir / name} has {len(paths)} PNG files, {count} needed; pass --data-dir or a smaller --n.")
        for path in paths:
            with Image.open(path) as image:
                data = np.asarray(image.convert("L"), dtype=np.float32)[::-1].copy()
            ny, nx = data.shape
            provenance = Provenance(source=str(path), bbox=(0, nx, 0, ny),
                                    center_pixel=((nx - 1) / 2, (ny - 1) / 2), source_id=path.stem,
                                    extra={"class": name})
            cutouts.append(Cutout(data, provenance))
    return cutouts


def label_set_for(k: int):
    from glue_astrovlm import LabelSet, load_preset

    if k in PRESET_FOR_K:
        return load_preset(PRESET_FOR_K[k])
    base = load_preset("galaxy10-decals")
    if not 2 <= k <= len(base):
        sys.exit(f"--k {k}: only 2 to {len(base)} labels are available (4 and 10 use presets).")
    return LabelSet(base.labels[:k], base.descriptions[:k], base.question, f"galaxy10-decals[:{k}]")


# --------------------------------------------------------------------------- the methods
class Method:
    """One way of classifying; ``run(images)`` returns per-image outputs, ``tokens`` describes the cost."""

    name = ""
    images_key = "pil"  # which image list it takes

    def run(self, images) -> list:
        raise NotImplementedError


class Ours(Method):
    name = "ours"
    images_key = "cutouts"

    def __init__(self, vlm, label_set):
        self.vlm, self.label_set = vlm, label_set

    def run(self, cutouts):
        results = self.vlm.classify(cutouts, self.label_set)
        return [[r.probabilities[label] for label in self.label_set.labels] for r in results]

    def tokens(self, pil_image) -> dict:
        vlm = self.vlm
        prompt = vlm.prompt_text(self.label_set.prompt())
        enc = vlm.processor(text=[prompt], images=[[pil_image]], return_tensors="pt", **vlm.processor_kwargs)
        continuations = vlm.label_continuations(self.label_set)
        prefix = int(enc["input_ids"].shape[1])
        longest = max(len(c) for c in continuations)
        return {"tiles_per_cutout": int(enc["pixel_values"].shape[1]), "image_tokens": vlm.image_token_count(enc),
                "prompt_tokens": prefix, "label_tokens": [len(c) for c in continuations],
                # the prefix once, then K padded continuations of (longest - 1) tokens from the cache
                "tokens_forwarded": prefix + len(continuations) * (longest - 1),
                "vision_passes": 1, "batch_size": vlm.batch_size}


class BruteForce(Method):
    name = "bruteforce"

    def __init__(self, vlm, label_set):
        self.vlm, self.label_set = vlm, label_set
        self.prompt = vlm.prompt_text(label_set.prompt())
        self.continuations = vlm.label_continuations(label_set)

    def encode(self, images):
        vlm = self.vlm
        inputs = vlm.processor(text=[self.prompt] * len(images), images=[[im] for im in images],
                               return_tensors="pt", **vlm.processor_kwargs)
        return vlm._to_device(inputs)

    def run(self, images):
        from glue_astrovlm.models.scoring import score_labels_bruteforce

        out = []
        step = self.vlm.batch_size  # encode in the same batches as ours; scoring is per image and label
        for start in range(0, len(images), step):
            inputs = self.encode(images[start:start + step])
            scores = score_labels_bruteforce(self.vlm.model, inputs, self.continuations)
            out += scores.float().softmax(dim=-1).tolist()
        return out

    def tokens(self, pil_image) -> dict:
        enc = self.encode([pil_image])
        prefix = int(enc["input_ids"].shape[1])
        return {"tiles_per_cutout": int(enc["pixel_values"].shape[1]), "image_tokens": self.vlm.image_token_count(enc),
                "prompt_tokens": prefix, "label_tokens": [len(c) for c in self.continuations],
                "tokens_forwarded": sum(prefix + len(c) for c in self.continuations),
                "vision_passes": len(self.continuations), "batch_size": 1}


class Generate(Method):
    """Baseline 1: what evaluation scripts do: default tiling, generate, parse the text."""

    name = "generate"

    def __init__(self, vlm, label_set, max_new_tokens: int):
        self.vlm, self.label_set, self.max_new_tokens = vlm, label_set, max_new_tokens
        self.prompt = vlm.prompt_text(label_set.prompt())
        # longest label first, so that "FRII" is not read as "FRI"
        labels = sorted(label_set.labels, key=len, reverse=True)
        self.pattern = re.compile("|".join(r"(?<![A-Za-z0-9])" + re.escape(label) + r"(?![A-Za-z0-9])"
                                           for label in labels), re.IGNORECASE)
        self.by_lower = {label.lower(): label for label in label_set.labels}
        self.last_texts: list[str] = []
        self.last_new_tokens: list[int] = []

    def encode(self, image):
        # the processor's own defaults: no processor_kwargs, so SmolVLM splits the image into tiles
        inputs = self.vlm.processor(text=[self.prompt], images=[[image]], return_tensors="pt")
        return self.vlm._to_device(inputs)

    def parse(self, text: str) -> str | None:
        match = self.pattern.search(text)
        return self.by_lower[match.group(0).lower()] if match else None

    def run(self, images):
        import torch

        tokenizer = self.vlm.tokenizer
        answers, texts, new_tokens = [], [], []
        for image in images:  # one image per call, as the scripts do
            inputs = self.encode(image)
            with torch.inference_mode():
                output = self.vlm.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                                 pad_token_id=tokenizer.pad_token_id)
            generated = output[0, inputs["input_ids"].shape[1]:]
            text = tokenizer.decode(generated, skip_special_tokens=True)
            texts.append(text)
            new_tokens.append(int(generated.shape[0]))
            answers.append(self.parse(text))
        self.last_texts, self.last_new_tokens = texts, new_tokens
        return answers

    def tokens(self, pil_image) -> dict:
        enc = self.encode(pil_image)
        prefix = int(enc["input_ids"].shape[1])
        return {"tiles_per_cutout": int(enc["pixel_values"].shape[1]), "image_tokens": self.vlm.image_token_count(enc),
                "prompt_tokens": prefix, "max_new_tokens": self.max_new_tokens,
                "tokens_forwarded": prefix + self.max_new_tokens - 1, "vision_passes": 1, "batch_size": 1}


class Decision(Method):
    """Baseline 3: transformers' decision pipeline on the same model, with a single-tile processor copy."""

    name = "decision"

    def __init__(self, pipe, processor, label_set, image_token_id):
        self.pipe, self.processor, self.label_set = pipe, processor, label_set
        self.image_token_id = image_token_id
        self.placeholder = "[cutout]"
        self.question = {"type": "choice", "instructions": label_set.question,
                         "criteria": {label: description or None
                                      for label, description in zip(label_set.labels, label_set.descriptions)}}

    def request(self, image) -> dict:
        return {"state": self.placeholder, "questions": {"morphology": self.question},
                "assets": {self.placeholder: image}}

    def run(self, images):
        answers = self.pipe([self.request(image) for image in images])
        return [[a["morphology"]["probabilities"][label] for label in self.label_set.labels] for a in answers]

    def tokens(self, pil_image) -> dict:
        (inputs, _), = self.pipe.decision_config.prepare_inputs(self.request(pil_image), self.processor)
        ids = inputs["input_ids"][0]
        return {"tiles_per_cutout": int(inputs["pixel_values"].shape[1]),
                "image_tokens": int((ids == self.image_token_id).sum()),
                "prompt_tokens": int(ids.shape[0]), "tokens_forwarded": int(ids.shape[0]),
                "option_labels": "letters A..", "vision_passes": 1, "batch_size": 1}


def build_decision_pipeline(vlm) -> tuple[object | None, object | None, dict]:
    """The decision pipeline on ``vlm``'s model, or why it cannot run.

    The pipeline gets a deep copy of the processor (it adds its ``<|mark|>``/``<|split|>`` tokens to
    the tokenizer, which must not leak into ours) with ``do_image_splitting=False``: the pipeline has
    no argument for processor options, so the copy carries the single-tile setting.
    """
    import copy

    from transformers import pipeline
    from transformers.decision import DecisionConfig

    info: dict = {}
    processor = copy.deepcopy(vlm.processor)
    for key, value in vlm.processor_kwargs.items():
        if hasattr(processor.image_processor, key):
            current = getattr(processor.image_processor, key)
            if isinstance(value, dict) and not isinstance(current, dict):  # e.g. size is a SizeDict
                value = type(current)(**value)
            setattr(processor.image_processor, key, value)
    info["processor_settings"] = dict(vlm.processor_kwargs)
    probe = {"state": "[cutout]", "questions": {"q": {"type": "choice", "criteria": {"a": None, "b": None}}},
             "assets": {"[cutout]": _blank_image()}}
    pipe = pipeline("decision", model=vlm.model, tokenizer=processor.tokenizer, processor=processor)
    try:
        pipe.decision_config.prepare_inputs(probe, processor)
        info["decision_config"] = "default"
        return pipe, processor, info
    except Exception as error:  # noqa: BLE001 - recorded, then the documented switch is tried
        info["default_config_error"] = f"{type(error).__name__}: {error}"
    # The default DecisionConfig(sanitize_control_tokens=True) tokenizes through a path that yields no
    # character offsets, which Idefics3Processor needs to count image tokens. Without sanitizing:
    config = DecisionConfig(sanitize_control_tokens=False)
    pipe = pipeline("decision", model=vlm.model, tokenizer=processor.tokenizer, processor=processor,
                    decision_config=config)
    try:
        pipe.decision_config.prepare_inputs(probe, processor)
    except Exception as error:  # noqa: BLE001
        info["error"] = f"{type(error).__name__}: {error}"
        return None, None, info
    info["decision_config"] = "DecisionConfig(sanitize_control_tokens=False)"
    return pipe, processor, info


def _blank_image():
    from PIL import Image

    return Image.new("RGB", (300, 300))


# --------------------------------------------------------------------------- timing
class Phase:
    """The timings, outputs and memory of one method at one K."""

    def __init__(self, method: Method, images, k: int):
        self.method, self.images, self.k = method, images, k
        self.seconds: list[float] = []
        self.warmup_seconds = None
        self.outputs = None
        self.peak_rss_mb = 0.0
        self.error = None
        self.load_average: list[float] = []  # 1-minute load average after each timed run
        self.tokens = None

    def _timed(self, images):
        sampler = RSSSampler()
        with sampler:
            start = time.perf_counter()
            outputs = self.method.run(images)
            elapsed = time.perf_counter() - start
        self.peak_rss_mb = max(self.peak_rss_mb, sampler.peak_mb)
        return outputs, elapsed

    def warmup(self, count: int):
        if count > 0:  # --warmup 0: none
            _, self.warmup_seconds = self._timed(self.images[:count])

    def repeat(self):
        self.outputs, elapsed = self._timed(self.images)
        self.seconds.append(elapsed)
        if hasattr(os, "getloadavg"):
            self.load_average.append(round(os.getloadavg()[0], 2))
        rate = len(self.images) / elapsed
        print(f"  K={self.k:<3d} {self.method.name:<10s} run {len(self.seconds)}: {len(self.images)} cutouts in "
              f"{elapsed:7.1f} s = {rate:6.3f} cutouts/s  (RSS peak {self.peak_rss_mb:,.0f} MB)", flush=True)

    @property
    def median_rate(self) -> float | None:
        if not self.seconds:
            return None
        return statistics.median(len(self.images) / s for s in self.seconds)


def run_safely(phase: Phase, action, *args):
    if phase.error is not None:
        return
    try:
        action(*args)
    except Exception as error:  # noqa: BLE001 - a failed baseline is recorded, the run goes on
        phase.error = f"{type(error).__name__}: {error}"
        print(f"  K={phase.k} {phase.method.name} failed: {phase.error}", flush=True)


def profile_ours(vlm, label_set, images, batch_sizes) -> list[dict]:
    """Where ours spends its time, per cutout: preprocessing, vision tower, prefix, continuations."""
    import torch

    from glue_astrovlm.models.base import as_model_images
    from glue_astrovlm.models.scoring import score_labels_cached

    prompt = vlm.prompt_text(label_set.prompt())
    continuations = vlm.label_continuations(label_set)
    model = vlm.model
    rows = []
    for batch_size in batch_sizes:
        totals = dict(preprocess=0.0, vision=0.0, prefix_forward=0.0, cached_scoring=0.0)
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        for warm in (True, False):
            for batch in batches[:1] if warm else batches:
                t0 = time.perf_counter()
                enc = vlm._encode(as_model_images(batch), prompt)  # the engine's own (parallel on GPU)
                t1 = time.perf_counter()
                with torch.inference_mode():
                    model.model.get_image_features(enc["pixel_values"], enc.get("pixel_attention_mask"))
                    t2 = time.perf_counter()
                    model(**enc, use_cache=True, logits_to_keep=1)
                    t3 = time.perf_counter()
                    score_labels_cached(model, enc, continuations, vlm.tokenizer.pad_token_id)
                    t4 = time.perf_counter()
                if not warm:
                    totals["preprocess"] += t1 - t0
                    totals["vision"] += t2 - t1
                    totals["prefix_forward"] += t3 - t2
                    totals["cached_scoring"] += t4 - t3
        n = len(images)
        row = {"batch_size": batch_size, "images": n, **{f"{key}_s_per_cutout": value / n for key, value in totals.items()}}
        # cached scoring = prefix forward + the continuation pass
        row["continuation_s_per_cutout"] = max(0.0, row["cached_scoring_s_per_cutout"] - row["prefix_forward_s_per_cutout"])
        row["text_prefix_s_per_cutout"] = max(0.0, row["prefix_forward_s_per_cutout"] - row["vision_s_per_cutout"])
        rows.append(row)
        print(f"  profile batch {batch_size}: preprocess {row['preprocess_s_per_cutout']:.3f}  vision "
              f"{row['vision_s_per_cutout']:.3f}  text prefix {row['text_prefix_s_per_cutout']:.3f}  continuations "
              f"{row['continuation_s_per_cutout']:.3f}  (ours total {row['preprocess_s_per_cutout'] + row['cached_scoring_s_per_cutout']:.3f}) s/cutout",
              flush=True)
    return rows


# --------------------------------------------------------------------------- report
def markdown_table(report: dict) -> str:
    lines = ["| K | method | cutouts timed | cutouts/s (median) | s/cutout | ours is x faster (per-round median) | tiles/cutout | "
             "image tokens/cutout | prompt tokens/cutout | tokens forwarded/cutout | peak RSS in phase (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, block in report["results"].items():
        for name in METHODS:
            row = block.get(name)
            if row is None:
                continue
            tokens = row.get("tokens") or {}
            if row.get("cutouts_per_s") is None:
                lines.append(f"| {k} | {TITLES[name]} | - | failed: {row.get('error', 'not run')} | | | | | | | |")
                continue
            speedup = row.get("ours_speedup")
            lines.append(
                f"| {k} | {TITLES[name]} | {row['images']} | {row['cutouts_per_s']:.3f} | {1 / row['cutouts_per_s']:.2f} | "
                f"{'1 (reference)' if name == 'ours' else _speedup_cell(speedup, row.get('ours_speedup_median_of_rounds'))} | "
                f"{tokens.get('tiles_per_cutout', '-')} | {tokens.get('image_tokens', '-')} | "
                f"{tokens.get('prompt_tokens', '-')} | {tokens.get('tokens_forwarded', '-')} | "
                f"{row['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def _speedup_cell(ratio_of_medians, median_of_rounds) -> str:
    if not ratio_of_medians:
        return "-"
    if median_of_rounds is None:
        return f"{ratio_of_medians:.1f}"
    return f"{ratio_of_medians:.1f} ({median_of_rounds:.1f})"


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="cutouts (spread evenly over FRI, FRII, Compact, Bent)")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 10],
                        help="label-set sizes: 4 = radio-morphology preset, 10 = galaxy10-decals preset")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="saved random-weight SmolVLM-256M; built here if missing")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="folder with FRI/ FRII/ Compact/ Bent/ PNG cutouts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="cutouts in each method's untimed warm-up (default: the batch size for ours, 1 for baselines)")
    parser.add_argument("--n-baseline1", type=int, default=8, help="cutouts for the slow generate baseline")
    parser.add_argument("--n-baseline2", type=int, default=None,
                        help="cutouts for the brute-force baseline (default: all --n); the agreement check uses them")
    parser.add_argument("--max-new-tokens", type=int, default=10, help="generate baseline's answer length")
    parser.add_argument("--device", default="cpu", help="torch device for every method, e.g. cuda")
    parser.add_argument("--dtype", default="float32", help="model dtype, e.g. bfloat16 on a GPU")
    parser.add_argument("--preprocess-workers", type=int, default=None,
                        help="threads preprocessing a batch's images (default: 1 on CPU, up to 8 on GPU)")
    parser.add_argument("--batch-size", type=int, default=4, help="cutouts per forward pass for ours (load_model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="which methods to run (ours is always run: it is the reference)")
    parser.add_argument("--profile", action="store_true",
                        help="also break ours' time into preprocessing, vision, text prefix and continuations")
    parser.add_argument("--profile-batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--profile-images", type=int, default=8)
    parser.add_argument("--families", nargs="+", default=None, metavar="FAMILY",
                        help="instead of the baselines: ours on full-size random-weight models of these families "
                             "(e.g. LLaVA-OneVision Qwen2.5-VL), each in its own process; cutouts/s, peak RSS, "
                             "image tokens")
    parser.add_argument("--family-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="log glue_astrovlm's INFO messages")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- families at full size
#: Parameters (billions) of each family's benchmark model, to check memory before building it.
FAMILY_PARAMETERS = {"SmolVLM": 0.26, "LLaVA-OneVision": 0.89, "Qwen2.5-VL": 3.75, "LLaVA-1.5": 7.1,
                     "LLaVA-NeXT": 7.6}


def family_model_dir(name: str, dtype: str) -> Path:
    return DEFAULT_MODEL_DIR.parent / f"{name.lower()}-full-random-seed0-{dtype}"


def ensure_family_model(name: str, dtype: str) -> Path:
    """The full-size random-weight model of family ``name``, built (in a child process) if missing."""
    folder = family_model_dir(name, dtype)
    if (folder / "config.json").is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    print(f"Building the full-size {name} (random weights, {dtype}) in {folder} ...", flush=True)
    code = ("import sys, torch; from glue_astrovlm.testing import build_family; "
            "build_family(sys.argv[1], sys.argv[2], tiny=False, dtype=getattr(torch, sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, name, str(partial), dtype], check=True)
    partial.rename(folder)
    return folder


def family_child(args) -> dict:
    """One family in this process: load, classify ``--n`` FIRST cutouts ``--repeats`` times (K=4)."""
    import glue_astrovlm

    folder = family_model_dir(args.family_child, args.dtype)
    t0 = time.perf_counter()
    vlm = glue_astrovlm.load_model(folder, device=args.device, dtype=args.dtype, batch_size=1)
    load_s = time.perf_counter() - t0
    cutouts = first_cutouts(args.data_dir, args.n)
    labels = label_set_for(4)
    vlm.classify(cutouts[:1], labels)  # warm-up
    rates, tokens = [], None
    for _ in range(args.repeats):
        began = time.perf_counter()
        results = vlm.classify(cutouts, labels)
        rates.append(len(cutouts) / (time.perf_counter() - began))
        tokens = sorted({r.image_tokens for r in results})
    return {"family": vlm.family.name, "budget": vlm.family.budget, "dtype": str(vlm.dtype).replace("torch.", ""),
            "parameters_b": round(sum(p.numel() for p in vlm.model.parameters()) / 1e9, 3), "load_s": round(load_s, 1),
            "cutouts_per_s": round(statistics.median(rates), 3), "rates": [round(r, 3) for r in rates],
            "image_tokens": tokens, "peak_rss_mb": round(ru_maxrss_mb()), "n": len(cutouts)}


def run_families(args) -> dict:
    """Each family of ``--families`` in a child process of its own, so that peak RSS is the family's."""
    import psutil

    bytes_per = 2 if args.dtype in ("bfloat16", "float16") else 4
    report = {"machine": machine_info(), "load_before": os.getloadavg(), "families": []}
    for name in args.families:
        need_gb = FAMILY_PARAMETERS.get(name, 1.0) * bytes_per * 2.2  # weights, the build's copy, activations
        free_gb = psutil.virtual_memory().available / 1024**3
        if need_gb > free_gb:
            report["families"].append({"family": name, "skipped": f"needs about {need_gb:.0f} GB, "
                                                                  f"{free_gb:.0f} GB available"})
            print(report["families"][-1], flush=True)
            continue
        ensure_family_model(name, args.dtype)
        command = [sys.executable, __file__, "--family-child", name, "--n", str(args.n), "--repeats",
                   str(args.repeats), "--dtype", args.dtype, "--device", args.device, "--data-dir", str(args.data_dir)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        report["families"].append(json.loads(out.strip().splitlines()[-1]))
        print(report["families"][-1], flush=True)
    report["load_after"] = os.getloadavg()
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.family_child:
        print(json.dumps(family_child(args)))
        return 0
    if args.families:
        report = run_families(args)
        if args.out is not None:
            write_json_atomic(args.out, report)
        return 0
    if args.out is not None and args.out.exists() and not args.overwrite:
        sys.exit(f"{args.out} exists; pass --overwrite to replace it or choose another --out.")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)

    import glue_astrovlm
    from glue_astrovlm.models.base import as_model_images
    from glue_astrovlm.models.devices import pick_dtype

    started = time.time()
    machine = machine_info()
    model_dir, built = ensure_model(args.model_dir.expanduser())
    rss_before_load = ru_maxrss_mb()
    t0 = time.perf_counter()
    vlm = glue_astrovlm.load_model(model_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                   tiling="single")
    load_s = time.perf_counter() - t0
    if args.preprocess_workers:
        vlm.preprocess_workers = args.preprocess_workers
    rss_after_load = ru_maxrss_mb()
    text_config = getattr(vlm.model.config, "text_config", vlm.model.config)
    auto_dtype = str(pick_dtype(vlm.device, None, text_config.hidden_size)).replace("torch.", "")
    n_params = sum(p.numel() for p in vlm.model.parameters())

    cutouts = first_cutouts(args.data_dir, args.n)
    pil = [m.image for m in as_model_images(cutouts)]  # the same stretch the engine applies to the cutouts
    n_b1 = min(args.n_baseline1, args.n)
    n_b2 = args.n if args.n_baseline2 is None else min(args.n_baseline2, args.n)
    # the slow baselines take evenly spaced cutouts, so that every class is in their subset
    subset_b1 = [i * len(pil) // n_b1 for i in range(n_b1)]
    subset_b2 = [i * len(pil) // n_b2 for i in range(n_b2)]

    print(f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['ram_gib']} GiB RAM, "
          f"torch {machine['torch']} ({torch.get_num_threads()} threads), transformers {machine['transformers']}")
    print(f"Model: {model_dir} ({n_params / 1e6:.0f}M parameters, random weights{', built now' if built else ''}), "
          f"{args.dtype} on {vlm.device} (auto would pick {auto_dtype}), loaded in {load_s:.1f} s; "
          f"batch size {vlm.batch_size}, {vlm.preprocess_workers} preprocessing thread(s)")
    print(f"Images: {len(cutouts)} FIRST cutouts from {args.data_dir} (brute force: {n_b2} of them; generate: {n_b1})", flush=True)

    decision_info: dict = {}
    pipe = decision_processor = None
    if "decision" in args.methods:
        try:
            pipe, decision_processor, decision_info = build_decision_pipeline(vlm)
        except Exception as error:  # noqa: BLE001 - recorded
            decision_info["error"] = f"{type(error).__name__}: {error}"
        if pipe is None:
            print(f"decision pipeline cannot run: {decision_info.get('error')}", flush=True)
        elif "default_config_error" in decision_info:
            print(f"decision pipeline: default config fails ({decision_info['default_config_error']}); "
                  f"using {decision_info['decision_config']}", flush=True)

    phases: dict[int, dict[str, Phase]] = {}
    label_sets = {}
    for k in args.k:
        label_set = label_set_for(k)
        label_sets[k] = label_set
        block = {"ours": Phase(Ours(vlm, label_set), cutouts, k)}
        if "bruteforce" in args.methods:
            block["bruteforce"] = Phase(BruteForce(vlm, label_set), [pil[i] for i in subset_b2], k)
        if "decision" in args.methods:
            if pipe is not None:
                block["decision"] = Phase(Decision(pipe, decision_processor, label_set,
                                                   vlm.model.config.image_token_id), pil, k)
            else:
                phase = Phase(Method(), pil, k)
                phase.error = decision_info.get("error", "could not be built")
                block["decision"] = phase
        if "generate" in args.methods:
            block["generate"] = Phase(Generate(vlm, label_set, args.max_new_tokens), [pil[i] for i in subset_b1], k)
        phases[k] = block

    def warmup_count(name):
        if args.warmup is not None:
            return args.warmup
        return args.batch_size if name == "ours" else 1

    # bf16 keeps ~3 significant digits: two correct scoring paths differ by rounding only
    tolerance = 1e-4 if args.dtype == "float32" else 3e-2
    memory = {"ru_maxrss_before_load_mb": rss_before_load, "ru_maxrss_after_load_mb": rss_after_load}

    def make_report(complete: bool) -> dict:
        report = {
            "complete": complete,
            "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_time_s": time.time() - started,
            "machine": {**machine, "load_average_now": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
            "model": {"dir": str(model_dir), "architecture": "SmolVLM-256M-Instruct (Idefics3), full size",
                      "weights": "random (seed 0): no accuracy is measured", "parameters": n_params,
                      "dtype": args.dtype, "auto_dtype_on_this_device": auto_dtype, "device": vlm.device,
                      "batch_size": vlm.batch_size, "preprocess_workers": vlm.preprocess_workers, "processor_kwargs": vlm.processor_kwargs, "load_s": load_s},
            "images": {"data_dir": str(args.data_dir), "n": len(cutouts), "n_baseline1": n_b1, "n_baseline2": n_b2,
                       "baseline1_indices": subset_b1, "baseline2_indices": subset_b2,
                       "files": [c.provenance.source for c in cutouts],
                       "stretch": cutouts[0].stretch.describe()},
            "settings": {"repeats": args.repeats, "max_new_tokens": args.max_new_tokens,
                         "warmup": {name: warmup_count(name) for name in METHODS}},
            "memory": {**memory, "ru_maxrss_now_mb": ru_maxrss_mb()},
            "decision_pipeline": decision_info,
            "results": {},
            "agreement": {},
        }
        for k, block in phases.items():
            ours_phase = block["ours"]
            ours_rate = ours_phase.median_rate
            out = {"labels": list(label_sets[k].labels), "label_set": label_sets[k].name}
            for name, phase in block.items():
                rate = phase.median_rate
                row = {"title": TITLES[name], "images": len(phase.images), "seconds": phase.seconds,
                       "warmup_s": phase.warmup_seconds, "cutouts_per_s": rate,
                       "load_average_1min_after_each_run": phase.load_average,
                       "ours_speedup": (ours_rate / rate) if (rate and ours_rate) else None,
                       "peak_rss_mb": phase.peak_rss_mb, "error": phase.error, "tokens": phase.tokens}
                if name != "ours" and rate and len(phase.seconds) == len(ours_phase.seconds):
                    # round by round: run i of ours and run i of this baseline ran close together in time
                    paired = [(len(ours_phase.images) / so) / (len(phase.images) / sb)
                              for so, sb in zip(ours_phase.seconds, phase.seconds)]
                    row["ours_speedup_per_round"] = paired
                    row["ours_speedup_median_of_rounds"] = statistics.median(paired)
                if name == "generate" and phase.outputs is not None:
                    row["parsing"] = {"unparseable": sum(answer is None for answer in phase.outputs),
                                      "of": len(phase.outputs), "parsed_labels": phase.outputs,
                                      "generated_tokens": phase.method.last_new_tokens,
                                      "texts": phase.method.last_texts,
                                      "note": "random weights: this measures the parsing step, not accuracy"}
                if name == "decision" and phase.outputs is not None:
                    row["probabilities"] = phase.outputs
                out[name] = row
            report["results"][str(k)] = out
            brute = block.get("bruteforce")
            if brute is not None and brute.outputs is not None and ours_phase.outputs is not None:
                b = np.asarray(brute.outputs, dtype=float)
                a = np.asarray(ours_phase.outputs, dtype=float)[subset_b2]  # the same cutouts
                diff = float(np.abs(a - b).max())
                report["agreement"][str(k)] = {
                    "ours_vs_bruteforce_max_abs_prob_diff": diff,
                    "same_argmax": int((a.argmax(1) == b.argmax(1)).sum()), "of": len(a),
                    "tolerance": tolerance, "passed": diff < tolerance}
        report["markdown_table"] = markdown_table(report)
        return report

    def checkpoint():
        """Write what has been measured so far, so that an interrupted run loses nothing."""
        if args.out is not None:
            write_json_atomic(args.out, make_report(complete=False))

    def timed_run(phase):
        run_safely(phase, phase.repeat)
        checkpoint()

    # 1. ours first, for every K: its memory peak is measured before any baseline has run
    print("\nStage 1: ours (warm-up + first timed run), before any baseline", flush=True)
    for k, block in phases.items():
        run_safely(block["ours"], block["ours"].warmup, warmup_count("ours"))
        timed_run(block["ours"])
    memory["ru_maxrss_after_ours_before_baselines_mb"] = ru_maxrss_mb()
    if vlm.device.startswith("cuda"):
        memory["gpu_max_allocated_mb_after_ours_before_baselines"] = round(torch.cuda.max_memory_allocated() / MB)
    memory["ours_phase_peak_rss_mb_before_baselines"] = {k: block["ours"].peak_rss_mb for k, block in phases.items()}
    for block in phases.values():  # token counts: a processor call each, after ours' memory is measured
        for phase in block.values():
            if phase.error is None and hasattr(phase.method, "tokens"):
                try:
                    phase.tokens = phase.method.tokens(pil[0])
                except Exception as error:  # noqa: BLE001
                    phase.tokens = {"error": f"{type(error).__name__}: {error}"}

    # 2. the baselines' warm-ups, then 3. rounds that interleave every method
    print("\nStage 2: baselines' warm-ups", flush=True)
    for k, block in phases.items():
        for name, phase in block.items():
            if name != "ours":
                run_safely(phase, phase.warmup, warmup_count(name))
    print(f"\nStage 3: {args.repeats} interleaved rounds", flush=True)
    for round_index in range(args.repeats):
        for k, block in phases.items():
            for name in METHODS:
                phase = block.get(name)
                if phase is None or (name == "ours" and round_index == 0):
                    continue
                timed_run(phase)
    memory["ru_maxrss_end_of_timed_runs_mb"] = ru_maxrss_mb()
    if vlm.device.startswith("cuda"):
        memory["gpu_max_allocated_mb_end_of_timed_runs"] = round(torch.cuda.max_memory_allocated() / MB)

    profile = None
    if args.profile:
        print("\nProfile of ours (after every timed run):", flush=True)
        k0 = args.k[0]
        profile = {"k": k0, "rows": profile_ours(vlm, label_sets[k0], pil[:args.profile_images],
                                                 args.profile_batch_sizes)}

    report = make_report(complete=True)
    if profile is not None:
        report["profile"] = profile
    print("\n" + report["markdown_table"] + "\n")
    for k, agreement in report["agreement"].items():
        print(f"K={k}: ours vs bruteforce max |dp| = {agreement['ours_vs_bruteforce_max_abs_prob_diff']:.2e} "
              f"({'<' if agreement['passed'] else '>='} {agreement['tolerance']:g}); same top label {agreement['same_argmax']}/{agreement['of']}")
    for k, block in report["results"].items():
        parsing = block.get("generate", {}).get("parsing")
        if parsing:
            print(f"K={k}: generate baseline: {parsing['unparseable']}/{parsing['of']} answers held no label "
                  f"(random weights: a fact about parsing, not accuracy)")
    mem = report["memory"]
    print(f"Peak RSS: after load {mem['ru_maxrss_after_load_mb']:,.0f} MB; through ours (before any baseline) "
          f"{mem['ru_maxrss_after_ours_before_baselines_mb']:,.0f} MB; whole run {mem['ru_maxrss_now_mb']:,.0f} MB")
    if "gpu_max_allocated_mb_after_ours_before_baselines" in mem:
        print(f"Peak GPU memory (torch max allocated): through ours {mem['gpu_max_allocated_mb_after_ours_before_baselines']:,} MB; "
              f"whole run {mem['gpu_max_allocated_mb_end_of_timed_runs']:,} MB")
    if args.out is not None:
        write_json_atomic(args.out, report)
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
