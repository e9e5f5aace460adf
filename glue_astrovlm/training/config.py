"""`FinetuneConfig`: the method and hyper-parameters of a fine-tuning run, checked when it is made."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import AstroVLMError

__all__ = ["FinetuneConfig", "METHODS", "DEFAULT_LEARNING_RATES"]

METHODS = ("lora", "projector", "two-stage", "full")
#: Learning rate per method when none is given.
DEFAULT_LEARNING_RATES = {"lora": 2e-4, "projector": 1e-3, "two-stage": 2e-4, "full": 5e-5}

#: Command-line flags of the settings whose flag is not their name with dashes.
_FLAGS = {"learning_rate": "--lr", "stage1_learning_rate": "--stage1-lr"}
#: Settings that `astrovlm finetune` has no flag for.
_NO_FLAG = ("save_total_limit", "logging_steps")


def _setting(name: str) -> str:
    """The setting's name with its command-line flag, for messages."""
    if name in _NO_FLAG:
        return name
    return f"{name} ({_FLAGS.get(name, '--' + name.replace('_', '-'))})"


def _whole(name: str, value, minimum: int, optional: bool = False) -> int | None:
    """``value`` as an int of at least ``minimum`` (``None`` allowed if ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise AstroVLMError(f"{_setting(name)} must be a whole number of at least {minimum}, got {value!r}.")
    return int(value)


def _number(name: str, value, *, low: float, high: float = math.inf, low_open: bool = True,
            optional: bool = False, hint: str = "") -> float | None:
    """``value`` as a finite float in ``(low, high)`` (``[low, high)`` unless ``low_open``)."""
    if value is None and optional:
        return None
    number = None if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)
    if number is None or not math.isfinite(number) or number >= high or number < low or \
            (low_open and number == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g})" if math.isfinite(high) else \
            ("positive" if low == 0 and low_open else f"at least {low:g}")
        what = f"in {bounds}" if math.isfinite(high) else bounds
        raise AstroVLMError(f"{_setting(name)} must be {what}, got {value!r}.{hint}")
    return number


@dataclass
class FinetuneConfig:
    """Hyper-parameters of a fine-tuning run (all recorded in the model card).

    Every setting is checked when the configuration is made: a value out of range raises
    `~glue_astrovlm.AstroVLMError` naming the setting, its command-line flag and the range.

    Parameters
    ----------
    method : {'lora', 'projector', 'two-stage', 'full'}
        ``lora``: low-rank adapters on the language model (peft). ``projector``: only the
        vision-to-text projector. ``two-stage``: the projector first, then LoRA with the projector
        kept trainable (AstroLLaVA's recipe); saved as one adapter. ``full``: every weight of the
        projector and the language model.
    epochs : float
        Passes over the training data; positive (0 is allowed with ``max_steps``).
    learning_rate : float, optional
        Peak learning rate, positive; by default `DEFAULT_LEARNING_RATES` for the method.
    batch_size : int
        Examples per device step (at least 1).
    grad_accum : int
        Steps accumulated per optimiser update (effective batch = batch_size * grad_accum).
    warmup_ratio : float
        Fraction of the updates with a linear warm-up, in [0, 1).
    scheduler : str
        transformers scheduler name (``cosine``, ``linear``, ``constant_with_warmup``...).
    weight_decay : float
        At least 0.
    lora_r, lora_alpha, lora_dropout : LoRA rank (at least 1), scaling (positive; default ``2 * r``)
        and dropout (in [0, 1)).
    target_modules : sequence of str, optional
        Leaf names of the language-model layers LoRA adapts (default attention and MLP projections).
    train_vision_tower : bool
        Also train the vision tower (frozen by default).
    gradient_checkpointing : bool
        Trade compute for memory.
    early_stopping : int, optional
        Stop after this many validations (at least 1) without a better accuracy (needs validation data).
    max_steps : int, optional
        Stop after this many optimiser updates (at least 1; overrides ``epochs``).
    seed : int
        At least 0.
    max_length : int, optional
        Truncate longer examples (tokens, at least 1).
    stage1_epochs, stage1_learning_rate : float
        The projector stage of ``two-stage`` (both positive).
    eval_batch_size : int
        Images per forward pass during validation.
    save_total_limit : int
        Checkpoints kept (the best one is always kept).
    logging_steps : int
        Updates between loss logs.
    cache_gb : float
        Memory for encoded examples (about 3 MB per SmolVLM image); beyond it images are re-encoded
        every epoch. 0 keeps none; it cannot be negative.
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
        for name in ("batch_size", "grad_accum", "lora_r", "eval_batch_size", "logging_steps",
                     "save_total_limit"):
            setattr(self, name, _whole(name, getattr(self, name), 1))
        for name in ("max_steps", "early_stopping", "max_length"):
            setattr(self, name, _whole(name, getattr(self, name), 1, optional=True))
        self.seed = _whole("seed", self.seed, 0)
        self.epochs = _number("epochs", self.epochs, low=0, low_open=self.max_steps is None,
                              hint=" (0 is allowed only with --max-steps)" if self.max_steps is None else "")
        self.learning_rate = _number("learning_rate", self.learning_rate, low=0, optional=True)
        self.stage1_learning_rate = _number("stage1_learning_rate", self.stage1_learning_rate, low=0)
        self.stage1_epochs = _number("stage1_epochs", self.stage1_epochs, low=0)
        self.warmup_ratio = _number("warmup_ratio", self.warmup_ratio, low=0, high=1, low_open=False)
        self.weight_decay = _number("weight_decay", self.weight_decay, low=0, low_open=False)
        _number("lora_alpha", self.lora_alpha, low=0, optional=True)  # kept as given: peft's type
        self.lora_dropout = _number("lora_dropout", self.lora_dropout, low=0, high=1, low_open=False)
        self.cache_gb = _number("cache_gb", self.cache_gb, low=0, low_open=False)
        if not isinstance(self.scheduler, str) or not self.scheduler.strip():
            raise AstroVLMError(f"{_setting('scheduler')} must be a scheduler name such as cosine, got "
                                f"{self.scheduler!r}.")
        if self.target_modules is not None:
            targets = self.target_modules
            targets = (targets,) if isinstance(targets, str) else tuple(targets)
            bad = [t for t in targets if not isinstance(t, str) or not re.fullmatch(r"[A-Za-z0-9_]+", t)]
            if bad or not targets:
                raise AstroVLMError(f"--target-modules takes leaf module names such as q_proj v_proj, got "
                                    f"{bad or list(targets)}.")
            self.target_modules = targets

    @property
    def lr(self) -> float:
        """The peak learning rate: the one given, else the method's default."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    def to_dict(self) -> dict:
        """The settings that apply to the method, as recorded with the output."""
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
