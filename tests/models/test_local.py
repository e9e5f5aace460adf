"""The local transformers backend, on tiny real models built from real configurations."""

import json
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from glue_astrovlm import AstroVLMError, Cutout, LabelSet, OperationCancelled, Provenance, load_model, load_preset
from glue_astrovlm.models.base import as_model_images
from glue_astrovlm.models.scoring import score_labels_bruteforce


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(42)
    base = rng.normal(size=(64, 64))
    base[28:36, 20:44] += 8  # a bright elongated source, so the images differ visibly
    return [base, np.rot90(base).copy(), rng.normal(size=(48, 80))]


@pytest.fixture(scope="module")
def tiny_llava(tiny_llava_dir):
    return load_model(tiny_llava_dir, dtype="float32")


@pytest.mark.parametrize("which", ["tiny_smolvlm", "tiny_llava"])
def test_cached_scores_equal_bruteforce(request, which, images):
    """Probabilities from the prefix-cached path equal one full forward pass per label, to 1e-4."""
    vlm = request.getfixturevalue(which)
    labels = load_preset("radio-morphology")
    results = vlm.classify(images, labels)
    continuations = vlm.label_continuations(labels)
    for result, model_image in zip(results, as_model_images(images)):
        inputs = vlm._encode([model_image], vlm.prompt_text(labels.prompt()))
        reference = score_labels_bruteforce(vlm.model, inputs, continuations).softmax(-1)[0].numpy()
        got = np.array([result.probabilities[label] for label in labels.labels])
        np.testing.assert_allclose(got, reference, atol=1e-4)
        assert got.sum() == pytest.approx(1.0, abs=1e-9)


def test_multi_token_labels_that_share_a_prefix_are_scored_as_whole_answers(tiny_smolvlm):
    continuations = tiny_smolvlm.label_continuations(LabelSet(("FRI", "FRII")))
    assert continuations[0] != continuations[1]
    assert all(len(c) >= 2 for c in continuations)  # label tokens plus the end-of-turn token
    end_of_turn = tiny_smolvlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert all(c[-1] == end_of_turn for c in continuations)


def test_permuting_labels_permutes_probabilities(tiny_smolvlm, images):
    labels = load_preset("radio-morphology")
    order = [2, 0, 3, 1]
    first = tiny_smolvlm.classify(images[:2], labels)
    second = tiny_smolvlm.classify(images[:2], labels.permuted(order))
    for a, b in zip(first, second):
        for label in labels.labels:
            assert a.probabilities[label] == pytest.approx(b.probabilities[label], abs=1e-4)
        assert list(b.probabilities) == [labels.labels[i] for i in order]


def test_batch_size_does_not_change_results(tiny_smolvlm_dir, images):
    one = load_model(tiny_smolvlm_dir, dtype="float32", batch_size=1).classify(images, ["star", "galaxy", "artefact"])
    many = load_model(tiny_smolvlm_dir, dtype="float32", batch_size=8).classify(images, ["star", "galaxy", "artefact"])
    for a, b in zip(one, many):
        assert a.label == b.label
        for label in a.probabilities:
            assert a.probabilities[label] == pytest.approx(b.probabilities[label], abs=1e-5)


@pytest.mark.parametrize("which", ["tiny_smolvlm", "tiny_llava"])
def test_parallel_preprocessing_gives_the_batch_call_exactly(request, which, images):
    """GPUs preprocess a batch's images in threads; the tensors and the results must not change."""
    vlm = request.getfixturevalue(which)
    assert vlm.preprocess_workers == 1  # the CPU default: the model needs the cores
    labels = load_preset("radio-morphology")
    prompt = vlm.prompt_text(labels.prompt())
    model_images = as_model_images(images)
    saved = vlm.batch_size
    try:
        vlm.batch_size = 8
        serial = vlm._encode(model_images, prompt)
        serial_results = vlm.classify(images, labels)
        serial_answers = vlm.ask(images, "Is there a jet?", max_new_tokens=3)
        vlm.preprocess_workers = 3
        parallel = vlm._encode(model_images, prompt)
        assert vlm._pool is not None and vlm._pool[0] == 3  # the threads were used
        parallel_results = vlm.classify(images, labels)
        parallel_answers = vlm.ask(images, "Is there a jet?", max_new_tokens=3)
    finally:
        vlm.batch_size, vlm.preprocess_workers = saved, 1
    assert serial.keys() == parallel.keys()
    for key in serial:
        assert torch.equal(serial[key], parallel[key]), key
    for a, b in zip(serial_results, parallel_results):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    assert [a.answer for a in serial_answers] == [b.answer for b in parallel_answers]


