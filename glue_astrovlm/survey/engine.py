"""`tag_catalog`: tag every row of a survey catalogue, in this process or on a Ray cluster.

Both engines run the same two stages, `~glue_astrovlm.survey.stage.cut_block` (read, cut, stretch,
render) and `~glue_astrovlm.survey.scoring.Scorer` (the model's own ``classify`` or ``ask``), and the
finished rows of both go through `SurveyOutputs` on the driver, so both give the same table, row for
row. ``engine='local'`` runs them one block after the other here; ``engine='ray'``
(`glue_astrovlm.survey.ray_engine`) streams the blocks through Ray Data, with an actor pool that holds
one model per GPU (or per CPU actor).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AstroVLMError

__all__ = ["tag_catalog", "SurveyRun", "ENGINES"]

log = logging.getLogger("glue_astrovlm")

#: Where a survey runs: here, or on a Ray cluster (``pip install 'glue-astrovlm[ray]'``).
ENGINES = ("local", "ray")


@dataclass
class SurveyRun:
    """What a survey run did.

    Attributes
    ----------
    done, failed, skipped : int
        Rows tagged in this run, rows that could not be cut out (see ``failed_path``), and rows an
        earlier run had finished.
    total : int
        Rows in the catalogue.
    complete : bool
        Whether every row is finished (then the merged files are written).
    written : list of Path
        The merged table, failed table and region files.
    table_path, failed_path, out : Path
    all_failed : bool
        Whether the run is complete and no row could be tagged: there is no merged table, only
        ``failed_path`` with each row's reason.
    images_scored : int
        Images this process sent to the model (0 with Ray, whose actors score).
    seconds, first_rows_s, steady_rows_per_s : float
        The run's time, the time to its first finished rows (start-up: actors, model loading), and
        rows per second after them.
    """

    done: int
    failed: int
    skipped: int
    total: int
    complete: bool
    out: Path
    table_path: Path
    failed_path: Path
    written: list = field(default_factory=list)
    images_scored: int = 0
    seconds: float = float("nan")
    first_rows_s: float = float("nan")
    steady_rows_per_s: float = float("nan")
    all_failed: bool = False

    def summary(self) -> str:
        """``'done 40, failed 8, skipped 0 of 48 rows'``: the line the command line prints."""
        return f"done {self.done}, failed {self.failed}, skipped {self.skipped} of {self.total} rows" + (
            "" if self.complete else f" (partial: continue with --resume; finished rows are in {self.out})"
        )

    def table(self):
        """The merged results table (complete runs)."""
        from ..catalogs import read_table

        return read_table(self.table_path, "results table")

    def results(self) -> dict:
        """``{image file: [Result, ...]}`` of a complete run, each result with its catalogue row in
        ``provenance.extra['row']``: what glue's and jdaviz's write-back take (``GlueVLM.write_tags``)."""
        from .regions import results_per_image

        table = self.table()
        columns = {label: column for column, label in table.meta.get("probability_columns", {}).items()}
        return dict(results_per_image(table, columns))


def _consume(batches, outputs, shard_rows: int, bar, cancel, counts: dict) -> None:
    """Write the rows of ``batches`` (an iterator of row lists) as shards of about ``shard_rows`` rows;
    whatever finished is written even when the run stops early."""
    buffer: list[dict] = []
    try:
        for rows in batches:
            if "first" not in counts:  # what start-up cost (actors, model loading) ends here
                counts.update(first=time.perf_counter(), first_rows=len(rows))
            buffer += rows
            bar.update(len(rows))
            if len(buffer) >= shard_rows:
                _flush(outputs, buffer, counts)
                buffer = []
            if cancel is not None and cancel.is_set():
                break
    finally:
        _flush(outputs, buffer, counts)
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # a stopped Ray run shuts down the cluster it started


def _flush(outputs, rows: list[dict], counts: dict) -> None:
    if rows:
        fresh = [r for r in rows if int(r["row"]) not in outputs.done]
        written = outputs.write_shard(fresh)
        counts["done"] += written
        counts["failed"] += sum(1 for r in {int(r["row"]): r for r in fresh}.values() if r["error"])


def _local_batches(blocks, scorer, stage_options: dict, cancel):
    from .stage import cut_block

    for block in blocks:
        if cancel is not None and cancel.is_set():
            return
        yield scorer.score(cut_block(block, **stage_options))


def _check(engine: str, model) -> None:
    if engine not in ENGINES:
        raise AstroVLMError(f"Unknown engine {engine!r}; use {' or '.join(ENGINES)}.")
    if engine == "ray" and not isinstance(model, (str, Path)):
        raise AstroVLMError(
            "engine='ray' loads the model on each actor: give the model by name, folder or URL, "
            "not a loaded model."
        )


def tag_catalog(catalog, out, *, model=None, task: str = "classify", labels=None,
                preset: str | None = None, question: str | None = None, max_new_tokens: int = 128,
                engine: str = "local", ray_address: str | None = None, actors: int | None = None, size=128,
                stretch=None, hdu=None, columns: dict | None = None, file_col: str | None = None,
                size_col: str | None = None, root=None, load_options: dict | None = None,
                block_rows: int = 32, shard_rows: int = 256, table_format: str = "ecsv",
                region_format: str | None = "ds9", overwrite: bool = False, resume: bool = False,
                progress: bool = True, cancel: threading.Event | None = None,
                _ray_fault: dict | None = None) -> SurveyRun:
    """Classify (or ask about) every row of a survey catalogue; results go to the folder ``out``.

    Parameters
    ----------
    catalog : `~astropy.table.Table` or path
        ECSV, CSV, FITS, VOTable or Parquet with a file column, ``ra``/``dec`` or ``x``/``y``, and
        optionally ``size`` (see `~glue_astrovlm.survey.read_survey`).
    out : path-like
        Output folder (see `~glue_astrovlm.survey.SurveyOutputs`).
    model : str, path or VLM
        Hub id, folder or server URL (a loaded model only with ``engine='local'``); default
        `~glue_astrovlm.DEFAULT_MODEL`.
    task : {'classify', 'ask'}
    labels, preset, question, max_new_tokens
        As for ``astrovlm classify`` and ``ask``.
    engine : {'local', 'ray'}
        This process, or a Ray cluster: the one ``ray_address`` (or ``RAY_ADDRESS``) names, else a
        local one started for the run.
    actors : int, optional
        Ray: model actors (default: one per GPU, else one CPU actor).
    size, stretch, hdu
        Cutout size (pixels or an angle; a ``size`` column overrides it), stretch and HDU of the images.
    load_options : dict, optional
        `~glue_astrovlm.load_model` options (device, dtype, batch_size, adapter, ...).
    block_rows, shard_rows : int
        Rows per block (one file each) and per Parquet shard.
    overwrite, resume : bool
        Start again, or continue the run in ``out`` (its finished rows are skipped, never redone).
    cancel : threading.Event, optional
        Set it to stop after the current block; what finished is kept for ``resume``.

    Returns
    -------
    SurveyRun
    """
    from ..models.loading import DEFAULT_MODEL
    from .catalog import read_survey, work_blocks
    from .outputs import SurveyOutputs
    from .scoring import Scorer

    model = DEFAULT_MODEL if model is None else model
    _check(engine, model)
    survey = read_survey(catalog, columns=columns, file_col=file_col, size_col=size_col, root=root)
    scorer = Scorer(str(model) if isinstance(model, Path) else model, task=task, labels=labels, preset=preset,
                    question=question, max_new_tokens=max_new_tokens, load_options=load_options)
    described = {**scorer.describe(), "catalogue": survey.where, "rows": len(survey)}
    outputs = SurveyOutputs(out, table_format=table_format, region_format=region_format, overwrite=overwrite,
                            resume=resume).reserve(described, len(survey),
                                                                   survey.fingerprint())
    try:
        skipped = len(outputs.done)
        blocks = work_blocks(survey, skip=outputs.done, block_rows=block_rows)
        counts = {"done": 0, "failed": 0, "began": time.perf_counter()}
        _run_engine(engine, blocks, scorer, {"size": size, "stretch": stretch, "hdu": hdu}, outputs,
                    len(survey) - skipped, shard_rows, progress, cancel, counts, ray_address=ray_address,
                    actors=actors, fault=_ray_fault)
        return _finish(survey, scorer, outputs, counts, skipped)
    finally:
        outputs.release()


def _finish(survey, scorer, outputs, counts: dict, skipped: int) -> SurveyRun:
    """Merge the shards when every row is finished, and say what the run did."""
    ended = time.perf_counter()
    first = counts.get("first", ended)
    rows_after = counts["done"] - counts.get("first_rows", 0)
    complete = len(outputs.done) >= len(survey)
    labels = scorer.label_set.labels if scorer.label_set is not None else None
    written = outputs.merge(scorer.prob_columns, labels) if complete else []
    finished = outputs.counts
    all_failed = complete and finished["rows"] > 0 and finished["rows"] == finished["failed"]
    if all_failed:
        log.warning("Every row of %s failed (%d rows); no table of results was written, the reasons are "
                    "in %s", survey.where, finished["rows"], outputs.failed_path)
    return SurveyRun(done=counts["done"] - counts["failed"], failed=counts["failed"], skipped=skipped,
                     total=len(survey), complete=complete, out=outputs.dir, table_path=outputs.table_path,
                     failed_path=outputs.failed_path, written=written, all_failed=all_failed,
                     images_scored=scorer.images_scored,
                     seconds=time.perf_counter() - counts["began"], first_rows_s=first - counts["began"],
                     steady_rows_per_s=rows_after / (ended - first) if ended > first else float("nan"))


def _run_engine(
    engine, blocks, scorer, stage_options, outputs, todo, shard_rows, progress, cancel, counts, **ray_options
) -> None:
    from tqdm.auto import tqdm

    if engine == "local":
        where, batches = "local", _local_batches(blocks, scorer, stage_options, cancel)
    else:
        from .ray_engine import ray_batches

        where, batches = ray_batches(blocks, scorer, stage_options, **ray_options)
    with tqdm(
        total=todo,
        desc=f"{scorer.task} ({where})",
        unit="row",
        disable=not progress or todo < 2,
        file=sys.stderr,
        smoothing=0.05,
    ) as bar:
        _consume(batches, outputs, shard_rows, bar, cancel, counts)
