"""Label sets: the classes a model chooses between, each with a one-line description for the prompt.

Presets ship as TOML files in ``glue_astrovlm/presets``; users pass their own labels on the command
line or as a TOML/YAML file of the same shape::

    name = "radio-morphology"
    question = "What is the morphology of the radio source at the centre of this image?"
    [[labels]]
    name = "FRI"
    description = "Fanaroff-Riley type I: jets brightest near the core, fading outwards"

``labels`` may also be a plain list of names (``labels = ["FRI", "FRII"]``) or a table of name to
description. Labels are one line of text each, unique even ignoring case; mistakes in a file raise an
`~glue_astrovlm.errors.AstroVLMError` that names the file and says what to change.
"""

from __future__ import annotations

import hashlib
import numbers
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import AstroVLMError

__all__ = ["SUGGESTED", "CUSTOM", "suggest_preset", "menu_choices", "label_set_for", "LabelSet", "list_presets", "load_preset", "resolve_labels",
           "DescribePreset", "list_describe_presets", "load_describe_preset",
           "classification_prompt"]

DEFAULT_QUESTION = "Which of these classes best describes the object at the centre of this image?"

#: Suffixes of label files.
LABEL_FILE_SUFFIXES = (".toml", ".yaml", ".yml")
#: Keys a ``[[labels]]`` entry may have.
_ENTRY_KEYS = ("name", "description")


