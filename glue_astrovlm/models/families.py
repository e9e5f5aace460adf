"""The model families glue-astrovlm knows, in one table, picked from a model's ``config.json``.

A family says how its processor is built, what an astronomical cutout costs in image tokens, which
layers LoRA adapts and what licence its published checkpoints carry. `family_for` picks the family
from ``config.model_type`` (never from the model's name), so a fine-tune of a base, saved under any
name, loads the way its base does. A ``model_type`` that is not in the table is refused with a message
that names the families that are.

Processors of LLaVA-OneVision and Qwen2-VL/2.5-VL are built from their parts (image processor,
tokenizer, chat template and ``processor_config.json``) rather than with ``AutoProcessor``: that
would import torchvision for their video processors, and the torchvision wheel on PyPI is a CUDA
build that does not load with the CPU torch. Cutouts need no video processor.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field

from ..errors import AstroVLMError

__all__ = ["Family", "FAMILIES", "family_for", "family_named", "build_processor", "check_model_type"]

#: Linear layers of the language model that LoRA adapts by default (attention and MLP); the same
#: names in Llama (LLaVA-1.5, SmolVLM), Mistral (LLaVA-NeXT) and Qwen2 (LLaVA-OneVision, Qwen2.5-VL).
_LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    """One model family: how it loads and what a cutout costs.

    Attributes
    ----------
    name : str
        The family's name, as the docs and messages use it.
    model_types : tuple of str
        ``config.model_type`` values of the family.
    example : str
        A Hub id of a published checkpoint of the family.
    processor_from_parts : bool
        Build the processor from its image processor, tokenizer and chat template (no video
        processor, so no torchvision) instead of ``AutoProcessor``.
    single_tile : dict
        Processor-call arguments that fix the image tokens per cutout for ``tiling='single'``.
    tile_grid : tuple of (int, int), optional
        For any-resolution (anyres) LLaVA models: the only tile grid allowed with ``tiling='single'``
        (set on both the image processor and the model, which must agree on it).
    budget : str
        What one cutout costs with ``tiling='single'``, and why.
    lora_targets : tuple of str
        Leaf names of the language-model layers LoRA adapts by default.
    licence : str
        The licence of the family's published checkpoints.
    """

    name: str
    model_types: tuple[str, ...]
    example: str
    processor_from_parts: bool = False
    single_tile: dict = field(default_factory=dict)
    tile_grid: tuple[tuple[int, int], ...] | None = None
    budget: str = ""
    lora_targets: tuple[str, ...] = _LLM_LINEAR
    licence: str = ""


FAMILIES: tuple[Family, ...] = (
    Family(
        "SmolVLM",
        ("idefics3", "smolvlm"),
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        single_tile={"do_image_splitting": False},
        budget="one 512-px tile: 64 image tokens (the default splits a 256-px cutout, upscaled, into 16 "
        "tiles and a global view: about 1,100)",
        licence="Apache-2.0",
    ),
    Family(
        "LLaVA-1.5",
        ("llava",),
        "llava-hf/llava-1.5-7b-hf",
        budget="fixed: one 336-px view, 576 image tokens (24 x 24 CLIP patches)",
        licence="Llama 2 Community Licence (Vicuna base)",
    ),
    Family(
        "LLaVA-NeXT",
        ("llava_next",),
        "llava-hf/llava-v1.6-mistral-7b-hf",
        tile_grid=((336, 336),),
        budget="base view plus one 336-px tile: at most 1,176 image tokens (576 + 576 + 24 row ends), "
        "fewer for elongated cutouts; the default grid tiles a large cutout up to 672 x 672 px "
        "(2,928 tokens)",
        licence="Apache-2.0 (Mistral-7B-Instruct-v0.2 base)",
    ),
    Family(
        "LLaVA-OneVision",
        ("llava_onevision",),
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        processor_from_parts=True,
        tile_grid=((384, 384),),
        budget="base view plus one 384-px tile: at most 1,485 image tokens (729 + 729 + 27 row ends), "
        "fewer for elongated cutouts; the default anyres_max_9 grid tiles a large cutout into up "
        "to 36 tiles (about 7,300 tokens after pooling)",
        licence="Apache-2.0 (Qwen2 base)",
    ),
    Family(
        "Qwen2.5-VL",
        ("qwen2_5_vl", "qwen2_vl"),
        "Qwen/Qwen2.5-VL-3B-Instruct",
        processor_from_parts=True,
        single_tile={"size": {"longest_edge": 448 * 448, "shortest_edge": 224 * 224}},  # pixels
        budget="native resolution, capped at 448 x 448 px: one token per 28 x 28 px, so a 256-px cutout "
        "costs 81 tokens and a large one at most 256 (the default cap is 12.8 Mpx: 16,384 tokens)",
        licence="Qwen Research Licence for the 3B (non-commercial); Apache-2.0 for 7B and Qwen2-VL-2B",
    ),
)


def family_named(name: str) -> Family:
    """The family called ``name`` (case-insensitive), e.g. ``'LLaVA-OneVision'``."""
    for family in FAMILIES:
        if family.name.casefold() == name.casefold():
            return family
    raise AstroVLMError(f"No model family {name!r}; the families are {', '.join(f.name for f in FAMILIES)}.")


def family_for(config, where: str = "this model") -> Family:
    """The family of a model from its configuration (``config.model_type``).

    Raises
    ------
    AstroVLMError
        If the model type is not one of a known family; the message names the known families.
    """
    model_type = getattr(config, "model_type", None) or ""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise unknown_family(model_type, where)


def unknown_family(model_type: str | None, where: str = "this model") -> AstroVLMError:
    """The error for a model type outside the known families: it names them, and for an original
    (non-llava-hf) LLaVA checkpoint says how to convert it."""
    known = "; ".join(f"{f.name} ({', '.join(f.model_types)}), e.g. {f.example}" for f in FAMILIES)
    message = (f"{where} is a {model_type or 'model without a model_type'!r} model, which glue-astrovlm "
               f"does not support yet. It loads these families (config.json model_type): {known}.")
    if model_type and model_type.startswith("llava_"):
        message += (" This looks like an original LLaVA checkpoint: convert it with transformers' "
                    "convert_llava_weights_to_hf (or convert_llava_onevision_weights_to_hf) script, save it "
                    "as safetensors and load the converted folder (docs/models.md).")
    return AstroVLMError(message)


def check_model_type(model_type: str | None, where: str = "this model") -> None:
    """Refuse a configuration's raw ``model_type`` before transformers builds (or fails to build) it."""
    if not any(model_type in family.model_types for family in FAMILIES):
        raise unknown_family(model_type, where)


