"""The Ray engine of a survey run (``pip install 'glue-astrovlm[ray]'``): the only module that imports Ray,
and only when a run asks for it.

Ray Data streams the blocks of rows (one image each, so each file is opened once per block):

1. ``flat_map(cut_block)``: CPU tasks read the file (memory-mapped FITS), cut out, stretch and render
   every row to the picture the model sees;
2. ``map_batches(_ScoreActor)``: an actor pool with one model per actor (``num_gpus=1`` each where
   the cluster has GPUs, else CPU actors) loads the model once and scores batches with the same
   `~glue_astrovlm.survey.scoring.Scorer` as the local engine;
3. the driver receives the finished rows and writes them as shards (`SurveyOutputs`).

A task or actor that dies (a killed process, a node that leaves) is retried by Ray: actors restart and
their batches run again, and the driver keeps one copy of each row.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .scoring import Scorer
from .stage import cut_block

__all__ = ["ray_batches", "start_ray"]

log = logging.getLogger("glue_astrovlm")


def start_ray(address: str | None = None) -> bool:
    """Connect to the cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one; returns whether
    this call started or connected (and so should shut it down)."""
    from ..errors import AstroVLMError

    try:
        import ray
    except ImportError:
        raise AstroVLMError("engine='ray' needs Ray: pip install 'glue-astrovlm[ray]'.") from None
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise AstroVLMError(
            f"Could not connect to the Ray cluster at {address}: {error}. Start it with "
            "`ray start --head` (see docs/survey.md), or leave out --ray-address to run on a "
            "local one."
        ) from None
    return True


class _ScoreActor:
    """One model per actor, loaded once; scores batches of rendered records."""

    def __init__(self, scorer_args: dict, fault: dict | None = None):
        self.scorer = Scorer(**scorer_args)
        self.scorer.vlm()
        self.batches = 0
        self.fault = fault or {}

    def _maybe_die(self) -> None:
        """For fault tests: the first incarnation exits after ``exit_after`` batches (marker file)."""
        marker = self.fault.get("marker")
        if marker and self.batches >= int(self.fault.get("exit_after", 1)) and not os.path.exists(marker):
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write(str(os.getpid()))
            os._exit(1)

    def __call__(self, batch: dict) -> dict:
        self._maybe_die()
        count = len(batch["row"])
        records = [{name: batch[name][i] for name in batch} for i in range(count)]
        rows = self.scorer.score(records)
        self.batches += 1
        return {name: np.asarray([row[name] for row in rows]) for name in rows[0]}


def _stage(stage_options: dict):
    def cut(item: dict) -> list[dict]:
        block = {
            name: (list(value) if isinstance(value, (list, np.ndarray)) else value)
            for name, value in item.items()
        }
        block["sizes"] = [list(s) for s in block["sizes"]]
        return cut_block(block, **stage_options)

    return cut


def _actors(actors: int | None, remote: bool) -> tuple[int, float]:
    """How many actors, and the GPUs of each: one GPU per actor where the cluster has one for each; none
    for a server URL (the server holds the model), where the default is one actor."""
    import ray

    gpus = 0 if remote else int(ray.cluster_resources().get("GPU", 0))
    if actors is None:
        actors = max(1, gpus)
    return int(actors), (1.0 if gpus >= actors else 0.0)


def _scorer_args(scorer: Scorer, num_gpus: float) -> dict:
    options = dict(scorer.load_options)
    if not num_gpus:
        options.setdefault("device", "cpu")
    return {
        "model": str(scorer.spec),
        "task": scorer.task,
        "labels": scorer.label_set,
        "question": scorer.question,
        "max_new_tokens": scorer.max_new_tokens,
        "load_options": options,
    }


def ray_batches(
    blocks: list[dict],
    scorer: Scorer,
    stage_options: dict,
    *,
    ray_address: str | None = None,
    actors: int | None = None,
    batch_size: int = 16,
    fault: dict | None = None,
):
    """``(description, iterator of row lists)`` of the blocks run on Ray."""
    started = start_ray(ray_address)
    count, num_gpus = _actors(actors, str(scorer.spec).startswith(("http://", "https://")))
    where = f"ray: {count} {'GPU' if num_gpus else 'CPU'} actor{'s' if count > 1 else ''}"

    def rows():
        import ray

        try:
            if not blocks:
                return
            _quiet_ray_data()
            # Ray Data retries tasks lost to a dead worker or node (max_retries=-1) and restarts actors
            # with their unfinished batches (max_restarts=-1, max_task_retries=-1) by default.
            dataset = ray.data.from_items(blocks, override_num_blocks=len(blocks))
            dataset = dataset.flat_map(_stage(stage_options), num_cpus=0.5)
            dataset = dataset.map_batches(
                _ScoreActor,
                fn_constructor_kwargs={"scorer_args": _scorer_args(scorer, num_gpus), "fault": fault},
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=count),
                num_gpus=num_gpus,
                num_cpus=0 if num_gpus else 1,
            )
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                names = list(batch)
                yield [{name: _plain(batch[name][i]) for name in names} for i in range(len(batch["row"]))]
        finally:
            if started:
                ray.shutdown()

    return where, rows()


def _quiet_ray_data() -> None:
    """One progress bar (the driver's): Ray Data's own bars and per-run log lines only with -v."""
    import warnings

    import ray

    with warnings.catch_warnings():
        # Ray 2.60's DataContext() sets its own deprecated fields (use_push_based_shuffle, use_polars, ...)
        # on creation, which warns each time; nothing here sets them
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    notices = logging.getLogger("ray.data._internal.progress")  # Ray 2.60 says there that its bars are off
    if not any(isinstance(f, _NoBarsNotice) for f in notices.filters):
        notices.addFilter(_NoBarsNotice())
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)


class _NoBarsNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value
