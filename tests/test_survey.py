"""Survey runs on the local engine (issue 15): catalogue reading, the output folder, failed rows,
resuming without recomputing, and the command line, on real FIRST FITS with the tiny SmolVLM."""

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from glue_astrovlm.errors import AstroVLMError

from .survey_helpers import BAD_ROWS, LABELS, make_survey

pytest.importorskip("pyarrow")

SIZE = 32


@pytest.fixture(scope="module")
def survey(tmp_path_factory, fits_dir):
    return make_survey(tmp_path_factory.mktemp("survey"), fits_dir)


@pytest.fixture(scope="module")
def full_run(survey, tiny_smolvlm, tmp_path_factory):
    from glue_astrovlm.survey import tag_catalog

    catalog, _ = survey
    out = tmp_path_factory.mktemp("full") / "tags"
    return tag_catalog(
        catalog,
        out,
        model=tiny_smolvlm,
        labels=LABELS,
        size=SIZE,
        block_rows=8,
        shard_rows=16,
        progress=False,
    )


def test_read_survey_resolves_files_positions_and_formats(survey, tmp_path, fits_dir):
    from glue_astrovlm.survey import read_survey, work_blocks

    catalog, good = survey
    read = read_survey(catalog)
    assert len(read) == good + len(BAD_ROWS) and read.kind == "sky"
    assert read.files[read.ids.index("img3-00")] == str(
        catalog.parent / "images" / read.files[-1].split("/")[-1]
    )
    blocks = work_blocks(read, block_rows=5)
    assert all(len({read.files[r] for r in b["rows"]}) == 1 and len(b["rows"]) <= 5 for b in blocks)
    assert sorted(r for b in blocks for r in b["rows"]) == list(range(len(read)))
    assert sum(len(b["rows"]) for b in work_blocks(read, skip={0, 1, 2})) == len(read) - 3
    ecsv, _ = make_survey(tmp_path / "ecsv", fits_dir, fmt="ecsv")
    assert read_survey(ecsv).files[:3] == read.files[:3]


def test_a_catalogue_without_a_file_column_says_what_to_add(tmp_path):
    from astropy.table import Table

    from glue_astrovlm.survey import read_survey

    Table({"ra": [1.0], "dec": [2.0]}).write(tmp_path / "c.ecsv")
    with pytest.raises(AstroVLMError, match="no file column"):
        read_survey(tmp_path / "c.ecsv")


def test_local_run_tags_every_good_row_once_and_records_bad_ones(full_run, survey):
    from glue_astrovlm.catalogs import read_table

    _, good = survey
    assert full_run.complete and (full_run.done, full_run.failed, full_run.skipped) == (
        good,
        len(BAD_ROWS),
        0,
    )
    table = full_run.table()
    assert len(table) == good and len(set(table["row"])) == good
    assert set(table["label"]) <= set(LABELS)
    assert np.allclose(table["p_FRI"] + table["p_FRII"], 1.0)
    failed = read_table(full_run.failed_path)
    reasons = {str(row["source_id"]): str(row["error"]).lower() for row in failed}
    assert set(reasons) == set(BAD_ROWS)
    for name, word in BAD_ROWS.items():
        assert word in reasons[name], (name, reasons[name])
    regions = sorted(p.name for p in (full_run.out / "regions").iterdir())
    assert len(regions) == 4 and all(name.endswith(".reg") for name in regions)
    assert "summary" not in full_run.summary() and f"done {good}, failed 4, skipped 0" in full_run.summary()


def test_survey_rows_are_what_classify_gives_the_same_cutouts(full_run, tiny_smolvlm):
    from glue_astrovlm import cutouts_from_catalog, open_image

    table = full_run.table()
    first = table[table["source"] == table["source"][0]]
    image = open_image(str(first["source"][0]))
    catalog = first["source_id", "ra", "dec"]
    expected = tiny_smolvlm.classify(
        cutouts_from_catalog(image, catalog, size=SIZE, id_col="source_id"), LABELS
    )
    assert [r.label for r in expected] == list(first["label"])
    assert np.allclose([r.probabilities["FRI"] for r in expected], first["p_FRI"], atol=1e-5)
    assert list(first["bbox"]) == [",".join(map(str, r.provenance.bbox)) for r in expected]


