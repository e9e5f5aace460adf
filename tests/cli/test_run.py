"""The astrovlm command line on real FITS files and a tiny real model saved to disk."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from glue_astrovlm.cli import main

MIRABEST_FR2 = "first_mirabest/200_151.463+024.320_0.1843_0013.65.fits"


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_presets_lists_every_shipped_label_set(capsys):
    status, out, _ = run(capsys, "presets")
    assert status == 0
    for name in ("radio-morphology", "radio-source-type", "galaxy10-decals", "galaxy-zoo", "lsb-artefact"):
        assert name in out
    assert "FRII" in out
    assert "source: radio-llava extended-source detection task" in out  # where each paper preset comes from
    assert "data: radio continuum images" in out and "data: optical colour composites" in out
    assert "astrollava-caption" in out and "astrovlm describe --preset astrollava-caption" in out


def test_describe_preset_sends_the_papers_instruction(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    import hashlib

    from glue_astrovlm.labelsets import load_describe_preset

    status, _, err = run(capsys, "describe", fits_dir / "HorseHead.fits", "--preset", "astrollava-caption",
                         "--pixel", "400", "400", "--size", "64", "--max-new-tokens", "2", "--model",
                         tiny_smolvlm_dir, "--dtype", "float32", "--out", tmp_path / "cap")
    assert status == 0, err
    row = Table.read(tmp_path / "cap.ecsv")[0]
    prompt = load_describe_preset("astrollava-caption").prompt
    assert row["task"] == "describe" and row["prompt_hash"] == hashlib.sha256(prompt.encode()).hexdigest()[:12]


def test_classify_at_a_sky_position_writes_table_and_regions(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    out_prefix = tmp_path / "fr"
    status, out, err = run(capsys, "classify", fits_dir / MIRABEST_FR2, "--preset", "radio-morphology",
                           "--position", "151.463", "24.320", "--size", "2arcmin", "--model", tiny_smolvlm_dir,
                           "--dtype", "float32", "--out", out_prefix)
    assert status == 0, err
    table = Table.read(tmp_path / "fr.ecsv")
    assert len(table) == 1
    row = table[0]
    probs = [row[f"p_{label}"] for label in ("FRI", "FRII", "Compact", "Bent")]
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert row["label"] in ("FRI", "FRII", "Compact", "Bent") and row["confidence"] == pytest.approx(max(probs))
    assert row["ra"] == pytest.approx(151.463, abs=0.01) and row["dec"] == pytest.approx(24.320, abs=0.01)
    assert row["stretch"] == "zscale(contrast=0.25)+linear" and row["image_tokens"] == 64
    assert row["model"] == str(tiny_smolvlm_dir)
    region_text = (tmp_path / "fr.reg").read_text()
    assert f"text={{{row['label']} {row['confidence']:.2f}}}" in region_text
    assert "color=" in region_text
    assert any(frame in region_text.lower() for frame in ("icrs", "fk5", "j2000"))  # written on the sky
    assert row["label"] in out

    # A second run refuses to overwrite, before loading any model, and keeps the first results.
    status, _, err = run(capsys, "classify", fits_dir / MIRABEST_FR2, "--labels", "a", "b", "--model",
                         tmp_path / "no-model-needed", "--out", out_prefix)
    assert status == 2 and "already exists" in err and "--overwrite" in err
    assert len(Table.read(tmp_path / "fr.ecsv")) == 1


def test_sky_position_on_an_image_without_wcs_is_a_clear_error(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    from astropy.io import fits

    # M67's plate keeps a DSS plate solution that astropy reads as a WCS; its pixels alone have none.
    bare = tmp_path / "m67_pixels.fits"
    fits.PrimaryHDU(fits.getdata(fits_dir / "M6707HH.fits")).writeto(bare)
    status, _, err = run(capsys, "classify", bare, "--labels", "star", "galaxy",
                         "--position", "132.8", "11.8", "--model", tiny_smolvlm_dir)
    assert status == 2
    assert "WCS" in err and "Traceback" not in err


def test_pixel_position_on_an_image_without_wcs_works(capsys, fits_dir, tiny_smolvlm_dir):
    status, out, err = run(capsys, "classify", fits_dir / "M6707HH.fits", "--labels", "star", "galaxy",
                           "--pixel", "500", "500", "--size", "64", "--model", tiny_smolvlm_dir, "--dtype", "float32")
    assert status == 0, err
    assert "star" in out or "galaxy" in out


def test_unknown_model_offline(capsys, fits_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    status, _, err = run(capsys, "describe", fits_dir / "HorseHead.fits", "--model", "nobody/no-such-vlm")
    assert status == 2 and "--model /path/to/" in err and "Traceback" not in err


def test_unreadable_file_and_missing_file(capsys, tmp_path, tiny_smolvlm_dir):
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    status, _, err = run(capsys, "describe", broken, "--model", tiny_smolvlm_dir)
    assert status == 2 and "Traceback" not in err and str(broken) in err
    status, _, err = run(capsys, "describe", tmp_path / "missing.fits", "--model", tiny_smolvlm_dir)
    assert status == 2 and "missing.fits" in err


def test_cube_needs_a_plane_and_moment0_works(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    cube = fits_dir / "l1448_13co.fits"
    status, _, err = run(capsys, "ask", cube, "Is there an outflow?", "--model", tiny_smolvlm_dir)
    assert status == 2 and "--moment0" in err
    status, out, err = run(capsys, "ask", cube, "Is there an outflow?", "--moment0", "10:40", "--max-new-tokens",
                           "3", "--model", tiny_smolvlm_dir, "--dtype", "float32", "--out", tmp_path / "cube")
    assert status == 0, err
    table = Table.read(tmp_path / "cube.ecsv")
    assert table["task"][0] == "ask" and "moment0" in table["cube"][0]


def test_detect_tags_many_sources(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    status, _, err = run(capsys, "classify", fits_dir / "HorseHead.fits", "--detect", "--nsigma", "20",
                         "--max-sources", "6", "--size", "32", "--labels", "star", "galaxy", "nebula",
                         "--model", tiny_smolvlm_dir, "--dtype", "float32", "--out", tmp_path / "tags",
                         "--region-format", "crtf")
    assert status == 0, err
    table = Table.read(tmp_path / "tags.ecsv")
    assert 2 <= len(table) <= 6
    assert np.allclose(table["p_star"] + table["p_galaxy"] + table["p_nebula"], 1.0)
    assert len(set(table["source_id"])) == len(table)
    crtf = (tmp_path / "tags.crtf").read_text()
    assert crtf.startswith("#CRTF") and crtf.count("color=") == len(table)


def test_regions_file_with_masking(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    reg = tmp_path / "two.reg"
    reg.write_text("# Region file format: DS9\nimage\ncircle(300,300,40)\nbox(500,400,60,40,0)\n")
    status, _, err = run(capsys, "classify", fits_dir / "HorseHead.fits", "--regions", reg, "--outside", "mask",
                         "--labels", "a", "b", "--model", tiny_smolvlm_dir, "--dtype", "float32",
                         "--out", tmp_path / "r")
    assert status == 0, err
    assert len(Table.read(tmp_path / "r.ecsv")) == 2


def test_console_script_is_installed():
    exe = shutil.which("astrovlm")
    if exe is None:
        pytest.skip("package not installed with its console script")
    result = subprocess.run([exe, "presets"], capture_output=True, text=True, check=True)
    assert "radio-morphology" in result.stdout


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "glue_astrovlm.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "astrovlm" in result.stdout


def test_a_normal_run_prints_only_the_projects_own_output(fits_dir, tiny_smolvlm_dir, tmp_path):
    command = [sys.executable, "-m", "glue_astrovlm.cli", "classify", str(fits_dir / "HorseHead.fits"), "--pixel",
               "300", "300", "--size", "32", "--labels", "a", "b", "--model", str(tiny_smolvlm_dir), "--dtype",
               "float32", "--out", str(tmp_path / "quiet")]
    quiet = subprocess.run(command, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert [line.split()[0] for line in quiet.stderr.splitlines()] == ["wrote", "wrote"], quiet.stderr
    assert len(quiet.stdout.splitlines()) == 1
    loud = subprocess.run(command + ["--overwrite", "-v"], capture_output=True, text=True)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr and "INFO glue_astrovlm" in loud.stderr
