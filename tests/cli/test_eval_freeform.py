"""Export a corrected conversation, fine-tune on it, and evaluate base against adapter with a judge,
all through the command line and the engine, as the docs show it."""

import json

import numpy as np

from glue_astrovlm import Conversation, load_model, write_llava_json
from glue_astrovlm.cli import main


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_corrected_conversation_to_adapter_to_side_by_side_report(
    capsys, tiny_smolvlm_dir, tiny_llava_dir, tiny_encoder, fits_dir, first_subset, tmp_path
):
    from glue_astrovlm import cutout_at, open_image

    vlm = load_model(tiny_smolvlm_dir, dtype="float32")
    conversations = []
    for x in (200, 320):
        conversation = Conversation(cutout_at(open_image(fits_dir / "HorseHead.fits"), (x, 300), 64))
        conversation.ask(vlm, "Is there a dark nebula?", max_new_tokens=4)
        conversation.correct(1, "yes")
        conversation.ask(vlm, "Describe its edge.", max_new_tokens=4)
        conversation.correct(2, "A bright rim of ionised gas along the western edge.")
        conversations.append(conversation)
    data = write_llava_json(conversations, tmp_path / "corrected" / "train.json")

    status, out, err = run(
        capsys,
        "finetune",
        data,
        "--model",
        tiny_smolvlm_dir,
        "--out",
        tmp_path / "adapter",
        "--max-steps",
        "2",
        "--batch-size",
        "1",
        "--lora-r",
        "4",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert status == 0, err

    status, out, err = run(
        capsys,
        "eval",
        data,
        "--model",
        tiny_smolvlm_dir,
        "--dtype",
        "float32",
        "--adapter",
        tmp_path / "adapter",
        "--compare-base",
        "--judge",
        tiny_llava_dir,
        "--embedding-model",
        tiny_encoder,
        "--max-new-tokens",
        "4",
        "--out",
        tmp_path / "report",
    )
    assert status == 0, err
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"base", "adapter"} and metrics["questions"] == 4
    assert metrics["judge"]["model"] == str(tiny_llava_dir) and metrics["judge"]["same_model_as"] == []
    for system in metrics["systems"].values():
        assert system["metrics"]["exact_match"]["n"] == 2 and system["metrics"]["judge"]["n"] == 4
        assert np.isfinite(system["metrics"]["embedding"]["mean"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Largest differences: adapter against base" in report and "Reliability over 8 answers" in report
    assert out.count("questions)") == 2

    # --judge on classification data is refused with what to do
    status, _, err = run(
        capsys,
        "eval",
        first_subset("train", 1),
        "--model",
        tiny_smolvlm_dir,
        "--judge",
        tiny_llava_dir,
        "--out",
        tmp_path / "x",
    )
    assert status == 2 and "grade free-form answers; give conversation or caption data" in err
