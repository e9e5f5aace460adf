"""Reference-based metrics of free-form answers, from torchmetrics' text metrics.

Short reference answers ("FRII", "yes, to the north") are scored by exact match after SQuAD's
normalisation (lower case, no punctuation or articles). Long ones (a description, a sentence) are
scored by n-gram overlap (sentence BLEU with smoothing, ROUGE-L F-measure, chrF) and, when an
embedding model is given, by an embedding similarity (BERTScore F1 of that model's hidden states).
A reference of at most `SHORT_WORDS` words is short. Every metric is computed by torchmetrics;
nothing here re-implements one.

The metrics need ``pip install 'glue-astrovlm[eval]'`` (torchmetrics).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from .errors import AstroVLMError

__all__ = ["SHORT_WORDS", "TEXT_METRICS", "is_short", "text_scores"]

log = logging.getLogger("glue_astrovlm")

#: References with at most this many words are short answers (exact match); longer ones are texts.
SHORT_WORDS = 3
#: The per-question metrics, in report order: name -> (what it is, short or long references).
TEXT_METRICS = {
    "exact_match": ("exact match after SQuAD normalisation", "short"),
    "bleu": ("sentence BLEU-4 with add-one smoothing", "long"),
    "rouge_l": ("ROUGE-L F-measure", "long"),
    "chrf": ("chrF (character n-gram F-score)", "long"),
    "embedding": ("BERTScore F1 with the embedding model", "long"),
}


def is_short(reference: str) -> bool:
    """Whether ``reference`` is a short answer (scored by exact match)."""
    return len(reference.split()) <= SHORT_WORDS


def _functional():
    try:
        from torchmetrics.functional import text
    except ImportError as error:
        raise AstroVLMError(
            "Free-form evaluation needs torchmetrics: pip install 'glue-astrovlm[eval]'."
        ) from error
    return text


def _exact_match(text, answer: str, reference: str) -> float:
    scores = text.squad(
        [{"prediction_text": answer, "id": "q"}],
        [{"answers": {"answer_start": [0], "text": [reference]}, "id": "q"}],
    )
    return float(scores["exact_match"]) / 100.0


def _require_safetensors(model: str) -> None:
    """Refuse an embedding model without safetensors weights (pickled weights can run code)."""
    from transformers.utils import cached_file

    for name in ("model.safetensors", "model.safetensors.index.json"):
        try:
            if cached_file(model, name, _raise_exceptions_for_missing_entries=False):
                return
        except OSError:
            pass
    raise AstroVLMError(f"The embedding model {model} has no safetensors weights (model.safetensors); only "
                        "safetensors are loaded. Use a model that ships them, or convert it.")


def _embedding_similarity(text, answers: list[str], references: list[str], model: str) -> np.ndarray:
    """BERTScore F1 of each pair with ``model`` (a Hub id or folder); empty answers score 0."""
    from pathlib import Path

    scores = np.zeros(len(answers))
    filled = [i for i, answer in enumerate(answers) if answer.strip()]
    if not filled:
        return scores
    folder = Path(str(model)).expanduser()
    _require_safetensors(str(folder) if folder.is_dir() else str(model))
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder) if folder.is_dir() else str(model))
        result = text.bert_score(
            [answers[i] for i in filled],
            [references[i] for i in filled],
            model_name_or_path=str(folder) if folder.is_dir() else str(model),
            num_layers=getattr(config, "num_hidden_layers", None),
            verbose=False,
        )
    except OSError as error:
        raise AstroVLMError(
            f"Cannot load the embedding model {model}: {error}. Give a Hub id in the cache or "
            "a folder with config.json, the tokenizer and safetensors weights."
        ) from None
    scores[filled] = np.asarray(result["f1"], dtype=float).reshape(-1)
    return scores


def text_scores(
    answers: Sequence[str], references: Sequence[str], *, embedding_model: str | None = None
) -> dict[str, np.ndarray]:
    """Per-question metrics of ``answers`` against ``references`` (NaN where a metric does not apply).

    Parameters
    ----------
    answers, references : sequence of str
        One answer per reference, in the same order.
    embedding_model : str, optional
        Hub id or folder of a transformers encoder for the embedding similarity (e.g. a BERT or
        sentence-transformers model); without it the ``embedding`` scores are NaN.

    Returns
    -------
    dict of str to numpy.ndarray
        One array per name in `TEXT_METRICS`, each of ``len(references)`` values in [0, 1]:
        ``exact_match`` for short references, the others for long ones.
    """
    if len(answers) != len(references):
        raise AstroVLMError(
            f"{len(answers)} answers for {len(references)} references: every reference needs one answer."
        )
    text = _functional()
    n = len(references)
    scores = {name: np.full(n, np.nan) for name in TEXT_METRICS}
    long = []
    for i, (answer, reference) in enumerate(zip(answers, references)):
        answer = answer or ""
        if is_short(reference):
            scores["exact_match"][i] = _exact_match(text, answer, reference)
            continue
        long.append(i)
        scores["bleu"][i] = float(text.bleu_score([answer], [[reference]], n_gram=4, smooth=True))
        scores["rouge_l"][i] = float(
            text.rouge_score(answer, reference, rouge_keys="rougeL")["rougeL_fmeasure"]
        )
        scores["chrf"][i] = float(text.chrf_score([answer], [[reference]]))
    if embedding_model is not None and long:
        similarity = _embedding_similarity(
            text, [answers[i] or "" for i in long], [references[i] for i in long], embedding_model
        )
        scores["embedding"][long] = similarity
    return scores
