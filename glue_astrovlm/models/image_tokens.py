"""How many image tokens a cutout costs: a deliberate, per-model choice.

A VLM's default processor is tuned for photographs and documents. SmolVLM's splits a 256-px cutout,
upscaled to 2048 px, into 16 tiles plus a global view: about 1,150 image tokens, 15x the cost of one
512-px tile (64 tokens). A survey cutout has no fine print to read, so glue-astrovlm sends one tile
by default and logs the token count of every run. ``tiling='default'`` restores the processor's own
behaviour.
"""

from __future__ import annotations

__all__ = ["TILING_CHOICES", "processor_kwargs_for"]

TILING_CHOICES = ("single", "default")

#: model_type -> processor keyword arguments for ``tiling='single'``.
_SINGLE_TILE = {
    "idefics3": {"do_image_splitting": False},   # SmolVLM: one 512-px tile, 64 tokens (256M/500M)
    "smolvlm": {"do_image_splitting": False},
    "idefics2": {"do_image_splitting": False},
    # Qwen2/2.5/3-VL: dynamic resolution; cap at 448x448 px = 256 tokens after the 2x2 merge.
    "qwen2_vl": {"max_pixels": 448 * 448, "min_pixels": 224 * 224},
    "qwen2_5_vl": {"max_pixels": 448 * 448, "min_pixels": 224 * 224},
    "qwen3_vl": {"max_pixels": 448 * 448, "min_pixels": 224 * 224},
}


#: model types whose single tile is first upscaled to ``size['longest_edge']`` (2048 px for SmolVLM)
#: and then resized again to the tile: asking for the tile size directly gives the same tile
#: (mean |difference| ~1e-5 of the range) with 10x less preprocessing, which dominates on a GPU.
_RESIZE_TO_TILE = ("idefics3", "smolvlm")


def processor_kwargs_for(model_type: str, tiling: str = "single", overrides: dict | None = None,
                         processor=None) -> dict:
    """Keyword arguments for the processor call that fix the number of image tokens per cutout.

    Parameters
    ----------
    model_type : str
        ``config.model_type`` of the model.
    tiling : {'single', 'default'}
        ``single`` sends each cutout as one tile (or a capped pixel budget); ``default`` keeps the
        processor's own tiling. Models with a fixed token count (LLaVA-1.5: 576) ignore it.
    overrides : dict, optional
        Extra processor arguments from the user; they win.
    processor : optional
        The model's processor, for settings that depend on it (SmolVLM's tile size).
    """
    from ..errors import AstroVLMError

    if tiling not in TILING_CHOICES:
        raise AstroVLMError(f"Unknown tiling {tiling!r}; use one of {', '.join(TILING_CHOICES)}.")
    kwargs = dict(_SINGLE_TILE.get(model_type, {})) if tiling == "single" else {}
    if tiling == "single" and model_type in _RESIZE_TO_TILE:
        tile = (getattr(getattr(processor, "image_processor", None), "max_image_size", None) or {}).get("longest_edge")
        if tile:
            kwargs["size"] = {"longest_edge": int(tile)}
    kwargs.update(overrides or {})
    return kwargs
