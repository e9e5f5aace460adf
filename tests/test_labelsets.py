"""Label sets: the shipped presets, what users pass, and label files with mistakes in them."""

from pathlib import Path

import numpy as np
import pytest

from glue_astrovlm.errors import AstroVLMError
from glue_astrovlm.labelsets import (DEFAULT_QUESTION, LabelSet, classification_prompt, list_presets,
                                     load_preset, resolve_labels)


def test_presets_load_with_descriptions_and_questions():
    presets = {preset.name: preset for preset in list_presets()}
    assert {"radio-morphology", "spiral", "galaxy10-decals"} <= set(presets)
    for preset in presets.values():
        assert len(preset) >= 2 and len(preset.descriptions) == len(preset)
        assert preset.title and preset.question.strip() and preset.question != DEFAULT_QUESTION
        assert len({label.casefold() for label in preset}) == len(preset)
    spiral = load_preset("spiral")
    assert spiral.labels == ("spiral", "non-spiral")
    assert spiral.descriptions[0] == "spiral arms are visible"
    with pytest.raises(AstroVLMError, match=r"Unknown preset 'spirals'. Available: .*spiral"):
        load_preset("spirals")


def test_prompt_lists_options_in_one_order_whatever_the_user_typed():
    labels = LabelSet(("FRII", "Compact", "FRI"), ("edge-brightened", "", "core-brightened"))
    prompt = labels.prompt()
    assert prompt.splitlines() == [DEFAULT_QUESTION, "Options:", "- Compact", "- FRI: core-brightened",
                                   "- FRII: edge-brightened", "Answer with the name of one option only."]
    permuted = labels.permuted([2, 0, 1])
    assert permuted.labels == ("FRI", "FRII", "Compact") and permuted.prompt() == prompt
    assert permuted.prompt_hash() == labels.prompt_hash() and len(labels.prompt_hash()) == 12
    assert classification_prompt("Q?", ["b", "A"], ["", ""]).splitlines()[2:4] == ["- A", "- b"]


def test_resolve_labels_accepts_what_users_pass(tmp_path):
    assert resolve_labels(["spiral", " elliptical "]).labels == ("spiral", "elliptical")
    mapping = resolve_labels({"FRI": "core-brightened", "FRII": None})
    assert mapping.descriptions == ("core-brightened", "")
    assert resolve_labels(preset="spiral", question="Spiral arms?").question == "Spiral arms?"
    given = LabelSet(("a", "b"))
    assert resolve_labels(given) is given
    assert resolve_labels(np.array(["x", "y"])).labels == ("x", "y")
    assert resolve_labels([0, 1]).labels == ("0", "1")  # class ids from a table column
    with pytest.raises(AstroVLMError, match="not both, not neither"):
        resolve_labels(["a", "b"], preset="spiral")
    with pytest.raises(AstroVLMError, match="not both, not neither"):
        resolve_labels()
    with pytest.raises(AstroVLMError, match=r"a list of at least two names.* got 5"):
        resolve_labels(5)
    with pytest.raises(AstroVLMError, match=r"label file \(\.toml, \.yaml, \.yml\), got 'labels.json'"):
        resolve_labels("labels.json")
    with pytest.raises(AstroVLMError, match="at least two labels"):
        resolve_labels(["only"])
    with pytest.raises(AstroVLMError, match="question must be non-empty text"):
        resolve_labels(["a", "b"], question=5)


@pytest.mark.parametrize("labels, message", [
    (["FRI", "FRII", "FRI"], r"Labels must be unique; repeated: FRI\. Remove or rename"),
    (["Spiral", "spiral"], r"Labels 'Spiral' and 'spiral' differ only in case; .*Rename or remove one"),
    (["a", ""], "must not be empty"),
    (["a", "b\nc"], r"Label 'b\\nc' spans several lines"),
    (["a", None], r"Label None is empty \(null\), not text"),
    (["a", 2.5], r"Label 2\.5 is a number, not text"),
    (["a", True], r"Label True is a boolean"),
])
def test_label_rules(labels, message):
    with pytest.raises(AstroVLMError, match=message):
        LabelSet(tuple(labels))


def test_a_toml_and_a_yaml_file_read_alike(tmp_path):
    toml = tmp_path / "morph.toml"
    toml.write_text('name = "morph"\nquestion = "Which?"\n[[labels]]\nname = "FRI"\ndescription = "core"\n'
                    '[[labels]]\nname = "FRII"\n', encoding="utf-8")
    yaml = tmp_path / "morph.yaml"
    yaml.write_text("name: morph\nquestion: Which?\nlabels:\n  - name: FRI\n    description: core\n"
                    "  - name: FRII\n", encoding="utf-8")
    for path in (toml, yaml):
        labels = resolve_labels(path)
        assert (labels.name, labels.question, labels.labels, labels.descriptions) == \
            ("morph", "Which?", ("FRI", "FRII"), ("core", ""))
    plain = tmp_path / "plain.yml"
    plain.write_text("labels: [spiral, elliptical]\n", encoding="utf-8")
    assert resolve_labels(str(plain)).labels == ("spiral", "elliptical")
    assert resolve_labels(plain).name == "plain"
    table = tmp_path / "table.toml"
    table.write_text('[labels]\nFRI = "core-brightened"\nFRII = "edge-brightened"\n', encoding="utf-8")
    assert resolve_labels(table).descriptions == ("core-brightened", "edge-brightened")