def _optional_json(source: str, name: str, local_only: bool) -> dict | None:
    from transformers.utils import cached_file

    path = cached_file(
        source,
        name,
        local_files_only=local_only,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _chat_template(source: str, tokenizer, local_only: bool) -> str | None:
    """The chat template: ``chat_template.jinja``, else ``chat_template.json``, else the tokenizer's."""
    from transformers.utils import cached_file

    path = cached_file(
        source,
        "chat_template.jinja",
        local_files_only=local_only,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    stored = _optional_json(source, "chat_template.json", local_only)
    if stored and stored.get("chat_template"):
        return stored["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def _image_only(processor_class):
    """``processor_class`` with no video processor among its parts (transformers reads the parts from the
    signature of ``__init__``); its own ``__init__`` runs with ``video_processor=None``. It keeps the
    class's name, which ``save_pretrained`` writes as ``processor_class``, so that a saved copy (a full
    fine-tune) names the real class."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        processor_class.__init__(self, image_processor, tokenizer, None, **kwargs)

    # the class's own settings (num_image_tokens, ...) stay in the signature: save_pretrained reads them there
    signature = inspect.signature(processor_class.__init__)
    __init__.__signature__ = signature.replace(
        parameters=[p for name, p in signature.parameters.items() if name != "video_processor"]
    )
    return type(
        processor_class.__name__,
        (processor_class,),
        {"__init__": __init__, "__module__": processor_class.__module__},
    )


def build_processor(family: Family, source: str, *, trust_remote_code: bool = False, local_only: bool = True):
    """The processor of a model folder or Hub id, as ``family`` builds it.

    ``AutoProcessor`` where that needs nothing beyond the CPU stack; otherwise the processor class named
    in the folder, made from the image processor (the PIL one when torchvision is absent), the
    tokenizer, the chat template and ``processor_config.json``, without a video processor.
    """
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    options = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    if not family.processor_from_parts:
        return AutoProcessor.from_pretrained(source, **options)
    image_processor = AutoImageProcessor.from_pretrained(source, **options)
    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    settings = dict(_optional_json(source, "processor_config.json", local_only) or {})
    name = settings.pop("processor_class", None) or (
        _optional_json(source, "preprocessor_config.json", local_only) or {}
    ).get("processor_class")
    processor_class = getattr(transformers, name or "", None)
    if processor_class is None:
        raise ValueError(
            f"no processor class is named in processor_config.json or preprocessor_config.json "
            f"(found {name!r})"
        )
    # processor_config.json holds the processor's own settings and, as transformers 5 saves it, each
    # part's settings too (``image_processor``, ...), which were read above
    accepted = inspect.signature(processor_class.__init__).parameters
    parts = {"image_processor", "tokenizer", "video_processor", "chat_template"}
    settings = {key: value for key, value in settings.items() if key in accepted and key not in parts}
    return _image_only(processor_class)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=_chat_template(source, tokenizer, local_only),
        **settings,
    )