def test_classify_result_fields(tiny_smolvlm, images):
    prov = Provenance(source="file.fits", hdu=0, bbox=(0, 64, 0, 64), center_pixel=(31.5, 31.5), source_id="7")
    cutout = Cutout(images[0], prov)
    pil = Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 128)
    results = tiny_smolvlm.classify([cutout, images[1], pil], {"FRI": "edge-darkened", "FRII": "edge-brightened"})
    assert [r.task for r in results] == ["classify"] * 3
    assert results[0].provenance is prov
    assert results[0].stretch == "zscale(contrast=0.25)+linear"
    assert results[2].stretch == "as given"
    for result in results:
        assert result.label in ("FRI", "FRII")
        assert result.confidence == max(result.probabilities.values())
        assert result.image_tokens == 64  # one 512-px tile, SmolVLM's pixel shuffle: 64 tokens
        assert "FRI: edge-darkened" in result.prompt
        assert len(result.prompt_hash) == 12


def test_default_tiling_costs_many_more_tokens(tiny_smolvlm_dir):
    tiled = load_model(tiny_smolvlm_dir, dtype="float32", tiling="default")
    tiled.classify(np.random.default_rng(0).normal(size=(256, 256)), ["a", "b"])
    assert tiled.last_image_tokens > 1000  # 16 tiles + a global view for a 256-px cutout
    with pytest.raises(AstroVLMError, match="tiling"):
        load_model(tiny_smolvlm_dir, dtype="float32", tiling="many")


def test_single_tile_is_resized_once_to_the_tile(tiny_smolvlm):
    """SmolVLM's processor would upscale a cutout to 2048 px and shrink it again to the 512-px tile."""
    from PIL import Image

    processor = tiny_smolvlm.processor
    assert tiny_smolvlm.processor_kwargs == {"do_image_splitting": False, "size": {"longest_edge": 512}}
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], add_generation_prompt=True)
    ours = processor(text=[text], images=[[image]], return_tensors="pt", **tiny_smolvlm.processor_kwargs)
    twice = processor(text=[text], images=[[image]], return_tensors="pt", do_image_splitting=False)
    assert ours["pixel_values"].shape == twice["pixel_values"].shape == (1, 1, 3, 512, 512)
    assert (ours["input_ids"] == twice["input_ids"]).all()
    difference = (ours["pixel_values"] - twice["pixel_values"]).abs()
    assert float(difference.mean()) < 0.02 and float(difference.max()) < 0.5  # resampling noise only


def test_ask_and_describe_return_text(tiny_smolvlm, images):
    answers = tiny_smolvlm.ask(images[:2], "Is there a jet?", max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a.answer, str) for a in answers)
    assert answers[0].task == "ask" and answers[0].prompt == "Is there a jet?"
    captions = tiny_smolvlm.describe(images[0], max_new_tokens=4)
    assert captions[0].task == "describe"
    with pytest.raises(AstroVLMError, match="question is empty"):
        tiny_smolvlm.ask(images[0], "  ")


