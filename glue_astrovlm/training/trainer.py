"""The transformers `Trainer` that `finetune` runs: answer-token loss, validation by label scoring.

Imported only when training starts (it imports torch and transformers).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .config import FinetuneConfig
from .data import IGNORE_INDEX, VisionLanguageCollator
from .output import follow_umask

__all__ = ["ScoringTrainer", "LossProgress", "FollowUmask", "training_arguments", "make_trainer"]


class ScoringTrainer(Trainer):
    """A Trainer with a loss on answer tokens only and validation by label scoring (as `astrovlm eval`).

    The loss is the token cross-entropy of the answer tokens (``labels != -100``), computed from
    logits at those positions only (``logits_to_keep``): the language-model head over a 50k-token
    vocabulary is the costliest layer of a small VLM, and prompt and image positions carry no loss.

    Parameters
    ----------
    validate : callable, optional
        ``model -> {metric: value}``; `evaluate` logs its metrics (``eval_accuracy``...).
    *args, **kwargs
        As for `transformers.Trainer`.
    """

    def __init__(self, *args, validate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.validate = validate
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
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.validate(self.model).items()}
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
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}",
                                          lr=f"{logs.get('learning_rate', 0):.2e}", refresh=False)
        evals = {k[5:]: v for k, v in logs.items() if k.startswith("eval_") and k != "eval_runtime"}
        if evals:
            text = "  ".join(f"{k} {v:.4f}" for k, v in evals.items() if isinstance(v, float))
            self.training_bar.write(f"epoch {logs.get('epoch', state.epoch or 0):.2f} validation: {text}")


class FollowUmask(TrainerCallback):
    """Give each checkpoint's files the umask's mode (safetensors writes them readable by the owner only)."""

    def on_save(self, args, state, control, **kwargs):
        follow_umask([Path(args.output_dir) / f"checkpoint-{state.global_step}"])


def training_arguments(config: FinetuneConfig, device: str, n_examples: int, output_dir: Path, *, lr: float,
                       epochs: float, validate: bool, show_progress: bool) -> TrainingArguments:
    """The `TrainingArguments` of a run: a checkpoint (and a validation) per epoch; bf16 on GPUs with it."""
    cuda = device.startswith("cuda")
    steps_per_epoch = max(1, math.ceil(n_examples / (config.batch_size * config.grad_accum)))
    total = config.max_steps or max(1, math.ceil(steps_per_epoch * epochs))
    interval = min(steps_per_epoch, total)
    # transformers >= 5.x renames gradient_checkpointing to activation_checkpointing
    prefix = ("activation" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
              else "gradient")
    checkpointing = {f"{prefix}_checkpointing": config.gradient_checkpointing,
                     f"{prefix}_checkpointing_kwargs": ({"use_reentrant": False}
                                                        if config.gradient_checkpointing else None)}
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=lr, num_train_epochs=epochs,
        max_steps=config.max_steps or -1, warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.scheduler, weight_decay=config.weight_decay,
        logging_steps=min(config.logging_steps, interval),
        logging_first_step=True, save_strategy="steps", save_steps=interval,
        eval_strategy="steps" if validate else "no", eval_steps=interval if validate else None,
        save_total_limit=config.save_total_limit, load_best_model_at_end=validate,
        metric_for_best_model="accuracy" if validate else None, greater_is_better=True,
        report_to="none", use_cpu=device == "cpu", bf16=cuda and torch.cuda.is_bf16_supported(),
        **checkpointing,
        remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
        dataloader_pin_memory=cuda, seed=config.seed, data_seed=config.seed, disable_tqdm=not show_progress,
        save_only_model=False,
    )


def make_trainer(model, vlm, train_examples, config: FinetuneConfig, output_dir: Path, *, lr: float,
                 epochs: float, validate=None, show_progress: bool) -> ScoringTrainer:
    """A `ScoringTrainer` for ``model`` on ``train_examples``, with early stopping and progress as configured.

    Parameters
    ----------
    model : torch.nn.Module
        The model to train (a peft model for LoRA), on ``vlm.device``.
    vlm : LocalVLM
        Its device and tokenizer (the padding token).
    train_examples : EncodedExamples
    config : FinetuneConfig
    output_dir : pathlib.Path
        Where the checkpoints go.
    lr, epochs : float
        Of this stage (two-stage runs have two).
    validate : callable, optional
        ``model -> metrics``, run after every epoch.
    show_progress : bool
        A tqdm bar with the loss; otherwise nothing is printed.
    """
    args = training_arguments(config, vlm.device, len(train_examples), output_dir, lr=lr, epochs=epochs,
                              validate=validate is not None, show_progress=show_progress)
    callbacks = [FollowUmask()]
    if validate is not None and config.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(config.early_stopping)))
    eval_dataset = train_examples if validate is not None else None  # unused: evaluate() scores the images
    trainer = ScoringTrainer(model=model, args=args, train_dataset=train_examples, eval_dataset=eval_dataset,
                             data_collator=VisionLanguageCollator(vlm.tokenizer.pad_token_id),
                             callbacks=callbacks, validate=validate)
    if show_progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossProgress())
    else:
        trainer.remove_callback(PrinterCallback)  # quiet: the history is in the result and the model card
    return trainer
