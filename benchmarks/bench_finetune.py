"""Proof that `astrovlm finetune` learns, on real FIRST radio galaxies, without pretrained weights.

No pretrained weights exist on the development machines, so the model is a SmolVLM built from the
real configuration in ``../shared/models/SmolVLM-256M-Instruct`` (real tokenizer, processor and chat
template) with shrunk dimensions and random weights. Three checks, each through the command line
that users run:

``memorise``
    ``astrovlm finetune --method full`` on 32 FIRST images (the first 8 per class of the train
    split), then ``astrovlm eval`` on the same 32. Training accuracy must reach 0.95: this proves that
    loss masking, label tokens, the image path and scoring agree.
``lora``
    A LoRA adapter trained on top of the memorised model, on the same 32 images with the labels
    swapped (FRI <-> FRII, Compact <-> Bent). It loads by name, switches, can be disabled, and changes
    the predictions.
``generalise``
    The same recipe on the train split (or ``--train-limit`` of it) with validation each epoch on ``valid`` and one final
    evaluation on ``test`` (never used for any choice). Reported whatever it is; chance is 0.25.

Each writes ``<out>/<check>.json`` with the figures, the command lines and the machine. Timings on a
shared machine depend on its load: the JSON records the load average before and after.

Usage::

    python benchmarks/bench_finetune.py memorise --out /tmp/astrovlm-finetune     # about 1 minute idle
    python benchmarks/bench_finetune.py lora --out /tmp/astrovlm-finetune         # needs memorise first
    python benchmarks/bench_finetune.py generalise --out /tmp/astrovlm-finetune-full  # 4 epochs, 10+ minutes
    python benchmarks/bench_finetune.py generalise --epochs 2 --train-limit 400 --val-limit 100  # a smaller budget
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASTROVLM_SHARED", ROOT.parent / "shared"))
FIRST = SHARED / "data" / "first_radio_galaxies"
CLASSES = ("FRI", "FRII", "Compact", "Bent")
SWAP = {"FRI": "FRII", "FRII": "FRI", "Compact": "Bent", "Bent": "Compact"}

#: The recipe found for the random-init tiny SmolVLM on FIRST (see docs/finetuning.md):
#: short label prompt, the engine's zscale stretch, a central crop of 30 %, lr 3e-3 with warm-up.
LABELS_AND_IMAGES = ["--labels", *CLASSES, "--crop", "0.3"]
RECIPE = [*LABELS_AND_IMAGES, "--batch-size", "4", "--lr", "3e-3", "--warmup-ratio", "0.1", "--scheduler", "cosine"]


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": os.getloadavg()}


def build_model(out: Path) -> Path:
    """The tiny random-init SmolVLM (built once, reused)."""
    from glue_astrovlm.testing import build_smolvlm

    model = out / "tiny-smolvlm"
    if not (model / "model.safetensors").is_file():
        build_smolvlm(model, seed=0)
    return model


def first_table(out: Path, split: str, per_class: int | None, name: str, swap: bool = False) -> Path:
    """An ECSV of file,label for the first ``per_class`` images of each class of a FIRST split."""
    from astropy.table import Table

    rows = []
    for label in CLASSES:
        files = sorted((FIRST / split / label).glob("*.png"))
        rows += [(str(path), SWAP[label] if swap else label) for path in files[:per_class]]
    path = out / f"{name}.ecsv"
    Table(rows=rows, names=["file", "label"]).write(path, overwrite=True)
    return path


def astrovlm(*args) -> tuple[float, str]:
    """Run the astrovlm CLI in a fresh process; return (wall seconds, stdout)."""
    command = [sys.executable, "-m", "glue_astrovlm.cli", *map(str, args)]
    print("$ astrovlm " + shlex.join(command[3:]), flush=True)
    began = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - began
    print(done.stdout, flush=True)
    if done.returncode:
        raise SystemExit(f"astrovlm exited with {done.returncode}")
    return seconds, done.stdout


def save(out: Path, name: str, result: dict) -> None:
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")


def memorise(args) -> dict:
    out = args.out
    model = build_model(out)
    data = first_table(out, "train", 8, "memorise-32")
    before = machine()
    tuned = out / "memorised"
    train_s, train_out = astrovlm("finetune", data, "--model", model, "--method", "full", "--out", tuned,
                                  "--epochs", args.epochs, *RECIPE, "--overwrite", "--seed", args.seed)
    eval_s, _ = astrovlm("eval", data, "--model", tuned, "--out", out / "memorise-report", "--overwrite")
    record = json.loads((tuned / "astrovlm_model.json").read_text())
    metrics = json.loads((out / "memorise-report" / "metrics.json").read_text())
    system = next(iter(metrics["systems"].values()))
    result = {"check": "memorise", "images": 32, "model": str(model), "train_accuracy": system["accuracy"],
              "accuracy_ci95": system["accuracy_ci95"], "confusion": system["metrics"]["confusion"],
              "labels": metrics["label_set"]["labels"], "passed": system["accuracy"] >= 0.95,
              "finetune_wall_s": round(train_s, 1), "train_seconds": record["train_seconds"],
              "eval_wall_s": round(eval_s, 1), "steps": record["steps"], "epochs": record["epochs"],
              "final_train_loss": record["train_loss"], "hyperparameters": record["hyperparameters"],
              "trainable_parameters": record["trainable_parameters"], "crop": record["crop"],
              "stretch": record["stretch_text"],
              "loss_curve": [(h["step"], round(h["loss"], 4)) for h in record["history"] if "loss" in h],
              "command": f"astrovlm finetune {data} --model {model} --method full --out {tuned} --epochs "
                         f"{args.epochs} {shlex.join(RECIPE)} --seed {args.seed}",
              "machine_before": before, "machine_after": machine()}
    save(out, "memorise", result)
    print(f"training accuracy {result['train_accuracy']:.3f} after {result['steps']} steps, "
          f"{result['train_seconds']:.0f} s of training ({'PASS' if result['passed'] else 'FAIL'})")
    return result


def lora(args) -> dict:
    """A LoRA adapter on the memorised model, trained on swapped labels: load, switch, disable by name."""
    import numpy as np

    from glue_astrovlm import LabelSet, load_model
    from glue_astrovlm.datasets import load_dataset

    out = args.out
    base = out / "memorised"
    if not (base / "model.safetensors").is_file():
        raise SystemExit(f"{base} does not exist: run `bench_finetune.py memorise` first.")
    swapped = first_table(out, "train", 8, "memorise-32-swapped", swap=True)
    before = machine()
    adapter = out / "swap-adapter"
    train_s, _ = astrovlm("finetune", swapped, "--model", base, "--method", "lora", "--out", adapter,
                          "--epochs", args.lora_epochs, *LABELS_AND_IMAGES, "--batch-size", "4", "--lr", "5e-3",
                          "--warmup-ratio", "0.1", "--lora-r", "16", "--overwrite", "--seed", args.seed)
    data = load_dataset(first_table(out, "train", 8, "memorise-32"))
    labels = LabelSet(CLASSES)
    vlm = load_model(base, dtype="float32", adapter={"swap": adapter})
    cutouts = [item.cutout(crop=0.3) for item in data]
    true = np.array(data.true_labels)
    swapped_true = np.array([SWAP[t] for t in true])

    def run(adapter_name):
        predicted = np.array([r.label for r in vlm.classify(cutouts, labels, adapter=adapter_name)])
        return predicted, float((predicted == true).mean()), float((predicted == swapped_true).mean())

    with_adapter, acc_true_a, acc_swap_a = run("swap")
    vlm.set_adapter("swap")
    active = vlm.adapter
    vlm.disable_adapter()
    disabled, acc_true_d, acc_swap_d = run(None)
    vlm.set_adapter("swap")
    switched_back, _, _ = run(...)
    result = {"check": "lora", "base": str(base), "adapter": str(adapter), "loaded_adapters": vlm.adapters,
              "active_after_set_adapter": active, "train_wall_s": round(train_s, 1),
              "adapter_active": {"accuracy_true_labels": acc_true_a, "accuracy_swapped_labels": acc_swap_a},
              "adapter_disabled": {"accuracy_true_labels": acc_true_d, "accuracy_swapped_labels": acc_swap_d},
              "predictions_changed": int((with_adapter != disabled).sum()),
              "switch_back_identical": bool((switched_back == with_adapter).all()),
              "record": json.loads((adapter / "astrovlm_adapter.json").read_text())["hyperparameters"],
              "machine_before": before, "machine_after": machine()}
    save(out, "lora", result)
    print(f"adapter on: {acc_swap_a:.3f} of the swapped labels; disabled: {acc_true_d:.3f} of the true labels; "
          f"{result['predictions_changed']} of 32 predictions change")
    return result


def generalise(args) -> dict:
    out = args.out
    model = build_model(out)
    train = first_table(out, "train", None, "train")
    before = machine()
    tuned = out / "generalised"
    extra = ["--limit", args.train_limit] if args.train_limit else []
    val_extra = ["--val-limit", args.val_limit] if args.val_limit else []
    train_s, _ = astrovlm("finetune", train, "--model", model, "--method", "full", "--out", tuned, "--epochs",
                          args.epochs, *RECIPE, "--val", FIRST / "valid", *val_extra, *extra, "--overwrite",
                          "--seed", args.seed, "--cache-gb", args.cache_gb)
    test_s, _ = astrovlm("eval", FIRST / "test", "--model", tuned, "--out", out / "test-report", "--overwrite")
    record = json.loads((tuned / "astrovlm_model.json").read_text())
    metrics = json.loads((out / "test-report" / "metrics.json").read_text())
    system = next(iter(metrics["systems"].values()))
    result = {"check": "generalise", "train_images": record["data"]["n"],
              "validation_images": record["validation_data"]["n"], "test_images": system["metrics"]["n"],
              "test_accuracy": system["accuracy"], "test_accuracy_ci95": system["accuracy_ci95"],
              "test_macro_f1": system["macro_f1"], "test_confusion": system["metrics"]["confusion"],
              "chance": 0.25, "validation_curve": [h for h in record["history"] if "eval_accuracy" in h],
              "loss_curve": [(h["step"], round(h["loss"], 4)) for h in record["history"] if "loss" in h],
              "best_checkpoint": record["best_checkpoint"], "steps": record["steps"], "epochs": record["epochs"],
              "finetune_wall_s": round(train_s, 1), "train_seconds": record["train_seconds"],
              "test_eval_wall_s": round(test_s, 1), "hyperparameters": record["hyperparameters"],
              "machine_before": before, "machine_after": machine()}
    save(out, "generalise", result)
    print(f"test accuracy {result['test_accuracy']:.3f} {result['test_accuracy_ci95']} (chance 0.25) after "
          f"{result['steps']} steps, {result['train_seconds']:.0f} s of training")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("memorise", "lora", "generalise", "all"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/astrovlm-finetune"))
    parser.add_argument("--epochs", type=float, default=None,
                        help="epochs (default: memorise 60, generalise 4)")
    parser.add_argument("--lora-epochs", type=float, default=20)
    parser.add_argument("--train-limit", type=int, help="generalise: a random N training images")
    parser.add_argument("--val-limit", type=int, help="generalise: a random N validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-gb", type=float, default=6.0, help="generalise: memory for encoded examples")
    args = parser.parse_args(argv)
    if not FIRST.is_dir():
        raise SystemExit(f"FIRST data not found at {FIRST}")
    args.out.mkdir(parents=True, exist_ok=True)
    checks = ("memorise", "lora", "generalise") if args.check == "all" else (args.check,)
    epochs = args.epochs
    for check in checks:
        args.epochs = epochs if epochs is not None else {"memorise": 60, "generalise": 4}.get(check)
        {"memorise": memorise, "lora": lora, "generalise": generalise}[check](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