def test_bad_images_and_labels(tiny_smolvlm):
    with pytest.raises(AstroVLMError, match="2-D"):
        tiny_smolvlm.classify(np.zeros((4, 8, 8)), ["a", "b"])
    with pytest.raises(AstroVLMError, match="no finite pixels"):
        tiny_smolvlm.classify(np.full((8, 8), np.nan), ["a", "b"])
    with pytest.raises(AstroVLMError, match="at least two"):
        tiny_smolvlm.classify(np.zeros((8, 8)), ["only"])
    with pytest.raises(AstroVLMError, match="Unknown preset"):
        tiny_smolvlm.classify(np.zeros((8, 8)), preset="no-such-preset")
    with pytest.raises(AstroVLMError, match="Cannot send"):
        tiny_smolvlm.classify(["not an image"], ["a", "b"])


def test_progress_and_cancel_keep_finished_results(tiny_smolvlm_dir, images):
    vlm = load_model(tiny_smolvlm_dir, dtype="float32", batch_size=1)
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        cancel.set()  # cancel after the first batch

    with pytest.raises(OperationCancelled) as caught:
        vlm.classify(images, ["a", "b"], progress=progress, cancel=cancel)
    assert seen == [(1, 3)]
    assert len(caught.value.results) == 1 and caught.value.results[0].label in ("a", "b")


