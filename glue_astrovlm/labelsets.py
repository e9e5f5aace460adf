"""Label sets: the classes a model chooses between, each with a one-line description for the prompt.

Presets ship as TOML files in ``glue_astrovlm/presets``; users pass their own labels on the command
line or as a TOML/YAML file of the same shape::

    name = "radio-morphology"
    question = "What is the morphology of the radio source at the centre of this image?"
    [[labels]]
    name = "FRI"
    description = "Fanaroff-Riley type I: jets brightest near the core, fading outwards"
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

from .errors import AstroVLMError

__all__ = ["LabelSet", "list_presets", "load_preset", "resolve_labels", "classification_prompt"]

DEFAULT_QUESTION = "Which of these classes best describes the object at the centre of this image?"


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of class labels with descriptions.

    Parameters
    ----------
    labels : tuple of str
        Class names, as the model must answer them (e.g. ``'FRII'``).
    descriptions : tuple of str
        One line per label that goes into the prompt ('' for none).
    question : str
        The question asked with the image.
    name : str
        Preset name, or ``'custom'``.
    title : str
        Human-readable title for listings.
    """

    labels: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    question: str = DEFAULT_QUESTION
    name: str = "custom"
    title: str = ""

    def __post_init__(self):
        labels = tuple(str(label).strip() for label in self.labels)
        if len(labels) < 2:
            raise AstroVLMError(f"A label set needs at least two labels, got {list(labels)!r}. "
                                "Pass --labels A B [...] or --preset NAME (see `astrovlm presets`).")
        if any(not label for label in labels):
            raise AstroVLMError("Labels must not be empty strings.")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise AstroVLMError(f"Labels must be unique; repeated: {', '.join(duplicates)}.")
        descriptions = tuple(self.descriptions) or ("",) * len(labels)
        if len(descriptions) != len(labels):
            raise AstroVLMError(f"{len(labels)} labels but {len(descriptions)} descriptions.")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "descriptions", tuple(str(d).strip() for d in descriptions))

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter(self.labels)

    def prompt(self) -> str:
        """The text sent with each image: the question, the options with descriptions, the answer format."""
        return classification_prompt(self.question, self.labels, self.descriptions)

    def prompt_hash(self) -> str:
        """Short SHA-256 of the prompt, stored with every result so that runs can be compared."""
        return hashlib.sha256(self.prompt().encode()).hexdigest()[:12]

    def permuted(self, order: Iterable[int]) -> "LabelSet":
        """The same labels in another order (used to check that scores do not depend on order)."""
        order = list(order)
        return LabelSet(tuple(self.labels[i] for i in order), tuple(self.descriptions[i] for i in order),
                        self.question, self.name, self.title)

    @classmethod
    def from_mapping(cls, data: Mapping, name: str = "custom") -> "LabelSet":
        """Build from the TOML/YAML structure shown in the module docstring."""
        try:
            entries = data["labels"]
        except (KeyError, TypeError):
            raise AstroVLMError("A label file needs a `labels` list: [[labels]] name = ... description = ...")
        labels, descriptions = [], []
        for entry in entries:
            if isinstance(entry, str):
                labels.append(entry)
                descriptions.append("")
            else:
                labels.append(entry["name"])
                descriptions.append(entry.get("description", ""))
        return cls(tuple(labels), tuple(descriptions), data.get("question", DEFAULT_QUESTION),
                   data.get("name", name), data.get("title", ""))

    @classmethod
    def from_file(cls, path: str | Path) -> "LabelSet":
        """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) label file."""
        path = Path(path)
        if not path.is_file():
            raise AstroVLMError(f"Label file {path} does not exist.")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in {".yaml", ".yml"}:
                import yaml

                data = yaml.safe_load(text)
            else:
                data = tomllib.loads(text)
        except Exception as error:  # parse errors of either format
            raise AstroVLMError(f"Could not parse label file {path}: {error}") from error
        return cls.from_mapping(data, name=path.stem)


def classification_prompt(question: str, labels: Iterable[str], descriptions: Iterable[str]) -> str:
    """The classification prompt shared by every backend, so that results are comparable.

    Options are listed in a canonical (case-insensitive alphabetical) order, so the prompt, and with it
    every probability, does not depend on the order in which a user typed the labels: permuting the
    labels only permutes the probabilities.
    """
    lines = [question.strip(), "Options:"]
    for label, description in sorted(zip(labels, descriptions), key=lambda pair: (pair[0].casefold(), pair[0])):
        lines.append(f"- {label}: {description}" if description else f"- {label}")
    lines.append("Answer with the name of one option only.")
    return "\n".join(lines)


def _preset_files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files("glue_astrovlm") / "presets"
    return {entry.name[:-5]: entry for entry in folder.iterdir() if entry.name.endswith(".toml")}


def list_presets() -> list[LabelSet]:
    """All label-set presets shipped with glue-astrovlm, sorted by name."""
    return [load_preset(name) for name in sorted(_preset_files())]


def load_preset(name: str) -> LabelSet:
    """A shipped preset by name (see `list_presets`)."""
    files = _preset_files()
    if name not in files:
        raise AstroVLMError(f"Unknown preset {name!r}. Available: {', '.join(sorted(files))} "
                            "(`astrovlm presets` describes them).")
    return LabelSet.from_mapping(tomllib.loads(files[name].read_text(encoding="utf-8")), name=name)


def resolve_labels(labels=None, preset: str | None = None, question: str | None = None) -> LabelSet:
    """Turn what a user passed into a `LabelSet`.

    Parameters
    ----------
    labels : LabelSet, sequence of str, mapping of label to description, or path to a label file
    preset : str, optional
        Name of a shipped preset; exclusive with ``labels``.
    question : str, optional
        Replaces the question of the label set.
    """
    if (labels is None) == (preset is None):
        raise AstroVLMError("Give either labels or a preset (not both, not neither); "
                            "`astrovlm presets` lists the presets.")
    if preset is not None:
        result = load_preset(preset)
    elif isinstance(labels, LabelSet):
        result = labels
    elif isinstance(labels, (str, Path)) and Path(labels).suffix.lower() in {".toml", ".yaml", ".yml"}:
        result = LabelSet.from_file(labels)
    elif isinstance(labels, str):
        raise AstroVLMError(f"Labels must be a list of at least two names or a label file, got {labels!r}.")
    elif isinstance(labels, Mapping):
        result = LabelSet(tuple(labels), tuple(v or "" for v in labels.values()))
    else:
        result = LabelSet(tuple(labels))
    if question:
        result = LabelSet(result.labels, result.descriptions, question, result.name, result.title)
    return result
