"""`VLMSession`: the one object that every front end (glue-qt, glue-jupyter, jdaviz, scripts) drives.

It owns the model choice, loads the model lazily (in the background when asked), runs tasks with
progress and cancellation, and keeps the history of results. It imports no GUI toolkit; the glue
and jdaviz front ends add their own writes around it.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .errors import AstroVLMError
from .settings import config_folder
from .results import Result

__all__ = ["VLMSession", "recent_models", "remember_model"]

log = logging.getLogger("glue_astrovlm")
_RECENT_LIMIT = 8


def _config_file() -> Path:
    return config_folder() / "recent.json"


def recent_models() -> list[dict]:
    """Recently used model choices (``{'model': ..., 'adapter': ...}``), most recent first."""
    try:
        entries = json.loads(_config_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and e.get("model")][:_RECENT_LIMIT]


def remember_model(model: str, adapter: str | None = None) -> None:
    """Put a model choice at the top of the recent list (a small JSON file; never an API key)."""
    from .results import atomic_write

    entry = {"model": str(model), "adapter": str(adapter) if adapter else None}
    entries = [entry] + [e for e in recent_models() if e != entry]
    text = json.dumps(entries[:_RECENT_LIMIT], indent=1)
    try:
        atomic_write(_config_file(), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
    except OSError as error:  # a read-only home must not break a run
        log.warning("Could not remember the model choice: %s", error)


class VLMSession:
    """A model choice plus the results obtained with it.

    Parameters
    ----------
    model : str, optional
        Hub id, local directory or server URL (default: `glue_astrovlm.DEFAULT_MODEL`).
    adapter : str or dict, optional
        LoRA adapter directory (or ``{name: directory}`` for several; the first is active).
    remember : bool, optional
        Put a model that loads at the top of the recent-models list the panels offer (default).
    **load_options
        Passed to `glue_astrovlm.load_model` (``device``, ``dtype``, ``batch_size``, ...).
    """

    def __init__(self, model: str | None = None, adapter: str | dict | None = None, *, remember: bool = True,
                 **load_options):
        from .models.loading import DEFAULT_MODEL

        self._model_spec = str(model or DEFAULT_MODEL)
        self._adapter = adapter
        self.remember = remember
        self.load_options = load_options
        self._vlm = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="astrovlm")
        self.cancel_event = threading.Event()
        self.history: list[Result] = []

    @property
    def model(self) -> str:
        """The model spec; setting it drops the loaded model (the next task loads the new one)."""
        return self._model_spec

    @model.setter
    def model(self, spec: str) -> None:
        with self._lock:
            if str(spec) != self._model_spec:
                self._model_spec = str(spec)
                self._drop()

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @adapter.setter
    def adapter(self, path: str | None) -> None:
        with self._lock:
            if path != self._adapter:
                self._adapter = path or None
                self._drop()

    @property
    def is_loaded(self) -> bool:
        return self._vlm is not None

    def _drop(self) -> None:
        if self._vlm is not None:
            self._vlm.close()
        self._vlm = None

    def vlm(self):
        """The loaded `VLM`, loading it now (blocking) if needed."""
        with self._lock:
            if self._vlm is None:
                from .models.loading import load_model

                log.info("Loading model %s", self._model_spec)
                self._vlm = load_model(self._model_spec, adapter=self._adapter, **self.load_options)
                if self.remember:
                    remember_model(self._model_spec, self._adapter)
            return self._vlm

    def warm_up(self, *, preload: bool = False) -> Future:
        """Import torch and transformers on the worker thread, ahead of the first task.

        Importing torch runs its C++ start-up while holding Python's lock (about 0.3 s at a time on a
        2-core VM), which stalls any GUI in the process, whichever thread imports it. Front ends call
        this when their panel opens, so that the stall happens then, and not while the user waits for
        a result. Nothing is imported for a server URL.

        With ``preload``, a model that is on this machine already (a folder, or a Hub id in the local
        cache; nothing is downloaded) is loaded too, and one blank picture classified, so that the
        first answer pays neither the load nor the first pass's set-up of the compute kernels. A model
        that fails to load here is reported when the user runs a task, as without ``preload``.
        """
        spec, adapter = self._model_spec, self._adapter

        def work():
            if "://" in spec:
                return
            import torch  # noqa: F401
            from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401

            if preload:
                self._preload(spec, adapter)

        return self._executor.submit(work)

    def _preload(self, spec: str, adapter: str | None) -> None:
        from .models.loading import available_offline

        adapters = list(adapter.values()) if isinstance(adapter, dict) else [adapter] if adapter else []
        if not available_offline(spec) or not all(Path(a).expanduser().is_dir() for a in adapters):
            return
        if (self._model_spec, self._adapter) != (spec, adapter):  # the user chose another model meanwhile
            return
        try:
            from PIL import Image

            vlm = self.vlm()
            vlm.classify(Image.new("RGB", (64, 64)), ["yes", "no"])
            log.info("Loaded %s ahead of the first task", spec)
        except Exception as error:  # noqa: BLE001 - reported again, in full, when the user runs
            log.info("Could not load %s ahead of the first task: %s", spec, error)

    def load_in_background(self) -> Future:
        """Start loading the model on the session's worker thread; returns a `Future` of the VLM."""
        return self._executor.submit(self.vlm)

    def prepare(self, request):
        """The cutouts of a request (`~glue_astrovlm.requests.CutoutSet`), without running the model."""
        from .requests import make_cutouts

        return make_cutouts(request)

    def run(self, request, *, progress: Callable[[int, int], None] | None = None,
            on_prepared: Callable | None = None, cutouts=None) -> list[Result]:
        """Run a `~glue_astrovlm.requests.Request` (blocking) and record the results.

        The cutouts are made here, so that with `submit` the pixel work (reading, reducing a cube,
        stretching, detecting sources) happens on the worker thread as well. A request that names a
        model or adapter switches the session to it first.

        Parameters
        ----------
        request : Request
            What to send, the task and its labels or question.
        progress : callable, optional
            ``progress(done, total)``: called with 0 once the cutouts are made, then after each batch.
        on_prepared : callable, optional
            Called with the `~glue_astrovlm.requests.CutoutSet` once the cutouts are made (e.g. to keep
            the table of detected sources).
        cutouts : list of Cutout, optional
            Use these instead of making the request's (e.g. the rows a resumed run has left to do).

        Cancellation: `cancel` (from any thread) stops between batches and raises
        `~glue_astrovlm.OperationCancelled` with the finished results, which are recorded too.
        """
        from .models.base import OperationCancelled

        self.cancel_event.clear()
        if request.model is not None:
            self.model = request.model
        if request.adapter is not None:
            self.adapter = request.adapter
        if cutouts is None:
            prepared = self.prepare(request)
            if on_prepared is not None:
                on_prepared(prepared)
            cutouts = prepared.cutouts
        if progress is not None:
            progress(0, len(cutouts))
        if not cutouts:
            return []
        vlm = self.vlm()
        try:
            results = self._call(vlm, request, cutouts, progress)
        except OperationCancelled as cancelled:
            self.history.extend(cancelled.results)
            raise
        except (AstroVLMError, KeyboardInterrupt) as error:  # a server that died, Ctrl-C: keep what finished
            self.history.extend(getattr(error, "results", None) or [])
            raise
        self.history.extend(results)
        return results

    def _call(self, vlm, request, cutouts, progress) -> list[Result]:
        options = dict(progress=progress, cancel=self.cancel_event)
        if request.task == "classify":
            return vlm.classify(cutouts, request.labels, preset=request.preset, question=request.question,
                                **options)
        if request.task == "ask" and request.follow_ups:
            from .conversations import converse_each

            return converse_each(vlm, cutouts, (request.question, *request.follow_ups),
                                 max_new_tokens=request.max_new_tokens, **options)
        if request.task == "ask":
            return vlm.ask(cutouts, request.question, max_new_tokens=request.max_new_tokens, **options)
        if request.question:  # a describe preset's instruction (e.g. AstroLLaVA's captioning)
            options["prompt"] = request.question
        return vlm.describe(cutouts, max_new_tokens=request.max_new_tokens, **options)

    def converse(self, question: str, *, conversation=None, request=None, max_new_tokens: int | None = None):
        """The next turn of ``conversation``, or the first of a new one about ``request``'s cutout(s).

        Blocking; the result is recorded in `history`. Returns ``(conversation, result)``.

        Parameters
        ----------
        question : str
        conversation : Conversation, optional
            The conversation to continue; without it a new one is made (``request`` is then needed).
        request : Request, optional
            What the new conversation is about (its cutouts are made here) and, if it names one,
            the model to switch to.
        max_new_tokens : int, optional
            Answer length; by default the request's (128).
        """
        from .conversations import Conversation

        self.cancel_event.clear()
        if request is not None and request.model is not None:
            self.model = request.model
        if conversation is None:
            if request is None:
                raise AstroVLMError("Give the conversation to continue, or a request for the cutout of a new "
                                    "one.")
            cutouts = self.prepare(request).cutouts
            if not cutouts:
                raise AstroVLMError("The selection holds no pixels to talk about; choose another region.")
            conversation = Conversation(cutouts, title=request.source_id)
        tokens = max_new_tokens or (request.max_new_tokens if request is not None else 128)
        result = conversation.ask(self.vlm(), question, max_new_tokens=tokens)
        self.history.append(result)
        return conversation, result

    def submit(self, request, **options) -> Future:
        """`run` on the session's worker thread; the GUI stays responsive. Returns a `Future`."""
        return self._executor.submit(self.run, request, **options)

    def submit_converse(self, question: str, **options) -> Future:
        """`converse` on the session's worker thread. Returns a `Future` of ``(conversation, result)``."""
        return self._executor.submit(self.converse, question, **options)

    def cancel(self) -> None:
        """Ask the running task to stop after its current batch."""
        self.cancel_event.set()

    def close(self) -> None:
        with self._lock:
            self._drop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"<VLMSession model={self._model_spec!r} adapter={self._adapter!r} ({state})>"
