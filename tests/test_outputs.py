"""The files of one run: held before any work, written together, partial runs marked and resumable."""

import multiprocessing
import os

import pytest
from astropy.table import Table

from glue_astrovlm import AstroVLMError
from glue_astrovlm.cutout_types import Provenance
from glue_astrovlm.outputs import PARTIAL_KEY, RunOutputs
from glue_astrovlm.results import Result, result_key


def _results(n, start=0):
    out = []
    for i in range(start, start + n):
        provenance = Provenance(source="img.fits", bbox=(i, i + 8, 0, 8), center_pixel=(i + 3.5, 3.5),
                                source_id=str(i))
        out.append(Result(task="classify", provenance=provenance, label="a", confidence=0.6,
                          probabilities={"a": 0.6, "b": 0.4}, answer="a"))
    return out


def test_a_second_run_on_the_same_out_stops_before_any_work(tmp_path):
    first = RunOutputs(tmp_path / "tags").reserve()
    with pytest.raises(AstroVLMError, match=r"Another astrovlm run \(process .*\) is writing"):
        RunOutputs(tmp_path / "tags", overwrite=True).reserve()
    first.release()
    with RunOutputs(tmp_path / "tags"):  # free again
        pass


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    process = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    process.start()
    process.join()
    (tmp_path / "tags.lock").write_text(f'{{"pid": {process.pid}, "host": "{os.uname().nodename}"}}')
    with RunOutputs(tmp_path / "tags"):
        pass
    assert not (tmp_path / "tags.lock").exists()


def test_outputs_are_checked_before_any_work(tmp_path):
    with pytest.raises(AstroVLMError, match="output name is empty"):
        RunOutputs("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AstroVLMError, match="is a file, not a folder"):
        RunOutputs(tmp_path / "file" / "tags").reserve()
    (tmp_path / "dir.ecsv").mkdir()
    with pytest.raises(AstroVLMError, match="is a folder"):
        RunOutputs(tmp_path / "dir", overwrite=True).reserve()
    with RunOutputs(tmp_path / "done") as outputs:
        outputs.write(_results(2), total=2)
    with pytest.raises(AstroVLMError, match="done.ecsv, .*done.reg already exists.*--overwrite"):
        RunOutputs(tmp_path / "done").reserve()
    assert not (tmp_path / "done.lock").exists()  # a refused run leaves no lock


def test_partial_runs_are_marked_and_resumed_without_repeating_rows(tmp_path):
    with RunOutputs(tmp_path / "tags") as outputs:
        written = outputs.write(_results(3), total=5)
    table = Table.read(written[0])
    assert table.meta[PARTIAL_KEY] == "3 of 5" and len(table) == 3
    with pytest.raises(AstroVLMError, match="partial run: pass --resume"):
        RunOutputs(tmp_path / "tags").reserve()
    with RunOutputs(tmp_path / "tags", resume=True) as outputs:
        assert outputs.done_keys == {result_key(r.provenance) for r in _results(3)}
        written = outputs.write(_results(2, start=3), total=5)
    table = Table.read(written[0])
    assert PARTIAL_KEY not in table.meta and list(table["source_id"]) == ["0", "1", "2", "3", "4"]
    assert len(open(written[1]).read().strip().splitlines()) >= 5


def test_a_complete_table_is_never_replaced_by_a_partial_one(tmp_path):
    with RunOutputs(tmp_path / "tags") as outputs:
        outputs.write(_results(5), total=5)
    with RunOutputs(tmp_path / "tags", overwrite=True) as outputs:
        written = outputs.write(_results(2), total=5)  # interrupted after 2
    assert [p.name for p in written] == ["tags.partial.ecsv", "tags.partial.reg"]
    assert len(Table.read(tmp_path / "tags.ecsv")) == 5
    with RunOutputs(tmp_path / "tags", resume=True) as outputs:
        assert len(outputs.done_keys) == 2
        outputs.write(_results(3, start=2), total=5)
    assert len(Table.read(tmp_path / "tags.ecsv")) == 5 and not (tmp_path / "tags.partial.ecsv").exists()


def test_resuming_with_other_options_is_refused(tmp_path):
    asked = {"task": "classify", "labels": ["a", "b"], "model": "m"}
    with RunOutputs(tmp_path / "tags") as outputs:
        outputs.write(_results(1), total=3, described=asked)
    with RunOutputs(tmp_path / "tags", resume=True) as outputs:
        outputs.check_same_request(asked)
        with pytest.raises(AstroVLMError, match=r"made with different options \(labels"):
            outputs.check_same_request({**asked, "labels": ["c", "d"]})
