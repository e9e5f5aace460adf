"""Training examples and their collation: loss only on the answer tokens that `classify` scores."""

import json

import numpy as np
import pytest
import torch

from glue_astrovlm import AstroVLMError, LabelSet, load_preset
from glue_astrovlm.datasets import load_dataset
from glue_astrovlm.models.scoring import continuation_logprobs
from glue_astrovlm.training.data import (IGNORE_INDEX, EncodedExamples, VisionLanguageCollator,
                                         conversation_segments, encode_classification)

LABELS = load_preset("radio-morphology")


@pytest.fixture(scope="module")
def examples(tiny_smolvlm, first_small):
    data = load_dataset(first_small)
    return EncodedExamples(tiny_smolvlm, data, LABELS, crop=0.5)


def test_collator_masks_exactly_the_answer_tokens(tiny_smolvlm, examples):
    vlm = tiny_smolvlm
    batch = VisionLanguageCollator(vlm.tokenizer.pad_token_id)([examples[i] for i in range(4)])
    assert batch["pixel_values"].shape[:2] == (4, 1)  # one 512-px tile per image
    continuations = vlm.label_continuations(LABELS)
    for row, item in enumerate(examples.dataset):
        kept = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert kept == continuations[LABELS.labels.index(item.label)]
        assert vlm.tokenizer.decode(kept) == f" {item.label}<end_of_utterance>"
        # the answer sits right after the classify prompt, as the scorer appends it
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, n - len(kept):n].tolist() == kept
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == vlm.tokenizer.pad_token_id).all()


def test_prefix_is_the_classify_prefix(tiny_smolvlm, examples):
    """The training prefix equals what `classify` encodes, token for token and pixel for pixel."""
    vlm = tiny_smolvlm
    image = examples.model_image(0)
    example = encode_classification(vlm, image, LABELS, "FRII")
    from glue_astrovlm.models.base import ModelImage

    reference = vlm._encode([ModelImage(image, None, "")], vlm.prompt_text(LABELS.prompt()))
    n = reference["input_ids"].shape[1]
    assert example["input_ids"][:n].tolist() == reference["input_ids"][0].tolist()
    torch.testing.assert_close(example["pixel_values"], reference["pixel_values"])


def test_training_loss_equals_scored_log_likelihood(tiny_smolvlm, examples):
    """The answer-token loss is minus the log-likelihood that `classify` turns into a probability."""
    vlm = tiny_smolvlm
    example = examples[2]
    label = examples.dataset[2].label
    inputs = {k: v[None] if k in ("input_ids", "attention_mask", "labels") else v for k, v in example.items()}
    with torch.no_grad():
        out = vlm.model(**inputs)
    n_answer = int((example["labels"] != IGNORE_INDEX).sum())
    cont = vlm.label_continuations(LABELS)[LABELS.labels.index(label)]
    logits = out.logits[0]
    start = len(example["input_ids"]) - n_answer - 1
    logp = continuation_logprobs(logits[start][None], logits[start + 1:start + n_answer][None], [cont])
    assert out.loss.item() * n_answer == pytest.approx(-logp.item(), rel=1e-4)


def test_conversation_segments_agree_with_label_continuations(tiny_smolvlm):
    vlm = tiny_smolvlm
    segments = conversation_segments(vlm, [("user", LABELS.prompt()), ("assistant", "FRII")])
    assert segments[0] == (vlm.prompt_text(LABELS.prompt()), False)
    answer_ids = vlm.tokenizer(segments[1][0], add_special_tokens=False)["input_ids"]
    assert answer_ids == vlm.label_continuations(LABELS)[1]