def _save_lora(model_dir, out_dir, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from glue_astrovlm.models.compat import peft_quietly

    torch.manual_seed(seed)
    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    with peft_quietly():
        peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def test_adapters_load_switch_and_disable_by_name(tiny_smolvlm_dir, tmp_path, images):
    first = _save_lora(tiny_smolvlm_dir, tmp_path / "first", 1)
    second = _save_lora(tiny_smolvlm_dir, tmp_path / "second", 2)
    labels = ["FRI", "FRII", "Compact", "Bent"]
    vlm = load_model(tiny_smolvlm_dir, dtype="float32", adapter={"first": first, "second": second})
    assert vlm.adapters == ["first", "second"] and vlm.adapter == "first"
    with_first = vlm.classify(images[0], labels)[0]
    with_second = vlm.classify(images[0], labels, adapter="second")[0]
    base = vlm.classify(images[0], labels, adapter=None)[0]
    assert vlm.adapter == "first"  # per-call choice does not stick
    assert (with_first.adapter, with_second.adapter, base.adapter) == ("first", "second", None)
    plain = load_model(tiny_smolvlm_dir, dtype="float32").classify(images[0], labels)[0]
    for label in labels:
        assert base.probabilities[label] == pytest.approx(plain.probabilities[label], abs=1e-5)
    assert max(abs(with_first.probabilities[k] - base.probabilities[k]) for k in labels) > 1e-3
    assert max(abs(with_first.probabilities[k] - with_second.probabilities[k]) for k in labels) > 1e-3
    vlm.disable_adapter()
    assert vlm.classify(images[0], labels)[0].probabilities == pytest.approx(base.probabilities, abs=1e-5)
    with pytest.raises(AstroVLMError, match="No adapter named"):
        vlm.set_adapter("third")


def test_pickled_adapters_are_refused(tiny_smolvlm_dir, tmp_path):
    adapter = _save_lora(tiny_smolvlm_dir, tmp_path / "pickled", 3)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(AstroVLMError, match="safetensors"):
        load_model(tiny_smolvlm_dir, dtype="float32", adapter=adapter)


def test_unknown_model_offline_says_how_to_point_at_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(AstroVLMError) as caught:
        load_model("astro-nobody/not-a-model-anywhere")
    message = str(caught.value)
    assert "not in the local Hugging Face cache" in message and "--model /path/to/" in message


def test_missing_directory_and_directory_without_config(tmp_path):
    with pytest.raises(AstroVLMError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(AstroVLMError, match="no config.json"):
        load_model(tmp_path)


def test_remote_code_is_not_run_unless_asked(tiny_smolvlm_dir, tmp_path):
    custom = tmp_path / "custom"
    custom.mkdir()
    config = json.loads((tiny_smolvlm_dir / "config.json").read_text())
    config.update(model_type="astro_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(AstroVLMError, match="trust_remote_code"):
        load_model(custom)


def test_cpu_dtype_is_measured():
    import torch

    from glue_astrovlm.models.devices import pick_device, pick_dtype

    assert pick_device() in ("cuda", "mps", "cpu")
    assert pick_dtype("cpu", None, 64) in (torch.float32, torch.bfloat16)
    assert pick_dtype("cpu", "bf16") is torch.bfloat16


def test_engine_import_does_not_import_torch_or_gui():
    code = ("import sys, glue_astrovlm as g\n"
            "from glue_astrovlm import labelsets, results, stretch, cutout_types, models\n"
            "g.load_preset('radio-morphology'); g.DEFAULT_MODEL\n"
            "bad = [m for m in ('torch', 'transformers', 'glue', 'PyQt5', 'PySide6', 'jdaviz') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_model_without_network_fails_fast(monkeypatch, tmp_path):
    """No offline flag set, but the hub is unreachable: one quick probe, no half-minute of retries."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    start = time.perf_counter()
    with pytest.raises(AstroVLMError, match="not in the local Hugging Face cache"):
        load_model("astro-nobody/not-a-model-anywhere")
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------- bad inputs (issue 9)
@pytest.fixture
def forward_calls(tiny_smolvlm):
    """Counts forward passes of the tiny model's language model through a real torch hook."""
    calls = []
    handle = tiny_smolvlm.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


CONTROL_TOKENS = ["<image>", "<fake_token_around_image>", "<end_of_utterance>", "<|im_start|>", "<|im_end|>",
                  "<global-img>", "<row_1_col_1>", "<|reserved_special_token_3|>"]


def test_control_tokens_are_the_tokenizers_special_and_added_tokens(tiny_smolvlm):
    tokens = set(tiny_smolvlm._control_tokens())
    assert set(tiny_smolvlm.tokenizer.all_special_tokens) <= tokens
    assert set(tiny_smolvlm.tokenizer.get_added_vocab()) <= tokens
    assert set(CONTROL_TOKENS) <= tokens


@pytest.mark.parametrize("token", CONTROL_TOKENS)
def test_a_control_token_in_a_label_is_refused_before_any_model_work(tiny_smolvlm, images, forward_calls,
                                                                     token):
    quoted = re.escape(token)
    with pytest.raises(AstroVLMError, match=rf"The label '{quoted}' contains '{quoted}', a control token of "
                                            r".*Rename the label"):
        tiny_smolvlm.classify(images[0], ["FRI", token])
    with pytest.raises(AstroVLMError, match=rf"The label 'FRII {re.escape(token)}' contains"):
        tiny_smolvlm.classify(images[0], ["FRI", f"FRII {token}"])
    assert forward_calls == []


@pytest.mark.parametrize("token", ["<image>", "<end_of_utterance>", "<|im_start|>"])
def test_a_control_token_in_a_question_or_description_is_refused(tiny_smolvlm, images, forward_calls,
                                                                  token):
    quoted = re.escape(token)
    with pytest.raises(AstroVLMError, match=rf"The description of label 'FRII' contains '{quoted}'"):
        tiny_smolvlm.classify(images[0], {"FRI": "core-brightened", "FRII": f"lobes {token}"})
    with pytest.raises(AstroVLMError, match=rf"The question contains '{quoted}'.*sent separately"):
        tiny_smolvlm.classify(images[0], ["FRI", "FRII"], question=f"Which class is {token}?")
    with pytest.raises(AstroVLMError, match=rf"The question contains '{quoted}'"):
        tiny_smolvlm.ask(images[0], f"What is in {token}?", max_new_tokens=2)
    with pytest.raises(AstroVLMError, match=rf"The describe prompt contains '{quoted}'"):
        tiny_smolvlm.describe(images[0], prompt=f"Describe {token}", max_new_tokens=2)
    assert forward_calls == []


def test_angle_brackets_that_are_no_token_are_plain_text(tiny_smolvlm, images):
    results = tiny_smolvlm.classify(images[0], ["S/N<5", "S/N>5", "<image"], question="Which <class>?")
    assert sorted(results[0].probabilities) == ["<image", "S/N<5", "S/N>5"]


@pytest.mark.parametrize("question, message", [
    (None, r"The question is missing \(None\); type what you want to know"),
    (5, r"The question must be text \(a str\), got int 5"),
    (b"Is there a jet?", r"The question must be text \(a str\), got bytes"),
    ("   ", r"The question is empty"),
])
def test_ask_refuses_a_question_that_is_not_text(tiny_smolvlm, images, forward_calls, question, message):
    with pytest.raises(AstroVLMError, match=message):
        tiny_smolvlm.ask(images[0], question, max_new_tokens=2)
    assert forward_calls == []


@pytest.mark.parametrize("max_new_tokens", [0, -5, "x", 2.5, True, None])
def test_max_new_tokens_must_be_a_positive_integer(tiny_smolvlm, images, forward_calls, max_new_tokens):
    with pytest.raises(AstroVLMError, match=r"max_new_tokens must be a positive whole number of tokens"):
        tiny_smolvlm.ask(images[0], "Is there a jet?", max_new_tokens=max_new_tokens)
    with pytest.raises(AstroVLMError, match=r"max_new_tokens must be a positive whole number of tokens"):
        tiny_smolvlm.describe(images[0], max_new_tokens=max_new_tokens)
    assert forward_calls == []


def test_describe_refuses_a_prompt_that_is_not_text(tiny_smolvlm, images, forward_calls):
    for prompt, message in ((None, r"describe prompt is missing \(None\); leave prompt= out"),
                            (["Describe"], r"describe prompt must be text \(a str\), got list"),
                            ("", r"describe prompt is empty")):
        with pytest.raises(AstroVLMError, match=message):
            tiny_smolvlm.describe(images[0], prompt=prompt, max_new_tokens=2)
    assert forward_calls == []
    answer = tiny_smolvlm.ask(images[0], np.str_("Is there a jet?"), max_new_tokens=np.int64(2))
    assert answer[0].task == "ask"
    assert forward_calls  # the hook sees the model's work when there is some


# ------------------------------------------------------------------------- damaged and mismatched adapters
@pytest.fixture(scope="module")
def saved_adapter(tiny_smolvlm_dir, tmp_path_factory):
    """A real LoRA adapter (rank 4, non-zero weights) of the tiny SmolVLM, saved by peft."""
    return _save_lora(tiny_smolvlm_dir, tmp_path_factory.mktemp("adapter") / "lora", 5)


def _adapter_copy(saved_adapter, tmp_path, name="copy"):
    import shutil

    return shutil.copytree(saved_adapter, tmp_path / name)


@pytest.mark.parametrize("damage, expected", [
    ("truncate", r"adapter_model\.safetensors is truncated"),
    ("empty", r"adapter_model\.safetensors is not a safetensors file \(it is empty"),
    ("config-not-json", r"adapter_config\.json is not valid JSON"),
    ("config-a-list", r"adapter_config\.json is not a peft adapter configuration \(no 'peft_type'\)"),
    ("rank-not-a-number", r"gives the LoRA rank r='4', which is not a positive whole number"),
])
def test_damaged_adapter_files_name_the_file_and_the_fix(tiny_smolvlm_dir, saved_adapter, tmp_path, damage,
                                                        expected):
    adapter = _adapter_copy(saved_adapter, tmp_path)
    weights, config_file = adapter / "adapter_model.safetensors", adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "config-not-json":
        config_file.write_text('{"peft_type": "LORA", "r": 4')
    elif damage == "config-a-list":
        config_file.write_text("[1, 2]")
    else:
        config_file.write_text(json.dumps({**config, "r": "4"}))
    with pytest.raises(AstroVLMError, match=expected) as caught:
        load_model(tiny_smolvlm_dir, dtype="float32", adapter=adapter)
    assert "astrovlm finetune" in str(caught.value)
    assert "does not fit" not in str(caught.value)  # not blamed on the base model


def test_rank_mismatch_is_an_inconsistent_adapter_not_a_wrong_base(tiny_smolvlm_dir, saved_adapter, tmp_path):
    adapter = _adapter_copy(saved_adapter, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(AstroVLMError) as caught:
        load_model(tiny_smolvlm_dir, dtype="float32", adapter=adapter)
    message = str(caught.value)
    assert f"The adapter {adapter} is inconsistent: adapter_config.json says LoRA rank r=8" in message
    assert "holds rank-4 weights" in message and "lora_A.weight" in message
    assert "load the model it was trained on" not in message and "load that model" not in message


def test_adapter_of_another_architecture_is_refused_and_leaves_the_model_alone(
        tiny_smolvlm_dir, tiny_llava_dir, tmp_path, images):
    """Its q_proj/v_proj targets exist in both models, so peft would add layers and leave them untrained."""
    adapter = _save_lora(tiny_llava_dir, tmp_path / "llava-lora", 6)
    vlm = load_model(tiny_smolvlm_dir, dtype="float32")
    before = vlm.classify(images[0], ["FRI", "FRII"])[0].probabilities
    with pytest.raises(AstroVLMError) as caught:
        vlm.load_adapter(adapter)
    message = str(caught.value)
    assert f"does not fit {tiny_smolvlm_dir}: it was trained on {tiny_llava_dir}; load that model" in message
    assert "made for a LlavaForConditionalGeneration, and this model is a Idefics3ForConditionalGeneration" \
        in message
    assert vlm.adapters == [] and not hasattr(vlm.model, "peft_config")
    assert not any("lora_" in name for name, _ in vlm.model.named_modules())
    assert vlm.classify(images[0], ["FRI", "FRII"])[0].probabilities == pytest.approx(before, abs=1e-6)
    vlm.load_adapter(_save_lora(tiny_smolvlm_dir, tmp_path / "smol-lora", 7))  # still takes a good one
    assert vlm.adapters == ["smol-lora"]
    with pytest.raises(AstroVLMError, match="trained on .*tiny-llava"):
        vlm.load_adapter(adapter, "second")  # a failed second adapter is removed again
    assert vlm.adapters == ["smol-lora"] and list(vlm.model.peft_config) == ["smol-lora"]


def test_adapter_whose_weights_fit_no_layer_of_its_own_base(tiny_smolvlm_dir, saved_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = _adapter_copy(saved_adapter, tmp_path)
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({key.replace("q_proj", "w_proj"): value for key, value in weights.items()},
              adapter / "adapter_model.safetensors")
    with pytest.raises(AstroVLMError) as caught:
        load_model(tiny_smolvlm_dir, dtype="float32", adapter=adapter)
    message = str(caught.value)
    assert f"does not fit {tiny_smolvlm_dir}, although that is the base model its adapter_config.json " \
        "names" in message
    assert "its weights lack" in message and "adapter_model.safetensors do not match" in message


def test_relative_base_path_of_an_old_adapter(tiny_smolvlm_dir, saved_adapter, tmp_path, monkeypatch):
    """Adapters from before base paths were absolute: found from the adapter's folder, or explained."""
    import os

    adapter = _adapter_copy(saved_adapter, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    relative = os.path.relpath(tiny_smolvlm_dir, tmp_path)  # as recorded when trained from tmp_path
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": relative}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    vlm = load_model(adapter=adapter, dtype="float32")
    assert vlm.name == str(tiny_smolvlm_dir) and vlm.adapters == ["copy"]
    lost = _adapter_copy(saved_adapter, tmp_path, "lost")
    lost_config = {**config, "base_model_name_or_path": "./models/gone"}
    (lost / "adapter_config.json").write_text(json.dumps(lost_config))
    with pytest.raises(AstroVLMError) as caught:
        load_model(adapter=lost, dtype="float32")
    message = str(caught.value)
    assert "records its base model as './models/gone', a path relative to the folder it was trained " \
        "in" in message
    assert "Pass the base model explicitly: --model /path/to/the/model" in message
