"""The interface every backend offers, and the conversion of user images into model images."""

from __future__ import annotations

import abc
import logging
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..cutout_types import Cutout, Provenance
from ..errors import AstroVLMError
from ..labelsets import LabelSet, resolve_labels
from ..records import recorded_label_set
from ..results import Result

__all__ = ["VLM", "ModelImage", "as_model_images", "OperationCancelled", "ProgressCallback"]

log = logging.getLogger("glue_astrovlm")

#: ``callback(done, total)`` called after each batch.
ProgressCallback = Callable[[int, int], None]

DESCRIBE_PROMPT = ("Describe this astronomical image in two or three sentences: what objects are visible, "
                   "their shapes and any notable features.")


def _checked_text(value, what: str, example: str) -> str:
    """``value`` stripped, or an error when it is not text or is blank."""
    if value is None:
        raise AstroVLMError(f"The {what} is missing (None); {example}")
    if not isinstance(value, str):
        raise AstroVLMError(f"The {what} must be text (a str), got {type(value).__name__} {value!r}; "
                            f"{example}")
    if not value.strip():
        raise AstroVLMError(f"The {what} is empty; {example}")
    return value.strip()


def _checked_max_new_tokens(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise AstroVLMError(f"max_new_tokens must be a positive whole number of tokens (e.g. 128), got "
                            f"{value!r}.")
    return int(value)


class OperationCancelled(AstroVLMError):
    """A run was cancelled; ``results`` holds what finished before, so nothing done is lost."""

    def __init__(self, results: list[Result]):
        super().__init__(f"Cancelled after {len(results)} result(s); the finished results are kept.")
        self.results = results


@dataclass(frozen=True)
class ModelImage:
    """A picture ready for a model, with where it came from."""

    image: Any  # PIL.Image.Image, RGB
    provenance: Provenance | None
    stretch: str


def as_model_images(images) -> list[ModelImage]:
    """Normalise cutouts, 2-D/3-D arrays and PIL images (one or a sequence) into `ModelImage` objects.

    Arrays are stretched with the default stretch (zscale, contrast 0.25, linear), row 0 at the
    bottom as in FITS; PIL images are taken as already displayed.
    """
    from PIL import Image

    if isinstance(images, (Cutout, np.ndarray, Image.Image, ModelImage)):
        images = [images]
    converted = []
    for item in images:
        if isinstance(item, ModelImage):  # rendered already (a survey run renders on other processes)
            converted.append(item)
        elif isinstance(item, Cutout):
            converted.append(ModelImage(item.to_image(), item.provenance, item.stretch_text()))
        elif isinstance(item, Image.Image):
            converted.append(ModelImage(item.convert("RGB"), None, "as given"))
        elif isinstance(item, np.ndarray):
            if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[0] != 3):
                raise AstroVLMError(f"An image array must be 2-D (ny, nx) or (3, ny, nx), got shape {item.shape}; "
                                    "reduce a cube to one plane first (see glue_astrovlm.cubes).")
            ny, nx = item.shape[-2:]
            cutout = Cutout(item, Provenance(source="array", bbox=(0, nx, 0, ny),
                                             center_pixel=((nx - 1) / 2, (ny - 1) / 2)))
            converted.append(ModelImage(cutout.to_image(), cutout.provenance, cutout.stretch_text()))
        else:
            raise AstroVLMError(f"Cannot send {type(item).__name__} to a model; pass a Cutout, "
                                "a 2-D numpy array or a PIL image.")
    if not converted:
        raise AstroVLMError("No images were given.")
    return converted