def _kind(value: Any) -> str:
    """'an integer', 'a boolean', ... for messages about values that should be text."""
    if isinstance(value, bool):
        return "a boolean (YAML reads yes/no/on/off as booleans)"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number"
    if value is None:
        return "empty (null)"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _label_text(label: Any) -> str:
    """A label as text: strings as they are, whole numbers (class ids in a table) as digits."""
    if isinstance(label, str):
        return label.strip()
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return str(int(label))
    raise AstroVLMError(f"Label {label!r} is {_kind(label)}, not text; give every label as a name, e.g. "
                        f"\"{label}\".")


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
    data : str
        What data the label set is for, as `suggest_preset` reads it: ``'radio'`` (radio continuum,
        Jy/beam), ``'optical colour'`` (colour survey images), ``'optical'``; '' for any.
    why : str
        Why this label set was chosen, when it was suggested rather than asked for; results record it.
    source : str
        Where a preset's task comes from (the paper or catalogue, with its citation), so that results
        can be compared with the published table on the same labels; '' for one's own labels.
    """

    labels: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    question: str = DEFAULT_QUESTION
    name: str = "custom"
    title: str = ""
    data: str = ""
    why: str = ""
    source: str = ""

    def __post_init__(self):
        labels = tuple(_label_text(label) for label in self.labels)
        if len(labels) < 2:
            raise AstroVLMError(f"A label set needs at least two labels, got {list(labels)!r}. "
                                "Pass --labels A B [...] or --preset NAME (see `astrovlm presets`).")
        if any(not label for label in labels):
            raise AstroVLMError("Labels must not be empty strings.")
        broken = [label for label in labels if "\n" in label or "\r" in label]
        if broken:
            raise AstroVLMError(f"Label {broken[0]!r} spans several lines; a label is one line of text (put "
                                "longer text in its description).")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise AstroVLMError(f"Labels must be unique; repeated: {', '.join(duplicates)}. Remove or rename "
                                "the repeats.")
        folded: dict[str, str] = {}
        for label in labels:
            other = folded.setdefault(label.casefold(), label)
            if other != label:
                raise AstroVLMError(f"Labels {other!r} and {label!r} differ only in case; the model cannot "
                                    "tell them apart. Rename or remove one.")
        descriptions = tuple(self.descriptions) or ("",) * len(labels)
        if len(descriptions) != len(labels):
            raise AstroVLMError(f"{len(labels)} labels but {len(descriptions)} descriptions.")
        for label, description in zip(labels, descriptions):
            if description is not None and not isinstance(description, str):
                raise AstroVLMError(f"The description of label {label!r} is {_kind(description)}, not text; "
                                    "give it as one line of text in quotes.")
        if not isinstance(self.question, str) or not self.question.strip():
            raise AstroVLMError(f"The question must be non-empty text, got {self.question!r}.")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "descriptions", tuple((d or "").strip() for d in descriptions))

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter(self.labels)

    def prompt(self) -> str:
        """The text sent with each image: the question, the options with descriptions, the answer format."""
        return classification_prompt(self.question, self.labels, self.descriptions)

    def describe(self) -> str:
        """What results record as the label set: its name, and why it was chosen when it was suggested."""
        return f"{self.name} ({self.why})" if self.why else self.name

    def prompt_hash(self) -> str:
        """Short SHA-256 of the prompt, stored with every result so that runs can be compared."""
        return hashlib.sha256(self.prompt().encode()).hexdigest()[:12]

    def permuted(self, order: Iterable[int]) -> "LabelSet":
        """The same labels in another order (used to check that scores do not depend on order)."""
        order = list(order)
        return replace(self, labels=tuple(self.labels[i] for i in order),
                       descriptions=tuple(self.descriptions[i] for i in order))

    @classmethod
    def from_mapping(cls, data: Mapping, name: str = "custom", *, origin: str | None = None) -> "LabelSet":
        """Build from the TOML/YAML structure shown in the module docstring.

        Parameters
        ----------
        data : mapping
            ``labels`` (a list of names, of ``{name, description}`` tables, or a table of name to
            description) and optionally ``question``, ``name``, ``title`` and ``data``.
        name : str, optional
            Name of the label set when ``data`` has none.
        origin : str, optional
            Where ``data`` came from (a file path), named in every error message.

        Raises
        ------
        AstroVLMError
            Naming ``origin`` and the entry at fault: no ``labels``, ``labels`` of the wrong type or
            empty, an entry without ``name`` or with an unknown key, labels or descriptions that are
            not text, and the label set's own rules (two or more labels, unique even ignoring case).
        """
        where = f"Label file {origin}: " if origin else ""
        example = "[[labels]] name = \"...\" description = \"...\""
        if not isinstance(data, Mapping):
            raise AstroVLMError(f"{where}expected a table with a `labels` list ({example}), got "
                                f"{_kind(data)}.")
        if "labels" not in data:
            raise AstroVLMError(f"{where}a label file needs a `labels` list: {example}. Its keys are "
                                f"{', '.join(map(str, data)) or 'none'}.")
        entries = data["labels"]
        if isinstance(entries, Mapping):  # name = "description"
            entries = [{"name": key, "description": value} for key, value in entries.items()]
        if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
            raise AstroVLMError(f"{where}`labels` must be a list of names or of {example} tables, got "
                                f"{_kind(entries)} ({entries!r}).")
        if not entries:
            raise AstroVLMError(f"{where}`labels` is empty; list at least two labels ({example}).")
        labels, descriptions = [], []
        for number, entry in enumerate(entries, start=1):
            if isinstance(entry, Mapping):
                unknown = [key for key in entry if key not in _ENTRY_KEYS]
                if unknown:
                    raise AstroVLMError(f"{where}label entry {number} has unknown key(s) "
                                        f"{', '.join(map(repr, unknown))}; an entry has `name` and, "
                                        "optionally, `description`.")
                if "name" not in entry:
                    raise AstroVLMError(f"{where}label entry {number} has no `name`; give each entry "
                                        f"name = \"...\" (description = \"...\" is optional).")
                label, description = entry["name"], entry.get("description", "")
            else:
                label, description = entry, ""
            if not isinstance(label, str):
                raise AstroVLMError(f"{where}label {label!r} (entry {number}) is {_kind(label)}, not text; "
                                    f"put it in quotes: \"{label}\".")
            if description is not None and not isinstance(description, str):
                raise AstroVLMError(f"{where}the description of label {label!r} (entry {number}) is "
                                    f"{_kind(description)}, not text; put it in quotes.")
            labels.append(label)
            descriptions.append(description or "")
        question = data.get("question", DEFAULT_QUESTION)
        try:
            return cls(tuple(labels), tuple(descriptions), question, str(data.get("name", name)),
                       str(data.get("title", "")), str(data.get("data", "")), source=str(data.get("source", "")))
        except AstroVLMError as error:
            if not where:
                raise
            raise AstroVLMError(f"{where}{error}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "LabelSet":
        """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) label file.

        Raises
        ------
        AstroVLMError
            If the file is missing or unreadable, has a syntax error (the message gives the line), or
            breaks a rule of :meth:`from_mapping`.
        """
        path = Path(path)
        if not path.is_file():
            raise AstroVLMError(f"Label file {path} does not exist.")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise AstroVLMError(f"Could not read label file {path} ({error}); save it as UTF-8 "
                                "text.") from None
        yaml_file = path.suffix.lower() in {".yaml", ".yml"}
        try:
            if yaml_file:
                import yaml

                data = yaml.safe_load(text)
            else:
                data = tomllib.loads(text)
        except Exception as error:  # parse errors of either format
            syntax = "YAML" if yaml_file else "TOML"
            raise AstroVLMError(f"Could not parse label file {path}: {syntax} syntax error, "
                                f"{_parse_problem(error)}. Fix that line; the presets in `astrovlm "
                                "presets` show the format.") from None
        return cls.from_mapping(data, name=path.stem, origin=str(path))


def _parse_problem(error: Exception) -> str:
    """One line saying what the TOML or YAML parser found, and where."""
    mark = getattr(error, "problem_mark", None)  # PyYAML
    if mark is not None:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split()) or type(error).__name__


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


@dataclass(frozen=True)
class DescribePreset:
    """A shipped instruction for the ``describe`` task (captioning), named after the paper it follows.

    Attributes
    ----------
    name, title : str
        How to ask for it, and a line for listings.
    prompt : str
        The instruction sent with each image (``VLM.describe(images, prompt=...)``).
    data : str
        What data it is for (``'radio'``, ``'optical colour'``, ...).
    source : str
        The paper whose task it reproduces, with its citation.
    """

    name: str
    title: str
    prompt: str
    data: str = ""
    source: str = ""
    task: str = "describe"


def _describe_files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files("glue_astrovlm") / "presets" / "describe"
    return {entry.name[:-5]: entry for entry in folder.iterdir() if entry.name.endswith(".toml")}


def load_describe_preset(name: str) -> DescribePreset:
    """A shipped ``describe`` preset by name (see `list_describe_presets`)."""
    files = _describe_files()
    if name not in files:
        raise AstroVLMError(f"Unknown describe preset {name!r}. Available: {', '.join(sorted(files))} "
                            "(`astrovlm presets` describes them).")
    data = tomllib.loads(files[name].read_text(encoding="utf-8"))
    return DescribePreset(str(data.get("name", name)), str(data.get("title", "")), str(data["prompt"]),
                          str(data.get("data", "")), str(data.get("source", "")))


def list_describe_presets() -> list[DescribePreset]:
    """All ``describe`` presets shipped with glue-astrovlm, sorted by name."""
    return [load_describe_preset(name) for name in sorted(_describe_files())]


def resolve_labels(labels=None, preset: str | None = None, question: str | None = None) -> LabelSet:
    """Turn what a user passed into a `LabelSet`.

    Parameters
    ----------
    labels : LabelSet, sequence of str, mapping of label to description, or path to a label file
    preset : str, optional
        Name of a shipped preset; exclusive with ``labels``.
    question : str, optional
        Replaces the question of the label set.

    Raises
    ------
    AstroVLMError
        Both or neither of ``labels`` and ``preset``, an unknown preset, or labels that break the
        rules of `LabelSet` (the message names the label file when there is one).
    """
    if (labels is None) == (preset is None):
        raise AstroVLMError("Give either labels or a preset (not both, not neither); "
                            "`astrovlm presets` lists the presets.")
    if preset is not None:
        result = load_preset(preset)
    elif isinstance(labels, LabelSet):
        result = labels
    elif isinstance(labels, (str, Path)) and Path(labels).suffix.lower() in LABEL_FILE_SUFFIXES:
        result = LabelSet.from_file(labels)
    elif isinstance(labels, (str, Path)):
        raise AstroVLMError(f"Labels must be a list of at least two names or a label file "
                            f"({', '.join(LABEL_FILE_SUFFIXES)}), got {str(labels)!r}.")
    elif isinstance(labels, Mapping):
        result = LabelSet(tuple(labels), tuple(v or "" for v in labels.values()))
    elif isinstance(labels, Iterable):
        result = LabelSet(tuple(labels))
    else:
        raise AstroVLMError(f"Labels must be a list of at least two names, a dict of name to description or "
                            f"a label file, got {labels!r}.")
    if question:
        result = replace(result, question=question)
    return result


#: The first item of the panels' label-set menus: the preset `suggest_preset` picks for the data.
SUGGESTED = "Suggested for the data"
#: The last item of the panels' label-set menus: labels typed by the user, separated by commas.
CUSTOM = "Custom labels"


def menu_choices() -> list[str]:
    """The label-set menu of the glue and jdaviz panels: suggested, every preset, custom."""
    return [SUGGESTED] + [preset.name for preset in list_presets()] + [CUSTOM]


def label_set_for(choice: str, custom: str = "", source=None) -> LabelSet:
    """The label set a panel's menu names: `SUGGESTED` for the data in ``source``, a preset, or `CUSTOM`
    (``custom`` holds the labels, separated by commas)."""
    if choice == SUGGESTED:
        suggested = suggest_preset(source)
        if suggested is None:
            name = getattr(source, "label", "these data")
            raise AstroVLMError(f"Nothing in {name} says which label set fits (no radio units, not a colour "
                                "image): choose a label set, or type your own labels.")
        return suggested
    if choice == CUSTOM:
        return resolve_labels([part.strip() for part in custom.split(",") if part.strip()])
    return resolve_labels(preset=choice)


#: The preset suggested for each kind of data: the general one, not a paper's narrower task.
_SUGGESTED_FOR = {"radio": "radio-morphology", "optical colour": "galaxy-zoo"}


def suggest_preset(source) -> LabelSet | None:
    """A shipped label set that fits what the data say, with the reason in its ``why``; `None` when the
    data say nothing (then ask: a label set that has nothing to do with the data is worse than none).

    Radio units (Jy/beam) suggest the radio presets, a colour picture or composite the optical colour
    ones. ``source`` is an `~glue_astrovlm.ImageSource` (anything with ``unit`` and ``is_rgb``).
    """
    unit = str(getattr(source, "unit", None) or "")
    compact = unit.replace(" ", "").lower()
    if "beam" in compact or compact.startswith(("jy", "mjy", "ujy", "µjy")):
        kind, why = "radio", f"suggested because the data are in {unit}"
    elif getattr(source, "is_rgb", False):
        kind, why = "optical colour", "suggested because the image is in colour"
    else:
        return None
    preset = load_preset(_SUGGESTED_FOR[kind])
    return replace(preset, why=why)
