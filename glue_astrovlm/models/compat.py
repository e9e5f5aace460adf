"""Differences between the supported releases of transformers and peft, handled in one place.

Each helper names the release that changed; drop it once the oldest supported release has the change.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings

__all__ = ["cache_keyword", "returned_cache", "peft_quietly"]


@functools.lru_cache(maxsize=None)
def _forward_takes_cache(model_class) -> bool:
    return "cache" in inspect.signature(model_class.forward).parameters


def cache_keyword(model) -> str:
    """The name under which ``model.forward`` takes a KV cache: ``'cache'`` from transformers 5.24 on,
    ``'past_key_values'`` before (5.24 still accepts that name, with a deprecation warning until 5.40)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft passes it on
    return "cache" if _forward_takes_cache(type(base)) else "past_key_values"


def returned_cache(output):
    """The KV cache of a forward pass's output, under either transformers name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@contextlib.contextmanager
def peft_quietly():
    """Wrap a model with peft without the deprecation warning that peft itself causes.

    peft 0.21.2 (``PeftModel.__init__``) reads ``model.is_gradient_checkpointing``, which transformers
    5.24 deprecated in favour of ``is_activation_checkpointing``. Only that warning is silenced, and only
    around peft's own calls; any other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield
