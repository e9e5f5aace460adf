"""`finetune` checks its inputs before the model loads: every image, every setting, the device.

The model given to these runs is a folder that does not exist: a run that got as far as loading the
model would fail with "does not exist", so each message proves that the check came first.
"""

import ast
import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from PIL import Image

from glue_astrovlm import AstroVLMError
from glue_astrovlm.cli import main
from glue_astrovlm.datasets import check_images, load_dataset
from glue_astrovlm.training import FinetuneConfig, finetune

NO_MODEL = "/nonexistent/model-folder"


@pytest.fixture()
def bad_folder(first_small, tmp_path):
    """The four real FIRST images plus a truncated PNG, a blank PNG and a JPEG that is not one."""
    root = Path(shutil.copytree(first_small, tmp_path / "data"))
    good = next((root / "FRII").glob("*.png"))
    Image.open(good).convert("L").resize((200, 200)).save(root / "FRII" / "whole.png")
    data = (root / "FRII" / "whole.png").read_bytes()
    (root / "FRII" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "FRII" / "whole.png").unlink()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "FRI" / "blank.png")
    (root / "Bent" / "junk.jpg").write_bytes(b"<html>404</html>")
    return root


def test_every_bad_image_is_reported_before_the_model_loads(bad_folder, tmp_path):
    data = load_dataset(bad_folder)
    with pytest.raises(AstroVLMError) as caught:
        finetune(NO_MODEL, data, tmp_path / "out", show_progress=False)
    message = str(caught.value)
    assert f"3 of the 7 training images in {bad_folder} cannot be used" in message
    assert "FRII/truncated" in message and "FRI/blank" in message and "is blank: every pixel is 0" in message
    assert "Bent/junk" in message and "cannot identify image file" in message
    assert "does not exist" not in message and not (tmp_path / "out").exists()


def test_validation_images_are_checked_too(first_small, bad_folder, tmp_path):
    with pytest.raises(AstroVLMError, match=f"3 of the 7 validation images in {bad_folder} cannot be used"):
        finetune(NO_MODEL, load_dataset(first_small), tmp_path / "out", val=load_dataset(bad_folder),
                 show_progress=False)


def test_fits_rows_with_a_wrong_hdu_or_a_position_outside_the_image(fits_dir, tmp_path):
    image = sorted((fits_dir / "first_mirabest").glob("*.fits"))[0]
    shutil.copy(image, tmp_path / "radio.fits")
    fits.PrimaryHDU(np.full((300, 300), np.nan, np.float32)).writeto(tmp_path / "empty.fits")  # no data
    table = Table({"file": ["radio.fits", "radio.fits", "radio.fits", "empty.fits"],
                   "label": ["FRI", "FRII", "FRI", "FRII"],
                   "x": [150.0, 900.0, 150.0, 150.0], "y": [150.0, 150.0, 150.0, 150.0],
                   "hdu": ["0", "0", "3", "0"]})
    table.write(tmp_path / "rows.ecsv")
    data = load_dataset(tmp_path / "rows.ecsv")
    with pytest.raises(AstroVLMError) as caught:
        check_images(data, what="training")
    message = str(caught.value)
    assert "3 of the 4 training images" in message
    assert "radio:1" in message and "outside" in message
    assert "radio:2" in message and "has no HDU 3" in message
    assert "empty:3" in message and "NaN" in message
    assert "radio:0" not in message


def test_many_bad_images_are_counted_and_the_first_listed(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for index in range(6):
            Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / label / f"flat{index}.png")
    with pytest.raises(AstroVLMError) as caught:
        check_images(load_dataset(tmp_path), limit=10)
    message = str(caught.value)
    assert "12 of the 12 images" in message and "... and 2 more" in message
    assert message.count("is blank: every pixel is 7") == 10


