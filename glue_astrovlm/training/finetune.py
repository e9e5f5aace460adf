"""`finetune`: LoRA, projector-only, two-stage and full fine-tuning on the transformers `Trainer`.

The Trainer does the optimisation, gradient accumulation, mixed precision (bf16 on GPU), gradient
checkpointing, checkpoints, ``resume`` and early stopping. glue-astrovlm adds what is specific to
VLMs on astronomical images:

- the examples (`EncodedExamples`): engine cutouts and stretch, the classification prompt and label
  continuations of `LocalVLM.classify`, loss only on answer tokens;
- which parameters train (`architecture`): a frozen vision tower by default;
- validation each epoch with the scoring of `astrovlm eval` (accuracy, macro F1, ECE and the
  label-set negative log-likelihood), used for the best checkpoint and early stopping;
- the output: a safetensors adapter (or model) with ``astrovlm_adapter.json`` (``astrovlm_model.json``)
  and a README model card, loadable at once with ``load_model(base, adapter=out)`` (or ``load_model(out)``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import AstroVLMError
from ..records import ADAPTER_RECORD, MODEL_RECORD
from ..labelsets import LabelSet
from ..stretch import DEFAULT_STRETCH, Stretch
from .architecture import model_parts, lora_target_regex
from .data import IGNORE_INDEX, EncodedExamples, VisionLanguageCollator

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "METHODS", "DEFAULT_LEARNING_RATES"]

log = logging.getLogger("glue_astrovlm")

METHODS = ("lora", "projector", "two-stage", "full")
#: Learning rate per method when none is given.
DEFAULT_LEARNING_RATES = {"lora": 2e-4, "projector": 1e-3, "two-stage": 2e-4, "full": 5e-5}
_STAGE1_DONE = "stage1_projector.safetensors"


@dataclass
class FinetuneConfig:
    """Hyper-parameters of a fine-tuning run (all recorded in the model card).

    Parameters
    ----------
    method : {'lora', 'projector', 'two-stage', 'full'}
        ``lora``: low-rank adapters on the language model (peft). ``projector``: only the
        vision-to-text projector. ``two-stage``: the projector first, then LoRA with the projector
        kept trainable (AstroLLaVA's recipe); saved as one adapter. ``full``: every weight of the
        projector and the language model.
    epochs : float
        Passes over the training data.
    learning_rate : float, optional
        Peak learning rate; by default `DEFAULT_LEARNING_RATES` for the method.
    batch_size : int
        Examples per device step.
    grad_accum : int
        Steps accumulated per optimiser update (effective batch = batch_size * grad_accum).
    warmup_ratio : float
        Fraction of the updates with a linear warm-up.
    scheduler : str
        transformers scheduler name (``cosine``, ``linear``, ``constant_with_warmup``...).
    weight_decay : float
    lora_r, lora_alpha, lora_dropout : LoRA rank, scaling (default ``2 * r``) and dropout.
    target_modules : sequence of str, optional
        Leaf names of the language-model layers LoRA adapts (default attention and MLP projections).
    train_vision_tower : bool
        Also train the vision tower (frozen by default).
    gradient_checkpointing : bool
        Trade compute for memory.
    early_stopping : int, optional
        Stop after this many validations without a better accuracy (needs validation data).
    max_steps : int, optional
        Stop after this many optimiser updates (overrides ``epochs``).
    seed : int
    max_length : int, optional
        Truncate longer examples.
    stage1_epochs, stage1_learning_rate : float
        The projector stage of ``two-stage``.
    eval_batch_size : int
        Images per forward pass during validation.
    save_total_limit : int
        Checkpoints kept (the best one is always kept).
    logging_steps : int
        Updates between loss logs.
    cache_gb : float
        Memory for encoded examples (about 3 MB per SmolVLM image); beyond it images are re-encoded
        every epoch.
    """

    method: str = "lora"
    epochs: float = 3.0
    learning_rate: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    target_modules: Sequence[str] | None = None
    train_vision_tower: bool = False
    gradient_checkpointing: bool = False
    early_stopping: int | None = None
    max_steps: int | None = None
    seed: int = 0
    max_length: int | None = None
    stage1_epochs: float = 1.0
    stage1_learning_rate: float = 1e-3
    eval_batch_size: int = 8
    save_total_limit: int = 2
    logging_steps: int = 5
    cache_gb: float = 2.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise AstroVLMError(f"Unknown method {self.method!r}; use one of {', '.join(METHODS)}.")
        for name in ("batch_size", "grad_accum", "lora_r", "eval_batch_size", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise AstroVLMError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.epochs <= 0 and not self.max_steps:
            raise AstroVLMError(f"epochs must be positive, got {self.epochs}.")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise AstroVLMError(f"The learning rate must be positive, got {self.learning_rate}.")
        if not 0 <= self.warmup_ratio < 1:
            raise AstroVLMError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["learning_rate"] = self.lr
        data["lora_alpha"] = self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r
        data["target_modules"] = list(self.target_modules) if self.target_modules else None
        if self.method not in ("lora", "two-stage"):
            for key in ("lora_r", "lora_alpha", "lora_dropout", "target_modules"):
                data.pop(key)
        if self.method != "two-stage":
            data.pop("stage1_epochs")
            data.pop("stage1_learning_rate")
        return data


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


# ----------------------------------------------------------------------------- helpers
def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    final = [n for n in ("adapter_model.safetensors", "model.safetensors", ADAPTER_RECORD, MODEL_RECORD)
             if (out_dir / n).exists()]
    if resume:
        if not (out_dir / "checkpoints").is_dir():
            raise AstroVLMError(f"Nothing to resume in {out_dir}: it has no checkpoints/ folder. Start without "
                                "--resume.")
        return
    if final and not overwrite:
        raise AstroVLMError(f"{out_dir} already holds a fine-tuned model ({', '.join(final)}); choose another "
                            "--out, pass --resume to continue its training, or --overwrite to start again.")
    earlier = list((out_dir / "checkpoints").glob("**/checkpoint-*")) if (out_dir / "checkpoints").is_dir() else []
    if earlier and not overwrite:
        raise AstroVLMError(f"{out_dir} holds checkpoints of an earlier run; pass --resume to continue it or "
                            "--overwrite to start again.")
    if overwrite and (out_dir / "checkpoints").is_dir():
        shutil.rmtree(out_dir / "checkpoints")


def _check_run(ckpt: Path, resume: bool, run: dict) -> None:
    """On --resume, refuse a run that trains something else (method, base model, labels) than the checkpoints."""
    path = ckpt / "astrovlm_run.json"
    if resume and path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        for key, value in run.items():
            if previous.get(key) != value:
                what = "label set" if key == "labels" else key.replace("_", " ")
                raise AstroVLMError(f"--resume: the {what} {value!r} differs from the checkpointed run's "
                                    f"{previous.get(key)!r}. Resume with the same settings, or start a new run "
                                    "in another --out.")


def _write_run(ckpt: Path, run: dict) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "astrovlm_run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")


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


def _make_trainer(model, vlm, train_examples, config: FinetuneConfig, output_dir: Path, *, lr: float,
                  epochs: float, validate=None, show_progress: bool):
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class ScoringTrainer(Trainer):
        """A Trainer with a loss on answer tokens only and validation by label scoring (as `astrovlm eval`).

        The loss is the token cross-entropy of the answer tokens (``labels != -100``), computed from
        logits at those positions only (``logits_to_keep``): the language-model head over a 50k-token
        vocabulary is the costliest layer of a small VLM, and prompt and image positions carry no loss.
        """

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.model_accepts_loss_kwargs = True  # the loss below is normalised by num_items_in_batch

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            targets = labels[:, 1:]  # logits at position j predict token j + 1
            keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits.float()
            picked = targets[:, keep]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), picked.reshape(-1),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else (picked != IGNORE_INDEX).sum()
            loss = loss / count.to(loss.device) if torch.is_tensor(count) else loss / count
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            began = time.perf_counter()
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in validate(self.model).items()}
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - began, 3)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
            return metrics

    class LossProgress(ProgressCallback):
        """Trainer's tqdm bar with the running loss in its postfix; evaluations printed as lines."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            if "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                                              refresh=False)
            evals = {k[5:]: v for k, v in logs.items() if k.startswith("eval_") and k != "eval_runtime"}
            if evals:
                text = "  ".join(f"{k} {v:.4f}" for k, v in evals.items() if isinstance(v, float))
                self.training_bar.write(f"epoch {logs.get('epoch', state.epoch or 0):.2f} validation: {text}")

    cuda = vlm.device.startswith("cuda")
    steps_per_epoch = max(1, math.ceil(len(train_examples) / (config.batch_size * config.grad_accum)))
    total = config.max_steps or max(1, math.ceil(steps_per_epoch * epochs))
    interval = min(steps_per_epoch, total)
    # transformers >= 5.x renames gradient_checkpointing to activation_checkpointing
    prefix = ("activation" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
              else "gradient")
    checkpointing = {f"{prefix}_checkpointing": config.gradient_checkpointing,
                     f"{prefix}_checkpointing_kwargs": {"use_reentrant": False} if config.gradient_checkpointing
                     else None}
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=lr, num_train_epochs=epochs,
        max_steps=config.max_steps or -1, warmup_steps=config.warmup_ratio, lr_scheduler_type=config.scheduler,
        weight_decay=config.weight_decay, logging_steps=min(config.logging_steps, interval),
        logging_first_step=True, save_strategy="steps", save_steps=interval,
        eval_strategy="steps" if validate else "no", eval_steps=interval if validate else None,
        save_total_limit=config.save_total_limit, load_best_model_at_end=validate is not None,
        metric_for_best_model="accuracy" if validate else None, greater_is_better=True,
        report_to="none", use_cpu=vlm.device == "cpu", bf16=cuda and torch.cuda.is_bf16_supported(),
        **checkpointing,
        remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
        dataloader_pin_memory=cuda, seed=config.seed, data_seed=config.seed, disable_tqdm=not show_progress,
        save_only_model=False,
    )
    callbacks = []
    if validate is not None and config.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(config.early_stopping)))
    collator = VisionLanguageCollator(vlm.tokenizer.pad_token_id)
    eval_dataset = train_examples if validate is not None else None  # unused: evaluate() scores the images
    trainer = ScoringTrainer(model=model, args=args, train_dataset=train_examples, eval_dataset=eval_dataset,
                             data_collator=collator, callbacks=callbacks)
    if show_progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossProgress())
    else:
        trainer.remove_callback(PrinterCallback)  # quiet: the history is in the result and the model card
    return trainer