BAD_FILES = [
    ("no-name.toml", '[[labels]]\nname = "FRI"\n[[labels]]\ndescription = "edge-brightened"\n',
     r"label entry 2 has no `name`; give each entry name = \"...\""),
    ("number.toml", "labels = 5\n", r"`labels` must be a list of names or of .* got an integer \(5\)"),
    ("text.toml", 'labels = "FRI FRII"\n', r"`labels` must be a list .* got a str"),
    ("empty.toml", "labels = []\n", r"`labels` is empty; list at least two labels"),
    ("one.yaml", "labels: [FRI]\n", r"A label set needs at least two labels, got \['FRI'\]"),
    ("twice.toml", 'labels = ["FRI", "FRII", "FRI"]\n', r"Labels must be unique; repeated: FRI"),
    ("case.yaml", "labels:\n  - name: Spiral\n  - name: spiral\n",
     r"Labels 'Spiral' and 'spiral' differ only in case"),
    ("ints.toml", "labels = [1, 2]\n",
     r"label 1 \(entry 1\) is an integer, not text; put it in quotes: \"1\""),
    ("yes.yaml", "labels: [yes, no]\n", r"label True \(entry 1\) is a boolean \(YAML reads yes/no"),
    ("float.yaml", "labels:\n  - name: 1.5\n  - name: b\n", r"label 1\.5 \(entry 1\) is a number"),
    ("desc.toml", '[[labels]]\nname = "a"\ndescription = 3\n[[labels]]\nname = "b"\n',
     r"the description of label 'a' \(entry 1\) is an integer, not text"),
    ("typo.toml", '[[labels]]\nname = "a"\ndescripton = "x"\n[[labels]]\nname = "b"\n',
     r"label entry 1 has unknown key\(s\) 'descripton'"),
    ("nolabels.toml", 'name = "x"\nclasses = ["a", "b"]\n',
     r"needs a `labels` list.*Its keys are name, classes"),
    ("list.yaml", "- a\n- b\n", r"expected a table with a `labels` list .* got a list"),
    ("blank.yaml", "", r"expected a table with a `labels` list .* got empty \(null\)"),
    ("question.toml", 'question = 7\nlabels = ["a", "b"]\n', r"question must be non-empty text, got 7"),
    ("syntax.toml", 'labels = ["a", "b"\nname = "x"\n',
     r"Could not parse label file .*syntax.toml: TOML syntax error, .*line 2.*Fix that line"),
    ("syntax.yaml", "labels:\n  - a\n  - b: [\n",
     r"Could not parse label file .*syntax.yaml: YAML syntax error, .* at line \d+, column \d+\. "
     r"Fix that line"),
]


@pytest.mark.parametrize("name, text, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_a_label_file_with_a_mistake_names_the_file_and_the_fix(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AstroVLMError, match=message) as error:
        resolve_labels(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_and_unreadable_label_files(tmp_path):
    with pytest.raises(AstroVLMError, match="does not exist"):
        resolve_labels(tmp_path / "missing.toml")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('labels = ["Été", "Hiver"]\n'.encode("latin-1"))
    with pytest.raises(AstroVLMError, match=r"Could not read label file .*latin1.toml .*save it as UTF-8"):
        resolve_labels(latin1)
    assert Path(latin1).exists()


def test_a_label_set_is_suggested_only_from_what_the_data_say(fits_dir, shared_data):
    """Jy/beam suggests the radio presets, a colour picture the optical ones, anything else nothing
    (the Horsehead Nebula must not be classified as a spiral because galaxy-zoo came first)."""
    from glue_astrovlm import open_image
    from glue_astrovlm.labelsets import CUSTOM, SUGGESTED, label_set_for, menu_choices, suggest_preset

    radio = open_image(next((fits_dir / "first_mirabest").glob("*.fits")))
    suggested = suggest_preset(radio)
    assert suggested.name == "radio-morphology" and suggested.data == "radio"
    assert suggested.describe() == f"radio-morphology (suggested because the data are in {radio.unit})"
    colour = open_image(sorted((shared_data / "gz2_spiral" / "spirals").glob("*.jpg"))[0])
    assert suggest_preset(colour).data == "optical colour"
    horsehead = open_image(fits_dir / "HorseHead.fits")
    assert suggest_preset(horsehead) is None
    with pytest.raises(AstroVLMError, match="Nothing in .*HorseHead.fits says which label set fits"):
        label_set_for(SUGGESTED, source=horsehead)
    assert label_set_for("spiral").name == "spiral" and label_set_for(CUSTOM, "star, galaxy").labels == ("star", "galaxy")
    assert menu_choices()[0] == SUGGESTED and menu_choices()[-1] == CUSTOM


def test_paper_presets_name_their_source_and_data():
    """Each preset taken from a paper says which (with its citation) and what data it expects."""
    from glue_astrovlm.labelsets import list_describe_presets, load_describe_preset

    for name, cited in [("radio-llava-morphology", "arXiv:2503.23859"), ("radio-llava-extended", "arXiv:2503.23859"),
                        ("radio-llava-artefact", "arXiv:2503.23859"), ("galaxy10-decals", "arXiv:2406.17057"),
                        ("lsb-artefact", "arXiv:2406.17057")]:
        preset = load_preset(name)
        assert cited in preset.source and preset.data
    galaxy10 = load_preset("galaxy10-decals")
    assert len(galaxy10) == 10 and all(galaxy10.descriptions)
    for description in galaxy10.descriptions:  # the class descriptions go into the prompt
        assert description in galaxy10.prompt()
    caption = load_describe_preset("astrollava-caption")
    assert caption.task == "describe" and "arXiv:2504.08583" in caption.source and caption.prompt
    assert [p.name for p in list_describe_presets()] == ["astrollava-caption"]
    with pytest.raises(AstroVLMError, match="astrollava-caption"):
        load_describe_preset("astrollava")
