"""What `astrovlm finetune` records next to an adapter or a model, and how runs read it back.

A fine-tuned adapter (``astrovlm_adapter.json``) or model (``astrovlm_model.json``) carries the label
set, the stretch and the crop it was trained with, and its base model. `classify`, `eval` and the
panels read these so that a fine-tuned model is used as it was trained. This module is a leaf: it
imports only the label-set and stretch value types, so models, evaluation and training can all use it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import AstroVLMError
from .labelsets import LabelSet
from .stretch import Stretch

__all__ = ["ADAPTER_RECORD", "MODEL_RECORD", "read_finetune_record", "recorded_label_set", "recorded_stretch",
           "recorded_crop", "adapter_base_model", "resolve_base_model", "unresolved_base_message",
           "check_label_set", "finetune_records", "EvaluationSetup", "evaluation_setup"]

log = logging.getLogger("glue_astrovlm")

#: Files written next to a fine-tuned adapter / model by `astrovlm finetune`.
ADAPTER_RECORD = "astrovlm_adapter.json"
MODEL_RECORD = "astrovlm_model.json"


def read_finetune_record(path) -> dict | None:
    """The record `astrovlm finetune` wrote next to an adapter or model (`None` if there is none)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    for name in (ADAPTER_RECORD, MODEL_RECORD):
        record = path / name
        if record.is_file():
            try:
                return json.loads(record.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise AstroVLMError(f"{record} is not valid JSON ({error}); re-run astrovlm "
                                    "finetune.") from None
    return None


def recorded_label_set(record: dict | None) -> LabelSet | None:
    """The label set a fine-tuned adapter or model was trained with."""
    if not record or not record.get("label_set"):
        return None
    data = record["label_set"]
    return LabelSet(tuple(data["labels"]), tuple(data.get("descriptions") or ()),
                    data.get("question") or LabelSet(("a", "b")).question, data.get("name", "custom"))


def recorded_stretch(record: dict | None, **overrides) -> Stretch | None:
    """The stretch a fine-tuned adapter or model was trained with; options given (not `None`) win.

    `None` when neither the record nor the options say anything: data then get the default stretch
    and rendered pictures go as they are (`glue_astrovlm.stretch.stretch_for`).
    """
    settings = dict((record or {}).get("stretch") or {})
    settings.update({name: value for name, value in overrides.items() if value is not None})
    known = ("interval", "stretch", "contrast", "percentile", "a", "rgb")
    settings = {name: value for name, value in settings.items() if name in known}
    return Stretch(**settings) if settings else None


def recorded_crop(record: dict | None, crop: float | None = None) -> float:
    """The central fraction kept in training (1: the whole image); ``crop``, when given, wins."""
    return float(crop) if crop is not None else float((record or {}).get("crop", 1.0))


def _looks_like_path(name: str) -> bool:
    """Whether a recorded base model is a filesystem path rather than a Hub id (``org/name``)."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name or \
        (len(name) > 1 and name[1] == ":")


def resolve_base_model(base: str | None, adapter_dir) -> str | None:
    """A recorded base model as something `load_model` can open from any working folder.

    `astrovlm finetune` records absolute paths or Hub ids. Older adapters may record a path relative
    to the folder they were trained in; it is looked for next to the adapter and in the folders above
    it. A name that is found nowhere comes back unchanged (a Hub id, or a path `load_model` reports).
    """
    if not base:
        return None
    path = Path(base).expanduser()
    if path.is_absolute():
        return str(path)
    here = Path(adapter_dir).expanduser().resolve()
    for folder in (here, *here.parents):
        candidate = folder / path
        if (candidate / "config.json").is_file():
            return str(candidate.resolve())
    return base


def adapter_base_model(adapter) -> str | None:
    """The base model an adapter directory was trained on (its ``adapter_config.json``), if recorded.

    ``adapter`` is a directory or ``{name: directory}`` (the first is read). A relative path is
    resolved as by `resolve_base_model`; `None` if nothing is recorded or the file is unreadable.
    """
    first, base = _recorded_base(adapter)
    return resolve_base_model(base, first) if isinstance(base, str) else None


def _recorded_base(adapter):
    """``(adapter folder, base model as recorded in its adapter_config.json)``; ``(folder, None)`` when
    nothing readable is recorded."""
    if adapter is None:
        return None, None
    first = next(iter(adapter.values())) if isinstance(adapter, dict) else adapter
    try:
        config = json.loads((Path(first).expanduser() / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return first, None
    return first, config.get("base_model_name_or_path") if isinstance(config, dict) else None


def unresolved_base_message(adapter) -> str | None:
    """What to do when an adapter records its base model as a relative path that is found nowhere."""
    first, base = _recorded_base(adapter)
    if not isinstance(base, str) or not base or Path(base).expanduser().is_absolute():
        return None
    if resolve_base_model(base, first) != base or Path(base).expanduser().is_dir():
        return None
    how = "a path relative to the folder it was trained in" if _looks_like_path(base) else \
        "a Hub id, or a path relative to the folder it was trained in"
    return (f"The adapter {first} records its base model as {base!r}, {how}; no such folder is next to the "
            f"adapter or above it, nor here. Pass the base model explicitly: --model /path/to/the/model "
            f"(load_model('/path/to/the/model', adapter=...)).")


def check_label_set(label_set: LabelSet, path, what: str = "adapter") -> None:
    """Raise if ``label_set`` differs from the one the adapter or model at ``path`` was trained with.

    A fine-tuned model answers with the labels it learned: scoring it on other labels (or on the
    same labels described differently) measures nothing useful.
    """
    trained = recorded_label_set(read_finetune_record(path))
    if trained is None:
        return
    if set(trained.labels) != set(label_set.labels):
        raise AstroVLMError(f"The label set {list(label_set.labels)} differs from the {what} {path}'s, which "
                            f"was trained on {list(trained.labels)}. Evaluate with the labels it was trained "
                            "on (leave out --labels/--preset to use them), or fine-tune a new one.")
    if trained.prompt() != label_set.prompt():
        log.warning("The labels match the %s %s but the question or descriptions differ from its training "
                    "prompt; results may not reflect its training.", what, path)


def finetune_records(places) -> list[tuple[str, str, dict]]:
    """``(path, 'adapter' or 'model', record)`` for each of ``places`` (``(path, kind)`` pairs) that is a
    folder written by `astrovlm finetune`; others (Hub ids, server URLs, plain models) are left out."""
    found = []
    for path, kind in places:
        if path is not None and Path(str(path)).expanduser().is_dir():
            record = read_finetune_record(path)
            if record:
                found.append((str(path), kind, record))
    return found


@dataclass(frozen=True)
class EvaluationSetup:
    """The label set, stretch (`None`: automatic) and crop to evaluate with, reconciled with what
    fine-tuning recorded."""

    label_set: LabelSet
    stretch: Stretch | None
    crop: float
    recorded_by: str | None = None


def evaluation_setup(records, dataset, *, labels: LabelSet | None = None, question: str | None = None,
                     stretch_options: dict | None = None, crop: float | None = None) -> EvaluationSetup:
    """How to evaluate models and adapters so that each is used as it was trained.

    Parameters
    ----------
    records : list
        `finetune_records` of the models and adapters compared.
    dataset : ImageDataset
        The labelled data (its ``label_set(given)`` gives the data's labels with ``given``'s question).
    labels : LabelSet, optional
        The labels the user asked for; by default the first recorded label set, else the data's.
    question : str, optional
        Replaces the label set's question.
    stretch_options : dict, optional
        Stretch settings given by the user (`None` values are not given); they win over the record's.
    crop : float, optional
        Central fraction given by the user; by default the record's, else 1.

    Raises
    ------
    AstroVLMError
        When the labels differ from those an adapter or model was trained on.
    """
    if labels is None:
        trained = next((recorded_label_set(r) for _, _, r in records if recorded_label_set(r)), None)
        labels = dataset.label_set(trained)
        if question:
            labels = replace(labels, question=question)
    for path, kind, _ in records:
        check_label_set(labels, path, kind)
    first = records[0] if records else (None, None, None)
    stretch = recorded_stretch(first[2], **(stretch_options or {}))
    used_crop = recorded_crop(first[2], crop)
    if first[0] is not None and crop is None:
        log.info("Using the crop (%g) and stretch (%s) recorded in %s", used_crop,
                 stretch.describe() if stretch else "automatic", first[0])
    return EvaluationSetup(labels, stretch, used_crop, first[0])