@pytest.mark.parametrize("settings, expected", [
    ({"epochs": -1}, r"epochs \(--epochs\) must be positive, got -1"),
    ({"epochs": 0}, r"0 is allowed only with --max-steps"),
    ({"epochs": -1, "max_steps": 5}, r"epochs \(--epochs\) must be at least 0"),
    ({"epochs": float("nan")}, r"epochs \(--epochs\) must be positive"),
    ({"batch_size": -3}, r"batch_size \(--batch-size\) must be a whole number of at least 1, got -3"),
    ({"batch_size": 2.5}, r"batch_size \(--batch-size\) must be a whole number"),
    ({"grad_accum": 0}, r"grad_accum \(--grad-accum\) must be a whole number of at least 1"),
    ({"learning_rate": 0}, r"learning_rate \(--lr\) must be positive"),
    ({"learning_rate": float("inf")}, r"learning_rate \(--lr\) must be positive"),
    ({"lora_r": 0}, r"lora_r \(--lora-r\) must be a whole number of at least 1"),
    ({"lora_alpha": -1}, r"lora_alpha \(--lora-alpha\) must be positive"),
    ({"lora_dropout": 1.5}, r"lora_dropout \(--lora-dropout\) must be in \[0, 1\)"),
    ({"max_steps": 0}, r"max_steps \(--max-steps\) must be a whole number of at least 1, got 0"),
    ({"max_steps": -2}, r"max_steps \(--max-steps\) must be a whole number of at least 1"),
    ({"cache_gb": -1}, r"cache_gb \(--cache-gb\) must be at least 0"),
    ({"warmup_ratio": 1}, r"warmup_ratio \(--warmup-ratio\) must be in \[0, 1\)"),
    ({"warmup_ratio": -0.1}, r"warmup_ratio \(--warmup-ratio\) must be in \[0, 1\)"),
    ({"weight_decay": -0.01}, r"weight_decay \(--weight-decay\) must be at least 0"),
    ({"early_stopping": 0}, r"early_stopping \(--early-stopping\) must be a whole number of at least 1"),
    ({"max_length": 0}, r"max_length \(--max-length\) must be a whole number of at least 1"),
    ({"eval_batch_size": 0}, r"eval_batch_size \(--eval-batch-size\) must be a whole number"),
    ({"stage1_epochs": 0}, r"stage1_epochs \(--stage1-epochs\) must be positive"),
    ({"stage1_learning_rate": -1e-3}, r"stage1_learning_rate \(--stage1-lr\) must be positive"),
    ({"seed": -1}, r"seed \(--seed\) must be a whole number of at least 0"),
    ({"save_total_limit": 0}, r"save_total_limit must be a whole number of at least 1"),
    ({"target_modules": ["q_proj", "model.layers"]}, r"--target-modules takes leaf module names"),
    ({"method": "magic"}, r"Unknown method 'magic'"),
])
def test_settings_out_of_range_are_refused_with_their_flag(settings, expected):
    with pytest.raises(AstroVLMError, match=expected):
        FinetuneConfig(**settings)


def test_settings_in_range_are_kept():
    config = FinetuneConfig(epochs=0, max_steps=3, batch_size=2.0, cache_gb=0, warmup_ratio=0,
                            target_modules="v_proj", lora_alpha=8)
    assert (config.batch_size, config.max_steps, config.target_modules) == (2, 3, ("v_proj",))
    assert isinstance(config.batch_size, int) and config.to_dict()["lora_alpha"] == 8


@pytest.mark.parametrize("kwargs, expected", [
    ({"config": FinetuneConfig(scheduler="nope")}, r"Unknown scheduler 'nope' \(--scheduler\); use one of"),
    ({"device": "tpu"}, r"Unknown device 'tpu'; use one of: cpu"),
    ({"device": "gpu"}, r"Unknown device 'gpu' \(torch calls NVIDIA GPUs 'cuda'\)"),
    ({"crop": 0}, r"crop \(--crop\) must be a fraction in \(0, 1\], got 0"),
    ({"crop": 1.5}, r"crop \(--crop\) must be a fraction in \(0, 1\]"),
])
def test_scheduler_device_and_crop_are_checked_before_the_model_loads(first_small, tmp_path, kwargs,
                                                                      expected):
    with pytest.raises(AstroVLMError, match=expected):
        finetune(NO_MODEL, load_dataset(first_small), tmp_path / "out", show_progress=False, **kwargs)


