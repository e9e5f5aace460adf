"""Results: rows, probability columns, region shapes, resume keys, and the one `export` every front end uses."""

import os
import stat

import numpy as np
import pytest
from astropy.table import Table
from regions import Regions

from glue_astrovlm import AstroVLMError
from glue_astrovlm.cutout_types import Provenance
from glue_astrovlm.results import (REGION_FORMATS, TABLE_FORMATS, Result, atomic_write, export, output_path,
                                   probability_columns, result_key, results_to_regions, results_to_table)


def _result(label="FRII", probabilities=None, source_id="0", bbox=(10, 30, 20, 40)):
    probabilities = probabilities or {"FRI": 0.2, "FRII": 0.8}
    provenance = Provenance(source="image.fits", hdu=0, bbox=bbox, center_pixel=(19.5, 29.5), source_id=source_id)
    return Result(task="classify", provenance=provenance, label=label, confidence=probabilities[label],
                  probabilities=probabilities, answer=label)


def test_labels_differing_only_in_punctuation_get_distinct_columns():
    labels = ["FR-I", "FR I", "FR_I", "🌀", "🌌", "fr-i"]
    columns = probability_columns(labels)
    assert list(columns.values()) == ["p_FR_I", "p_FR_I_2", "p_FR_I_3", "p_label4", "p_label5", "p_fr_i_4"]
    probs = dict(zip(labels, [0.5, 0.2, 0.1, 0.1, 0.05, 0.05]))
    table = results_to_table([_result("FR-I", probs)])
    for label, column in columns.items():
        assert table[column][0] == pytest.approx(probs[label])
        assert table.meta["probability_columns"][column] == label  # every column maps back to its exact label


def test_table_round_trips_through_ecsv_and_fits(tmp_path):
    results = [_result(source_id="007"), _result("FRI", source_id="8", bbox=(0, 16, 0, 16))]
    for fmt, suffix in TABLE_FORMATS.items():
        written = export(results, tmp_path / f"r-{fmt}", formats=(fmt,))
        assert [p.suffix for p in written] == [suffix]
        back = Table.read(written[0])
        assert list(back["source_id"]) == ["007", "8"]  # ids stay text
        assert [result_key(row) for row in back] == [result_key(r.provenance) for r in results]


def test_export_writes_table_and_regions_and_never_overwrites_unasked(tmp_path, caplog):
    results = [_result()]
    written = export(results, tmp_path / "out", labels=["FRI", "FRII"])
    assert [p.name for p in written] == ["out.ecsv", "out.reg"]
    assert len(Regions.read(written[1])) == 1
    with pytest.raises(AstroVLMError, match="out.ecsv and .*out.reg already exists.*overwrite"):
        export(results, tmp_path / "out")
    with caplog.at_level("WARNING", logger="glue_astrovlm"):  # CASA regions are on the sky; these have no WCS
        assert [p.suffix for p in export(results, tmp_path / "out", overwrite=True, formats=("fits", "crtf"))] \
            == [".fits"]
    assert "No region file written: CRTF region files hold sky coordinates only" in caplog.text
    # results from bare arrays have no position: the table is written, no region file
    bare = [Result(task="ask", answer="a jet")]
    assert [p.name for p in export(bare, tmp_path / "bare")] == ["bare.ecsv"]
    with pytest.raises(AstroVLMError, match="no results to export"):
        export([], tmp_path / "none")
    with pytest.raises(AstroVLMError, match="at most one table and one region format"):
        export(results, tmp_path / "two", formats=("ecsv", "fits"))


def test_output_names_come_from_one_table_of_suffixes(tmp_path):
    assert {fmt: output_path(tmp_path / "x", fmt).suffix for fmt in [*TABLE_FORMATS, *REGION_FORMATS]} == \
        {**TABLE_FORMATS, **REGION_FORMATS}
    with pytest.raises(AstroVLMError, match="output name is empty"):
        output_path("", "ecsv")
    with pytest.raises(AstroVLMError, match="Unknown output format 'csv'"):
        output_path(tmp_path / "x", "csv")


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        path = atomic_write(tmp_path / "b.txt", lambda tmp: open(tmp, "w").write("x"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_write_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AstroVLMError, match="is a file, not a folder"):
        atomic_write(tmp_path / "file" / "out.ecsv", lambda tmp: None)
    (tmp_path / "folder.ecsv").mkdir()
    with pytest.raises(AstroVLMError, match="is a folder"):
        atomic_write(tmp_path / "folder.ecsv", lambda tmp: None, overwrite=True)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(AstroVLMError, match="Could not write"):
            atomic_write(locked / "out.ecsv", lambda tmp: None)
    # a writer that fails leaves no temporary file behind
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "c.txt", lambda tmp: 1 / 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.ecsv"] + (["locked"] if os.geteuid() else [])


def test_regions_carry_class_colour_and_confidence():
    results = [_result(), _result("FRI", source_id="1", bbox=(50, 60, 50, 60))]
    shapes = results_to_regions(results, labels=["FRI", "FRII"])
    assert [s.meta["text"] for s in shapes] == ["FRII 0.80", "FRI 0.20"]
    assert shapes[0].visual["color"] != shapes[1].visual["color"]
    assert "source_id=1" in shapes[1].meta["tag"]
    np.testing.assert_allclose([shapes[1].center.x, shapes[1].center.y], [54.5, 54.5])
