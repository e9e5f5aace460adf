"""The model stage of a survey run: rendered records in, rows of the results table out.

`Scorer` loads the model once (on first use, in whichever process holds it: the driver for the local
engine, a Ray actor for the Ray engine) and scores through the model's own ``classify`` or ``ask``,
so a survey row gets exactly what ``astrovlm classify`` gives the same cutout: the KV-cache label
scoring of a local model, or a server's log-probabilities through the remote backend (whose
requests it already bounds per server).
"""

from __future__ import annotations

import numpy as np

from ..errors import AstroVLMError
from .stage import PROVENANCE_COLUMNS

__all__ = ["Scorer", "SURVEY_TASKS"]

#: What a survey run can ask of each row.
SURVEY_TASKS = ("classify", "ask")


class Scorer:
    """Score records of `~glue_astrovlm.survey.stage.cut_block` with one model.

    Parameters
    ----------
    model : str, path or VLM
        What `~glue_astrovlm.load_model` loads (Hub id, folder, server URL), or a loaded VLM (local
        engine only: a loaded model cannot be sent to other processes).
    task : {'classify', 'ask'}
    labels : LabelSet, list or label file, optional
        The label set of ``classify`` (or ``preset``).
    question : str, optional
        The question of ``ask``, or a replacement question for ``classify``.
    load_options : dict, optional
        Keyword arguments of `~glue_astrovlm.load_model` (device, dtype, batch_size, adapter, ...).
    """

    def __init__(
        self,
        model,
        *,
        task: str = "classify",
        labels=None,
        preset: str | None = None,
        question: str | None = None,
        max_new_tokens: int = 128,
        load_options: dict | None = None,
    ):
        from ..labelsets import resolve_labels
        from ..results import probability_columns

        if task not in SURVEY_TASKS:
            raise AstroVLMError(f"A survey run can {' or '.join(SURVEY_TASKS)}, not {task!r}.")
        self.task, self.question, self.max_new_tokens = task, question, int(max_new_tokens)
        self.label_set = None
        if task == "classify":
            if labels is None and preset is None:
                raise AstroVLMError("Give the labels (or a preset) to classify a survey catalogue.")
            self.label_set = resolve_labels(labels, preset, question)
        elif not question:
            raise AstroVLMError("Give the question to ask about every row.")
        self.prob_columns = probability_columns(self.label_set.labels) if self.label_set is not None else {}
        self._model = model if not isinstance(model, str) else None
        self.spec = model if isinstance(model, str) else getattr(model, "name", str(model))
        self.load_options = dict(load_options or {})
        #: Images sent to the model by this scorer (what a resumed run saves is counted here).
        self.images_scored = 0

    def vlm(self):
        """The model, loaded on first use."""
        if self._model is None:
            from ..models.loading import load_model

            self._model = load_model(self.spec, **self.load_options)
        return self._model

    def _results(self, records: list[dict]):
        from PIL import Image

        from ..models.base import ModelImage

        images = [
            ModelImage(Image.fromarray(np.asarray(r["image"], dtype=np.uint8)), None, r["stretch"])
            for r in records
        ]
        vlm = self.vlm()
        self.images_scored += len(images)
        if self.task == "classify":
            return vlm.classify(images, self.label_set)
        return vlm.ask(images, self.question, max_new_tokens=self.max_new_tokens)

    def empty_row(self) -> dict:
        """The result columns of a row the model did not see."""
        row = {
            "task": self.task,
            "label": "",
            "confidence": np.nan,
            "label_set": self.label_set.describe() if self.label_set is not None else "",
        }
        row.update({column: np.nan for column in self.prob_columns.values()})
        row.update(
            answer="", prompt_hash="", model=str(self.spec), adapter="", stretch="", image_tokens=-1, time=""
        )
        return row

    def score(self, records: list[dict]) -> list[dict]:
        """One results-table row per record, in order; failed records pass through with their error."""
        todo = [r for r in records if not r["error"]]
        results = iter(self._results(todo)) if todo else iter(())
        rows = []
        for record in records:
            row = {"row": int(record["row"]), **{name: record[name] for name in PROVENANCE_COLUMNS}}
            if record["error"]:
                row.update(self.empty_row())
            else:
                result_row = next(results).to_row(self.prob_columns)
                row.update({k: v for k, v in result_row.items() if k not in PROVENANCE_COLUMNS})
                row["stretch"] = record["stretch"]
            row["error"] = record["error"]
            rows.append(row)
        return rows

    def describe(self) -> dict:
        """What the run asks, recorded in the manifest and compared when resuming."""
        return {
            "task": self.task,
            "labels": list(self.label_set.labels) if self.label_set is not None else None,
            "question": self.question if self.task == "ask" else (self.label_set.question or None),
            "model": str(self.spec),
        }