def test_command_line_reports_bad_device_and_numbers(capsys, first_small, tmp_path):
    command = ["finetune", str(first_small), "--model", NO_MODEL, "--out", str(tmp_path / "x")]
    status = main([*command, "--device", "tpu"])
    err = capsys.readouterr().err
    assert status == 2 and "Unknown device 'tpu'; use one of: cpu" in err and "Traceback" not in err
    # numbers out of range are refused by the option parser, naming the option, before anything runs
    for flags, expected in ((["--batch-size", "-3"], "argument --batch-size: -3 is not a positive whole number"),
                            (["--max-steps", "0"], "argument --max-steps: 0 is not a positive whole number"),
                            (["--lr", "-1"], "argument --lr: -1 is not a positive number")):
        with pytest.raises(SystemExit) as stop:
            main([*command, *flags])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and expected in err and "Traceback" not in err


def _function_lengths(module) -> dict[str, int]:
    tree = ast.parse(inspect.getsource(module))
    return {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_training_functions_each_fit_on_a_screen():
    """Each function does one job in at most 80 lines (docstring included): check, prepare, train, save."""
    import importlib

    names = ("architecture", "config", "data", "finetune", "model_card", "output", "trainer")
    modules = [importlib.import_module(f"glue_astrovlm.training.{name}") for name in names]
    lengths = {f"{module.__name__}.{name}": n for module in modules
               for name, n in _function_lengths(module).items()}
    assert "glue_astrovlm.training.finetune._check_inputs" in lengths  # the module, not the function
    assert {name: n for name, n in lengths.items() if n > 80} == {}


def test_out_that_is_a_file_is_refused_before_the_model_loads(first_small, tmp_path):
    (tmp_path / "taken").write_text("notes")
    with pytest.raises(AstroVLMError, match=r"--out .*taken is a file; give a folder"):
        finetune(NO_MODEL, load_dataset(first_small), tmp_path / "taken", show_progress=False)


def _checkpoint(folder, step):
    """A checkpoint folder as the Trainer writes it: weights, optimizer and scheduler state, trainer state."""
    import json

    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"lora_A.weight": torch.zeros(2, 8)}, path / "adapter_model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.zeros(2, 8)}}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


@pytest.mark.parametrize("damage, expected", [
    ("adapter_model.safetensors", r"checkpoint-2/adapter_model\.safetensors is truncated"),
    ("optimizer.pt", r"checkpoint-2/optimizer\.pt is not a complete PyTorch file"),
    ("trainer_state.json", r"checkpoint-2/trainer_state\.json is missing or damaged"),
])
def test_resume_from_a_half_written_checkpoint_names_it(first_small, tmp_path, damage, expected):
    """A run killed while saving leaves a damaged last checkpoint: say which folder to delete."""
    out = tmp_path / "run"
    _checkpoint(out / "checkpoints", 1)
    last = _checkpoint(out / "checkpoints", 2)
    data = (last / damage).read_bytes()
    (last / damage).write_bytes(data[: len(data) // 2])
    with pytest.raises(AstroVLMError, match=expected) as caught:
        finetune(NO_MODEL, load_dataset(first_small), out, resume=True, show_progress=False)
    assert f"delete {last} to resume from the checkpoint before it" in str(caught.value)
    (last / damage).write_bytes(data)  # complete again: the checks pass and the (missing) model is next
    with pytest.raises(AstroVLMError, match="does not exist"):
        finetune(NO_MODEL, load_dataset(first_small), out, resume=True, show_progress=False)


def test_a_model_trained_in_place_is_not_trained_again(tiny_smolvlm_dir, first_small, tmp_path):
    """finetune(vlm) leaves LoRA layers in ``vlm``; a second run used to blame --target-modules."""
    from glue_astrovlm import load_model

    vlm = load_model(tiny_smolvlm_dir, dtype="float32")
    data = load_dataset(first_small)
    config = FinetuneConfig(max_steps=1, batch_size=4, lora_r=2)
    finetune(vlm, data, tmp_path / "first", config=config, show_progress=False)
    with pytest.raises(AstroVLMError, match="already carries the LoRA layers of an earlier fine-tuning run"):
        finetune(vlm, data, tmp_path / "second", config=config, show_progress=False)
    assert not (tmp_path / "second").exists()


def test_load_options_reach_load_model(tiny_smolvlm_dir, first_small, tmp_path):
    """The command line passes --tiling and --trust-remote-code this way, not by loading the model first."""
    with pytest.raises(AstroVLMError, match="Unknown tiling 'many'"):
        finetune(tiny_smolvlm_dir, load_dataset(first_small), tmp_path / "out", show_progress=False,
                 load_options={"tiling": "many"})