def test_resume_after_a_stop_scores_only_the_rows_left(survey, tiny_smolvlm, full_run, tmp_path, monkeypatch):
    from glue_astrovlm.survey import tag_catalog

    catalog, good = survey
    scored = []
    stop = threading.Event()
    original = type(tiny_smolvlm)._classify

    def counting(self, images, label_set, progress, cancel):
        scored.append(len(images))
        if sum(scored) >= 20:
            stop.set()
        return original(self, images, label_set, progress, cancel)

    monkeypatch.setattr(type(tiny_smolvlm), "_classify", counting)
    out = tmp_path / "tags"
    first = tag_catalog(
        catalog,
        out,
        model=tiny_smolvlm,
        labels=LABELS,
        size=SIZE,
        block_rows=8,
        shard_rows=8,
        progress=False,
        cancel=stop,
    )
    assert not first.complete and "partial" in first.summary() and not first.table_path.exists()
    finished = json.loads((out / "manifest.json").read_text())["shards"]
    finished_good = sum(s["rows"] - s["failed"] for s in finished)
    assert 0 < finished_good < good
    with pytest.raises(AstroVLMError, match="--resume"):
        tag_catalog(catalog, out, model=tiny_smolvlm, labels=LABELS, size=SIZE, progress=False)
    scored.clear()
    second = tag_catalog(
        catalog, out, model=tiny_smolvlm, labels=LABELS, size=SIZE, block_rows=8, progress=False, resume=True
    )
    assert second.complete and sum(scored) == good - finished_good
    assert second.skipped == first.done + first.failed
    table, reference = second.table(), full_run.table()
    assert list(table["row"]) == list(reference["row"])
    assert list(table["label"]) == list(reference["label"])
    assert np.allclose(table["p_FRI"], reference["p_FRI"], atol=1e-5)
    with pytest.raises(AstroVLMError, match=r"made with different options \(labels\)"):
        tag_catalog(
            catalog, out, model=tiny_smolvlm, labels=["A", "B"], size=SIZE, progress=False, resume=True
        )