def _resume_point(output_dir: Path, resume: bool):
    from transformers.trainer_utils import get_last_checkpoint

    if not resume or not output_dir.is_dir():
        return None
    return get_last_checkpoint(str(output_dir))


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


def _history(trainer) -> list[dict]:
    keep = ("epoch", "step", "loss", "learning_rate", "grad_norm", "eval_accuracy", "eval_macro_f1", "eval_ece",
            "eval_nll", "train_runtime")
    return [{k: v for k, v in entry.items() if k in keep} for entry in trainer.state.log_history]


# ----------------------------------------------------------------------------- the run
def finetune(model, train, out_dir, *, label_set: LabelSet | None = None, val=None,
             config: FinetuneConfig | None = None, stretch: Stretch = DEFAULT_STRETCH, crop: float = 1.0,
             resume: bool = False, overwrite: bool = False, device: str | None = None,
             show_progress: bool = True) -> FinetuneResult:
    """Fine-tune a local VLM on labelled images, conversations or captions.

    Parameters
    ----------
    model : str, path-like or LocalVLM
        Hub id or directory of the base model (loaded in float32 on the best device), or a loaded
        `LocalVLM` (trained in place).
    train : ImageDataset
        Training data: classification (turned into *prompt with the label list -> label*),
        LLaVA conversations or image-caption pairs.
    out_dir : path-like
        Where the adapter (or model), its model card and ``checkpoints/`` go.
    label_set : LabelSet, optional
        Labels and question for classification data; by default the data's labels. Recorded with the
        output and checked by ``astrovlm eval``.
    val : ImageDataset, optional
        Classification data scored after every epoch as by ``astrovlm eval``; the best epoch (by
        accuracy) is kept and early stopping watches it.
    config : FinetuneConfig
        Method and hyper-parameters.
    stretch : Stretch
        Engine stretch of the model images.
    crop : float
        Central fraction of each image kept (recorded; ``astrovlm eval`` uses it by default).
    resume : bool
        Continue from the last checkpoint in ``out_dir/checkpoints``.
    overwrite : bool
        Replace an earlier run in ``out_dir``.
    device : str, optional
        ``cuda``, ``cpu``...; by default the first available.
    show_progress : bool
        tqdm bar with the loss.

    Returns
    -------
    FinetuneResult
    """
    import torch

    from .. import __version__
    from ..models.loading import load_model
    from ..models.local import LocalVLM

    config = config or FinetuneConfig()
    out_dir = Path(out_dir)
    if train.kind == "classification":
        label_set = train.label_set(label_set)
    if val is not None:
        if val.kind != "classification":
            raise AstroVLMError(f"Validation data {val.source} must be labelled images (a folder per class or a "
                                "table with a label column).")
        if label_set is None:
            label_set = val.label_set()
        val.label_set(label_set)
    if config.early_stopping and val is None:
        raise AstroVLMError("Early stopping needs validation data: pass --val.")
    _check_out_dir(out_dir, resume, overwrite)

    if isinstance(model, LocalVLM):
        vlm = model
    elif str(model).startswith(("http://", "https://")):
        raise AstroVLMError(f"{model} is a server; only local models can be fine-tuned. Pass a Hub id or a model "
                            "directory as --model, then serve the adapter (e.g. vLLM --lora-modules).")
    else:
        vlm = load_model(model, device=device, dtype="float32")
    if not isinstance(vlm, LocalVLM):
        raise AstroVLMError("Only local models can be fine-tuned; a server URL cannot.")
    if vlm.adapters:
        raise AstroVLMError(f"{vlm.name} has adapters loaded ({', '.join(vlm.adapters)}); fine-tune the base model, "
                            "or merge the adapter into a model first.")
    base_name = str(vlm.name)
    torch.manual_seed(config.seed)
    parts = model_parts(vlm.model)
    examples = EncodedExamples(vlm, train, label_set, stretch=stretch, crop=crop, max_length=config.max_length,
                               cache_bytes=int(config.cache_gb * 1024**3))
    examples[0]  # fail early on a bad first example (template, image, label)
    validate = None
    if val is not None:
        validate = _validator(vlm, val, label_set, stretch, crop, config.eval_batch_size)
    ckpt = out_dir / "checkpoints"
    run_info = {"method": config.method, "base_model": base_name,
                "labels": list(label_set.labels) if label_set is not None else None, "data_kind": train.kind}
    _check_run(ckpt, resume, run_info)
    began = time.perf_counter()
    history: list[dict] = []
    model_obj = vlm.model
    model_obj.config.use_cache = False

    if config.method == "two-stage":
        stage1_dir = ckpt / "stage1"
        done = stage1_dir / _STAGE1_DONE
        projector = dict(model_obj.named_modules())[parts.projector]
        if resume and done.is_file():
            from safetensors.torch import load_file

            projector.load_state_dict(load_file(str(done)))
            log.info("Stage 1 (projector) already finished; loaded %s", done)
        else:
            _set_trainable(model_obj, parts, "projector", config.train_vision_tower)
            stage1 = FinetuneConfig(**{**asdict(config), "method": "projector", "max_steps": config.max_steps,
                                       "early_stopping": None})
            _write_run(ckpt, run_info)
            trainer = _make_trainer(model_obj, vlm, examples, stage1, stage1_dir, lr=config.stage1_learning_rate,
                                    epochs=config.stage1_epochs, validate=None, show_progress=show_progress)
            trainer.train(resume_from_checkpoint=_resume_point(stage1_dir, resume))
            history += [{**h, "stage": 1} for h in _history(trainer)]
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}, str(done))
        stage_dir = ckpt / "stage2"
    else:
        stage_dir = ckpt

    if config.method in ("lora", "two-stage"):
        from peft import LoraConfig, get_peft_model

        targets = lora_target_regex(parts, config.target_modules, include_vision=config.train_vision_tower)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r,
                          lora_dropout=config.lora_dropout, target_modules=targets, bias="none",
                          modules_to_save=([parts.projector.split(".")[-1]] if config.method == "two-stage"
                                           else None))
        for param in model_obj.parameters():
            param.requires_grad = False
        from ..models.compat import peft_quietly

        try:
            with peft_quietly():
                model_obj = get_peft_model(model_obj, lora)
        except ValueError as error:
            raise AstroVLMError(f"LoRA found no layers to adapt ({error}); check --target-modules.") from None
        vlm.model = model_obj
    else:
        _set_trainable(model_obj, parts, config.method, config.train_vision_tower)
    trainable, total = _count(model_obj)
    log.info("Fine-tuning %s with %s: %d of %d parameters trainable (%.2f%%); %s", base_name, config.method,
             trainable, total, 100 * trainable / total, parts.describe())
    if trainable == 0:
        raise AstroVLMError("No parameter is trainable with these settings; check --method and --target-modules.")
    trainer = _make_trainer(model_obj, vlm, examples, config, stage_dir, lr=config.lr, epochs=config.epochs,
                            validate=validate, show_progress=show_progress)
    _write_run(ckpt, run_info)
    resumed_from = _resume_point(stage_dir, resume)
    if resumed_from:
        log.info("Resuming from %s", resumed_from)
    cuda = vlm.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train(resume_from_checkpoint=resumed_from)
    history += _history(trainer)
    seconds = time.perf_counter() - began
    speed = (output.metrics or {}).get("train_samples_per_second")
    peak_gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None
    model_obj = trainer.model
    model_obj.eval()
    model_obj.config.use_cache = True
    validation = _final_validation(trainer, validate, model_obj)

    record = {
        "format": "glue-astrovlm finetune 1",
        "method": config.method,
        "base_model": base_name,
        "label_set": None if label_set is None else {
            "name": label_set.name, "labels": list(label_set.labels), "descriptions": list(label_set.descriptions),
            "question": label_set.question, "prompt_hash": label_set.prompt_hash()},
        "data": train.describe(),
        "validation_data": val.describe() if val is not None else None,
        "stretch": stretch.to_dict(), "stretch_text": stretch.describe(), "crop": crop,
        "hyperparameters": config.to_dict(),
        "trainable_parameters": trainable, "total_parameters": total,
        "modules": {"vision": parts.vision, "projector": parts.projector, "text": parts.text,
                    "vision_frozen": not config.train_vision_tower},
        "steps": int(trainer.state.global_step), "epochs": float(trainer.state.epoch or 0),
        "train_loss": float(output.training_loss) if output.training_loss is not None else None,
        "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "resumed_from": resumed_from,
        "validation": validation,
        "history": history,
        "train_seconds": round(seconds, 1),
        "train_examples_per_second": round(float(speed), 2) if speed is not None else None,
        "peak_gpu_memory_mb": peak_gpu_mb,
        "device": vlm.device, "precision": "bf16 autocast" if trainer.args.bf16 else "float32",
        "glue_astrovlm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _save_output(model_obj, vlm, out_dir, record, config.method in ("lora", "two-stage"))
    log.info("Saved %s to %s in %.1f s of training", config.method, out_dir, seconds)
    return FinetuneResult(out_dir, config.method, record, history)


def _save_output(model, vlm, out_dir: Path, record: dict, adapter: bool) -> None:
    from .model_card import model_card

    out_dir.mkdir(parents=True, exist_ok=True)
    if adapter:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        config_path = out_dir / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = record["base_model"]
        config_path.write_text(json.dumps(config, indent=2))
        name = ADAPTER_RECORD
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        vlm.processor.save_pretrained(str(out_dir))
        name = MODEL_RECORD
    (out_dir / name).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    (out_dir / "README.md").write_text(model_card(record), encoding="utf-8")
