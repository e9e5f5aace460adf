"""Free-form answers evaluated (`astrovlm eval` on conversation or caption data).

Every gpt turn of a conversation (or every caption) is a reference answer. Each system answers the
question of that turn in a `~glue_astrovlm.Conversation` about the image, with the *reference*
answers of the earlier turns as context (so that a wrong early answer does not spoil the later
questions), and its answer is scored by:

- `~glue_astrovlm.text_metrics.text_scores`: exact match for short references, BLEU, ROUGE-L,
  chrF and an embedding similarity for long ones;
- optionally an LLM judge (`~glue_astrovlm.judging.Judge`), three times per answer for its
  self-agreement.

Every reference is counted: an answer that cannot be produced is an error, never a skip.
`FreeformReport.write` writes ``report.md`` (or ``.html``) with the systems side by side, 95%
bootstrap intervals, the judge's reliability and the questions where two systems differ most;
``metrics.json``; ``per_question.ecsv``; and ``judge_verdicts.jsonl`` (every raw verdict with the
rubric's hash).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import AstroVLMError
from .metrics import bootstrap_accuracy
from .results import atomic_write
from .text_metrics import text_scores

__all__ = ["FreeformSystem", "FreeformReport", "evaluate_freeform"]

log = logging.getLogger("glue_astrovlm")


@dataclass
class FreeformSystem:
    """One system's answers and scores; ``cases[i]`` is reference ``i`` with its answer."""

    name: str
    model: str
    adapter: str | None
    cases: list[dict]
    scores: dict[str, np.ndarray]
    seconds: float
    verdicts: list = field(default_factory=list)

    def judge_scores(self) -> np.ndarray:
        """The judge's score of each case (first judgement, reference first); NaN without a judge."""
        first = {
            (v.item, v.turn): v.score for v in self.verdicts if v.order == "reference first" and v.repeat == 0
        }
        return np.array([first.get((c["item"], c["turn"]), np.nan) for c in self.cases], dtype=float)

    def summary(self, n_boot: int = 2000, seed: int = 0) -> dict:
        """Mean, 95% bootstrap interval and count of every metric (and of the judge's score)."""
        out = {}
        columns = dict(self.scores)
        if self.verdicts:
            columns["judge"] = self.judge_scores()
        for name, values in columns.items():
            kept = values[~np.isnan(values)]
            if len(kept):
                low, high = bootstrap_accuracy(kept, n_boot, seed=seed)
                out[name] = {"mean": float(kept.mean()), "ci95": [low, high], "n": int(len(kept))}
            else:
                out[name] = {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
        return out


def _cases(dataset, stretch, crop) -> list[dict]:
    """Every reference answer of the data, with its question, the earlier turns and the image."""
    cases = []
    for item in dataset.items:
        try:
            cutout = item.cutout(stretch, crop)
        except AstroVLMError as error:
            raise AstroVLMError(f"Cannot evaluate image {item.path} ({item.item_id}): {error}") from None
        turns = item.turns()
        flags = getattr(item, "corrected", None) or ()
        for index in range(1, len(turns), 2):
            flag = flags[index // 2] if index // 2 < len(flags) else None
            cases.append(
                {
                    "item": item.item_id,
                    "turn": (index + 1) // 2,
                    "image": cutout,
                    "question": turns[index - 1][1],
                    "reference": turns[index][1],
                    "history": turns[: index - 1],
                    "uncorrected": flag is False,  # an exported model answer nobody corrected
                }
            )
    return cases


def _answer(system, cases: list[dict], max_new_tokens: int, progress) -> list[str]:
    """The system's answer to every case, each asked in a conversation with the reference history."""
    from .conversations import Conversation

    answers: list[str] = []
    conversation, current = None, None
    for case in cases:
        if case["item"] != current or len(conversation.turns) != len(case["history"]) // 2:
            conversation, current = Conversation(case["image"]), case["item"]
            if case["history"]:  # resumed mid-conversation: ask the earlier turns too (answers replaced)
                raise AstroVLMError(f"{case['item']}: conversation turns are out of order.")
        result = conversation.ask(
            system.vlm, case["question"], max_new_tokens=max_new_tokens, adapter=system.adapter
        )
        conversation.correct(result.turn, case["reference"])  # the next turn sees the reference
        answers.append(result.answer)
        if progress is not None:
            progress(1)
    return answers


def _warn_uncorrected(cases: list[dict]) -> int:
    """How many references are a model's own exported answers nobody corrected; warns if any."""
    uncorrected = sum(case["uncorrected"] for case in cases)
    if uncorrected:
        log.warning(
            "%d of %d references are a model's own answers that nobody corrected (\"corrected\": false in "
            "the export); they score the model that gave them against itself. Export with "
            "only_corrected=True to leave them out.", uncorrected, len(cases)
        )
    return uncorrected


def evaluate_freeform(
    systems,
    dataset,
    *,
    judge=None,
    embedding_model: str | None = None,
    stretch=None,
    crop: float = 1.0,
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 128,
    show_progress: bool = False,
    n_boot: int = 2000,
) -> "FreeformReport":
    """Answer every reference question of ``dataset`` with each system and score the answers.

    Parameters
    ----------
    systems : VLM, System or a sequence of them
        As for `glue_astrovlm.evaluation.evaluate` (base and adapters side by side).
    dataset : ImageDataset
        Conversation or caption data (`glue_astrovlm.datasets.load_dataset`).
    judge : Judge, optional
        An LLM judge (`glue_astrovlm.judging.Judge`).
    embedding_model : str, optional
        Hub id or folder of the encoder of the embedding similarity.
    stretch, crop, limit, seed
        As for classification: how pixels become images, the central fraction kept, a random
        ``limit`` of the items (drawn with ``seed``, also the bootstrap's seed).
    max_new_tokens : int
        Longest answer.
    n_boot : int
        Bootstrap resamples of the intervals.
    """
    from tqdm.auto import tqdm

    from .evaluation import System, _system_name
    from .models.base import VLM

    if dataset.kind not in ("conversation", "caption"):
        raise AstroVLMError(
            f"Free-form evaluation needs conversation or caption data; {dataset.source} holds "
            f"{dataset.kind} data (astrovlm eval scores labels on it)."
        )
    if isinstance(systems, (VLM, System)):
        systems = [systems]
    systems = [s if isinstance(s, System) else System(_system_name(s), s) for s in systems]
    dataset = dataset.sample(limit, seed)
    cases = _cases(dataset, stretch, crop)
    uncorrected = _warn_uncorrected(cases)
    done = []
    for system in systems:
        began = time.perf_counter()
        with tqdm(
            total=len(cases), desc=f"answer {system.name}", unit="question", disable=not show_progress
        ) as bar:
            answers = _answer(system, cases, max_new_tokens, bar.update)
        seconds = time.perf_counter() - began
        if len(answers) != len(cases):  # never skip: every reference counts
            raise AstroVLMError(f"{system.name} answered {len(answers)} of {len(cases)} questions.")
        own = [{**case, "answer": answer} for case, answer in zip(cases, answers)]
        scores = text_scores(answers, [c["reference"] for c in cases], embedding_model=embedding_model)
        verdicts = []
        if judge is not None:
            with tqdm(
                total=len(own), desc=f"judge {system.name}", unit="answer", disable=not show_progress
            ) as bar:
                verdicts = judge.judge_all(system.name, own, bar.update)
        adapter = getattr(system.vlm, "adapter", None) if system.adapter is ... else system.adapter
        done.append(
            FreeformSystem(
                system.name, str(getattr(system.vlm, "name", "")), adapter, own, scores, seconds, verdicts
            )
        )
        log.info("%s: %d questions answered in %.1f s", system.name, len(own), seconds)
    return FreeformReport(
        dataset, done, judge, embedding_model, n_boot=n_boot, seed=seed, uncorrected_references=uncorrected
    )


@dataclass
class FreeformReport:
    """What `evaluate_freeform` measured; `write` puts it in a folder."""

    dataset: object
    systems: list[FreeformSystem]
    judge: object = None
    embedding_model: str | None = None
    n_boot: int = 2000
    seed: int = 0
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    #: References that are a model's own exported answers, never corrected (``"corrected": false``).
    uncorrected_references: int = 0

    def same_model_judge(self) -> list[str]:
        """The systems whose model is also the judge (their judged scores are not independent)."""
        from .judging import same_model

        if self.judge is None:
            return []
        return [s.name for s in self.systems if same_model(s.model, self.judge.name)]

    def reliability(self) -> dict:
        from .judging import agreement

        return agreement([v for s in self.systems for v in s.verdicts])

    def to_dict(self) -> dict:
        from .evaluation import _json_safe

        judge = None
        if self.judge is not None:
            judge = {
                "model": self.judge.name,
                "method": self.judge.method,
                "prompt_hash": self.judge.prompt_hash,
                "same_model_as": self.same_model_judge(),
                "agreement": self.reliability(),
            }
        return _json_safe(
            {
                "generator": "glue-astrovlm eval",
                "created": self.created,
                "data": self.dataset.describe(),
                "questions": len(self.systems[0].cases) if self.systems else 0,
                "uncorrected_references": self.uncorrected_references,
                "judge": judge,
                "embedding_model": self.embedding_model,
                "systems": {
                    s.name: {
                        "model": s.model,
                        "adapter": s.adapter,
                        "seconds": s.seconds,
                        "metrics": s.summary(self.n_boot, self.seed),
                    }
                    for s in self.systems
                },
            }
        )

    def per_question_table(self):
        """An astropy Table: one row per reference question and system, with every score."""
        from astropy.table import Table

        rows = []
        for system in self.systems:
            judged = system.judge_scores()
            for i, case in enumerate(system.cases):
                row = {
                    "system": system.name,
                    "item": case["item"],
                    "turn": case["turn"],
                    "question": case["question"],
                    "reference": case["reference"],
                    "answer": case["answer"],
                }
                row.update({name: float(values[i]) for name, values in system.scores.items()})
                row["judge"] = float(judged[i])
                rows.append(row)
        return Table(rows=rows) if rows else Table()

    def differences(self, first: int = 0, second: int = 1, count: int = 5) -> list[dict]:
        """The questions where two systems differ most: by the judge's score, then (ties, or no judge) by
        the text score (chrF for long references, exact match for short ones)."""
        a, b = self.systems[first], self.systems[second]

        def text(system):
            return np.where(
                np.isnan(system.scores["chrf"]), system.scores["exact_match"], system.scores["chrf"]
            )

        judged = np.nan_to_num(b.judge_scores() - a.judge_scores())
        texts = np.nan_to_num(text(b) - text(a))
        order = sorted(range(len(a.cases)), key=lambda i: (-abs(judged[i]), -abs(texts[i])))[:count]
        return [
            {
                "item": a.cases[i]["item"],
                "turn": a.cases[i]["turn"],
                "question": a.cases[i]["question"],
                "reference": a.cases[i]["reference"],
                a.name: a.cases[i]["answer"],
                b.name: b.cases[i]["answer"],
                "judge difference": float(judged[i]),
                "text difference": float(texts[i]),
            }
            for i in order
        ]

    def write(self, out_dir, *, format: str = "md", overwrite: bool = False) -> list[Path]:
        """Write ``report.<format>``, ``metrics.json``, ``per_question.ecsv`` and ``judge_verdicts.jsonl``."""
        from .freeform_report import render

        if format not in ("md", "html"):
            raise AstroVLMError(f"Unknown report format {format!r}; use md or html.")
        out_dir = Path(out_dir)
        names = [f"report.{format}", "metrics.json", "per_question.ecsv", "judge_verdicts.jsonl"]
        existing = [n for n in names if (out_dir / n).exists()]
        if existing and not overwrite:
            raise AstroVLMError(
                f"{out_dir} already holds {', '.join(existing)}; choose another --out or pass --overwrite."
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        table = self.per_question_table()
        written = [
            atomic_write(
                out_dir / "per_question.ecsv",
                lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True),
                overwrite,
            )
        ]
        texts = {
            "metrics.json": json.dumps(self.to_dict(), indent=2),
            f"report.{format}": render(self, format),
        }
        if self.judge is not None:
            texts["judge_verdicts.jsonl"] = "".join(
                json.dumps({**v.to_dict(), "judge": self.judge.name}) + "\n"
                for s in self.systems
                for v in s.verdicts
            )
        for name, text in texts.items():
            written.append(
                atomic_write(
                    out_dir / name, lambda tmp, text=text: Path(tmp).write_text(text, "utf-8"), overwrite
                )
            )
        return written
