"""How many image tokens a cutout costs: a deliberate, per-family choice.

A VLM's default processor is tuned for photographs and documents. SmolVLM's splits a 256-px cutout,
upscaled to 2048 px, into 16 tiles plus a global view: about 1,150 image tokens, 15x the cost of one
512-px tile (64 tokens). A survey cutout has no fine print to read, so glue-astrovlm sends one tile
by default and logs the token count of every run; each result records its image tokens. Each family's
choice and its reason are in `~glue_astrovlm.models.families.FAMILIES` (``budget``).
``tiling='default'`` restores the processor's own behaviour.
"""

from __future__ import annotations

__all__ = ["TILING_CHOICES", "processor_kwargs_for", "restrict_tile_grid"]

TILING_CHOICES = ("single", "default")

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
    from .families import FAMILIES

    if tiling not in TILING_CHOICES:
        raise AstroVLMError(f"Unknown tiling {tiling!r}; use one of {', '.join(TILING_CHOICES)}.")
    single = next((f.single_tile for f in FAMILIES if model_type in f.model_types), {})
    kwargs = dict(single) if tiling == "single" else {}
    if tiling == "single" and model_type in _RESIZE_TO_TILE:
        image_processor = getattr(processor, "image_processor", None)
        tile = (getattr(image_processor, "max_image_size", None) or {}).get("longest_edge")
        if tile:
            kwargs["size"] = {"longest_edge": int(tile)}
    kwargs.update(overrides or {})
    return kwargs


def restrict_tile_grid(family, model, processor, tiling: str = "single") -> None:
    """For an any-resolution LLaVA with ``tiling='single'``: allow only the family's tile grid.

    The image processor picks the grid a cutout is tiled into, and the model unpacks the image
    features with its own copy of the grid list: both are set, so that they agree.
    """
    if tiling != "single" or family.tile_grid is None:
        return
    grid = [list(size) for size in family.tile_grid]
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "image_grid_pinpoints"):
        image_processor.image_grid_pinpoints = grid
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for config in {id(c): c for c in (base.config, getattr(getattr(base, "model", None), "config", None))
                   if c is not None}.values():
        if hasattr(config, "image_grid_pinpoints"):
            config.image_grid_pinpoints = grid
