"""Training examples: images and conversations encoded exactly as the model is later asked.

A classification item becomes the conversation *user: image + label-set prompt; assistant: label*.
Its prompt is `LocalVLM.prompt_text` of `LabelSet.prompt` and its answer tokens are
`LocalVLM.label_continuations` (the label and the end-of-turn token from the chat template): the very
prefix and continuations that `LocalVLM.classify` scores. Loss masking, label tokens and scoring
therefore agree by construction, and only the answer tokens carry a loss (``labels`` is -100 elsewhere).

Conversations (LLaVA JSON) and captions are split with the model's own chat template into alternating
prompt and answer segments: each answer is what the template adds after the generation prompt, up to
and including the end-of-turn token, exactly as label continuations are found.
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..errors import AstroVLMError
from ..labelsets import LabelSet
from ..stretch import Stretch

__all__ = ["IGNORE_INDEX", "conversation_segments", "encode_segments", "encode_classification",
           "EncodedExamples", "VisionLanguageCollator"]

log = logging.getLogger("glue_astrovlm")

#: ``labels`` value of tokens that carry no loss (prompt, image and padding tokens).
IGNORE_INDEX = -100


def _messages(turns: Sequence[tuple[str, str]]) -> list[dict]:
    """Chat messages in the same form as `LocalVLM` builds them: the image with the first user turn."""
    messages = []
    for index, (role, text) in enumerate(turns):
        content = [{"type": "text", "text": text}]
        if index == 0:
            content.insert(0, {"type": "image"})
        messages.append({"role": role, "content": content})
    return messages


def conversation_segments(vlm, turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
    """Split a conversation into ``(text, is_answer)`` segments with ``vlm``'s chat template.

    The segments concatenate to the templated conversation (less whitespace after the last answer).
    The first segment holds the image placeholder. Each answer runs from the generation prompt to the
    end-of-turn token, the same span `LocalVLM.label_continuations` scores.

    Raises
    ------
    AstroVLMError
        If the template rewrites earlier turns, so that a conversation cannot be split into a
        prefix and an answer (such templates cannot be trained on turn by turn).
    """
    template = vlm.processor.apply_chat_template
    messages = _messages(turns)
    segments: list[tuple[str, bool]] = []
    covered = ""
    for index, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        prefix = template(messages[:index], add_generation_prompt=True)
        full = template(messages[: index + 1])
        if not prefix.startswith(covered) or not full.startswith(prefix):
            raise AstroVLMError(f"The chat template of {vlm.name} rewrites earlier turns, so its "
                                "conversations cannot be split into prompts and answers for training.")
        answer = full[len(prefix):].rstrip()
        if not answer:
            raise AstroVLMError(f"An answer turn renders to no text with the chat template of {vlm.name}.")
        segments.append((prefix[len(covered):], False))
        segments.append((answer, True))
        covered = prefix + answer
    if not segments:
        raise AstroVLMError("A conversation has no answer turn to learn from.")
    return segments


def _encode_prefix(vlm, image, text: str) -> dict:
    """The processor call of `LocalVLM` for one image and its (templated) prompt, on the CPU."""
    inputs = vlm.processor(text=[text], images=[[image]], return_tensors="pt", **vlm.processor_kwargs)
    return dict(inputs)


def encode_segments(vlm, image, segments: Sequence[tuple[str, bool]], max_length: int | None = None) -> dict:
    """Token ids, attention mask, loss labels and image tensors of one example.

    The first segment goes through the processor with the image (which expands the image
    placeholder into image tokens); later segments are tokenized without special tokens and appended,
    as `score_labels_cached` appends label continuations to the prefix.
    """
    first_text, first_is_answer = segments[0]
    if first_is_answer:
        raise AstroVLMError("A conversation must start with a prompt, not an answer.")
    encoded = _encode_prefix(vlm, image, first_text)
    ids = encoded.pop("input_ids")[0].tolist()
    encoded.pop("attention_mask", None)
    labels = [IGNORE_INDEX] * len(ids)
    for text, is_answer in segments[1:]:
        piece = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
    return _finish(ids, labels, encoded, max_length)


def encode_classification(vlm, image, label_set: LabelSet, label: str, max_length: int | None = None) -> dict:
    """One classification example: the `classify` prompt for ``image``, answered with ``label``.

    The prefix is `LocalVLM.prompt_text` of the label set's prompt; the answer tokens are the label's
    entry in `LocalVLM.label_continuations`, so the loss trains exactly what `classify` scores.
    """
    try:
        index = label_set.labels.index(label)
    except ValueError:
        raise AstroVLMError(f"Label {label!r} is not in the label set {list(label_set.labels)}.") from None
    answer = vlm.label_continuations(label_set)[index]
    encoded = _encode_prefix(vlm, image, vlm.prompt_text(label_set.prompt()))
    ids = encoded.pop("input_ids")[0].tolist()
    encoded.pop("attention_mask", None)
    labels = [IGNORE_INDEX] * len(ids) + list(answer)
    return _finish(ids + list(answer), labels, encoded, max_length)


def _finish(ids: list[int], labels: list[int], extra: dict, max_length: int | None) -> dict:
    import torch

    from ..models.positions import TOKEN_ALIGNED

    for key in TOKEN_ALIGNED:  # one value per token (Qwen2.5-VL's mm_token_type_ids): 0 (text) for answers
        value = extra.get(key)
        if value is not None and value.shape[-1] < len(ids):
            pad = torch.zeros(*value.shape[:-1], len(ids) - value.shape[-1], dtype=value.dtype)
            extra[key] = torch.cat([value, pad], dim=-1)
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
        extra = {key: value[..., :max_length] if key in TOKEN_ALIGNED else value for key, value in extra.items()}
        if all(label == IGNORE_INDEX for label in labels):  # the image and prompt alone fill max_length
            raise AstroVLMError(f"max_length={max_length} cuts off every answer token; raise --max-length.")
    example = {"input_ids": torch.tensor(ids, dtype=torch.long),
               "attention_mask": torch.ones(len(ids), dtype=torch.long),
               "labels": torch.tensor(labels, dtype=torch.long)}
    example.update(extra)
    return example


class EncodedExamples:
    """A torch-style dataset of training examples built from an `~glue_astrovlm.datasets.ImageDataset`.

    Items are encoded when first asked for; the model images (small RGB pictures) are cached so that
    files are read and stretched once, while the processor runs each time (as at inference).

    Parameters
    ----------
    vlm : LocalVLM
        The model being trained: its processor, chat template and label continuations.
    dataset : ImageDataset
        Classification, conversation or caption data.
    label_set : LabelSet, optional
        Required for classification data.
    stretch : Stretch, optional
        Engine stretch used to turn pixels into the model image (by default as `ImageItem.cutout`).
    crop : float
        Central fraction of each image kept (see `ImageItem.cutout`).
    max_length : int, optional
        Truncate longer examples (answers are never all cut off).
    cache_bytes : int
        Keep encoded examples (token ids and the processor's pixel tensors, unchanged) in memory up
        to this many bytes, so that files are read, stretched and processed once rather than every
        epoch. Beyond it, the small model images are cached and the processor runs again.
    """

    def __init__(self, vlm, dataset, label_set: LabelSet | None = None, *, stretch: Stretch | None = None,
                 crop: float = 1.0, max_length: int | None = None, cache_bytes: int = 2 * 1024**3):
        if dataset.kind == "classification" and label_set is None:
            raise AstroVLMError("Classification data need a label set.")
        self.vlm = vlm
        self.dataset = dataset
        self.label_set = label_set
        self.stretch = stretch
        self.crop = crop
        self.max_length = max_length
        self._images: dict[int, object] = {}
        self._encoded: dict[int, dict] = {}
        self._cache_bytes = int(cache_bytes)
        self._cached_bytes = 0
        self._segments: dict[int, list] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def model_image(self, index: int):
        """The RGB picture of item ``index`` as the model sees it (stretched, cropped)."""
        if index in self._images:
            return self._images[index]
        from ..models.base import as_model_images

        item = self.dataset[index]
        try:
            image = as_model_images(item.cutout(self.stretch, self.crop))[0].image
        except AstroVLMError as error:
            raise AstroVLMError(f"Cannot use image {item.path} ({item.item_id}): {error}") from None
        self._images[index] = image
        return image

    def __getitem__(self, index: int) -> dict:
        if index in self._encoded:
            return self._encoded[index]
        item = self.dataset[index]
        image = self.model_image(index)
        if self.dataset.kind == "classification":
            example = encode_classification(self.vlm, image, self.label_set, item.label, self.max_length)
        else:
            if index not in self._segments:
                self._segments[index] = conversation_segments(self.vlm, item.turns())
            example = encode_segments(self.vlm, image, self._segments[index], self.max_length)
        size = sum(v.numel() * v.element_size() for v in example.values() if hasattr(v, "numel"))
        if self._cached_bytes + size <= self._cache_bytes:
            self._encoded[index] = example
            self._cached_bytes += size
            self._images.pop(index, None)
        return example


class VisionLanguageCollator:
    """Pad a list of encoded examples into a batch.

    Token ids are right-padded with the pad token, ``attention_mask`` with 0 and ``labels`` with -100
    (padding carries no loss). Image tensors are concatenated along their first axis; when examples
    hold different numbers of image tiles (SmolVLM with ``tiling='default'``), the smaller ones are
    zero-padded, which the model treats as padding images.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        batch = {
            "input_ids": torch.full((len(examples), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
            "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long),
        }
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            batch["input_ids"][row, :n] = example["input_ids"]
            batch["attention_mask"][row, :n] = example["attention_mask"]
            batch["labels"][row, :n] = example["labels"]
        for key in examples[0]:
            if key in batch:
                continue
            values = [e[key] for e in examples]
            if not all(isinstance(v, torch.Tensor) for v in values):
                continue
            shape = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
            padded = []
            for value in values:
                if list(value.shape[1:]) != shape:
                    pads = []
                    for d in reversed(range(1, value.dim())):
                        pads += [0, shape[d - 1] - value.shape[d]]
                    value = torch.nn.functional.pad(value, pads)
                padded.append(value)
            batch[key] = torch.cat(padded, dim=0)
        return batch
