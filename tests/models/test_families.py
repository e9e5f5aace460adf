"""Every model family passes one contract: load, exact scoring, ask, LoRA fine-tuning, adapter round trip and
eval.

Each family is built small from its real configuration in ``../shared/models`` (the real tokenizer,
image processor and chat template; 2 narrow text layers, a small vision tower, random weights), saved
as safetensors and loaded through `load_model` exactly as a user loads a downloaded checkpoint.
"""

import functools
import json
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from astropy.table import Table

from glue_astrovlm import AstroVLMError, Conversation, load_model, load_preset
from glue_astrovlm.cli import main
from glue_astrovlm.datasets import load_dataset
from glue_astrovlm.evaluation import evaluate
from glue_astrovlm.models.base import as_model_images
from glue_astrovlm.models.families import FAMILIES, family_for
from glue_astrovlm.models.scoring import score_labels_bruteforce
from glue_astrovlm.testing import FAMILY_CONFIGS, SHARED_MODELS, build_family
from glue_astrovlm.training import FinetuneConfig, finetune

LABELS = load_preset("radio-morphology")
MIRABEST = "first_mirabest/200_151.463+024.320_0.1843_0013.65.fits"

#: Image tokens of a 256 x 256 px cutout with the family's budget (tiling='single'), and with the
#: processor's own tiling where that differs.
TOKENS_256 = {
    "SmolVLM": (64, 1105),
    "LLaVA-1.5": (576, 576),
    "LLaVA-NeXT": (1176, 1176),
    "LLaVA-OneVision": (1485, 1485),
    "Qwen2.5-VL": (81, 81),
}
#: ... and of a 1,000 x 1,000 px cutout, where the budgets of the anyres families cap the tiling.
TOKENS_1000 = {"LLaVA-NeXT": (1176, 2928), "LLaVA-OneVision": (1485, 7371), "Qwen2.5-VL": (256, 1296)}

NAMES = [family.name for family in FAMILIES]


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    """``family_dir(name)``: the tiny model of a family, built once per test module."""
    built = {}

    def make(name):
        folder = SHARED_MODELS / FAMILY_CONFIGS[name]
        if not folder.is_dir():
            pytest.skip(f"model configuration {folder} is not available")
        if name not in built:
            built[name] = build_family(name, tmp_path_factory.mktemp(f"tiny-{name}"))
        return built[name]

    return make


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    square = rng.normal(size=(256, 256))
    square[120:136, 60:200] += 6  # an elongated source
    return [square, rng.normal(size=(40, 90))]


def _image(side):
    return np.random.default_rng(side).normal(size=(side, side))


@pytest.mark.parametrize("name", NAMES)
def test_family_loads_and_scores_exactly(family_dir, name, images):
    """Load picks the family from config.json; classify equals one full forward pass per label to 1e-5."""
    vlm = load_model(family_dir(name), dtype="float32")
    assert vlm.family.name == name
    results = vlm.classify(images, LABELS)
    continuations = vlm.label_continuations(LABELS)
    for result, model_image in zip(results, as_model_images(images)):
        inputs = vlm._encode([model_image], vlm.prompt_text(LABELS.prompt()))
        reference = score_labels_bruteforce(vlm.model, inputs, continuations).softmax(-1)[0].numpy()
        got = np.array([result.probabilities[label] for label in LABELS.labels])
        np.testing.assert_allclose(got, reference, atol=1e-5)
        exact = score_labels_bruteforce(vlm.model, inputs, continuations)[0].numpy()
        np.testing.assert_allclose(_scores(vlm, model_image.image), exact, atol=1e-4)  # log-likelihoods too
        assert result.image_tokens == vlm.image_token_count(inputs) > 0
    assert results[0].image_tokens == TOKENS_256[name][0]
    special = set(vlm.tokenizer.all_special_ids)
    assert all(c[-1] in special for c in continuations)  # every label is scored as a whole answer
    assert "torchvision" not in sys.modules  # processors built without video processors


