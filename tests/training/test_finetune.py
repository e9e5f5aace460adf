"""`astrovlm finetune`: every method for two steps on real FIRST images, loadable output, resume, errors."""

import json
import os
import stat

import pytest
from safetensors.torch import load_file

from glue_astrovlm import AstroVLMError, Stretch, load_model, load_preset
from glue_astrovlm.cli import main
from glue_astrovlm.datasets import load_dataset
from glue_astrovlm.training import FinetuneConfig, finetune

LABELS = load_preset("radio-morphology")


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def file_modes(folder) -> dict[str, int]:
    """The permission bits of every file under ``folder``."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*") if p.is_file()}


def tiny_config(method, **kw):
    return FinetuneConfig(method=method, max_steps=2, batch_size=2, learning_rate=1e-2, warmup_ratio=0.0,
                          stage1_epochs=1, logging_steps=1, **kw)


def test_lora_adapter_is_loadable_and_changes_predictions(tiny_smolvlm_dir, first_small, tmp_path):
    data = load_dataset(first_small)
    out = tmp_path / "lora"
    result = finetune(tiny_smolvlm_dir, data, out, label_set=LABELS, val=data, crop=0.5,
                      config=tiny_config("lora", lora_r=4), show_progress=False)
    for name in ("adapter_config.json", "adapter_model.safetensors", "astrovlm_adapter.json", "README.md"):
        assert (out / name).is_file(), name
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in key for key in weights)
    assert all("vision_model" not in key for key in weights)  # a frozen vision tower
    record = json.loads((out / "astrovlm_adapter.json").read_text())
    assert record["label_set"]["labels"] == list(LABELS.labels)
    assert record["base_model"] == str(tiny_smolvlm_dir)
    assert record["crop"] == 0.5 and record["steps"] == 2
    assert set(record["validation"]) == {"accuracy", "macro_f1", "ece", "nll"}
    assert any("eval_accuracy" in h for h in record["history"])
    assert any("loss" in h for h in record["history"])
    card = (out / "README.md").read_text()
    assert "base_model:" in card and "FRII" in card and "learning_rate" in card
    assert result.validation == record["validation"]

    vlm = load_model(tiny_smolvlm_dir, dtype="float32", adapter={"mine": out})
    cutouts = [item.cutout(crop=0.5) for item in data]
    tuned = vlm.classify(cutouts, LABELS)
    base = vlm.classify(cutouts, LABELS, adapter=None)
    assert tuned[0].adapter == "mine" and base[0].adapter is None
    assert any(abs(a.probabilities[k] - b.probabilities[k]) > 1e-4 for a, b in zip(tuned, base) for k in LABELS)


@pytest.mark.parametrize("method", ["full", "projector"])
def test_full_and_projector_save_a_model_folder(tiny_smolvlm_dir, first_small, tmp_path, method, umask):
    data = load_dataset(first_small)
    out = tmp_path / method
    umask(0o022)
    result = finetune(tiny_smolvlm_dir, data, out, label_set=LABELS, config=tiny_config(method), show_progress=False)
    modes = file_modes(out)  # safetensors alone would write model.safetensors as 0600
    assert "model.safetensors" in modes and "checkpoints/checkpoint-2/model.safetensors" in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}
    assert not result.is_adapter
    for name in ("config.json", "model.safetensors", "astrovlm_model.json", "README.md", "tokenizer.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "astrovlm_model.json").read_text())
    assert record["modules"]["vision_frozen"] is True
    if method == "projector":
        assert record["trainable_parameters"] < record["total_parameters"] / 10
    tuned = load_model(out, dtype="float32")  # the processor, template and weights travel together
    base = load_model(tiny_smolvlm_dir, dtype="float32")
    image = data[0].cutout()
    a, b = tuned.classify(image, LABELS)[0], base.classify(image, LABELS)[0]
    assert a.probabilities != pytest.approx(b.probabilities, abs=1e-6)


def test_two_stage_saves_one_adapter_with_the_projector(tiny_smolvlm_dir, first_small, tmp_path, umask):
    data = load_dataset(first_small)
    out = tmp_path / "two"
    umask(0o027)  # the files follow the umask, whichever it is
    finetune(tiny_smolvlm_dir, data, out, label_set=LABELS, config=tiny_config("two-stage", lora_r=4),
             show_progress=False)
    modes = file_modes(out)
    assert {"adapter_model.safetensors", "adapter_config.json", "astrovlm_adapter.json", "README.md",
            "checkpoints/stage1/stage1_projector.safetensors"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o640} == {}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or temporary file left
    weights = load_file(out / "adapter_model.safetensors")
    assert any("connector" in key for key in weights) and any("lora_" in key for key in weights)
    vlm = load_model(tiny_smolvlm_dir, dtype="float32", adapter=out)
    assert vlm.classify(data[0].cutout(), LABELS)[0].adapter == "two"


def test_conversation_data_trains(tiny_smolvlm_dir, first_small, tmp_path):
    image = next((first_small / "FRII").glob("*.png"))
    chat = [{"image": f"FRII/{image.name}", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "An FR-II galaxy."}]}]
    (tmp_path / "chat.json").write_text(json.dumps(chat * 2))
    data = load_dataset(tmp_path / "chat.json", image_root=first_small)
    result = finetune(tiny_smolvlm_dir, data, tmp_path / "chat", config=tiny_config("lora"), show_progress=False)
    assert result.record["label_set"] is None and result.record["data"]["kind"] == "conversation"
    assert load_model(tiny_smolvlm_dir, dtype="float32", adapter=tmp_path / "chat").adapter == "chat"


def test_resume_continues_from_the_last_checkpoint(capsys, tiny_smolvlm_dir, first_small, tmp_path):
    out = tmp_path / "run"
    common = ["finetune", first_small, "--model", tiny_smolvlm_dir, "--out", out, "--preset", "radio-morphology",
              "--batch-size", "2", "--lora-r", "4", "--no-progress", "--device", "cpu"]
    status, stdout, err = run(capsys, *common, "--max-steps", "2")
    assert status == 0, err
    assert "2 updates" in stdout and "load_model(" in err
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    status, _, err = run(capsys, *common, "--max-steps", "2")
    assert status == 2 and "--resume" in err  # never overwrites without being asked
    other_labels = [a if a != "radio-morphology" else "FRI" for a in common]
    other_labels[other_labels.index("--preset")] = "--labels"
    status, _, err = run(capsys, *other_labels[:8], "FRII", "Compact", "Bent", "X", *other_labels[8:],
                         "--max-steps", "4", "--resume")
    assert status == 2 and "label set" in err and "differs from the checkpointed run" in err
    status, stdout, err = run(capsys, *common, "--max-steps", "4", "--resume")
    assert status == 0, err
    record = json.loads((out / "astrovlm_adapter.json").read_text())
    assert record["steps"] == 4
    assert record["resumed_from"].endswith("checkpoint-2")
    steps = [h["step"] for h in record["history"] if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # one history, steps 1-2 not run again
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    status, _, err = run(capsys, *common[:-2], "--max-steps", "2", "--resume", "--out", tmp_path / "fresh")
    assert status == 2 and "Nothing to resume" in err


def test_label_set_recorded_for_eval(capsys, tiny_smolvlm_dir, first_small, tmp_path):
    out = tmp_path / "adapter"
    status, _, err = run(capsys, "finetune", first_small, "--model", tiny_smolvlm_dir, "--out", out,
                         "--labels", "FRI", "FRII", "Compact", "Bent", "--max-steps", "1", "--batch-size", "4",
                         "--crop", "0.5", "--no-progress")
    assert status == 0, err
    # eval reads the label set and crop from the adapter ...
    status, stdout, err = run(capsys, "eval", first_small, "--model", tiny_smolvlm_dir, "--adapter", f"a={out}",
                              "--compare-base", "--out", tmp_path / "report", "--no-plots", "--dtype", "float32")
    assert status == 0, err
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"base", "a"} and metrics["crop"] == 0.5
    assert metrics["label_set"]["labels"] == ["FRI", "FRII", "Compact", "Bent"]
    # ... and refuses a different one
    status, _, err = run(capsys, "eval", first_small, "--model", tiny_smolvlm_dir, "--adapter", f"a={out}",
                         "--labels", "FRI", "FRII", "Compact", "Bent", "other", "--out", tmp_path / "r2")
    assert status == 2 and "differs from the adapter" in err


def test_bad_data_and_settings(capsys, tiny_smolvlm_dir, first_small, tmp_path):
    status, _, err = run(capsys, "finetune", first_small, "--model", tiny_smolvlm_dir, "--out", tmp_path / "x",
                         "--labels", "FRI", "FRII")
    assert status == 2 and "not in the label set" in err
    status, _, err = run(capsys, "finetune", first_small, "--model", tiny_smolvlm_dir, "--out", tmp_path / "x",
                         "--early-stopping", "2")
    assert status == 2 and "needs validation data" in err
    (tmp_path / "empty" / "FRI").mkdir(parents=True)
    status, _, err = run(capsys, "finetune", tmp_path / "empty", "--model", tiny_smolvlm_dir, "--out", tmp_path / "x")
    assert status == 2 and "hold no PNG" in err
    status, _, err = run(capsys, "finetune", first_small, "--model", tiny_smolvlm_dir, "--out", tmp_path / "x",
                         "--target-modules", "no_such_layer", "--max-steps", "1")
    assert status == 2 and "LoRA found no layers" in err
    assert not list((tmp_path / "x").glob("**/checkpoint-*"))  # a failed start leaves nothing that blocks a rerun
    status, _, err = run(capsys, "finetune", first_small, "--model", "http://127.0.0.1:9/v1", "--out", tmp_path / "y")
    assert status == 2 and "local models" in err
    with pytest.raises(AstroVLMError, match="Unknown method"):
        FinetuneConfig(method="magic")


def test_early_stopping_watches_validation_accuracy(tiny_smolvlm_dir, first_small, tmp_path):
    """With a learning rate too small to change anything, accuracy never improves: training stops early."""
    data = load_dataset(first_small)
    config = FinetuneConfig(method="lora", epochs=6, batch_size=4, learning_rate=1e-9, warmup_ratio=0.0,
                            early_stopping=1, lora_r=2, logging_steps=1)
    result = finetune(tiny_smolvlm_dir, data, tmp_path / "es", label_set=LABELS, val=data, config=config,
                      show_progress=False)
    evals = [h for h in result.history if "eval_accuracy" in h]
    assert result.record["steps"] == 2 and len(evals) == 2  # one epoch = one update; stopped after epoch 2
    assert result.record["best_checkpoint"].endswith("checkpoint-1")


@pytest.fixture(scope="module")
def cli_adapter(tiny_smolvlm_dir, first_small, tmp_path_factory):
    """A LoRA adapter made by `astrovlm finetune` on the four FIRST classes (one update)."""
    out = tmp_path_factory.mktemp("cli-adapter") / "adapter"
    argv = ["finetune", first_small, "--model", tiny_smolvlm_dir, "--out", out, "--labels", "FRI", "FRII",
            "Compact", "Bent", "--max-steps", "1", "--batch-size", "4", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    return out


def test_classify_uses_the_adapters_labels_and_warns_on_others(capsys, caplog, tiny_smolvlm_dir, first_small,
                                                               cli_adapter, fits_dir):
    import logging

    out = cli_adapter
    data = load_dataset(first_small)
    cutouts = [item.cutout() for item in list(data)[:2]]
    vlm = load_model(tiny_smolvlm_dir, dtype="float32", adapter={"mine": out})
    assert vlm.trained_record()["label_set"]["labels"] == ["FRI", "FRII", "Compact", "Bent"]
    with caplog.at_level(logging.WARNING, logger="glue_astrovlm"):
        results = vlm.classify(cutouts)  # no labels: the adapter's own
    assert set(results[0].probabilities) == {"FRI", "FRII", "Compact", "Bent"}
    assert "fine-tuned" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="glue_astrovlm"):
        vlm.classify(cutouts, ["spiral", "elliptical"])
    assert "fine-tuned to answer ['FRI', 'FRII', 'Compact', 'Bent'], not ['spiral', 'elliptical']" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="glue_astrovlm"):
        vlm.classify([item.cutout(stretch=Stretch(interval="minmax")) for item in list(data)[:1]])
    assert "scaled with as displayed" in caplog.text  # FIRST PNGs are rendered pictures: trained as they are
    with pytest.raises(AstroVLMError, match="Give either labels or a preset"):
        vlm.classify(cutouts, adapter=None)  # the base model has no labels of its own

    # the command line: the adapter brings its labels; the bare model must be told
    image = fits_dir / "HorseHead.fits"
    status, stdout, err = run(capsys, "classify", image, "--model", tiny_smolvlm_dir, "--adapter", out,
                              "--dtype", "float32")
    assert status == 0, err
    assert any(label in stdout for label in ("FRI", "FRII", "Compact", "Bent"))
    status, _, err = run(capsys, "classify", image, "--model", tiny_smolvlm_dir)
    assert status == 2 and "Give --labels or --preset" in err
    # without --model the adapter finds the base model it was trained on (no download of the default)
    status, stdout, err = run(capsys, "classify", image, "--adapter", out, "--dtype", "float32")
    assert status == 0, err
    assert load_model(adapter=out, dtype="float32").name == str(tiny_smolvlm_dir)


def test_adapter_on_another_architecture_says_which_base_it_needs(tiny_smolvlm_dir, tiny_llava_dir, cli_adapter):
    with pytest.raises(AstroVLMError, match=f"does not fit .*trained on {tiny_smolvlm_dir}; load that model"):
        load_model(tiny_llava_dir, dtype="float32", adapter=cli_adapter)


def test_base_model_is_recorded_absolute_and_loads_from_any_folder(tiny_smolvlm_dir, first_small, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tiny_smolvlm_dir.parent)
    out = tmp_path / "relative"
    finetune(tiny_smolvlm_dir.name, load_dataset(first_small), out, label_set=LABELS,
             config=FinetuneConfig(max_steps=1, batch_size=4, lora_r=2), show_progress=False)
    config = json.loads((out / "adapter_config.json").read_text())
    record = json.loads((out / "astrovlm_adapter.json").read_text())
    assert config["base_model_name_or_path"] == record["base_model"] == str(tiny_smolvlm_dir.resolve())
    assert os.path.isabs(record["base_model"])
    monkeypatch.chdir(tmp_path)  # where the relative name means nothing
    vlm = load_model(adapter=out, dtype="float32")
    assert vlm.adapters == ["relative"] and vlm.name == str(tiny_smolvlm_dir.resolve())
