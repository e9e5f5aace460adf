"""The command line under faults and bad input (issue 9): nothing finished is lost, one clear line each."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from astropy.table import Table

from glue_astrovlm.cli import main
from glue_astrovlm.cli.run import printable
from glue_astrovlm.outputs import PARTIAL_KEY

from .test_run import run

N_SOURCES = 40


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, fits_dir):
    """A catalogue of real positions on HorseHead.fits."""
    from astropy.io import fits
    from astropy.wcs import WCS

    wcs = WCS(fits.getheader(fits_dir / "HorseHead.fits"))
    rng = np.random.default_rng(5)
    sky = wcs.pixel_to_world(rng.uniform(60, 830, N_SOURCES), rng.uniform(60, 830, N_SOURCES))
    path = tmp_path_factory.mktemp("catalog") / "sources.ecsv"
    Table({"id": [f"s{i:02d}" for i in range(N_SOURCES)], "ra": sky.ra.deg, "dec": sky.dec.deg}).write(path)
    return path


def _command(fits_dir, catalog, model_dir, out, *extra):
    return [sys.executable, "-m", "glue_astrovlm.cli", "classify", str(fits_dir / "HorseHead.fits"), "--catalog",
            str(catalog), "--size", "24", "--labels", "star", "galaxy", "--model", str(model_dir), "--dtype",
            "float32", "--batch-size", "1", "--out", str(out), *extra]


def _start_and_signal(command, signum, after: int):
    """Start the command and send ``signum`` once its progress bar shows ``after`` cutouts done."""
    env = {**os.environ, "ASTROVLM_CONFIG_DIR": os.environ.get("ASTROVLM_CONFIG_DIR", "/nonexistent")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = bytearray()

    def read():
        while chunk := process.stderr.read1(4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not re.search(rb"\b(\d+)/%d\b" % N_SOURCES, bytes(seen)) or \
            max(int(n) for n in re.findall(rb"\b(\d+)/%d\b" % N_SOURCES, bytes(seen))) < after:
        assert process.poll() is None, bytes(seen).decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "the run never reported progress"
        time.sleep(0.02)
    process.send_signal(signum)
    # stdout only: communicate() would also read stderr and take chunks from the reader thread
    out = process.stdout.read()
    process.wait(timeout=240)
    reader.join(timeout=10)
    return process.returncode, out.decode(), bytes(seen).decode(errors="replace")


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_keeps_finished_results_and_resume_finishes(fits_dir, catalog, tiny_smolvlm_dir, tmp_path,
                                                                       signum, status):
    out = tmp_path / "tags"
    code, stdout, stderr = _start_and_signal(_command(fits_dir, catalog, tiny_smolvlm_dir, out), signum, after=3)
    assert code == status, stderr[-2000:]
    table = Table.read(f"{out}.ecsv")
    assert 3 <= len(table) < N_SOURCES and table.meta[PARTIAL_KEY] == f"{len(table)} of {N_SOURCES}"
    assert f"partial: {len(table)} of {N_SOURCES} cutouts done" in stderr and "--resume" in stderr
    assert len(stdout.strip().splitlines()) == len(table)  # every finished result was printed too
    assert not (tmp_path / "tags.lock").exists()
    # without --resume the partial table is not silently replaced
    again = subprocess.run(_command(fits_dir, catalog, tiny_smolvlm_dir, out), capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr
    resumed = subprocess.run(_command(fits_dir, catalog, tiny_smolvlm_dir, out, "--resume", "-v"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{N_SOURCES} cutout(s) from" in resumed.stderr
    assert f"{N_SOURCES - len(table)} still to do" in resumed.stderr  # finished rows are not recomputed
    final = Table.read(f"{out}.ecsv")
    assert sorted(final["source_id"]) == [f"s{i:02d}" for i in range(N_SOURCES)] and PARTIAL_KEY not in final.meta
    assert list(final["source_id"][: len(table)]) == list(table["source_id"])


def test_a_complete_table_survives_an_interrupted_overwrite(fits_dir, catalog, tiny_smolvlm_dir, tmp_path):
    out = tmp_path / "tags"
    done = subprocess.run(_command(fits_dir, catalog, tiny_smolvlm_dir, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    code, _, stderr = _start_and_signal(_command(fits_dir, catalog, tiny_smolvlm_dir, out, "--overwrite"),
                                        signal.SIGINT, after=2)
    assert code == 130
    assert len(Table.read(f"{out}.ecsv")) == N_SOURCES  # the complete table is untouched
    partial = Table.read(f"{out}.partial.ecsv")
    assert PARTIAL_KEY in partial.meta and "tags.partial.ecsv (marked partial)" in stderr


def test_outputs_are_refused_before_any_model_work(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    image = fits_dir / "HorseHead.fits"
    base = ["classify", image, "--labels", "a", "b", "--model", tmp_path / "no-model-here"]
    status, _, err = run(capsys, *base, "--out", "")
    assert status == 2 and "output name is empty" in err
    (tmp_path / "file").write_text("x")
    status, _, err = run(capsys, *base, "--out", tmp_path / "file" / "tags")
    assert status == 2 and "is a file, not a folder" in err
    (tmp_path / "dir.ecsv").mkdir()
    status, _, err = run(capsys, *base, "--out", tmp_path / "dir", "--overwrite")
    assert status == 2 and "is a folder" in err
    (tmp_path / "busy.lock").write_text(f'{{"pid": {os.getpid()}, "host": "{os.uname().nodename}"}}')
    status, _, err = run(capsys, *base, "--out", tmp_path / "busy", "--overwrite")
    assert status == 2 and "Another astrovlm run" in err
    status, _, err = run(capsys, *base, "--resume")
    assert status == 2 and "--resume continues the run written to --out" in err


def test_astronomers_coordinates_and_ranges_parse(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    status, out, err = run(capsys, "classify", fits_dir / "HorseHead.fits", "--position", "05:40:59", "-02:27:30",
                           "--size", "32", "--labels", "a", "b", "--model", tiny_smolvlm_dir, "--dtype", "float32")
    assert status == 0, err and out.count("\n") == 1
    status, _, err = run(capsys, "ask", fits_dir / "l1448_13co.fits", "What is it?", "--moment0", "-1:5km/s",
                         "--max-new-tokens", "2", "--model", tiny_smolvlm_dir, "--dtype", "float32")
    assert status == 0, err
    for bad in (["--batch-size", "-3"], ["--max-new-tokens", "-5"], ["--size", "0"], ["--nsigma", "-1"]):
        with pytest.raises(SystemExit) as stop:
            main(["ask", str(fits_dir / "HorseHead.fits"), "Q?", *bad])
        assert stop.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_an_adapter_with_a_server_is_refused(capsys, fits_dir, tmp_path):
    status, _, err = run(capsys, "classify", fits_dir / "HorseHead.fits", "--labels", "a", "b", "--model",
                         "http://127.0.0.1:9/v1", "--adapter", tmp_path)
    assert status == 2 and "Adapters are applied by the server" in err


def test_model_answers_cannot_rewrite_the_terminal():
    hostile = "FRII\x1b[2J\x1b[1;1Hall clear\rOK\x07\nsecond line\u202e"
    shown = printable(hostile)
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b[2J" in shown and shown.endswith("\n\tsecond line\\u202e")
