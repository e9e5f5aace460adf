"""The Markdown/HTML report of a free-form evaluation (`glue_astrovlm.freeform.FreeformReport.write`)."""

from __future__ import annotations

import math

from .text_metrics import SHORT_WORDS, TEXT_METRICS

__all__ = ["render"]


def _cell(entry: dict) -> str:
    if not entry["n"] or math.isnan(entry["mean"]):
        return "-"
    low, high = entry["ci95"]
    return f"{entry['mean']:.3f} [{low:.3f}, {high:.3f}] (n={entry['n']})"


def _short(text: str, length: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= length else text[: length - 1] + "…"


def _summary(doc, report, names) -> None:
    doc.heading(2, "Summary")
    header = ["system", "model"] + names
    rows = []
    for system in report.systems:
        summary = system.summary(report.n_boot, report.seed)
        model = system.model + (f" + {system.adapter}" if system.adapter else "")
        rows.append([system.name, model] + [_cell(summary[name]) for name in names])
    doc.table(header, rows)
    described = "; ".join(
        f"{name}: {what} ({kind} references)" for name, (what, kind) in TEXT_METRICS.items()
    )
    doc.para(
        f"Each cell: mean [95% percentile bootstrap interval over questions] (questions scored). A reference "
        f"of at most {SHORT_WORDS} words is short. {described}. "
        + (
            "The embedding model is " + report.embedding_model + "."
            if report.embedding_model
            else "No embedding model was given (--embedding-model), so there is no embedding similarity."
        )
    )


def _judge(doc, report) -> None:
    judge = report.judge
    doc.heading(2, "Judge")
    candidates = ", ".join(f"{s.name} ({s.model})" for s in report.systems)
    doc.para(
        f"Judge: {judge.name}, method {judge.method}, rubric hash {judge.prompt_hash}. Candidates: "
        f"{candidates}. Verdicts: correct = 1, partially correct = 0.5, wrong = 0; every raw verdict is in "
        "judge_verdicts.jsonl."
    )
    same = report.same_model_judge()
    if same:
        doc.para(
            f"WARNING: the judge is the same model as the candidate {', '.join(same)}. A model grading "
            "its own answers is not an independent judge; treat its scores as a self-assessment and use "
            "another judge (--judge) for a comparison that counts."
        )
    reliability = report.reliability()
    if judge.method == "score" or math.isnan(reliability["repeat"]):
        doc.para(
            f"Reliability over {reliability['n']} answers: the judge gave the same verdict when the reference "
            f"and the answer were shown in the other order in {reliability['swap']:.1%} of cases. It was not "
            "asked twice: scoring the verdicts (method score) is deterministic, so a repeat would agree by "
            "construction and say nothing of its reliability."
        )
    else:
        doc.para(
            f"Reliability over {reliability['n']} answers: the judge gave the same verdict when asked twice "
            f"in {reliability['repeat']:.1%} of cases, and when the reference and the answer were shown in "
            f"the other order in {reliability['swap']:.1%}."
        )
    rows = []
    for system in report.systems:
        counts = {}
        for verdict in system.verdicts:
            if verdict.order == "reference first" and verdict.repeat == 0:
                counts[verdict.verdict] = counts.get(verdict.verdict, 0) + 1
        rows.append(
            [system.name] + [str(counts.get(v, 0)) for v in ("correct", "partially correct", "wrong")]
        )
    doc.table(["system", "correct", "partially correct", "wrong"], rows)


def render(report, format: str) -> str:
    """The report's text in ``format`` ('md' or 'html')."""
    from .evaluation import _Doc

    doc = _Doc(format)
    data = report.dataset.describe()
    questions = len(report.systems[0].cases) if report.systems else 0
    doc.heading(1, "Free-form evaluation report")
    doc.para(
        f"Data: {data['source']} ({data['n']} {data['kind']} items, {questions} reference answers; every one "
        f"is counted). Each question is asked in a conversation about the image whose earlier turns carry "
        f"the reference answers. Generated {report.created} by glue-astrovlm."
    )
    if report.uncorrected_references:
        doc.para(
            f"WARNING: {report.uncorrected_references} of the {questions} references are a model's own "
            "answers that nobody corrected (marked \"corrected\": false in the export): the model that gave "
            "them is scored against itself there. Export only the corrected turns "
            "(write_llava_json(..., only_corrected=True)) for references that count."
        )
    _summary(doc, report, list(TEXT_METRICS) + (["judge"] if report.judge is not None else []))
    if report.judge is not None:
        _judge(doc, report)
    if len(report.systems) >= 2:
        a, b = report.systems[0], report.systems[1]
        doc.heading(2, f"Largest differences: {b.name} against {a.name}")
        doc.para(
            f"Questions where {b.name} and {a.name} differ most: by the judge's score ({b.name} minus "
            f"{a.name}), then by the text score (chrF for long references, exact match for short ones)."
        )
        doc.table(
            ["item", "turn", "question", "reference", a.name, b.name, "judge diff.", "text diff."],
            [
                [
                    d["item"],
                    str(d["turn"]),
                    _short(d["question"], 80),
                    _short(d["reference"]),
                    _short(d[a.name]),
                    _short(d[b.name]),
                    f"{d['judge difference']:+.3f}",
                    f"{d['text difference']:+.3f}",
                ]
                for d in report.differences()
            ],
        )
    doc.para(
        "Files: metrics.json (every number), per_question.ecsv (every question, answer and score), "
        + ("judge_verdicts.jsonl (every verdict)." if report.judge is not None else "no judge verdicts.")
    )
    return doc.text()