@pytest.mark.parametrize("name", ["LLaVA-NeXT", "LLaVA-OneVision", "Qwen2.5-VL"])
def test_token_budget_caps_large_cutouts(family_dir, name):
    """The family's budget for a large cutout, against the processor's own tiling."""
    single = load_model(family_dir(name), dtype="float32")
    default = load_model(family_dir(name), dtype="float32", tiling="default")
    big = _image(1000)
    assert single.classify([big], LABELS)[0].image_tokens == TOKENS_1000[name][0]
    assert default.classify([big], LABELS)[0].image_tokens == TOKENS_1000[name][1]
    assert default.classify([_image(256)], LABELS)[0].image_tokens == TOKENS_256[name][1]


def _scores(vlm, image):
    """Total log-likelihood of each label (the scorer's raw output, before the softmax)."""
    from glue_astrovlm.models.scoring import score_labels_cached

    inputs = vlm._encode(as_model_images([image]), vlm.prompt_text(LABELS.prompt()))
    return score_labels_cached(vlm.model, inputs, vlm.label_continuations(LABELS), 0)[0].numpy()


def test_mrope_positions_matter(family_dir, images):
    """The exactness check can fail: label tokens at 1-D positions after a Qwen2.5-VL image score
    otherwise."""
    import torch

    from glue_astrovlm.models import positions

    vlm = load_model(family_dir("Qwen2.5-VL"), dtype="float32")
    right = _scores(vlm, images[0])
    owner = positions.rope_index_owner(vlm.model)
    assert owner is not None
    original = type(owner).get_rope_index

    @functools.wraps(original)
    def no_offset(self, *args, **kwargs):
        ids, deltas = original(self, *args, **kwargs)
        return ids, torch.zeros_like(deltas)

    type(owner).get_rope_index = no_offset
    try:
        wrong = _scores(vlm, images[0])
    finally:
        type(owner).get_rope_index = original
    assert np.abs(right - wrong).max() > 1e-3

    # a batch of two prefixes in one tree pass: each row continues from its own M-RoPE offset
    from glue_astrovlm.models.scoring import score_labels_cached

    pair = [images[0], np.rot90(images[0]).copy()]
    inputs = vlm._encode(as_model_images(pair), vlm.prompt_text(LABELS.prompt()))
    assert inputs["input_ids"].shape[0] == 2
    batched = score_labels_cached(vlm.model, inputs, vlm.label_continuations(LABELS), 0).numpy()
    for row, image in enumerate(pair):
        np.testing.assert_allclose(batched[row], _scores(vlm, image), atol=1e-4)


def test_unknown_family_names_the_known_ones(tmp_path):
    """A model of a type the project does not know (here a text-only Llama) fails before weights load."""
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=16, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1
    ).save_pretrained(tmp_path)
    with pytest.raises(AstroVLMError, match="'llama' model") as caught:
        load_model(tmp_path)
    for family in FAMILIES:
        assert family.name in str(caught.value)