def _cli(*args, **options):
    return subprocess.Popen(
        [sys.executable, "-m", "glue_astrovlm.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_cli_sigint_writes_the_manifest_and_resume_finishes(survey, tiny_smolvlm_dir, tmp_path):
    catalog, good = survey
    out = tmp_path / "tags"
    args = [
        "classify",
        "--catalog",
        str(catalog),
        "--labels",
        *LABELS,
        "--model",
        str(tiny_smolvlm_dir),
        "--dtype",
        "float32",
        "--size",
        str(SIZE),
        "--block-rows",
        "4",
        "--shard-rows",
        "4",
        "--out",
        str(out),
    ]
    process = _cli(*args)
    deadline = time.monotonic() + 240
    while not (out / "manifest.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    assert "partial" in err and "--resume" in err
    finished = sum(s["rows"] for s in json.loads((out / "manifest.json").read_text())["shards"])
    resumed = _cli(*args, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"skipped {finished} of {good + len(BAD_ROWS)} rows" in err
    assert (out / "tags.ecsv").is_file() and (out / "tags_failed.ecsv").is_file()


def test_cli_without_file_or_catalog_says_what_to_give(capsys):
    from glue_astrovlm.cli import main

    assert main(["classify", "--labels", "a", "b"]) == 2
    assert "--catalog TABLE with a file column" in capsys.readouterr().err


def test_importing_the_package_the_survey_and_the_cli_imports_no_ray():
    code = (
        "import sys, glue_astrovlm, glue_astrovlm.survey, glue_astrovlm.cli.survey\n"
        "from glue_astrovlm.cli import build_parser; build_parser()\n"
        "assert glue_astrovlm.tag_catalog\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ask_runs_over_a_survey_catalogue(survey, tiny_smolvlm, tmp_path):
    from glue_astrovlm.catalogs import read_table
    from glue_astrovlm.survey import tag_catalog

    catalog, _ = survey
    table = read_table(catalog)[:7]  # five rows on one image, the row outside it, one more
    run = tag_catalog(table, tmp_path / "answers", model=tiny_smolvlm, task="ask", question="Is there a jet?",
                      max_new_tokens=2, size=SIZE, root=catalog.parent, progress=False)
    assert run.complete and (run.done, run.failed) == (6, 1)
    answers = run.table()
    assert set(answers["task"]) == {"ask"} and answers["answer"].dtype.kind == "U"
    assert not [c for c in answers.colnames if c.startswith("p_")]
    with pytest.raises(AstroVLMError, match="question"):
        tag_catalog(table, tmp_path / "none", model=tiny_smolvlm, task="ask", root=catalog.parent)


def test_a_size_that_is_not_positive_fails_the_row_with_its_reason(survey, tiny_smolvlm, tmp_path):
    from glue_astrovlm.catalogs import read_table
    from glue_astrovlm.survey import tag_catalog

    catalog, _ = survey
    table = read_table(catalog)[:5]
    table["size"] = [0.0, -3.0, np.inf, np.nan, 40.0]  # a blank (NaN) size gets the default
    run = tag_catalog(table, tmp_path / "sizes", model=tiny_smolvlm, labels=LABELS, size=SIZE,
                      root=catalog.parent, progress=False)
    assert run.complete and (run.done, run.failed) == (2, 3)
    failed = read_table(run.failed_path)
    assert list(failed["row"]) == [0, 1, 2]
    assert all("size must be positive" in str(e) for e in failed["error"])


def test_cli_ask_takes_the_question_of_a_survey_catalogue_as_documented(survey, tiny_smolvlm_dir, tmp_path,
                                                                         capsys):
    from glue_astrovlm.catalogs import read_table
    from glue_astrovlm.cli import main

    catalog, _ = survey
    small = tmp_path / "cat.ecsv"
    read_table(catalog)[:3].write(small)  # three rows of one image, named by absolute path
    model = ["--model", str(tiny_smolvlm_dir), "--dtype", "float32", "--size", str(SIZE),
             "--max-new-tokens", "2"]
    assert main(["ask", "--catalog", str(small), "Is there a jet?", *model, "--out", str(tmp_path / "a")]) \
        == 0
    answers = read_table(tmp_path / "a" / "a.ecsv")
    assert len(answers) == 3 and set(answers["task"]) == {"ask"}
    assert answers.meta["astrovlm_request"]["question"] == "Is there a jet?"
    one = tmp_path / "one.txt"
    one.write_text("# the question\nIs it bent?\n")
    given = ["ask", "--catalog", str(small), "--questions"]
    assert main([*given, str(one), *model, "--out", str(tmp_path / "b")]) == 0
    assert read_table(tmp_path / "b" / "b.ecsv").meta["astrovlm_request"]["question"] == "Is it bent?"
    capsys.readouterr()
    two = tmp_path / "two.txt"
    two.write_text("Is it bent?\nHow many lobes?\n")
    assert main([*given, str(two), *model, "--out", str(tmp_path / "c")]) == 2
    assert "one question of every row; 2 were given" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_resume_refuses_a_catalogue_edited_since_the_run_began(survey, tiny_smolvlm, tmp_path):
    from glue_astrovlm.catalogs import read_table
    from glue_astrovlm.survey import tag_catalog

    catalog, _ = survey
    small = tmp_path / "cat.ecsv"
    table = read_table(catalog)[:4]
    table.write(small)
    out = tmp_path / "tags"
    options = dict(model=tiny_smolvlm, labels=LABELS, size=SIZE, progress=False)
    assert tag_catalog(small, out, **options).complete
    assert tag_catalog(small, out, resume=True, **options).skipped == 4  # the same catalogue resumes
    table["ra"] = table["ra"][::-1]  # same file name and row count, other positions and ids
    table["id"] = table["id"][::-1]
    table.write(small, overwrite=True)
    with pytest.raises(AstroVLMError, match="another version of the catalogue.*--overwrite"):
        tag_catalog(small, out, resume=True, **options)
    rerun = tag_catalog(small, out, overwrite=True, **options)
    assert rerun.complete and list(rerun.table()["source_id"]) == list(table["id"])


def test_a_survey_where_every_row_fails_warns_and_the_cli_exits_2(survey, tiny_smolvlm, tiny_smolvlm_dir,
                                                                   tmp_path, capsys, caplog):
    from glue_astrovlm.catalogs import read_table
    from glue_astrovlm.cli import main
    from glue_astrovlm.survey import tag_catalog

    catalog, _ = survey
    table = read_table(catalog)[:3]
    table["file"] = ["nowhere.fits"] * 3
    table.write(tmp_path / "cat.ecsv")
    with caplog.at_level("WARNING", logger="glue_astrovlm"):
        run = tag_catalog(tmp_path / "cat.ecsv", tmp_path / "api", model=tiny_smolvlm, labels=LABELS,
                          size=SIZE, progress=False)
    assert run.complete and run.all_failed and (run.done, run.failed) == (0, 3)
    assert run.failed_path.is_file() and not run.table_path.exists()
    assert "Every row" in caplog.text and str(run.failed_path) in caplog.text
    capsys.readouterr()
    out = tmp_path / "cli"
    status = main(["classify", "--catalog", str(tmp_path / "cat.ecsv"), "--labels", *LABELS, "--model",
                   str(tiny_smolvlm_dir), "--dtype", "float32", "--size", str(SIZE), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "every row of the catalogue failed" in err and str(out / "cli_failed.ecsv") in err


def test_region_files_are_named_by_the_whole_image_name_and_name_their_image(full_run):
    from regions import Regions

    from glue_astrovlm.survey.regions import image_stem

    assert image_stem("/d/100_010.451-009.284_0.0529_0080.60.fits") == "100_010.451-009.284_0.0529_0080.60"
    assert image_stem("a.b.fits.gz") == "a.b" and image_stem("c.d.FZ") == "c.d" and image_stem("e.fit") == "e"
    sources = sorted(set(str(s) for s in full_run.table()["source"]))
    assert any("." in image_stem(s) for s in sources)  # FIRST cutouts' names hold dots
    for source in sources:
        path = full_run.out / "regions" / (image_stem(source) + ".reg")
        lines = path.read_text().splitlines()
        assert lines[1] == f"# image: {source}"
        assert len(Regions.read(path, format="ds9")) > 0


def test_a_folder_that_holds_a_finished_run_names_resume_and_overwrite(full_run, tiny_smolvlm, survey):
    from glue_astrovlm.survey import tag_catalog

    catalog, _ = survey
    with pytest.raises(AstroVLMError, match="holds a survey run .*--resume.*--overwrite") as refused:
        tag_catalog(catalog, full_run.out, model=tiny_smolvlm, labels=LABELS, size=SIZE, progress=False)
    assert "already exists" not in str(refused.value)


def test_the_cli_says_partial_once_for_an_unfinished_run(tmp_path, monkeypatch, capsys):
    import glue_astrovlm.survey
    from glue_astrovlm.cli import main
    from glue_astrovlm.survey import SurveyRun

    def stopped(catalog, out, **options):
        return SurveyRun(done=3, failed=0, skipped=0, total=9, complete=False, out=tmp_path / "t",
                         table_path=tmp_path / "t" / "t.ecsv", failed_path=tmp_path / "t" / "t_failed.ecsv")

    monkeypatch.setattr(glue_astrovlm.survey, "tag_catalog", stopped)
    assert main(["classify", "--catalog", "cat.ecsv", "--labels", *LABELS, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("partial:") == 1 and "done 3, failed 0, skipped 0 of 9 rows (partial: continue" in err
