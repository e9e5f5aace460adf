"""`GlueVLM`: drive the engine from glue's IPython terminal or a glue-jupyter notebook.

In glue-qt's terminal the panel injects it as ``vlm``; anywhere else::

    from glue_astrovlm.glue_bridge.scripting import GlueVLM
    vlm = GlueVLM(dc)                          # dc: the DataCollection (app.data_collection)
    vlm.model = "HuggingFaceTB/SmolVLM-256M-Instruct"
    vlm.classify("my box", preset="radio-morphology")       # labels the subset "my box [AstroVLM: FRII 0.93]"
    vlm.ask("Is there a jet?", subset="my box")
    vlm.converse("Is there a jet?", subset="my box")        # a conversation: follow-ups keep the context
    vlm.converse("Which side is brighter?", subset="my box")
    vlm.export_conversations("dialogues/train.json")        # LLaVA JSON for astrovlm finetune
    vlm.tag(image, catalog=sources, preset="radio-morphology")   # class subsets + vlm_* catalogue columns
    vlm.export("results")                      # results.ecsv + results.reg
    vlm.clear()                                # remove everything the plugin wrote

Every call writes into glue exactly what the panel's buttons write.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import AstroVLMError
from ..requests import Request, make_cutouts
from ..results import Result
from ..session import VLMSession
from ..stretch import Stretch
from . import writeback
from .selections import catalog_request, detect_request, subset_request, view_request
from .views import displayed_slice, view_bounds

__all__ = ["GlueVLM", "detections_data"]


def detections_data(image, table):
    """Detected sources (the table of a ``send='detect'`` request) as a glue catalogue dataset,
    named ``'<image> sources (AstroVLM)'``; not yet in a data collection, so any thread may make it."""
    from glue.core import Data

    columns = {name: np.asarray(table[name]) for name in ("id", "xcentroid", "ycentroid", "ra", "dec")
               if name in table.colnames}
    catalog = Data(label=f"{image.label} sources (AstroVLM)", **columns)
    catalog.meta["astrovlm"] = "detections"
    return catalog


class GlueVLM:
    """The scripting face of the AstroVLM panel for one glue data collection.

    Parameters
    ----------
    data_collection : glue.core.DataCollection
        Where subsets, catalogues and results live.
    session : VLMSession, optional
        Shared with a panel; created if not given.
    """

    def __init__(self, data_collection, session: VLMSession | None = None, **load_options):
        self.data_collection = data_collection
        self.session = session or VLMSession(**load_options)
        self.stretch: Stretch | None = None  # automatic: data stretched, rendered pictures as they are
        self.outside = "keep"
        self._conversations: list | None = None  # read from the results dataset when first needed

    # model choice ---------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """Model id, path or server URL; assigning loads the new model at the next call."""
        return self.session.model

    @model.setter
    def model(self, spec: str) -> None:
        self.session.model = spec

    @property
    def adapter(self) -> str | None:
        return self.session.adapter

    @adapter.setter
    def adapter(self, path: str | None) -> None:
        self.session.adapter = path

    # lookups -------------------------------------------------------------------------------
    def data(self, data):
        """A dataset of the collection, by label or as itself."""
        if isinstance(data, str):
            for candidate in self.data_collection:
                if candidate.label == data:
                    return candidate
            names = ", ".join(d.label for d in self.data_collection)
            raise AstroVLMError(f"No dataset named {data!r}; datasets: {names}.")
        return data

    def subset(self, subset, data=None):
        """A glue Subset on image data, from a Subset, a SubsetGroup or a subset label."""
        from glue.core.subset_group import SubsetGroup

        if isinstance(subset, str):
            matches = [g for g in self.data_collection.subset_groups
                       if writeback.original_label(g.label) == subset or g.label == subset]
            if not matches:
                names = ", ".join(writeback.original_label(g.label) for g in self.data_collection.subset_groups)
                raise AstroVLMError(f"No subset named {subset!r}; subsets: {names or 'none'}.")
            subset = matches[0]
        if isinstance(subset, SubsetGroup):
            data = self.data(data) if data is not None else None
            candidates = [s for s in subset.subsets if s.data.ndim >= 2 and (data is None or s.data is data)]
            if not candidates:
                raise AstroVLMError(f"Subset {subset.label!r} is not defined on an image or cube.")
            return candidates[0]
        return subset

    @staticmethod
    def group(subset):
        """The subset group a subset belongs to (what the user named)."""
        return getattr(subset, "group", None) or subset

    # requests ------------------------------------------------------------------------------
    def request(self, subset=None, *, data=None, view=None, catalog=None, detect: bool = False,
                attribute=None, cube: dict | None = None, size=64, nsigma: float = 5.0, max_sources: int = 200,
                **task) -> Request:
        """The engine request for a subset, a viewer's visible area, a catalogue or detected sources.

        glue's state (the subset, the viewer's limits and displayed slice, the stretch) is read now,
        on the GUI thread; the pixel work happens when the request runs, on any thread.
        ``task`` holds further `Request` fields: ``task``, ``labels``, ``preset``, ``question``, ...
        """
        options = dict(stretch=self.stretch, attribute=attribute, **task)
        if subset is not None:
            return subset_request(self.subset(subset, data), cube=cube, outside=self.outside, **options)
        if view is not None:
            state = view.state
            image = self.data(data) if data is not None else state.reference_data
            if cube is None and image.ndim == 3:
                cube = {"mode": "slice", "index": displayed_slice(state, image) or 0}
            return view_request(image, view_bounds(state, image), cube=cube, **options)
        if catalog is not None:
            return catalog_request(self.data(data), self.data(catalog), cube=cube, size=size, **options)
        if detect:
            return detect_request(self.data(data), nsigma=nsigma, max_sources=max_sources, cube=cube, size=size,
                                  **options)
        raise AstroVLMError("Say what to send: subset=..., view=<an image viewer>, catalog=... or detect=True.")

    def cutout(self, subset=None, *, data=None, view=None, attribute=None, cube: dict | None = None):
        """The cutout the model would see: of a subset, or of a viewer's visible area."""
        request = self.request(subset, data=data, view=view, attribute=attribute, cube=cube, limit=1)
        return make_cutouts(request).cutouts[0]

    # tasks ---------------------------------------------------------------------------------
    def ask(self, question: str, subset=None, *, data=None, view=None, attribute=None, cube: dict | None = None,
            max_new_tokens: int = 128, progress=None) -> Result:
        """Ask a question about a subset or a viewer's visible area; the answer is stored with the results."""
        request = self.request(subset, data=data, view=view, attribute=attribute, cube=cube, task="ask",
                               question=question, max_new_tokens=max_new_tokens)
        result = self.session.run(request, progress=progress)[0]
        writeback.store_results(self.data_collection, [result])
        return result

    def classify(self, subset, labels=None, *, preset: str | None = None, question: str | None = None,
                 data=None, attribute=None, cube: dict | None = None, progress=None) -> Result:
        """Classify a subset; its name shows the class and confidence, e.g. ``my box [AstroVLM: FRII 0.93]``."""
        glue_subset = self.subset(subset, data)
        request = self.request(glue_subset, attribute=attribute, cube=cube, labels=labels, preset=preset,
                               question=question)
        result = self.session.run(request, progress=progress)[0]
        self.write_classification(glue_subset, result)
        return result

    def tag(self, data, catalog=None, labels=None, *, preset: str | None = None, question: str | None = None,
            size: int = 64, detect: bool = False, nsigma: float = 5.0, max_sources: int = 200, attribute=None,
            cube: dict | None = None, progress=None) -> list[Result]:
        """Classify every source of a catalogue dataset (or detected sources) on an image.

        Writes one subset group per class (``AstroVLM: <label>``, coloured per class), ``vlm_*``
        components on the catalogue (a new detections dataset with ``detect=True``), and the results
        dataset. Re-running replaces only those.
        """
        from ..labelsets import resolve_labels

        image = self.data(data)
        label_set = resolve_labels(labels, preset, question)
        if catalog is None and not detect:
            raise AstroVLMError("Give a catalogue dataset (catalog=...) or detect=True.")
        request = self.request(data=image, catalog=catalog, detect=catalog is None, attribute=attribute, cube=cube,
                               size=size, nsigma=nsigma, max_sources=max_sources, labels=label_set)
        prepared = []
        results = self.session.run(request, progress=progress, on_prepared=prepared.append)
        if catalog is None:
            catalog = detections_data(image, prepared[0].table)
            self.add_detections(catalog)
        self.write_tags(image, self.data(catalog), results, label_set.labels)
        return results

    # conversations ---------------------------------------------------------------------------
    @property
    def conversations(self) -> list:
        """Every conversation of this glue session, oldest first (restored with a saved session)."""
        if self._conversations is None:
            self._conversations = writeback.read_conversations(self.data_collection)
        return self._conversations

    @staticmethod
    def conversation_title(request: Request) -> str:
        """What a conversation is about: ``'<data> / <subset>'`` or ``'<data> / view'``."""
        source = request.extra.get("glue_data") or getattr(request.image, "label", None) or "image"
        return f"{source} / {writeback.original_label(request.source_id or 'selection')}"

    def active_conversation(self, title: str):
        """The conversation that a follow-up about ``title`` continues, or `None`."""
        return next((c for c in reversed(self.conversations) if c.title == title and not c.closed), None)

    def new_conversation(self, title: str) -> None:
        """The next question about ``title`` starts a new conversation; the old one is kept for export."""
        current = self.active_conversation(title)
        if current is not None:
            current.closed = True
            current.backend_state.clear()  # a closed conversation needs no attention cache
            self.save_conversations()

    def converse(self, question: str, subset=None, *, data=None, view=None, attribute=None,
                 cube: dict | None = None, new: bool = False, max_new_tokens: int = 128) -> Result:
        """Ask ``question`` in the conversation about a subset or a viewer's visible area.

        A follow-up continues that conversation with its earlier turns (``new=True`` starts again). The
        answer is stored with the results, and the conversations are kept in the glue session.
        """
        request = self.request(subset, data=data, view=view, attribute=attribute, cube=cube, task="ask",
                               question=question, max_new_tokens=max_new_tokens)
        return self.finish_turn(*self.turn(question, request, new=new))

    def turn(self, question: str, request: Request, *, new: bool = False, background: bool = False):
        """Run one conversation turn (on the session's worker with ``background=True``: a `Future`)."""
        title = self.conversation_title(request)
        if new:
            self.new_conversation(title)
        conversation = self.active_conversation(title)
        run = self.session.submit_converse if background else self.session.converse
        if conversation is None:
            outcome = run(question, request=request)
        else:
            outcome = run(question, conversation=conversation, max_new_tokens=request.max_new_tokens)
        return outcome if background else (outcome, title)

    def finish_turn(self, outcome, title: str) -> Result:
        """The GUI-thread half of a turn: keep the conversation and store the answer in glue."""
        conversation, result = outcome
        conversation.title = title
        if conversation not in self.conversations:
            self.conversations.append(conversation)
        writeback.store_results(self.data_collection, [result])
        self.save_conversations()
        return result

    def correct(self, title: str, turn: int, answer: str) -> None:
        """Correct the answer of ``turn`` (numbered from 1, like `Result.turn`) in the active
        conversation about ``title``."""
        conversation = self.active_conversation(title)
        if conversation is None:
            raise AstroVLMError(f"There is no conversation about {title}; ask a question first.")
        conversation.correct(turn, answer)
        self.save_conversations()

    def save_conversations(self) -> None:
        """Keep the conversations in the results dataset, which glue saves with the session."""
        if self.conversations:
            writeback.store_conversations(self.data_collection, self.conversations)

    def export_conversations(self, path, *, overwrite: bool = False):
        """Write every conversation (corrections included) as LLaVA JSON for ``astrovlm finetune``."""
        from ..conversations import write_llava_json

        return write_llava_json(self.conversations, path, overwrite=overwrite)

    # writes --------------------------------------------------------------------------------
    def write_classification(self, subset, result: Result) -> None:
        """Show a classification in the subset's name and store it with the results."""
        writeback.label_subset_group(self.group(subset), result)
        writeback.store_results(self.data_collection, [result])

    def write_tags(self, image, catalog, results: Sequence[Result], labels: Sequence[str]) -> None:
        """The writes of `tag` (also used by the panel after a cancelled run, with the finished results)."""
        writeback.create_class_subsets(self.data_collection, image, results, labels)
        writeback.write_catalog_components(catalog, results, labels)
        writeback.store_results(self.data_collection, results)

    def add_detections(self, catalog) -> None:
        """Put a detections dataset into the collection, replacing the last one of the same image."""
        for existing in [d for d in self.data_collection if d.label == catalog.label]:
            self.data_collection.remove(existing)
        self.data_collection.append(catalog)

    # outputs -------------------------------------------------------------------------------
    @property
    def results(self) -> list[Result]:
        """Results of this session, oldest first."""
        return list(self.session.history)

    def export(self, prefix: str, *, overwrite: bool = False, region_format: str = "ds9") -> list:
        """Write all results as ``PREFIX.ecsv`` and ``PREFIX.reg`` (or ``.crtf``); never overwrites unless asked."""
        from ..results import export

        return export(self.session.history, prefix, formats=("ecsv", region_format), overwrite=overwrite)

    def clear(self) -> None:
        """Remove what the plugin wrote into glue; the user's subsets keep their shapes and names."""
        writeback.clear_plugin_results(self.data_collection)
        self.session.history.clear()
        self._conversations = []

    def __repr__(self) -> str:
        return f"<GlueVLM model={self.model!r}, {len(self.session.history)} result(s)>"