@pytest.mark.parametrize("model_type", ["paligemma", "llava_llama", "foo_bar"])
def test_a_type_transformers_cannot_build_is_refused_with_the_families(tmp_path, model_type):
    """Types transformers does not know, or cannot build from this config, get our message, not its advice
    (a missing attribute, 'install transformers from git')."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 16}))
    with pytest.raises(AstroVLMError, match=f"'{model_type}' model") as caught:
        load_model(tmp_path)
    assert all(family.name in str(caught.value) for family in FAMILIES)
    assert ("convert_llava_weights_to_hf" in str(caught.value)) == model_type.startswith("llava_")


def test_family_is_picked_from_config_not_name(family_dir, tmp_path):
    """A fine-tune saved under any folder name loads as its family."""
    import shutil

    renamed = shutil.copytree(family_dir("Qwen2.5-VL"), tmp_path / "my-radio-llava")
    assert load_model(renamed, dtype="float32").family.name == "Qwen2.5-VL"
    assert family_for(type("C", (), {"model_type": "llava_onevision"})).name == "LLaVA-OneVision"


@pytest.mark.parametrize("name", NAMES)
def test_family_asks_finetunes_round_trips_and_evaluates(family_dir, name, first_subset, fits_dir, tmp_path):
    """ask, a 2-step LoRA, the adapter loaded back (as the glue panel, jdaviz and the CLI load it), eval."""
    folder = family_dir(name)
    base = load_model(folder, dtype="float32")
    data = load_dataset(first_subset("train", 1))
    answer = base.ask([data[0].cutout()], "What is in this image?", max_new_tokens=3)[0]
    assert answer.task == "ask" and isinstance(answer.answer, str) and answer.image_tokens > 0
    conversation = Conversation(data[0].cutout(), title="contract")  # a follow-up keeps the earlier turn
    first = conversation.ask(base, "Is there a jet?", max_new_tokens=3)
    second = conversation.ask(base, "Which side is brighter?", max_new_tokens=3)
    assert (first.turn, second.turn) == (1, 2) and second.image_tokens == first.image_tokens > 0

    out = tmp_path / "lora"
    config = FinetuneConfig(
        method="lora",
        max_steps=2,
        batch_size=2,
        learning_rate=5e-2,
        warmup_ratio=0.0,
        logging_steps=1,
        lora_r=4,
    )
    finetune(folder, data, out, label_set=LABELS, config=config, show_progress=False)
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in key for key in weights)
    frozen = ("vision_tower", "vision_model", "visual", "multi_modal_projector", "connector")
    assert not [key for key in weights if any(part in key for part in frozen)]  # vision and projector frozen
    assert json.loads((out / "astrovlm_adapter.json").read_text())["base_model"] == str(folder)

    tuned = load_model(adapter={"mine": out}, dtype="float32")  # the base model comes from the adapter
    assert tuned.family.name == name and tuned.adapter == "mine"
    cutouts = [item.cutout() for item in data]
    after = tuned.classify(cutouts, LABELS)
    before = tuned.classify(cutouts, LABELS, adapter=None)
    assert any(
        abs(a.probabilities[k] - b.probabilities[k]) > 1e-6 for a, b in zip(after, before) for k in LABELS
    )

    report = evaluate(tuned, data, LABELS)
    assert len(report.systems[0].results) == len(data)
    assert 0.0 <= report.systems[0].metrics.accuracy <= 1.0

    # the CLI (like the glue panel and the jdaviz plugin, through load_model) finds the base from the adapter
    status = main(
        [
            "classify",
            str(fits_dir / MIRABEST),
            "--pixel",
            "150",
            "150",
            "--size",
            "64",
            "--adapter",
            str(out),
            "--dtype",
            "float32",
            "--out",
            str(tmp_path / "cli"),
        ]
    )
    assert status == 0
    row = Table.read(tmp_path / "cli.ecsv")[0]
    assert row["adapter"] == "lora" and row["image_tokens"] > 0 and row["label"] in LABELS.labels


def test_astrollava_two_stage_recipe_on_llava_15(family_dir, first_subset, tmp_path):
    """AstroLLaVA's recipe on its base family: the projector first, then LoRA, saved as one adapter."""
    folder = family_dir("LLaVA-1.5")
    data = load_dataset(first_subset("train", 1))
    config = FinetuneConfig(
        method="two-stage",
        max_steps=2,
        batch_size=2,
        learning_rate=5e-2,
        warmup_ratio=0.0,
        stage1_epochs=1,
        logging_steps=1,
        lora_r=4,
    )
    finetune(folder, data, tmp_path / "astro", label_set=LABELS, config=config, show_progress=False)
    weights = load_file(tmp_path / "astro" / "adapter_model.safetensors")
    assert any("multi_modal_projector" in key for key in weights) and any("lora_" in key for key in weights)
    vlm = load_model(folder, dtype="float32", adapter=tmp_path / "astro")
    assert vlm.classify(data[0].cutout(), LABELS)[0].adapter == "astro"


@pytest.mark.parametrize("name", ["LLaVA-OneVision", "Qwen2.5-VL"])
def test_full_finetune_of_a_family_built_from_parts_loads_back(family_dir, name, first_subset, tmp_path):
    """A saved processor built without a video processor names the real class and loads again, as does
    the one-tile grid the model was trained with."""
    data = load_dataset(first_subset("train", 1))
    config = FinetuneConfig(
        method="projector", max_steps=1, batch_size=2, learning_rate=1e-2, warmup_ratio=0.0, logging_steps=1
    )
    finetune(family_dir(name), data, tmp_path / "full", label_set=LABELS, config=config, show_progress=False)
    saved = json.loads((tmp_path / "full" / "processor_config.json").read_text())
    assert "ForImages" not in saved.get("processor_class", "") and "video_processor" not in saved
    tuned = load_model(tmp_path / "full", dtype="float32")
    assert tuned.family.name == name
    assert tuned.classify([_image(256)], LABELS)[0].image_tokens == TOKENS_256[name][0]