def test_multi_turn_conversation_and_captions(tiny_smolvlm, first_small):
    vlm = tiny_smolvlm
    image = next((first_small / "FRII").glob("*.png"))
    chat = [{"image": f"FRII/{image.name}", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A radio galaxy."},
        {"from": "human", "value": "Which type?"}, {"from": "gpt", "value": "FR-II."}]}]
    (first_small / "chat.json").write_text(json.dumps(chat))
    data = load_dataset(first_small / "chat.json")
    example = EncodedExamples(vlm, data)[0]
    labels = example["labels"]
    answers = vlm.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert answers == " A radio galaxy.<end_of_utterance> FR-II.<end_of_utterance>"
    # the question of the second turn carries no loss
    text = vlm.tokenizer.decode(example["input_ids"][labels == IGNORE_INDEX])
    assert "Which type?" in text and "<image>" in text
    (first_small / "caps.jsonl").write_text(json.dumps({"image": f"FRII/{image.name}", "caption": "Two lobes."}))
    caption = EncodedExamples(vlm, load_dataset(first_small / "caps.jsonl"))[0]
    kept = caption["labels"][caption["labels"] != IGNORE_INDEX]
    assert vlm.tokenizer.decode(kept) == " Two lobes.<end_of_utterance>"


def test_collator_pads_different_tile_counts():
    collate = VisionLanguageCollator(pad_token_id=0)
    a = {"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long),
         "labels": torch.tensor([-100, -100, 7]), "pixel_values": torch.ones(1, 2, 3, 4, 4)}
    b = {"input_ids": torch.tensor([5, 6]), "attention_mask": torch.ones(2, dtype=torch.long),
         "labels": torch.tensor([-100, 6]), "pixel_values": torch.ones(1, 1, 3, 4, 4)}
    batch = collate([a, b])
    assert batch["pixel_values"].shape == (2, 2, 3, 4, 4)
    assert batch["pixel_values"][1, 1].abs().sum() == 0  # a zero padding tile
    assert batch["labels"].tolist() == [[-100, -100, 7], [-100, 6, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_bad_examples(tiny_smolvlm, first_small):
    data = load_dataset(first_small)
    with pytest.raises(AstroVLMError, match="need a label set"):
        EncodedExamples(tiny_smolvlm, data)
    with pytest.raises(AstroVLMError, match="not in the label set"):
        encode_classification(tiny_smolvlm, np.zeros((8, 8)), LabelSet(("a", "b")), "c")
    with pytest.raises(AstroVLMError, match="cuts off every answer token"):
        EncodedExamples(tiny_smolvlm, data, LABELS, max_length=10)[0]


@pytest.mark.parametrize("which, text", [("tiny_smolvlm_dir", "model.text_model"),
                                         ("tiny_llava_dir", "model.language_model")])
def test_lora_targets_per_architecture(request, which, text):
    import re

    from glue_astrovlm import load_model
    from glue_astrovlm.training.architecture import lora_target_regex, model_parts

    vlm = load_model(request.getfixturevalue(which), dtype="float32")
    parts = model_parts(vlm.model)
    assert parts.text == text
    names = [n for n, _ in vlm.model.named_modules()]
    matched = [n for n in names if re.fullmatch(lora_target_regex(parts), n)]
    assert matched and all(n.startswith(text + ".") for n in matched)  # never the vision tower or projector
    only_v = [n for n in names if re.fullmatch(lora_target_regex(parts, ["v_proj"]), n)]
    assert only_v and all(n.endswith("v_proj") for n in only_v)
    with_vision = [n for n in names if re.fullmatch(lora_target_regex(parts, include_vision=True), n)]
    assert any(n.startswith(parts.vision + ".") for n in with_vision)
    with pytest.raises(AstroVLMError, match="leaf module names"):
        lora_target_regex(parts, ["a.b"])


def test_llava_trains_with_the_same_machinery(tiny_llava_dir, first_small, tmp_path):
    from glue_astrovlm import load_model
    from glue_astrovlm.training import FinetuneConfig, finetune

    data = load_dataset(first_small)
    config = FinetuneConfig(method="lora", max_steps=1, batch_size=4, lora_r=2)
    finetune(tiny_llava_dir, data, tmp_path / "llava", config=config, show_progress=False)
    vlm = load_model(tiny_llava_dir, dtype="float32", adapter=tmp_path / "llava")
    assert vlm.classify(data[0].cutout(), data.label_set())[0].adapter == "llava"
