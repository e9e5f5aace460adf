"""Measure vision-language models on labelled images and write side-by-side reports (`astrovlm eval`).

`evaluate` classifies every image of an `~glue_astrovlm.datasets.ImageDataset` with one or more
*systems* (a model, or a model with one of its LoRA adapters, or the base model with adapters
disabled) through `VLM.classify`, the same scoring the viewers and `astrovlm classify` use, and
computes `~glue_astrovlm.metrics.compute_metrics` for each. Every image counts: scoring a label set
has no unparseable answers, and an unreadable image is an error, never a skip.

`EvaluationReport.write` produces, in one folder:

- ``report.md`` (or ``report.html``): the systems side by side (accuracy with its bootstrap 95%
  interval, macro and weighted F1, ECE), per-class precision/recall/F1, confusion matrices and the
  misclassified images;
- ``confusion_<system>.png`` and ``reliability_<system>.png`` (needs matplotlib:
  ``pip install glue-astrovlm[eval]``);
- ``metrics.json``: every number, machine-readable;
- ``per_image.ecsv``: one row per image and system with the true and predicted label, confidence,
  every label's probability and the file and pixel box, so that misclassified cutouts can be
  opened in glue.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import AstroVLMError
from .labelsets import LabelSet
from .metrics import ClassificationMetrics, compute_metrics
from .results import Result, atomic_write, probability_columns
from .stretch import Stretch

__all__ = ["System", "SystemResult", "EvaluationReport", "evaluate", "classify_cutouts", "REPORT_FORMATS"]

log = logging.getLogger("glue_astrovlm")

REPORT_FORMATS = ("md", "html")
# ----------------------------------------------------------------------------- scoring
@dataclass
class System:
    """One thing to evaluate: a loaded model, optionally with one of its adapters active.

    Parameters
    ----------
    name : str
        Name in the report (``base``, an adapter name, a model name).
    vlm : VLM
        The loaded model.
    adapter : str, None or Ellipsis
        Adapter to activate for this system (`None`: the base model with adapters disabled;
        ``...``: whatever is active).
    """

    name: str
    vlm: object
    adapter: object = ...


def classify_cutouts(vlm, cutouts: Sequence, label_set: LabelSet, *, adapter=...,
                     progress: Callable[[int], None] | None = None) -> list[Result]:
    """`VLM.classify` over ``cutouts``, calling ``progress(n_newly_done)`` after each batch.

    This is the scoring of `astrovlm eval` and of the validation during `astrovlm finetune`: the
    model's own batching, progress and cancellation, with ``adapter`` (a name, or `None` for the base
    model) active for the call.
    """
    reported = [0]

    def report(done: int, _total: int) -> None:
        progress(done - reported[0])
        reported[0] = done

    options = {} if adapter is ... else {"adapter": adapter}
    return vlm.classify(cutouts, label_set, progress=report if progress is not None else None, **options)


def probability_matrix(results: Sequence[Result], labels: Sequence[str]) -> np.ndarray:
    """``(N, K)`` probabilities of ``results`` in ``labels`` order."""
    return np.array([[r.probabilities[label] for label in labels] for r in results], dtype=float)


@dataclass
class SystemResult:
    """The results and metrics of one system."""

    name: str
    model: str
    adapter: str | None
    results: list[Result]
    metrics: ClassificationMetrics
    seconds: float

    def summary(self) -> dict:
        m = self.metrics
        return {"accuracy": m.accuracy, "accuracy_ci95": list(m.accuracy_ci), "balanced_accuracy": m.balanced_accuracy,
                "majority_baseline": m.majority_baseline, "macro_f1": m.macro["f1"],
                "weighted_f1": m.weighted["f1"], "ece": m.ece}


@dataclass
class EvaluationReport:
    """Results of `evaluate`: the data, the label set and one `SystemResult` per system."""

    dataset: object
    label_set: LabelSet
    systems: list[SystemResult]
    stretch: Stretch | None = None
    crop: float = 1.0
    stretch_text: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __getitem__(self, name: str) -> SystemResult:
        for system in self.systems:
            if system.name == name:
                return system
        raise KeyError(name)

    # ------------------------------------------------------------------ tables
    def per_image_table(self):
        """An astropy Table: one row per image and system.

        Columns: image_id, file, hdu, x_pix, y_pix, ra, dec (deg), bbox, true_label, system, model,
        adapter, pred_label, confidence, correct, and ``p_<label>`` for every label.
        """
        from astropy.table import Table

        labels = self.label_set.labels
        columns = probability_columns(labels)
        rows = []
        for system in self.systems:
            for item, result in zip(self.dataset.items, system.results):
                prov = result.provenance
                sky = prov.center_sky if prov is not None else None
                row = {"image_id": item.item_id, "file": str(item.path),
                       "hdu": "" if item.hdu is None else str(item.hdu),
                       "x_pix": prov.center_pixel[0] if prov else np.nan,
                       "y_pix": prov.center_pixel[1] if prov else np.nan,
                       "ra": float(sky.icrs.ra.deg) if sky is not None else np.nan,
                       "dec": float(sky.icrs.dec.deg) if sky is not None else np.nan,
                       "bbox": ",".join(str(int(v)) for v in prov.bbox) if prov else "",
                       "true_label": item.label, "system": system.name, "model": system.model,
                       "adapter": system.adapter or "", "pred_label": result.label,
                       "confidence": float(result.confidence), "correct": result.label == item.label}
                for label in labels:
                    row[columns[label]] = float(result.probabilities[label])
                rows.append(row)
        table = Table(rows=rows, names=list(rows[0]))
        for name in ("x_pix", "y_pix"):
            table[name].unit = "pix"
        for name in ("ra", "dec"):
            table[name].unit = "deg"
        table.meta.update({"generator": "glue-astrovlm eval", "labels": list(labels),
                           "probability_columns": columns,
                           "prompt_hash": self.label_set.prompt_hash(), "stretch": self.stretch_text,
                           "crop": self.crop})
        return table

    def to_dict(self) -> dict:
        """Everything measured, as JSON-ready values (NaN becomes null)."""
        systems = {}
        for system in self.systems:
            systems[system.name] = {"model": system.model, "adapter": system.adapter, "seconds": system.seconds,
                                    "images_per_second": len(system.results) / max(system.seconds, 1e-9),
                                    **system.summary(), "metrics": system.metrics.to_dict()}
        return _json_safe({"generator": "glue-astrovlm eval", "created": self.created,
                           "data": self.dataset.describe(),
                           "label_set": {"name": self.label_set.name, "labels": list(self.label_set.labels),
                                         "prompt": self.label_set.prompt(),
                                         "prompt_hash": self.label_set.prompt_hash()},
                           "stretch": self.stretch_text, "crop": self.crop, "systems": systems})

    # ------------------------------------------------------------------ writing
    def write(self, out_dir, *, format: str = "md", overwrite: bool = False, plots: bool = True) -> list[Path]:
        """Write the report, the JSON, the per-image table and the plots into ``out_dir``.

        Parameters
        ----------
        out_dir : path-like
            Folder (created if needed). Existing files are kept unless ``overwrite``.
        format : {'md', 'html'}
            Report format.
        overwrite : bool
            Replace existing report files.
        plots : bool
            Draw the PNG confusion matrices and reliability diagrams (needs matplotlib).

        Returns
        -------
        list of pathlib.Path
            The files written.
        """
        if format not in REPORT_FORMATS:
            raise AstroVLMError(f"Unknown report format {format!r}; use md or html.")
        out_dir = Path(out_dir)
        names = [f"report.{format}", "metrics.json", "per_image.ecsv"]
        if not overwrite:
            existing = [n for n in names if (out_dir / n).exists()]
            if existing:
                raise AstroVLMError(f"{out_dir} already holds {', '.join(existing)}; choose another --out or "
                                    "pass --overwrite.")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        plot_files: dict[str, dict[str, str]] = {}
        if plots:
            try:
                plot_files = self._plots(out_dir, overwrite)
            except ImportError:
                log.warning("matplotlib is not installed: no PNG plots (pip install 'glue-astrovlm[eval]').")
        written += [out_dir / name for files in plot_files.values() for name in files.values()]
        table = self.per_image_table()
        written.append(atomic_write(out_dir / "per_image.ecsv",
                                    lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True), overwrite))
        text = json.dumps(self.to_dict(), indent=2)
        written.append(atomic_write(out_dir / "metrics.json",
                                    lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite))
        body = self._render(format, plot_files)
        written.append(atomic_write(out_dir / f"report.{format}",
                                    lambda tmp: Path(tmp).write_text(body, encoding="utf-8"), overwrite))
        return written

    def _plots(self, out_dir: Path, overwrite: bool) -> dict[str, dict[str, str]]:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        files = {}
        labels = list(self.label_set.labels)
        for system in self.systems:
            slug = _slug(system.name)
            m = system.metrics
            fig = Figure(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)), dpi=110)
            ax = fig.add_subplot()
            image = ax.imshow(m.confusion, cmap="Blues")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            peak = max(1, m.confusion.max())
            for i in range(len(labels)):
                for j in range(len(labels)):
                    ax.text(j, i, str(m.confusion[i, j]), ha="center", va="center",
                            color="white" if m.confusion[i, j] > peak / 2 else "black")
            ax.set_title(f"{system.name}: accuracy {m.accuracy:.3f}")
            fig.colorbar(image, ax=ax, shrink=0.8)
            fig.tight_layout()
            confusion = f"confusion_{slug}.png"
            atomic_write(out_dir / confusion, lambda tmp: fig.savefig(tmp, format="png"), overwrite)

            fig = Figure(figsize=(4.2, 4.2), dpi=110)
            ax = fig.add_subplot()
            bins = [b for b in m.reliability if b["count"]]
            width = m.reliability[0]["high"] - m.reliability[0]["low"]
            ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=width * 0.9,
                   color="#56B4E9", edgecolor="#0072B2", label="accuracy")
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="#D55E00",
                    label="mean confidence")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xticks(np.linspace(0, 1, 6))
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{system.name}: ECE {m.ece:.3f}")
            ax.legend(loc="upper left", fontsize=8)
            fig.tight_layout()
            reliability = f"reliability_{slug}.png"
            atomic_write(out_dir / reliability, lambda tmp: fig.savefig(tmp, format="png"), overwrite)
            files[system.name] = {"confusion": confusion, "reliability": reliability}
        return files

    def _render(self, format: str, plot_files: dict) -> str:
        doc = _Doc(format)
        labels = list(self.label_set.labels)
        data = self.dataset.describe()
        doc.heading(1, "Evaluation report")
        doc.para(f"Data: {data['source']} ({data['n']} images"
                 + (f", a random {data['limit']} with seed {data['seed']}" if "limit" in data else "") + ").")
        doc.para("Images per class: " + ", ".join(f"{k} {v}" for k, v in data["class_counts"].items()) + ".")
        doc.para(f"Label set: {self.label_set.name} ({', '.join(labels)}), prompt hash "
                 f"{self.label_set.prompt_hash()}. Stretch {self.stretch_text}, central crop {self.crop:g}. "
                 f"Every image is scored; none is skipped. Generated {self.created} by glue-astrovlm.")
        doc.heading(2, "Summary")
        rows = []
        for system in self.systems:
            m = system.metrics
            rows.append([system.name, system.model + (f" + {system.adapter}" if system.adapter else ""),
                         f"{m.accuracy:.3f} [{m.accuracy_ci[0]:.3f}, {m.accuracy_ci[1]:.3f}]",
                         f"{m.balanced_accuracy:.3f}", f"{m.macro['f1']:.3f}", f"{m.weighted['f1']:.3f}",
                         f"{m.ece:.3f}", f"{len(system.results) / max(system.seconds, 1e-9):.2f}"])
        doc.table(["system", "model", "accuracy [95% CI]", "balanced accuracy", "macro F1", "weighted F1", "ECE",
                   "images/s"], rows)
        m = self.systems[0].metrics
        doc.para(f"Baselines: always answering the most frequent class ({m.majority_class}) scores an accuracy of "
                 f"{m.majority_baseline:.3f} on these images; chance for {len(labels)} balanced classes is "
                 f"{m.chance:.3f}, and the balanced accuracy of guessing is {m.chance:.3f} whatever the class "
                 "sizes. The interval is a percentile bootstrap over images.")
        doc.heading(2, "Per class")
        rows = []
        for label in labels:
            row = [label, str(self.systems[0].metrics.per_class[label]["support"])]
            for system in self.systems:
                pc = system.metrics.per_class[label]
                row.append(f"{pc['precision']:.3f} / {pc['recall']:.3f} / {pc['f1']:.3f}")
            rows.append(row)
        doc.table(["label", "support"] + [f"{s.name} P / R / F1" for s in self.systems], rows)
        for system in self.systems:
            doc.heading(2, f"{system.name}")
            doc.para("Confusion matrix (rows: true label, columns: predicted label):")
            doc.table(["true \\ predicted"] + labels,
                      [[label] + [str(v) for v in row] for label, row in zip(labels, system.metrics.confusion)])
            if system.name in plot_files:
                doc.image(plot_files[system.name]["confusion"], f"confusion matrix of {system.name}")
                doc.image(plot_files[system.name]["reliability"], f"reliability diagram of {system.name}")
            wrong = [(item, r) for item, r in zip(self.dataset.items, system.results) if r.label != item.label]
            wrong.sort(key=lambda pair: -pair[1].confidence)
            doc.para(f"{len(wrong)} misclassified image(s)" + (", most confident first:" if wrong else "."))
            if wrong:
                doc.table(["image", "true", "predicted", "confidence", "file"],
                          [[item.item_id, item.label, r.label, f"{r.confidence:.3f}", str(item.path)]
                           for item, r in wrong[:25]])
                if len(wrong) > 25:
                    doc.para(f"... and {len(wrong) - 25} more in per_image.ecsv.")
        doc.para("Files: metrics.json (every number), per_image.ecsv (one row per image and system, with "
                 "probabilities; open it in glue next to the images).")
        return doc.text()


class _Doc:
    """A tiny Markdown/HTML writer for the report."""

    def __init__(self, format: str):
        self.format = format
        self.parts: list[str] = []

    @staticmethod
    def _esc(text: str) -> str:
        import html

        return html.escape(str(text))

    def heading(self, level: int, text: str) -> None:
        self.parts.append(f"{'#' * level} {text}\n" if self.format == "md"
                          else f"<h{level}>{self._esc(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.parts.append(f"{text}\n" if self.format == "md" else f"<p>{self._esc(text)}</p>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        if self.format == "md":
            def cell(value):
                return str(value).replace("|", "\\|")

            lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
            self.parts.append("\n".join(lines) + "\n")
        else:
            head = "".join(f"<th>{self._esc(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{self._esc(v)}</td>" for v in row) + "</tr>" for row in rows)
            self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, path: str, alt: str) -> None:
        self.parts.append(f"![{alt}]({path})\n" if self.format == "md"
                          else f'<img src="{self._esc(path)}" alt="{self._esc(alt)}">')

    def text(self) -> str:
        if self.format == "md":
            return "\n".join(self.parts)
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;"
                 "margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}img{max-width:32em}")
        return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(self.parts) + "\n</body></html>\n")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "system"


def _json_safe(value):
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# ----------------------------------------------------------------------------- the run
def evaluate(systems, dataset, label_set: LabelSet | None = None, *, stretch: Stretch | None = None,
             crop: float = 1.0, limit: int | None = None, seed: int = 0, show_progress: bool = False,
             n_boot: int = 2000) -> EvaluationReport:
    """Classify every image of ``dataset`` with each system and measure it.

    Parameters
    ----------
    systems : VLM, System or a sequence of them
        What to compare. A bare `VLM` is one system named after its model (its active adapter).
    dataset : ImageDataset
        Classification data (see `glue_astrovlm.datasets`).
    label_set : LabelSet, optional
        The labels to score; by default the data's own labels. Every label in the data must be in it.
    stretch : Stretch, optional
        How pixels become the model image; by default zscale (contrast 0.25) and linear for data, and
        the pixels as they are for rendered pictures (PNG, JPEG).
    crop : float
        Central fraction of each image kept (as in fine-tuning).
    limit : int, optional
        Evaluate a random ``limit`` images (the same ones for every system, drawn with ``seed``).
    seed : int
        Seed of the ``limit`` draw and of the bootstrap.
    show_progress : bool
        Show a tqdm progress bar per system.
    n_boot : int
        Bootstrap resamples for the accuracy interval.

    Returns
    -------
    EvaluationReport
    """
    from tqdm.auto import tqdm

    from .models.base import VLM

    if isinstance(systems, (VLM, System)):
        systems = [systems]
    systems = [s if isinstance(s, System) else System(_system_name(s), s) for s in systems]
    if not systems:
        raise AstroVLMError("Nothing to evaluate: give at least one model.")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise AstroVLMError(f"System names must be unique, got {names}.")
    dataset = dataset.sample(limit, seed)
    label_set = dataset.label_set(label_set)
    true = dataset.true_labels
    cutouts = [_cutout(item, stretch, crop) for item in dataset.items]
    done = []
    for system in systems:
        began = time.perf_counter()
        with tqdm(total=len(cutouts), desc=f"eval {system.name}", unit="image", disable=not show_progress,
                  leave=True) as bar:
            results = classify_cutouts(system.vlm, cutouts, label_set, adapter=system.adapter,
                                       progress=bar.update)
        seconds = time.perf_counter() - began
        if len(results) != len(cutouts):  # never skip: the metrics must count every image
            raise AstroVLMError(f"{system.name} returned {len(results)} results for {len(cutouts)} images.")
        metrics = compute_metrics(true, probability_matrix(results, label_set.labels), label_set.labels,
                                  n_boot=n_boot, seed=seed)
        adapter = results[0].adapter if results else None
        model = getattr(system.vlm, "name", "")
        done.append(SystemResult(system.name, model, adapter, results, metrics, seconds))
        log.info("%s: accuracy %.3f on %d images in %.1f s", system.name, metrics.accuracy, len(results), seconds)
    applied = "; ".join(sorted({cutout.stretch_text() for cutout in cutouts}))
    return EvaluationReport(dataset, label_set, done, stretch, crop, applied)


def _system_name(vlm) -> str:
    name = Path(str(getattr(vlm, "name", "model"))).name or "model"
    return f"{name}+{vlm.adapter}" if getattr(vlm, "adapter", None) else name


def _cutout(item, stretch, crop):
    try:
        return item.cutout(stretch, crop)
    except AstroVLMError as error:
        raise AstroVLMError(f"Cannot evaluate image {item.path} ({item.item_id}): {error}") from None
