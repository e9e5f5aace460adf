"""Build real transformers VLMs with random weights from real configurations.

No pretrained weights can be downloaded on CI machines, so tests and benchmarks build the exact
architecture (or a shrunk copy of it) from a configuration directory that holds the real
tokenizer, image processor and chat template, save it, and load it back through
:func:`glue_astrovlm.load_model` exactly as a user would load a downloaded model.

Answers from such models are meaningless: they prove that the machinery is right and how fast it is,
never how good a model is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

__all__ = ["SHARED_SMOLVLM_CONFIG", "SHARED_MODELS", "FAMILY_CONFIGS", "build_smolvlm", "build_llava",
           "build_family"]

#: Where the real SmolVLM-256M-Instruct configuration (no weights) lives in a development checkout.
SHARED_SMOLVLM_CONFIG = Path(
    os.environ.get(
        "ASTROVLM_SMOLVLM_CONFIG",
        Path(__file__).resolve().parents[1].parent / "shared" / "models" / "SmolVLM-256M-Instruct",
    )
)

#: Where the real configurations of every family (no weights) live in a development checkout.
SHARED_MODELS = Path(os.environ.get("ASTROVLM_SHARED_MODELS", SHARED_SMOLVLM_CONFIG.parent))

#: Family name -> the folder of ``SHARED_MODELS`` holding its real configuration, tokenizer,
#: processor and chat template.
FAMILY_CONFIGS = {
    "SmolVLM": "SmolVLM-256M-Instruct",
    "LLaVA-1.5": "llava-1.5-7b-hf",
    "LLaVA-NeXT": "llava-v1.6-mistral-7b-hf",
    "LLaVA-OneVision": "llava-onevision-qwen2-0.5b-ov-hf",
    "Qwen2.5-VL": "Qwen2.5-VL-3B-Instruct",
}

_TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16,
)
_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def _copy_processor_files(config_dir: Path, out_dir: Path) -> None:
    for path in config_dir.iterdir():
        if path.name not in {"config.json"} and path.is_file():
            shutil.copyfile(path, out_dir / path.name)


def build_smolvlm(out_dir: str | os.PathLike, *, tiny: bool = True, seed: int = 0,
                  config_dir: str | os.PathLike | None = None, **text_overrides) -> Path:
    """Save a SmolVLM (Idefics3) model with random weights and the real processor files.

    Parameters
    ----------
    out_dir : path-like
        Directory to write ``config.json``, ``model.safetensors`` and the processor files into.
    tiny : bool, optional
        If `True` (default), shrink the text and vision towers to a few layers of width 64/32 so
        that a forward pass takes milliseconds. If `False`, keep the real 256M-parameter sizes.
    seed : int, optional
        Seed for the random initialisation.
    config_dir : path-like, optional
        Directory with the real configuration; defaults to ``../shared/models/SmolVLM-256M-Instruct``.
    **text_overrides
        Extra settings for the text configuration of a tiny model (for example ``num_hidden_layers``).

    Returns
    -------
    pathlib.Path
        ``out_dir``, ready for :func:`glue_astrovlm.load_model`.
    """
    import torch
    from transformers import AutoConfig, Idefics3ForConditionalGeneration

    config_dir = Path(config_dir or SHARED_SMOLVLM_CONFIG)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(config_dir)
    if tiny:
        for key, value in {**_TINY_TEXT, **text_overrides}.items():
            setattr(config.text_config, key, value)
        for key, value in _TINY_VISION.items():
            setattr(config.vision_config, key, value)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    _copy_processor_files(config_dir, out_dir)
    return out_dir


_LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_llava(out_dir: str | os.PathLike, *, seed: int = 0,
                config_dir: str | os.PathLike | None = None) -> Path:
    """Save a tiny LLaVA-1.5-style model (CLIP vision tower, Llama text model) with random weights.

    The tokenizer is the real SmolVLM tokenizer (it has an ``<image>`` token); the image processor is
    a real ``CLIPImageProcessor`` at 64 px and the chat template is LLaVA-1.5's ``USER:/ASSISTANT:``.
    """
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig,
                              LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)

    config_dir = Path(config_dir or SHARED_SMOLVLM_CONFIG)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(config_dir)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=64, patch_size=16, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=16,
                               vision_feature_select_strategy="default", chat_template=_LLAVA_TEMPLATE,
                               num_additional_image_tokens=1)
    processor.save_pretrained(out_dir)
    (out_dir / "astrovlm_built.json").write_text(json.dumps({"random_weights": True, "seed": seed}))
    return out_dir


#: Shrunk vision towers per ``vision_config.model_type``: few layers, narrow, but the real image
#: size and patch size, so that a cutout costs the real number of image tokens.
_TINY_VISION_TOWERS = {
    "clip_vision_model": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, projection_dim=32),
    "siglip_vision_model": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2),
    "qwen2_5_vl_vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                              fullatt_block_indexes=[1]),
}


def _shrink(config) -> None:
    """Shrink a VLM configuration in place: 2 narrow text layers and a small vision tower."""
    text = config.text_config
    for key, value in _TINY_TEXT.items():
        setattr(text, key, value)
    if getattr(text, "layer_types", None) is not None:  # one entry per layer (Qwen2: sliding or full)
        text.layer_types = list(text.layer_types[:text.num_hidden_layers])
    if hasattr(text, "max_window_layers"):
        text.max_window_layers = text.num_hidden_layers
    rope = getattr(text, "rope_parameters", None) or {}
    if "mrope_section" in rope:  # M-RoPE splits head_dim / 2 frequencies into (time, row, column)
        text.rope_parameters = {**rope, "mrope_section": [2, 3, 3]}
    vision = config.vision_config
    for key, value in _TINY_VISION_TOWERS.get(vision.model_type, _TINY_VISION).items():
        setattr(vision, key, value)


def build_family(name: str, out_dir: str | os.PathLike, *, tiny: bool = True, seed: int = 0,
                 config_dir: str | os.PathLike | None = None, dtype=None) -> Path:
    """Save a model of family ``name`` with random weights and its real processor files.

    Parameters
    ----------
    name : str
        A family of `~glue_astrovlm.models.families.FAMILIES` (``'LLaVA-OneVision'``, ``'Qwen2.5-VL'``, ...),
        or its configuration folder's name in `SHARED_MODELS` (``'llava-onevision-qwen2-0.5b-ov-hf'``).
    out_dir : path-like
        Directory to write ``config.json``, ``model.safetensors`` and the processor files into.
    tiny : bool, optional
        Shrink the language model to 2 layers of width 64 and the vision tower to 1-2 narrow layers
        (the real tokenizer, vocabulary, image size, processor and chat template stay). `False` keeps
        the real sizes (for benchmarks).
    seed : int, optional
        Seed for the random initialisation.
    config_dir : path-like, optional
        The real configuration folder; defaults to the family's folder in `SHARED_MODELS`.
    dtype : torch.dtype, optional
        Precision of the saved weights (default float32; bfloat16 halves a full-size model's files).

    Returns
    -------
    pathlib.Path
        ``out_dir``, ready for :func:`glue_astrovlm.load_model`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .models.families import family_named

    by_folder = {folder: family for family, folder in FAMILY_CONFIGS.items()}
    family = family_named(by_folder.get(name, name))
    config_dir = Path(config_dir or SHARED_MODELS / FAMILY_CONFIGS[family.name])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(config_dir)
    if tiny:
        _shrink(config)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype or torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    _copy_processor_files(config_dir, out_dir)
    (out_dir / "astrovlm_built.json").write_text(json.dumps({"random_weights": True, "seed": seed,
                                                             "family": family.name, "tiny": tiny}))
    return out_dir
