"""`load_model` on damaged, incomplete or mismatched model folders, and bad devices, dtypes and batch sizes.

Each case starts from the tiny real SmolVLM folder, breaks one thing the way a copy or a download
breaks it, and checks for one `AstroVLMError` that names the file at fault and the fix.
"""

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from glue_astrovlm import AstroVLMError, load_model
from glue_astrovlm.models.devices import available_devices, pick_device


def copy_model(source, target, *, skip=(), real=()):
    """A copy of a model folder: files in ``real`` are copied, the others linked (weights stay shared)."""
    target.mkdir()
    for path in source.iterdir():
        if path.name in skip or not path.is_file():
            continue
        if path.name in real:
            shutil.copyfile(path, target / path.name)
        else:
            os.symlink(path, target / path.name)
    return target


@pytest.mark.parametrize("damage, expected", [
    ("truncate", r"model\.safetensors is truncated: .* bytes where its header describes"),
    ("empty", r"model\.safetensors is not a safetensors file \(it is empty"),
    ("garbage", r"model\.safetensors is not a safetensors file \(it does not start with a safetensors"),
    ("header", r"model\.safetensors has a damaged safetensors header"),
])
def test_damaged_weights_name_the_file_and_the_fix(tiny_smolvlm_dir, tmp_path, damage, expected):
    folder = copy_model(tiny_smolvlm_dir, tmp_path / "model", real=("model.safetensors",))
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    broken = {"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"<html>Not found</html>" * 20,
              "header": data[:8] + b"#" * 16 + data[24:]}[damage]
    weights.write_bytes(broken)
    with pytest.raises(AstroVLMError, match=expected) as caught:
        load_model(folder, dtype="float32")
    assert "download the model again" in str(caught.value) and str(folder) in str(caught.value)


