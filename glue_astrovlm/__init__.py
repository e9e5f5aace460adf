"""glue-astrovlm: small vision-language models in glue and jdaviz.

The engine (this package's top level) imports no glue, Qt, jdaviz or torch; torch and transformers
load when a model is first used. Everything public is importable from here::

    from glue_astrovlm import load_model, open_image, cutout_at
    vlm = load_model("HuggingFaceTB/SmolVLM-256M-Instruct")
    result, = vlm.classify(cutout_at(open_image("radio.fits"), (150, 150), 128), preset="radio-morphology")
"""

from importlib import import_module

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "AstroVLMError": "errors",
    "Stretch": "stretch",
    "DEFAULT_STRETCH": "stretch",
    "Cutout": "cutout_types",
    "Provenance": "cutout_types",
    "ImageSource": "sources",
    "open_image": "sources",
    "from_nddata": "sources",
    "from_array": "sources",
    "as_image_source": "sources",
    "reduce_cube": "cubes",
    "cutout_at": "cutouts",
    "cutouts_from_regions": "cutouts",
    "cutouts_from_catalog": "cutouts",
    "whole_image": "cutouts",
    "rgb_composite": "cutouts",
    "detect_sources": "detect",
    "LabelSet": "labelsets",
    "list_presets": "labelsets",
    "load_preset": "labelsets",
    "resolve_labels": "labelsets",
    "Result": "results",
    "results_to_table": "results",
    "results_to_regions": "results",
    "write_table": "results",
    "write_regions": "results",
    "Conversation": "conversations",
    "write_llava_json": "conversations",
    "VLM": "models",
    "OperationCancelled": "models",
    "load_model": "models",
    "DEFAULT_MODEL": "models.loading",
    "tag_catalog": "survey",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'glue_astrovlm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
