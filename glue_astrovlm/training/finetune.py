"""`finetune`: LoRA, projector-only, two-stage and full fine-tuning on the transformers `Trainer`.

The Trainer does the optimisation, gradient accumulation, mixed precision (bf16 on GPU), gradient
checkpointing, checkpoints, ``resume`` and early stopping. glue-astrovlm adds what is specific to
VLMs on astronomical images:

- the inputs are checked before the model loads: settings (`config`), every image of the training
  and validation data (`~glue_astrovlm.datasets.check_images`), the output folder and the device;
- the examples (`EncodedExamples`): engine cutouts and stretch, the classification prompt and label
  continuations of `LocalVLM.classify`, loss only on answer tokens;
- which parameters train (`architecture`): a frozen vision tower by default;
- validation each epoch with the scoring of `astrovlm eval` (accuracy, macro F1, ECE and the
  label-set negative log-likelihood), used for the best checkpoint and early stopping (`trainer`);
- the output (`output`): a safetensors adapter (or model) with ``astrovlm_adapter.json``
  (``astrovlm_model.json``) and a README model card, loadable at once with
  ``load_model(base, adapter=out)`` (or ``load_model(out)``) from any folder: the base model is
  recorded as an absolute path or a Hub id.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import AstroVLMError
from ..labelsets import LabelSet
from ..records import ADAPTER_RECORD, MODEL_RECORD
from ..stretch import Stretch
from .architecture import lora_target_regex, model_parts
from .config import DEFAULT_LEARNING_RATES, METHODS, FinetuneConfig
from .data import EncodedExamples
from .output import follow_umask, save_output, write_text_atomic

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "METHODS", "DEFAULT_LEARNING_RATES"]

log = logging.getLogger("glue_astrovlm")

_STAGE1_DONE = "stage1_projector.safetensors"
_RUN_FILE = "astrovlm_run.json"


@dataclass
class FinetuneResult:
    """What `finetune` produced."""

    out_dir: Path
    method: str
    record: dict
    history: list[dict] = field(default_factory=list)

    @property
    def validation(self) -> dict | None:
        return self.record.get("validation")

    @property
    def is_adapter(self) -> bool:
        return self.method in ("lora", "two-stage")


# ----------------------------------------------------------------------------- checks before the model loads
def base_model_id(model) -> str:
    """How a base model is recorded: an absolute path for a folder, else its Hub id (or a model's name)."""
    name = str(model) if isinstance(model, (str, os.PathLike)) else str(model.name)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _same_base(a, b) -> bool:
    if a == b:
        return True
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _check_writable(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise AstroVLMError(f"--out {out_dir} is a file; give a folder (it is made if it does not exist).")
    existing = next(folder for folder in (out_dir, *out_dir.absolute().parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise AstroVLMError(f"Cannot write into {existing}; choose an --out where you may write.")


def _last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint the Trainer resumes from: the ``checkpoint-N`` folder with the largest N."""
    steps = {int(p.name.split("-")[1]): p for p in folder.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()} if folder.is_dir() else {}
    return steps[max(steps)] if steps else None


def _check_checkpoints(ckpt: Path) -> None:
    """On --resume, the checkpoints to resume from must be complete (a killed run may leave one half-done)."""
    import zipfile

    from ..models.model_files import safetensors_shapes

    lasts = [_last_checkpoint(folder) for folder in (ckpt, ckpt / "stage1", ckpt / "stage2")]
    for last in filter(None, lasts):
        fix = f"delete {last} to resume from the checkpoint before it, or start again with --overwrite"
        for weights in sorted(last.glob("*.safetensors")):
            safetensors_shapes(weights, fix)
        for state in sorted([*last.glob("*.pt"), *last.glob("*.pth")]):
            if not zipfile.is_zipfile(state):
                raise AstroVLMError(f"{state} is not a complete PyTorch file; {fix}.")
        try:
            json.loads((last / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise AstroVLMError(f"{last / 'trainer_state.json'} is missing or damaged ({error}); "
                                f"{fix}.") from None
    done = ckpt / "stage1" / _STAGE1_DONE
    if done.is_file():
        safetensors_shapes(done, f"delete {done} to train the projector stage again")


def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    _check_writable(out_dir)
    final = [n for n in ("adapter_model.safetensors", "model.safetensors", ADAPTER_RECORD, MODEL_RECORD)
             if (out_dir / n).exists()]
    ckpt = out_dir / "checkpoints"
    if resume:
        if not ckpt.is_dir():
            raise AstroVLMError(f"Nothing to resume in {out_dir}: it has no checkpoints/ folder. Start "
                                "without --resume.")
        _check_checkpoints(ckpt)
        return
    if final and not overwrite:
        raise AstroVLMError(f"{out_dir} already holds a fine-tuned model ({', '.join(final)}); choose "
                            "another --out, pass --resume to continue its training, or --overwrite to start "
                            "again.")
    earlier = list(ckpt.glob("**/checkpoint-*")) if ckpt.is_dir() else []
    if earlier and not overwrite:
        raise AstroVLMError(f"{out_dir} holds checkpoints of an earlier run; pass --resume to continue it or "
                            "--overwrite to start again.")


def _check_run(ckpt: Path, resume: bool, run: dict) -> None:
    """On --resume, refuse a run that trains something else (method, base, labels) than the checkpoints."""
    path = ckpt / _RUN_FILE
    if not (resume and path.is_file()):
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AstroVLMError(f"--resume: {path} is unreadable ({error}); start again with "
                            "--overwrite.") from None
    for key, value in run.items():
        same = _same_base(previous.get(key), value) if key == "base_model" else previous.get(key) == value
        if not same:
            what = "label set" if key == "labels" else key.replace("_", " ")
            raise AstroVLMError(f"--resume: the {what} {value!r} differs from the checkpointed run's "
                                f"{previous.get(key)!r}. Resume with the same settings, or start a new run "
                                "in another --out.")


def _check_scheduler(config: FinetuneConfig) -> None:
    from transformers.trainer_utils import SchedulerType  # imports torch and peft: checked last

    schedulers = [s.value for s in SchedulerType]
    if config.scheduler not in schedulers:
        raise AstroVLMError(f"Unknown scheduler {config.scheduler!r} (--scheduler); use one of "
                            f"{', '.join(schedulers)}.")


def _check_settings(model, crop: float, device: str | None) -> None:
    """What the configuration cannot check alone: the crop, the model and the device."""
    from ..models.local import LocalVLM

    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1:
        raise AstroVLMError(f"crop (--crop) must be a fraction in (0, 1], got {crop!r}.")
    if isinstance(model, LocalVLM):
        return
    if str(model).startswith(("http://", "https://")):
        raise AstroVLMError(f"{model} is a server; only local models can be fine-tuned. Pass a Hub id or a "
                            "model directory as --model, then serve the adapter (e.g. vLLM --lora-modules).")
    if device is not None:
        from ..models.devices import pick_device

        pick_device(device)


def _check_inputs(model, train, val, label_set: LabelSet | None, config: FinetuneConfig, out_dir: Path, *,
                  crop: float, resume: bool, overwrite: bool,
                  device: str | None) -> tuple[LabelSet | None, dict]:
    """Check all that can be checked before the model loads; return the label set and the run's identity.

    The data are read in full (every image decoded and cut, see `check_images`) so that a bad file
    stops the run here rather than in the middle of training.
    """
    from ..datasets import check_images

    if train.kind == "classification":
        label_set = train.label_set(label_set)
    if val is not None:
        if val.kind != "classification":
            raise AstroVLMError(f"Validation data {val.source} must be labelled images (a folder per class "
                                "or a table with a label column).")
        if label_set is None:
            label_set = val.label_set()
        val.label_set(label_set)
    if config.early_stopping and val is None:
        raise AstroVLMError("Early stopping needs validation data: pass --val.")
    _check_settings(model, crop, device)
    _check_out_dir(out_dir, resume, overwrite)
    run = {"method": config.method, "base_model": base_model_id(model),
           "labels": list(label_set.labels) if label_set is not None else None, "data_kind": train.kind}
    _check_run(out_dir / "checkpoints", resume, run)
    check_images(train, crop=crop, what="training")
    if val is not None:
        check_images(val, crop=crop, what="validation")
    _check_scheduler(config)
    return label_set, run


# ----------------------------------------------------------------------------- the model and its examples
def _load_base(model, device: str | None, load_options: dict | None):
    """The `LocalVLM` to train: the one given, or the base model loaded in float32."""
    from ..models.loading import load_model
    from ..models.local import LocalVLM

    if isinstance(model, LocalVLM):
        vlm = model
    else:
        vlm = load_model(model, device=device, dtype="float32", **(load_options or {}))
    if not isinstance(vlm, LocalVLM):
        raise AstroVLMError("Only local models can be fine-tuned; a server URL cannot.")
    if vlm.adapters:
        raise AstroVLMError(f"{vlm.name} has adapters loaded ({', '.join(vlm.adapters)}); fine-tune the base "
                            "model, or merge the adapter into a model first.")
    if hasattr(vlm.model, "peft_config"):  # trained in place by an earlier finetune() of this session
        raise AstroVLMError(f"{vlm.name} already carries the LoRA layers of an earlier fine-tuning run in "
                            "this session; load the base model again (load_model) to train another adapter.")
    return vlm


def _validator(vlm, val_dataset, label_set: LabelSet, stretch: Stretch, crop: float, batch_size: int):
    """A function ``model -> metrics`` that scores the validation images as `astrovlm eval` does."""
    from ..evaluation import classify_cutouts, probability_matrix
    from ..metrics import compute_metrics
    from ..models.local import LocalVLM

    cutouts = [item.cutout(stretch, crop) for item in val_dataset.items]
    true = val_dataset.true_labels
    index = np.array([label_set.labels.index(t) for t in true])

    def run(model) -> dict:
        import torch

        was_training = model.training
        model.eval()
        try:
            scorer = LocalVLM(model, vlm.processor, vlm.name, device=vlm.device, dtype=torch.float32,
                              batch_size=batch_size, processor_kwargs=vlm.processor_kwargs)
            results = classify_cutouts(scorer, cutouts, label_set)
        finally:
            model.train(was_training)
        probs = probability_matrix(results, label_set.labels)
        metrics = compute_metrics(true, probs, label_set.labels, n_boot=200)
        nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(true)), index], 1e-12, 1))))
        return {"accuracy": metrics.accuracy, "macro_f1": metrics.macro["f1"], "ece": metrics.ece, "nll": nll}

    return run


def _prepare_examples(vlm, train, val, label_set, config: FinetuneConfig, stretch: Stretch, crop: float):
    """The training examples (the first encoded now, to fail early) and the validation function, if any."""
    examples = EncodedExamples(vlm, train, label_set, stretch=stretch, crop=crop,
                               max_length=config.max_length, cache_bytes=int(config.cache_gb * 1024**3))
    examples[0]  # fail early on a bad first example (template, label, max_length)
    validate = None
    if val is not None:
        validate = _validator(vlm, val, label_set, stretch, crop, config.eval_batch_size)
    return examples, validate


def _set_trainable(model, parts, method: str, train_vision: bool) -> None:
    for param in model.parameters():
        param.requires_grad = False
    modules = dict(model.named_modules())
    names = {"projector": [parts.projector], "full": [parts.projector, parts.text, "lm_head"]}[method]
    if train_vision:
        names.append(parts.vision)
    for name in names:
        if name in modules:
            for param in modules[name].parameters():
                param.requires_grad = True


def _count(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _attach_method(vlm, parts, config: FinetuneConfig) -> tuple:
    """Make the parameters of ``config.method`` trainable (wrapping the model with LoRA).

    Returns the model to train and its (trainable, total) parameter counts, which are logged.
    """
    model = vlm.model
    if config.method not in ("lora", "two-stage"):
        _set_trainable(model, parts, config.method, config.train_vision_tower)
        return model, _counted(model, vlm, parts, config)
    from peft import LoraConfig, get_peft_model

    from ..models.compat import peft_quietly

    targets = lora_target_regex(parts, config.target_modules, include_vision=config.train_vision_tower)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r,
                      lora_dropout=config.lora_dropout, target_modules=targets, bias="none",
                      modules_to_save=([parts.projector.split(".")[-1]] if config.method == "two-stage"
                                       else None))
    for param in model.parameters():
        param.requires_grad = False
    try:
        with peft_quietly():
            model = get_peft_model(model, lora)
    except ValueError as error:
        raise AstroVLMError(f"LoRA found no layers to adapt ({error}); check --target-modules.") from None
    vlm.model = model
    return model, _counted(model, vlm, parts, config)


def _counted(model, vlm, parts, config: FinetuneConfig) -> tuple[int, int]:
    counts = _count(model)
    log.info("Fine-tuning %s with %s: %d of %d parameters trainable (%.2f%%); %s", base_model_id(vlm),
             config.method, counts[0], counts[1], 100 * counts[0] / counts[1], parts.describe())
    if counts[0] == 0:
        raise AstroVLMError("No parameter is trainable with these settings; check --method and "
                            "--target-modules.")
    return counts


# ----------------------------------------------------------------------------- training
def _resume_point(output_dir: Path, resume: bool) -> str | None:
    last = _last_checkpoint(output_dir) if resume else None
    return str(last) if last is not None else None


def _history(trainer) -> list[dict]:
    keep = ("epoch", "step", "loss", "learning_rate", "grad_norm", "eval_accuracy", "eval_macro_f1",
            "eval_ece", "eval_nll", "train_runtime")
    return [{k: v for k, v in entry.items() if k in keep} for entry in trainer.state.log_history]


def _write_run(ckpt: Path, run: dict) -> None:
    write_text_atomic(ckpt / _RUN_FILE, json.dumps(run, indent=2))


def _train_projector_first(vlm, parts, examples, config: FinetuneConfig, ckpt: Path, run: dict, *,
                           resume: bool, show_progress: bool) -> list[dict]:
    """Stage 1 of ``two-stage``: the projector alone, saved so that a resumed run skips it.

    Returns the stage's loss history (empty when a resumed run finds it done).
    """
    from safetensors.torch import load_file, save_file

    from .trainer import make_trainer

    stage1_dir = ckpt / "stage1"
    done = stage1_dir / _STAGE1_DONE
    projector = dict(vlm.model.named_modules())[parts.projector]
    if resume and done.is_file():
        projector.load_state_dict(load_file(str(done)))
        log.info("Stage 1 (projector) already finished; loaded %s", done)
        return []
    _set_trainable(vlm.model, parts, "projector", config.train_vision_tower)
    stage1 = FinetuneConfig(**{**asdict(config), "method": "projector", "early_stopping": None})
    _write_run(ckpt, run)
    trainer = make_trainer(vlm.model, vlm, examples, stage1, stage1_dir, lr=config.stage1_learning_rate,
                           epochs=config.stage1_epochs, validate=None, show_progress=show_progress)
    trainer.train(resume_from_checkpoint=_resume_point(stage1_dir, resume))
    save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}, str(done))
    follow_umask([done])
    return [{**h, "stage": 1} for h in _history(trainer)]


def _final_validation(trainer, validate, model) -> dict | None:
    """Validation metrics of the saved model: those logged at its step, else a fresh validation."""
    if validate is None:
        return None
    state = trainer.state
    step = getattr(state, "best_global_step", None) if trainer.args.load_best_model_at_end else None
    step = step or state.global_step
    for entry in reversed(state.log_history):
        if entry.get("step") == step and "eval_accuracy" in entry:
            return {key[5:]: entry[key] for key in ("eval_accuracy", "eval_macro_f1", "eval_ece", "eval_nll")}
    return validate(model)


def _train(model, vlm, examples, config: FinetuneConfig, stage_dir: Path, validate, *, resume: bool,
           show_progress: bool) -> dict:
    """Run the Trainer (from the last checkpoint with ``resume``); return the trainer and what it measured.

    ``ended`` is the `time.perf_counter` at the end of the optimisation (before the final validation).
    """
    import torch

    from .trainer import make_trainer

    trainer = make_trainer(model, vlm, examples, config, stage_dir, lr=config.lr, epochs=config.epochs,
                           validate=validate, show_progress=show_progress)
    resumed_from = _resume_point(stage_dir, resume)
    if resumed_from:
        log.info("Resuming from %s", resumed_from)
    cuda = vlm.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train(resume_from_checkpoint=resumed_from)
    ended = time.perf_counter()
    trained = trainer.model
    trained.eval()
    trained.config.use_cache = True
    speed = (output.metrics or {}).get("train_samples_per_second")
    return {"trainer": trainer, "output": output, "model": trained, "resumed_from": resumed_from,
            "ended": ended, "speed": speed, "validation": _final_validation(trainer, validate, trained),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}


# ----------------------------------------------------------------------------- the record and the run
def _record(vlm, run: dict, train, val, label_set, config: FinetuneConfig, stretch: Stretch, crop: float,
            parts, counts: tuple[int, int], trained: dict, history: list[dict], seconds: float) -> dict:
    """What `finetune` records next to its output (and prints in the model card)."""
    from .. import __version__

    trainer, output, speed = trained["trainer"], trained["output"], trained["speed"]
    return {
        "format": "glue-astrovlm finetune 1", "method": config.method, "base_model": run["base_model"],
        "label_set": None if label_set is None else {
            "name": label_set.name, "labels": list(label_set.labels),
            "descriptions": list(label_set.descriptions), "question": label_set.question,
            "prompt_hash": label_set.prompt_hash()},
        "data": train.describe(), "validation_data": val.describe() if val is not None else None,
        "stretch": stretch.to_dict() if stretch is not None else None,
        "stretch_text": train.items[0].cutout(stretch, crop).stretch_text(), "crop": crop,
        "hyperparameters": config.to_dict(), "trainable_parameters": counts[0], "total_parameters": counts[1],
        "modules": {"vision": parts.vision, "projector": parts.projector, "text": parts.text,
                    "vision_frozen": not config.train_vision_tower},
        "steps": int(trainer.state.global_step), "epochs": float(trainer.state.epoch or 0),
        "train_loss": float(output.training_loss) if output.training_loss is not None else None,
        "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "best_checkpoint": trainer.state.best_model_checkpoint, "resumed_from": trained["resumed_from"],
        "validation": trained["validation"], "history": history, "train_seconds": round(seconds, 1),
        "train_examples_per_second": round(float(speed), 2) if speed is not None else None,
        "peak_gpu_memory_mb": trained["peak_gpu_mb"],
        "device": vlm.device, "precision": "bf16 autocast" if trainer.args.bf16 else "float32",
        "glue_astrovlm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def finetune(model, train, out_dir, *, label_set: LabelSet | None = None, val=None,
             config: FinetuneConfig | None = None, stretch: Stretch | None = None, crop: float = 1.0,
             resume: bool = False, overwrite: bool = False, device: str | None = None,
             show_progress: bool = True, load_options: dict | None = None) -> FinetuneResult:
    """Fine-tune a local VLM on labelled images, conversations or captions.

    Parameters
    ----------
    model : str, path-like or LocalVLM
        Hub id or directory of the base model (loaded in float32), or a loaded `LocalVLM` (trained in place).
    train : ImageDataset
        Classification (*prompt with the label list -> label*), LLaVA conversations or image-caption pairs.
    out_dir : path-like
        Where the adapter (or model), its model card and ``checkpoints/`` go.
    label_set : LabelSet, optional
        Labels and question for classification data (by default the data's labels); recorded.
    val : ImageDataset, optional
        Classification data scored after every epoch as by ``astrovlm eval``; the best epoch (by
        accuracy) is kept and early stopping watches it.
    config : FinetuneConfig
        Method and hyper-parameters.
    stretch : Stretch, optional
        Engine stretch of the model images; by default zscale (contrast 0.25) and linear for data, and the
        pixels as they are for rendered pictures (PNG, JPEG). It is recorded, and used again by classify
        and eval.
    crop : float
        Central fraction of each image kept, in (0, 1] (recorded; ``astrovlm eval`` uses it by default).
    resume, overwrite : bool
        Continue from the last checkpoint in ``out_dir/checkpoints``; replace an earlier run there.
    device : str, optional
        ``cuda``, ``cuda:1``, ``cpu``...; by default the first available.
    show_progress : bool
        tqdm bar with the loss.
    load_options : dict, optional
        More arguments of `load_model` for the base model (``tiling``, ``trust_remote_code``,
        ``processor_kwargs``), so that the inputs are checked before it loads.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    AstroVLMError
        Before the model loads: bad settings, labels, data (every unusable image is listed), output
        folder or device; later, a model that cannot be trained this way.
    """
    import torch

    config = config or FinetuneConfig()
    out_dir = Path(out_dir)
    label_set, run = _check_inputs(model, train, val, label_set, config, out_dir, crop=crop, resume=resume,
                                   overwrite=overwrite, device=device)
    vlm = _load_base(model, device, load_options)
    torch.manual_seed(config.seed)
    parts = model_parts(vlm.model)
    examples, validate = _prepare_examples(vlm, train, val, label_set, config, stretch, crop)
    ckpt = out_dir / "checkpoints"
    if overwrite and not resume and ckpt.is_dir():
        shutil.rmtree(ckpt)  # only now that the model and the data are known to work
    vlm.model.config.use_cache = False
    began = time.perf_counter()
    history = []
    if config.method == "two-stage":
        history += _train_projector_first(vlm, parts, examples, config, ckpt, run, resume=resume,
                                          show_progress=show_progress)
    model_obj, counts = _attach_method(vlm, parts, config)
    _write_run(ckpt, run)
    stage_dir = ckpt / "stage2" if config.method == "two-stage" else ckpt
    trained = _train(model_obj, vlm, examples, config, stage_dir, validate, resume=resume,
                     show_progress=show_progress)
    history += _history(trained["trainer"])
    seconds = trained["ended"] - began
    record = _record(vlm, run, train, val, label_set, config, stretch, crop, parts, counts, trained, history,
                     seconds)
    save_output(trained["model"], vlm, out_dir, record, config.method in ("lora", "two-stage"))
    log.info("Saved %s to %s in %.1f s of training", config.method, out_dir, seconds)
    return FinetuneResult(out_dir, config.method, record, history)