def test_a_missing_shard_of_sharded_weights_is_named(tiny_smolvlm_dir, tmp_path):
    folder = copy_model(tiny_smolvlm_dir, tmp_path / "model", skip=("model.safetensors",))
    tensors = load_file(tiny_smolvlm_dir / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    save_file({n: tensors[n] for n in shards["model-00001-of-00002.safetensors"]},
              folder / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {n: shard for shard, group in shards.items() for n in group}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    missing = r"lacks 1 of the 2 weight files .*model-00002-of-00002\.safetensors"
    with pytest.raises(AstroVLMError, match=missing):
        load_model(folder, dtype="float32")


class _RunsCode:
    """Unpickling this writes a marker file: proof that a pickle was (not) read."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_weights_are_refused_unread_with_how_to_convert(tiny_smolvlm_dir, tmp_path):
    folder = copy_model(tiny_smolvlm_dir, tmp_path / "model", skip=("model.safetensors",))
    _RunsCode.marker = tmp_path / "pickle-was-read"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(AstroVLMError) as caught:
        load_model(folder, dtype="float32")
    message = str(caught.value)
    assert "holds only pickled PyTorch weights (pytorch_model.bin)" in message
    assert "use_safetensors=False).save_pretrained(" in message and f"--model {folder}-safetensors" in message
    assert not _RunsCode.marker.exists()


def test_folder_without_weights_empty_or_holding_an_adapter(tiny_smolvlm_dir, tmp_path):
    folder = copy_model(tiny_smolvlm_dir, tmp_path / "model", skip=("model.safetensors",))
    with pytest.raises(AstroVLMError, match=r"has no weights \(model\.safetensors"):
        load_model(folder, dtype="float32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AstroVLMError, match=r"The model folder .*empty is empty"):
        load_model(tmp_path / "empty")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(AstroVLMError, match="is a LoRA adapter, not a model: pass it as --adapter"):
        load_model(adapter)


def test_config_that_is_not_json(tiny_smolvlm_dir, tmp_path):
    folder = copy_model(tiny_smolvlm_dir, tmp_path / "model", skip=("config.json",))
    (folder / "config.json").write_text('{"model_type": "idefics3",')
    with pytest.raises(AstroVLMError, match=r"config\.json is not valid JSON .*download the model again"):
        load_model(folder)


@pytest.mark.parametrize("removed, named", [
    (("tokenizer.json", "vocab.json", "merges.txt"), r"it lacks a tokenizer \(tokenizer\.json"),
    (("preprocessor_config.json",), r"it lacks an image-processor configuration \(preprocessor_config"),
])
def test_missing_tokenizer_or_image_processor_is_named(tiny_smolvlm_dir, tmp_path, removed, named):
    folder = copy_model(tiny_smolvlm_dir, tmp_path / "model", skip=removed)
    with pytest.raises(AstroVLMError, match=named) as caught:
        load_model(folder, dtype="float32")
    assert "Copy every file of the model, not only its weights" in str(caught.value)


def test_weights_of_another_model_are_refused_not_left_random(tiny_smolvlm_dir, tiny_llava_dir, tmp_path):
    """transformers would fill the layers the weights lack with random values and only log a report."""
    folder = copy_model(tiny_smolvlm_dir, tmp_path / "other", skip=("model.safetensors",))
    os.symlink(tiny_llava_dir / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(AstroVLMError, match=r"do not belong to the architecture in its config\.json: \d+"):
        load_model(folder, dtype="float32")
    resized = copy_model(tiny_smolvlm_dir, tmp_path / "resized", skip=("config.json",))
    config = json.loads((tiny_smolvlm_dir / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96  # the MLP weights were saved at 128
    (resized / "config.json").write_text(json.dumps(config))
    with pytest.raises(AstroVLMError, match=r"do not fit its config\.json: some tensors have other shapes"):
        load_model(resized, dtype="float32")


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:7", "cuda:x", "CPU:1", ""])
def test_unknown_devices_list_the_valid_ones(tiny_smolvlm_dir, device):
    valid = ", ".join(available_devices())
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU number 7")
    with pytest.raises(AstroVLMError, match=f"use one of: {valid}") as caught:
        load_model(tiny_smolvlm_dir, device=device)
    assert repr(device) in str(caught.value)
    if device == "gpu":
        assert "torch calls NVIDIA GPUs 'cuda'" in str(caught.value)


def test_known_devices_are_accepted_in_any_case():
    assert pick_device("CPU") == "cpu"
    assert pick_device(" cpu ") == "cpu"
    assert pick_device("auto") == pick_device(None) and pick_device(None) in available_devices()
    if torch.cuda.is_available():
        assert pick_device("cuda:0") == "cuda:0"


@pytest.mark.parametrize("batch_size", [-3, 0, 2.5, True, "4"])
def test_batch_size_must_be_a_positive_whole_number(tiny_smolvlm_dir, batch_size):
    with pytest.raises(AstroVLMError, match=r"batch_size \(--batch-size\) must be a whole number"):
        load_model(tiny_smolvlm_dir, batch_size=batch_size)


@pytest.mark.parametrize("dtype", ["int8", "nn", "float33", torch.int64])
def test_dtype_must_be_a_floating_point_precision(tiny_smolvlm_dir, dtype):
    with pytest.raises(AstroVLMError, match="Unknown dtype .*use float32, bfloat16 or float16"):
        load_model(tiny_smolvlm_dir, dtype=dtype)


def test_float_precisions_by_name_and_type(tiny_smolvlm_dir):
    from glue_astrovlm.models.devices import pick_dtype

    assert pick_dtype("cpu", "BF16") is torch.bfloat16 and pick_dtype("cpu", torch.float16) is torch.float16
    assert load_model(tiny_smolvlm_dir, dtype="fp32", batch_size=2).batch_size == 2


def test_a_weights_file_given_for_the_model_or_the_adapter(tiny_smolvlm_dir, tmp_path):
    with pytest.raises(AstroVLMError, match=r"model\.safetensors is a file; pass the model's folder"):
        load_model(tiny_smolvlm_dir / "model.safetensors")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"x.lora_A.weight": torch.zeros(2, 4)}, adapter / "adapter_model.safetensors")
    with pytest.raises(AstroVLMError, match=f"is a file; pass the folder that holds it \\({adapter}\\)"):
        load_model(tiny_smolvlm_dir, adapter=adapter / "adapter_model.safetensors")