class VLM(abc.ABC):
    """A vision-language model: ask, describe, classify.

    Every method takes ``images`` as one or a sequence of `~glue_astrovlm.Cutout`, 2-D arrays or
    PIL images, and returns one `~glue_astrovlm.Result` per image in the same order. Long runs
    call ``progress(done, total)`` after each batch and stop between batches when ``cancel`` (a
    `threading.Event`) is set, raising `OperationCancelled` with the finished results.
    """

    #: Model id, path or endpoint (never a secret).
    name: str = ""
    #: Active adapter name or None.
    adapter: str | None = None

    def ask(self, images, question: str, *, max_new_tokens: int = 128, progress: ProgressCallback | None = None,
            cancel=None) -> list[Result]:
        """Answer ``question`` about each image. Returns results with ``task='ask'`` and ``answer`` set.

        Raises
        ------
        AstroVLMError
            If ``question`` is not text or is blank, or ``max_new_tokens`` is not a positive integer.
        """
        question = _checked_text(question, "question", "type what you want to know about the image, e.g. "
                                 "vlm.ask(cutout, 'Is there a jet?').")
        max_new_tokens = _checked_max_new_tokens(max_new_tokens)
        return self._generate(as_model_images(images), question, "ask", max_new_tokens, progress, cancel)

    def converse(self, conversation, question: str, *, max_new_tokens: int = 128, adapter=...) -> Result:
        """Ask ``question`` as the next turn of ``conversation`` (a `glue_astrovlm.Conversation`).

        The earlier turns go with it through the model's chat template; the answer is added to the
        conversation and returned with its ``turn`` number. ``adapter`` is for local models with adapters.

        Raises
        ------
        AstroVLMError
            If ``question`` is blank, or the conversation would not fit the model's context.
        """
        question = _checked_text(question, "question", "type a follow-up question, e.g. "
                                 "conversation.ask(vlm, 'Which side is brighter?').")
        max_new_tokens = _checked_max_new_tokens(max_new_tokens)
        return conversation.add_turn(question, self._converse(conversation, question, max_new_tokens))

    def _converse(self, conversation, question: str, max_new_tokens: int) -> Result:
        raise AstroVLMError(f"{type(self).__name__} cannot hold a conversation; ask each question alone.")

    def describe(self, images, *, prompt: str = DESCRIBE_PROMPT, max_new_tokens: int = 128,
                 progress: ProgressCallback | None = None, cancel=None) -> list[Result]:
        """Caption each image. Returns results with ``task='describe'``.

        Raises
        ------
        AstroVLMError
            If ``prompt`` is not text or is blank, or ``max_new_tokens`` is not a positive integer.
        """
        prompt = _checked_text(prompt, "describe prompt", "leave prompt= out for the default caption "
                               "request, or give the instruction as text.")
        max_new_tokens = _checked_max_new_tokens(max_new_tokens)
        return self._generate(as_model_images(images), prompt, "describe", max_new_tokens, progress, cancel)

    def classify(self, images, labels=None, *, preset: str | None = None, question: str | None = None,
                 progress: ProgressCallback | None = None, cancel=None) -> list[Result]:
        """Score every label as the answer for each image.

        Parameters
        ----------
        images : Cutout, array, PIL image or a sequence of them
        labels : LabelSet, list of str, dict of label -> description, or label-file path
            Without ``labels`` and ``preset``, a fine-tuned model or active adapter uses the label
            set it was trained with (`trained_record`).
        preset : str, optional
            A shipped label set instead of ``labels`` (see ``astrovlm presets``).
        question : str, optional
            Replaces the label set's question.

        Returns
        -------
        list of Result
            ``label``, ``confidence`` and ``probabilities`` (summing to 1) for every image; no image is
            skipped, because nothing is parsed from generated text.
        """
        record = self.trained_record()
        trained = recorded_label_set(record)
        if labels is None and preset is None and trained is not None:
            label_set = resolve_labels(trained, question=question)
        else:
            label_set = resolve_labels(labels, preset, question)
        model_images = as_model_images(images)
        if record is not None:
            _warn_if_unlike_training(record, trained, label_set, model_images)
        return self._classify(model_images, label_set, progress, cancel)

    def trained_record(self) -> dict | None:
        """What ``astrovlm finetune`` recorded for the active adapter or fine-tuned model, if anything."""
        return None

    @abc.abstractmethod
    def _generate(self, images: list[ModelImage], prompt: str, task: str, max_new_tokens: int,
                  progress, cancel) -> list[Result]:
        ...

    @abc.abstractmethod
    def _classify(self, images: list[ModelImage], label_set: LabelSet, progress, cancel) -> list[Result]:
        ...

    def close(self) -> None:
        """Release memory or connections held by the backend."""

    def __repr__(self) -> str:
        adapter = f", adapter={self.adapter!r}" if self.adapter else ""
        return f"<{type(self).__name__} {self.name!r}{adapter}>"


def classification_result(model_image: ModelImage, label_set: LabelSet, probabilities: Sequence[float],
                          model: str, adapter: str | None, image_tokens: int | None) -> Result:
    """Build a classification `Result` from one probability per label (normalised here)."""
    probs = np.asarray(probabilities, dtype=float)
    probs = probs / probs.sum()
    best = int(np.argmax(probs))
    return Result(task="classify", provenance=model_image.provenance, label=label_set.labels[best],
                  confidence=float(probs[best]),
                  probabilities={label: float(p) for label, p in zip(label_set.labels, probs)},
                  answer=label_set.labels[best], prompt=label_set.prompt(), prompt_hash=label_set.prompt_hash(),
                  model=model, adapter=adapter, stretch=model_image.stretch, image_tokens=image_tokens,
                  label_set=label_set.describe())


def text_result(model_image: ModelImage, task: str, prompt: str, answer: str, model: str,
                adapter: str | None, image_tokens: int | None) -> Result:
    """Build an ask/describe `Result`."""
    import hashlib

    return Result(task=task, provenance=model_image.provenance, answer=answer.strip(), prompt=prompt,
                  prompt_hash=hashlib.sha256(prompt.encode()).hexdigest()[:12], model=model, adapter=adapter,
                  stretch=model_image.stretch, image_tokens=image_tokens)


def _warn_if_unlike_training(record: dict, trained, label_set, images) -> None:
    """Say when a fine-tuned model is used on labels or a stretch it was not trained with."""
    if trained is not None and set(trained.labels) != set(label_set.labels):
        log.warning("This adapter/model was fine-tuned to answer %s, not %s; its probabilities for other labels "
                    "mean little. Leave out labels and preset to use the trained ones.",
                    list(trained.labels), list(label_set.labels))
    elif trained is not None and trained.prompt() != label_set.prompt():
        log.warning("The labels match the fine-tuning but the question or descriptions differ from its "
                    "training prompt; results may not reflect its training.")
    stretch = record.get("stretch_text")
    used = {image.stretch for image in images if image.stretch not in (None, "as given")}
    if stretch and used and used != {stretch}:
        log.warning("This adapter/model was fine-tuned on images scaled with %s, but these cutouts use %s; "
                    "use the same stretch for results that reflect the training.", stretch,
                    ", ".join(sorted(used)))