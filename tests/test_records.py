"""What `astrovlm finetune` records, read back by classify, eval and the panels."""

import json

import pytest

from glue_astrovlm import AstroVLMError, LabelSet
from glue_astrovlm.records import (ADAPTER_RECORD, adapter_base_model, check_label_set, evaluation_setup,
                                   finetune_records, read_finetune_record, recorded_crop, recorded_label_set,
                                   recorded_stretch)


class _Data:
    """The one method evaluation_setup asks of a dataset."""

    def label_set(self, given=None):
        return LabelSet(("FRI", "FRII"), question=given.question if given else "Which class?")


def _record(folder, labels=("FRII", "FRI"), question="Is it FR-I or FR-II?"):
    folder.mkdir()
    record = {"label_set": {"labels": list(labels), "question": question},
              "stretch": {"interval": "percentile", "percentile": 99.0, "stretch": "asinh"}, "crop": 0.5}
    (folder / ADAPTER_RECORD).write_text(json.dumps(record))
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/smolvlm"}))
    return folder


def test_a_record_brings_labels_stretch_crop_and_base(tmp_path):
    folder = _record(tmp_path / "adapter")
    record = read_finetune_record(folder)
    assert recorded_label_set(record).labels == ("FRII", "FRI")
    assert recorded_stretch(record).describe() == "percentile(99)+asinh(a=0.1)" or \
        recorded_stretch(record).stretch == "asinh"
    assert recorded_stretch(record, stretch="linear", contrast=None).stretch == "linear"  # given options win
    assert recorded_crop(record) == 0.5 and recorded_crop(record, 0.8) == 0.8 and recorded_crop(None) == 1.0
    assert recorded_stretch(None) is None  # nothing recorded or given: automatic (data stretched, pictures not)
    assert adapter_base_model(folder) == "/models/smolvlm"
    assert adapter_base_model({"first": folder}) == "/models/smolvlm"
    assert adapter_base_model(tmp_path / "nothing") is None
    assert read_finetune_record(tmp_path / "nothing") is None


def test_broken_record_and_label_mismatch_say_what_to_do(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / ADAPTER_RECORD).write_text("{not json")
    with pytest.raises(AstroVLMError, match="not valid JSON.*re-run astrovlm finetune"):
        read_finetune_record(folder)
    trained = _record(tmp_path / "trained")
    with pytest.raises(AstroVLMError, match="differs from the adapter .* trained on \\['FRII', 'FRI'\\]"):
        check_label_set(LabelSet(("spiral", "elliptical")), trained)
    check_label_set(LabelSet(("FRI", "FRII"), question="Is it FR-I or FR-II?"), trained)  # order is free


def test_evaluation_setup_uses_the_record_unless_told_otherwise(tmp_path):
    trained = _record(tmp_path / "trained", labels=("FRI", "FRII"))
    records = finetune_records([(trained, "adapter"), ("HuggingFaceTB/SmolVLM-256M-Instruct", "model"),
                                (tmp_path / "plain", "model")])
    assert [(path, kind) for path, kind, _ in records] == [(str(trained), "adapter")]
    setup = evaluation_setup(records, _Data())
    assert setup.label_set.question == "Is it FR-I or FR-II?" and setup.crop == 0.5
    assert setup.stretch.interval == "percentile" and setup.recorded_by == str(trained)
    given = evaluation_setup(records, _Data(), stretch_options={"interval": "zscale"}, crop=1.0)
    assert given.stretch.interval == "zscale" and given.crop == 1.0
    plain = evaluation_setup([], _Data(), question="What is it?")
    assert plain.label_set.question == "What is it?" and plain.stretch is None and plain.crop == 1.0
