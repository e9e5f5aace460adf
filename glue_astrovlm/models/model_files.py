"""What a model or adapter folder must hold before transformers or peft read it.

Folders copied by hand or downloaded halfway fail deep inside transformers and peft: a truncated
weights file, pickled weights only, a missing tokenizer, an ``adapter_config.json`` from another
run. The checks here read only file names, the JSON files and the small header of each safetensors
file (never the tensors), and raise `~glue_astrovlm.AstroVLMError` naming the file and the fix.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import AstroVLMError

__all__ = ["AdapterFiles", "safetensors_shapes", "check_model_folder", "check_model_weights",
           "check_adapter_folder", "missing_processor_files", "MODEL_REFETCH", "ADAPTER_REMAKE"]

#: How to repair a damaged model folder.
MODEL_REFETCH = ("download the model again (`hf download <hub id> --local-dir {path}`) or copy the whole "
                 "folder again")
#: How to repair a damaged adapter folder.
ADAPTER_REMAKE = ("re-run `astrovlm finetune`, or re-save the adapter with "
                  "save_pretrained(..., safe_serialization=True)")

_MAX_HEADER = 100 * 2**20  # safetensors refuses larger headers too
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def _read_json(path: Path, fix: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AstroVLMError(f"{path} is not valid JSON ({error}); {fix}.") from None


def safetensors_shapes(path: Path, fix: str) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in the header of a safetensors file, checked to be complete.

    Parameters
    ----------
    path : pathlib.Path
        A ``.safetensors`` file.
    fix : str
        What the user should do if it is damaged (ends the message).

    Raises
    ------
    AstroVLMError
        If the file is empty, is not safetensors, or is shorter (truncated) or longer than its
        header says.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(8)
        length = struct.unpack("<Q", start)[0] if len(start) == 8 else None
        if length is None or not 2 <= length <= _MAX_HEADER:
            what = "it is empty" if size == 0 else "it does not start with a safetensors header"
            raise AstroVLMError(f"{path} is not a safetensors file ({what}, {size:,} bytes); {fix}.")
        if length > size - 8:
            raise AstroVLMError(f"{path} is truncated: {size:,} bytes, shorter than its own header "
                                f"({8 + length:,} bytes). The file was not completely written or copied; "
                                f"{fix}.")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise AstroVLMError(f"{path} has a damaged safetensors header; {fix}.")
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    try:
        end = max((int(info["data_offsets"][1]) for info in tensors.values()), default=0)
        shapes = {name: tuple(int(n) for n in info["shape"]) for name, info in tensors.items()}
    except (TypeError, KeyError, IndexError, ValueError):
        raise AstroVLMError(f"{path} has a damaged safetensors header; {fix}.") from None
    expected = 8 + length + end
    if size != expected:
        how = "truncated" if size < expected else "longer than its header says"
        raise AstroVLMError(f"{path} is {how}: {size:,} bytes where its header describes {expected:,}. The "
                            f"file was not completely written or copied; {fix}.")
    return shapes


def check_model_weights(path: Path) -> None:
    """Check that a model folder holds complete safetensors weights (one file, or the shards of an index).

    Raises
    ------
    AstroVLMError
        If the weights are missing, truncated or damaged, or only pickled (refused, with how to convert).
    """
    fix = MODEL_REFETCH.format(path=path)
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        safetensors_shapes(path / "model.safetensors", fix)
        return
    if index.is_file():
        weight_map = _read_json(index, fix)
        listed = (weight_map.get("weight_map") or {}) if isinstance(weight_map, dict) else {}
        shards = sorted(set(listed.values())) if isinstance(listed, dict) else []
        if not shards:
            raise AstroVLMError(f"{index} lists no weight files; {fix}.")
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            more = ", ..." if len(missing) > 3 else ""
            raise AstroVLMError(f"{path} lacks {len(missing)} of the {len(shards)} weight files that "
                                f"{index.name} lists ({', '.join(missing[:3])}{more}); the download is "
                                f"incomplete: {fix}.")
        for name in shards:
            safetensors_shapes(path / name, fix)
        return
    pickled = [name for name in _PICKLED if (path / name).is_file()] + \
        sorted(p.name for p in path.glob("pytorch_model-*.bin"))
    if pickled:
        out = f"{path.name}-safetensors"
        raise AstroVLMError(
            f"{path} holds only pickled PyTorch weights ({', '.join(pickled[:3])}). glue-astrovlm loads "
            "safetensors only, because reading a pickled file can run code. Download the model's safetensors "
            "weights (most Hub models have model.safetensors), or, if you trust where the file came from, "
            "convert it once: "
            "python -c \"from transformers import AutoModelForImageTextToText as M, AutoProcessor as P; "
            f"d = '{path}'; o = '{path.parent / out}'; M.from_pretrained(d, use_safetensors=False)"
            ".save_pretrained(o); P.from_pretrained(d).save_pretrained(o)\" and pass --model "
            f"{path.parent / out}.")
    raise AstroVLMError(f"{path} has no weights (model.safetensors or model.safetensors.index.json); {fix}.")


def check_model_folder(path: Path) -> None:
    """Check a local model folder before its configuration is read.

    It must not be empty nor an adapter, and must hold a ``config.json`` that is a JSON object;
    `check_model_weights` checks the weights.

    Raises
    ------
    AstroVLMError
        Naming what is missing or damaged and how to get a complete copy; pickled weights are refused.
    """
    fix = MODEL_REFETCH.format(path=path)
    if not any(path.iterdir()):
        raise AstroVLMError(f"The model folder {path} is empty (no config.json, no weights); {fix}, or pass "
                            "another --model.")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise AstroVLMError(f"{path} is a LoRA adapter, not a model: pass it as --adapter (adapter=...), "
                            "with its base model as --model.")
    if not (path / "config.json").is_file():
        raise AstroVLMError(f"{path} has no config.json; point --model at the folder that holds the model "
                            "files.")
    if not isinstance(_read_json(path / "config.json", fix), dict):
        raise AstroVLMError(f"{path / 'config.json'} does not hold a JSON object; {fix}.")


def missing_processor_files(path: Path) -> list[str]:
    """What a model folder lacks for its processor: a tokenizer and an image-processor configuration."""
    missing = []
    if not any((path / name).is_file() for name in _TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        missing.append("a tokenizer (" + ", ".join(_TOKENIZER_FILES[:3]) + ")")
    processor = path / "processor_config.json"
    has_image = (path / "preprocessor_config.json").is_file()
    if not has_image and processor.is_file():
        try:
            has_image = "image_processor" in json.loads(processor.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
            has_image = False
    if not has_image:
        missing.append("an image-processor configuration (preprocessor_config.json)")
    return missing


@dataclass(frozen=True)
class AdapterFiles:
    """A checked adapter folder: its ``adapter_config.json`` and the tensor shapes of its weights."""

    path: Path
    config: dict
    shapes: dict

    @property
    def base_model(self) -> str | None:
        """The base model as recorded, unresolved (see `glue_astrovlm.records.adapter_base_model`)."""
        return self.config.get("base_model_name_or_path") or None

    @property
    def base_class(self) -> str | None:
        """The class of the model the adapter was made on (e.g. ``Idefics3ForConditionalGeneration``)."""
        mapping = self.config.get("auto_mapping")
        return mapping.get("base_model_class") if isinstance(mapping, dict) else None

    def weight_ranks(self) -> dict[int, str]:
        """Each LoRA rank found in the weights, with one tensor that has it."""
        ranks: dict[int, str] = {}
        for name, shape in self.shapes.items():
            if len(shape) < 2:
                continue
            if name.endswith(("lora_A.weight", "lora_embedding_A")):
                ranks.setdefault(shape[0], name)
            elif name.endswith(("lora_B.weight", "lora_embedding_B")):
                ranks.setdefault(shape[1], name)
        return ranks


def _check_lora_rank(files: AdapterFiles) -> None:
    config_file = files.path / "adapter_config.json"
    rank = files.config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AstroVLMError(f"{config_file} gives the LoRA rank r={rank!r}, which is not a positive whole "
                            f"number; {ADAPTER_REMAKE}.")
    pattern = files.config.get("rank_pattern") or {}
    allowed = {rank} | {v for v in pattern.values() if isinstance(v, int)}
    wrong = {r: name for r, name in files.weight_ranks().items() if r not in allowed}
    if wrong:
        found, example = next(iter(wrong.items()))
        raise AstroVLMError(
            f"The adapter {files.path} is inconsistent: {config_file.name} says LoRA rank r={rank}, but its "
            f"adapter_model.safetensors holds rank-{found} weights (e.g. {example}). The two files come from "
            f"different runs; put the matching adapter_config.json back, or {ADAPTER_REMAKE}.")


def check_adapter_folder(path) -> AdapterFiles:
    """Check a LoRA adapter folder before peft reads it.

    It must hold an ``adapter_config.json`` that is a JSON object naming its ``peft_type`` and a
    complete ``adapter_model.safetensors`` (pickled weights are refused); for LoRA, the rank in the
    configuration must be the rank of the weights.

    Raises
    ------
    AstroVLMError
        Naming the file at fault and how to repair the adapter.
    """
    path = Path(path).expanduser()
    if path.is_file():
        raise AstroVLMError(f"The adapter {path} is a file; pass the folder that holds it ({path.parent}).")
    if not path.is_dir():
        raise AstroVLMError(f"No adapter folder {path}; pass the folder written by astrovlm finetune.")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise AstroVLMError(f"{path} is not a LoRA adapter directory (no adapter_config.json).")
    config = _read_json(config_file, ADAPTER_REMAKE)
    if not isinstance(config, dict) or not config.get("peft_type"):
        raise AstroVLMError(f"{config_file} is not a peft adapter configuration (no 'peft_type'); "
                            f"{ADAPTER_REMAKE}.")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise AstroVLMError(f"{path} has no adapter_model.safetensors. Only safetensors adapters are loaded "
                            "(pickled .bin files can run code); re-save it with save_pretrained("
                            "safe_serialization=True).")
    files = AdapterFiles(path, config, safetensors_shapes(weights, ADAPTER_REMAKE))
    if str(config["peft_type"]).upper() == "LORA":
        _check_lora_rank(files)
    return files
