"""Which parts of a vision-language model a fine-tuning method trains, per architecture.

Every VLM that transformers loads as ``AutoModelForImageTextToText`` has three parts under different
names: a vision tower, a projector (connector) from image features to text embeddings, and a
language model. This module finds them by name so that LoRA targets, projector-only training and a
frozen vision tower work the same way for SmolVLM/Idefics3, LLaVA(-NeXT/-OneVision) and Qwen2-VL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import AstroVLMError

__all__ = ["ModelParts", "model_parts", "lora_target_regex", "DEFAULT_LORA_TARGETS"]

#: Linear layers of the language model that LoRA adapts by default (attention and MLP).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_VISION = ("vision_model", "vision_tower", "visual")
_PROJECTOR = ("connector", "multi_modal_projector", "merger", "mm_projector")
_TEXT = ("text_model", "language_model")


@dataclass(frozen=True)
class ModelParts:
    """Dotted module names (as in ``model.named_modules()``) of the three parts of a VLM."""

    vision: str
    projector: str
    text: str
    model_type: str

    def describe(self) -> str:
        return f"vision={self.vision}, projector={self.projector}, text={self.text}"


def _find(names: list[str], candidates: tuple[str, ...], exclude: str | None = None) -> str | None:
    for candidate in candidates:
        found = [n for n in names if n.split(".")[-1] == candidate and (exclude is None or n != exclude)]
        if found:
            return min(found, key=lambda n: n.count("."))
    return None


def model_parts(model) -> ModelParts:
    """The vision tower, projector and language model of ``model`` (a transformers or peft model).

    Raises
    ------
    AstroVLMError
        If one of the three parts cannot be found (an architecture this module does not know).
    """
    base = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    names = [name for name, _ in base.named_modules()]
    vision = _find(names, _VISION)
    projector = _find(names, _PROJECTOR)
    text = _find(names, _TEXT)
    model_type = getattr(base.config, "model_type", type(base).__name__)
    if None in (vision, projector, text):
        raise AstroVLMError(f"Cannot find the vision tower, projector and language model of a {model_type!r} "
                            f"model (found vision={vision}, projector={projector}, text={text}). Pass "
                            "--target-modules explicitly and use --method lora or full.")
    return ModelParts(vision, projector, text, model_type)


def lora_target_regex(parts: ModelParts, targets=None, include_vision: bool = False) -> str:
    """A peft ``target_modules`` regular expression: the given leaf names inside the language model.

    Parameters
    ----------
    parts : ModelParts
    targets : sequence of str, optional
        Leaf module names such as ``q_proj v_proj``; default `DEFAULT_LORA_TARGETS` (plus the vision
        tower's ``fc1``/``fc2``/``out_proj`` when ``include_vision``).
    include_vision : bool
        Also adapt the vision tower. By default it is never matched (a frozen vision tower), and
        neither is the projector.
    """
    targets = tuple(targets or DEFAULT_LORA_TARGETS)
    bad = [t for t in targets if not re.fullmatch(r"[A-Za-z0-9_]+", t)]
    if bad:
        raise AstroVLMError(f"--target-modules takes leaf module names such as q_proj v_proj, got {bad}.")
    prefixes = [re.escape(parts.text)]
    if include_vision:
        prefixes.append(re.escape(parts.vision))
        targets = tuple(dict.fromkeys(targets + ("out_proj", "fc1", "fc2", "qkv", "proj")))
    return rf"^(?:{'|'.join(prefixes)})\..*\.({'|'.join(targets)})$"
