"""`astrovlm eval` and `glue_astrovlm.evaluation` on real FIRST images with a tiny real SmolVLM."""

import json

import numpy as np
import pytest
from astropy.table import Table

from glue_astrovlm import AstroVLMError, LabelSet, load_preset
from glue_astrovlm.cli import main
from glue_astrovlm.datasets import load_dataset
from glue_astrovlm.evaluation import System, evaluate
from glue_astrovlm.records import check_label_set
from glue_astrovlm.metrics import compute_metrics

CLASSES = ("FRI", "FRII", "Compact", "Bent")


@pytest.fixture(scope="module")
def first_eval(first_subset):
    """Two real FIRST PNGs per class from the valid split."""
    return first_subset("valid", 2)


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_evaluate_counts_every_image(tiny_smolvlm, first_eval):
    data = load_dataset(first_eval)
    report = evaluate(tiny_smolvlm, data, load_preset("radio-morphology"), crop=0.5, n_boot=200)
    (system,) = report.systems
    assert system.metrics.n == 8 and len(system.results) == 8
    assert system.metrics.confusion.sum() == 8
    low, high = system.metrics.accuracy_ci
    assert 0 <= low <= system.metrics.accuracy <= high <= 1
    assert report.per_image_table()["true_label"].tolist() == data.true_labels
    # the same results as classify on the same cutouts
    direct = tiny_smolvlm.classify([item.cutout(crop=0.5) for item in data], load_preset("radio-morphology"))
    for a, b in zip(system.results, direct):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_limit_and_seed_pick_the_same_images_for_every_system(tiny_smolvlm, first_eval):
    data = load_dataset(first_eval)
    systems = [System("a", tiny_smolvlm), System("b", tiny_smolvlm)]
    report = evaluate(systems, data, limit=3, seed=5, n_boot=100)
    table = report.per_image_table()
    assert len(table) == 6
    assert list(table[table["system"] == "a"]["image_id"]) == list(table[table["system"] == "b"]["image_id"])
    assert report.to_dict()["data"]["limit"] == 3
    with pytest.raises(AstroVLMError, match="unique"):
        evaluate([System("a", tiny_smolvlm), System("a", tiny_smolvlm)], data)


def test_unknown_labels_in_data_are_an_error(tiny_smolvlm, first_eval):
    with pytest.raises(AstroVLMError, match="not in the label set"):
        evaluate(tiny_smolvlm, load_dataset(first_eval), LabelSet(("FRI", "FRII")))


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_cli_report_files_agree_with_the_per_image_table(capsys, tiny_smolvlm_dir, first_eval, tmp_path, fmt):
    out = tmp_path / "report"
    status, stdout, err = run(capsys, "eval", first_eval, "--model", tiny_smolvlm_dir, "--dtype", "float32",
                              "--preset", "radio-morphology", "--crop", "0.5", "--out", out, "--format", fmt)
    assert status == 0, err
    assert "accuracy" in stdout
    for name in (f"report.{fmt}", "metrics.json", "per_image.ecsv", f"confusion_{tiny_smolvlm_dir.name}.png",
                 f"reliability_{tiny_smolvlm_dir.name}.png"):
        assert (out / name).is_file(), name
    report = (out / f"report.{fmt}").read_text()
    assert "accuracy" in report and "confusion" in report.lower()
    metrics = json.loads((out / "metrics.json").read_text())
    table = Table.read(out / "per_image.ecsv")
    labels = metrics["label_set"]["labels"]
    for name, entry in metrics["systems"].items():
        rows = table[table["system"] == name]
        probs = np.array([[row[f"p_{label}"] for label in labels] for row in rows])
        again = compute_metrics(list(rows["true_label"]), probs, labels)
        assert entry["accuracy"] == pytest.approx(again.accuracy)
        assert entry["metrics"]["confusion"] == again.confusion.tolist()
        assert entry["macro_f1"] == pytest.approx(again.macro["f1"])
        assert entry["ece"] == pytest.approx(again.ece, abs=1e-9)
        assert entry["accuracy_ci95"] == pytest.approx(list(again.accuracy_ci))
        assert list(rows["pred_label"]) == [labels[i] for i in probs.argmax(1)]
        assert entry["metrics"]["n"] == 8
    # no overwrite without being asked
    status, _, err = run(capsys, "eval", first_eval, "--model", tiny_smolvlm_dir, "--preset", "radio-morphology",
                         "--out", out, "--format", fmt)
    assert status == 2 and "--overwrite" in err


def test_cli_errors(capsys, tiny_smolvlm_dir, first_eval, tmp_path):
    status, _, err = run(capsys, "eval", tmp_path / "missing", "--model", tiny_smolvlm_dir, "--out", tmp_path / "r")
    assert status == 2 and "No such data folder" in err
    status, _, err = run(capsys, "eval", first_eval, "--model", tiny_smolvlm_dir, "--labels", "FRI", "FRII",
                         "--out", tmp_path / "r")
    assert status == 2 and "not in the label set" in err
    status, _, err = run(capsys, "eval", first_eval, "--model", tiny_smolvlm_dir, "--compare-base",
                         "--out", tmp_path / "r")
    assert status == 2 and "--adapter" in err


def test_label_set_must_match_the_adapters(tmp_path):
    record = {"label_set": {"name": "radio-morphology", "labels": list(CLASSES), "descriptions": [],
                            "question": "What?"}}
    (tmp_path / "astrovlm_adapter.json").write_text(json.dumps(record))
    check_label_set(LabelSet(CLASSES[::-1], question="What?"), tmp_path)  # order does not matter
    with pytest.raises(AstroVLMError, match=r"differs from the adapter .*trained on \['FRI', 'FRII', 'Compact', "
                                            r"'Bent'\]"):
        check_label_set(LabelSet(("spiral", "elliptical")), tmp_path)
    check_label_set(LabelSet(("a", "b")), tmp_path / "no-record")  # nothing recorded: nothing to check


def test_cli_fits_catalogue_and_a_second_model(capsys, tiny_smolvlm_dir, fits_dir, tmp_path):
    image = sorted((fits_dir / "first_mirabest").glob("2*.fits"))[0]
    Table({"x": [149.5, 100.0, 200.0], "y": [149.5, 100.0, 200.0], "label": ["FRII", "FRI", "FRI"]}).write(
        tmp_path / "sources.ecsv")
    status, stdout, err = run(capsys, "eval", "--image", image, "--catalog", tmp_path / "sources.ecsv",
                              "--size", "48", "--model", tiny_smolvlm_dir, "--compare-model", tiny_smolvlm_dir,
                              "--dtype", "float32", "--out", tmp_path / "r", "--no-plots")
    assert status == 0, err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(metrics["systems"]) == 2 and metrics["data"]["n"] == 3
    assert metrics["label_set"]["labels"] == ["FRII", "FRI"]  # the catalogue's labels, in order of appearance
    table = Table.read(tmp_path / "r" / "per_image.ecsv")
    assert np.isfinite(table["ra"]).all()
    xmin, xmax, ymin, ymax = (int(v) for v in table["bbox"][0].split(","))
    assert xmax - xmin == 48 and ymax - ymin == 48 and xmin <= 149.5 < xmax
    a, b = metrics["systems"].values()
    assert a["accuracy"] == b["accuracy"]  # the same model twice gives the same numbers
    status, _, err = run(capsys, "eval", "--image", image, "--model", tiny_smolvlm_dir, "--out", tmp_path / "r2")
    assert status == 2 and "--catalog" in err
