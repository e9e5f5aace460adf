"""The AstroVLM dock panel for glue-qt.

Everything it computes goes through the shared `GlueVLM` object (the terminal's ``vlm``): the panel
turns its choices into one engine `~glue_astrovlm.requests.Request` (`GlueVLM.request`), shows the
thumbnail of exactly what the model will see, runs the request on the session's worker thread (model
loading included) and writes results back on the GUI thread. Its widgets live in `widgets`.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QFileDialog, QInputDialog, QTableWidgetItem, QWidget

from ..errors import AstroVLMError, in_panel_words
from ..glue_bridge import writeback
from ..glue_bridge.catalogs import has_positions
from ..glue_bridge.scripting import detections_data
from ..glue_bridge.sources import image_source_from_data
from ..labelsets import label_set_for
from ..requests import make_cutouts
from ..session import recent_models
from ..stretch import Stretch, chosen_stretch
from . import widgets
from ..labelsets import CUSTOM
from .widgets import SOURCES, TASKS

__all__ = ["AstroVLMPanel", "SOURCES", "TASKS", "CUSTOM"]

log = logging.getLogger("glue_astrovlm")


class _Signals(QObject):
    progress = Signal(int, int)
    done = Signal(object)
    failed = Signal(object)
    loaded = Signal(object)


def _pixmap(image, size: int = 160) -> QPixmap:
    image = image.convert("RGB")
    data = image.tobytes()
    qimage = QImage(data, image.width, image.height, 3 * image.width, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                            Qt.TransformationMode.SmoothTransformation)


class AstroVLMPanel(QWidget):
    """Ask, classify and tag from glue.

    Parameters
    ----------
    vlm : GlueVLM
        The scripting object it shares with glue's terminal.
    application : GlueApplication, optional
        For "Current view" (the active image viewer) and selecting sources in viewers.
    """

    def __init__(self, vlm, application=None, parent=None):
        super().__init__(parent)
        self.vlm = vlm
        self.application = application
        self.dock = None
        self._running = None  # (task, context) of the run in flight
        self._last_results = []
        self.signals = _Signals()
        self.signals.progress.connect(self._on_progress)
        self.signals.done.connect(self._on_done)
        self.signals.failed.connect(self._on_failed)
        self.signals.loaded.connect(self._on_loaded)
        widgets.build(self)
        self._connect()
        self._remembered_model()
        self._listen_to_glue()
        self.refresh()

    def _remembered_model(self) -> None:
        """Start from the last model that loaded (not an unavailable default), unless one is chosen."""
        from ..models.loading import DEFAULT_MODEL

        recent = recent_models()
        session = self.vlm.session
        if recent and not session.is_loaded and session.model == DEFAULT_MODEL:
            self.vlm.model = recent[0]["model"]
            self.vlm.adapter = recent[0].get("adapter")
            self.adapter_edit.setText(recent[0].get("adapter") or "")

    def _listen_to_glue(self) -> None:
        """Follow glue: data, subsets and catalogues added, renamed or removed after the panel opened."""
        from glue.core import message
        from glue.core.hub import HubListener

        self._listener = HubListener()
        self._refresh_pending = False
        hub = self.vlm.data_collection.hub
        for kind in (message.DataCollectionAddMessage, message.DataCollectionDeleteMessage,
                     message.SubsetCreateMessage, message.SubsetDeleteMessage, message.DataUpdateMessage,
                     message.ComponentsChangedMessage):
            hub.subscribe(self._listener, kind, handler=self._glue_changed)
        hub.subscribe(self._listener, message.SubsetUpdateMessage, handler=self._glue_changed,
                      filter=lambda msg: msg.attribute in ("label", "subset_state"))
        self.destroyed.connect(lambda *_: hub.unsubscribe_all(self._listener))

    def _glue_changed(self, _message=None) -> None:
        # many messages arrive together (a session restore, our own write-back): refresh once for them
        if not self._refresh_pending:
            self._refresh_pending = True
            QTimer.singleShot(0, self._refresh_after_change)

    def _refresh_after_change(self) -> None:
        self._refresh_pending = False
        self.refresh()

    def _connect(self) -> None:
        self.load_button.clicked.connect(self.load_model)
        self.browse_button.clicked.connect(lambda: self.choose_model_folder())
        self.question_edit.returnPressed.connect(self.run)
        self.tag_table.cellClicked.connect(self.select_source)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(lambda: self.export())
        self.clear_button.clicked.connect(self.clear_results)
        self.new_conversation_button.clicked.connect(self.new_conversation)
        self.correct_button.clicked.connect(lambda: self.correct_answer())
        self.export_conversations_button.clicked.connect(lambda: self.export_conversations())
        for combo in (self.data_combo, self.source_combo, self.subset_combo, self.catalog_combo, self.cube_mode,
                      self.interval_combo, self.stretch_combo, self.outside_combo):
            combo.currentIndexChanged.connect(self.update_thumbnail)
        for spin in (self.cube_index, self.cube_start, self.cube_stop, self.size_spin):
            spin.valueChanged.connect(self.update_thumbnail)

    # ----------------------------------------------------------------------------------- state
    def refresh(self) -> None:
        """Re-read datasets, subsets and recent models from glue."""
        dc = self.vlm.data_collection
        current_model = self.model_combo.currentText() or self.vlm.model
        models = [self.vlm.model] + [e["model"] for e in recent_models()]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(list(dict.fromkeys(models)))
        self.model_combo.setCurrentText(current_model)
        self.model_combo.blockSignals(False)
        images = [d.label for d in dc if d.ndim in (2, 3) and d.label != writeback.RESULTS_LABEL]
        catalogs = [d.label for d in dc if d.label != writeback.RESULTS_LABEL and has_positions(d)]
        subsets = [writeback.original_label(g.label) for g in dc.subset_groups
                   if not g.label.startswith(writeback.CLASS_PREFIX)]
        for combo, items in ((self.data_combo, images), (self.catalog_combo, catalogs), (self.subset_combo, subsets)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(items)
            if current in items:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        data = self._data()
        is_cube = data is not None and data.ndim == 3
        for widget in (self.cube_mode, self.cube_index, self.cube_start, self.cube_stop):
            widget.setEnabled(is_cube)
        if is_cube:
            for spin in (self.cube_index, self.cube_start, self.cube_stop):
                spin.setRange(0, data.shape[0] - 1 if spin is not self.cube_stop else data.shape[0])
        self.update_thumbnail()

    def _data(self):
        label = self.data_combo.currentText()
        return next((d for d in self.vlm.data_collection if d.label == label), None)

    def _cube(self):
        data = self._data()
        if data is None or data.ndim != 3:
            return None
        mode = self.cube_mode.currentText()
        if mode == "slice":
            return {"mode": "slice", "index": self.cube_index.value()}
        return {"mode": mode, "spectral_range": (self.cube_start.value(), self.cube_stop.value())}

    def _stretch(self) -> Stretch | None:
        return chosen_stretch(self.interval_combo.currentText(), self.stretch_combo.currentText())

    def select_subset(self, subset) -> None:
        """Point the panel at a subset (a Subset or SubsetGroup), e.g. from a right-click action."""
        self.refresh()
        group = getattr(subset, "group", None) or subset
        self.source_combo.setCurrentText("Subset")
        self.subset_combo.setCurrentText(writeback.original_label(group.label))
        data = getattr(subset, "data", None)
        if data is not None and data.ndim in (2, 3):
            self.data_combo.setCurrentText(data.label)
        self.update_thumbnail()

    def set_task(self, task: str) -> None:
        self.tabs.setCurrentIndex(TASKS.index(task))

    def focus_question(self) -> None:
        self.question_edit.setFocus()

    @property
    def task(self) -> str:
        return TASKS[self.tabs.currentIndex()]

    def _image_viewer(self):
        if self.application is None:
            return None
        from glue_qt.viewers.image import ImageViewer

        data = self._data()
        for tab in self.application.viewers:
            for viewer in tab:
                if isinstance(viewer, ImageViewer) and (data is None or viewer.state.reference_data is data):
                    return viewer
        return None

    def _apply_choices(self) -> None:
        self.vlm.stretch = self._stretch()
        self.vlm.outside = self.outside_combo.currentText()

    def request(self, **task):
        """The engine request for the panel's choices (read now, on the GUI thread); ``task`` adds the
        task fields (``task``, ``labels``, ``question``, ``limit``, ...)."""
        self._apply_choices()
        source = self.source_combo.currentText()
        data = self._data()
        if data is None:
            raise AstroVLMError("Load an image or cube into glue first.")
        where = dict(data=data, cube=self._cube(), size=self.size_spin.value())
        if source == "Subset":
            if not self.subset_combo.currentText():
                raise AstroVLMError("There is no subset: draw one on the image first.")
            return self.vlm.request(self.subset_combo.currentText(), **where, **task)
        if source == "Current view":
            viewer = self._image_viewer()
            if viewer is None:
                raise AstroVLMError(f"Open {data.label} in an image viewer to send the current view.")
            return self.vlm.request(view=viewer, **where, **task)
        if source == "Catalogue sources":
            if not self.catalog_combo.currentText():
                raise AstroVLMError("Load a catalogue (a table with ra/dec or x/y columns) into glue first, "
                                    "or choose 'Detected sources'.")
            return self.vlm.request(catalog=self.catalog_combo.currentText(), **where, **task)
        return self.vlm.request(detect=True, nsigma=self.nsigma_spin.value(),
                                max_sources=self.max_sources_spin.value(), **where, **task)

    def preview_cutout(self):
        """The cutout the model would see for the current choices (the first one when tagging)."""
        if self.source_combo.currentText() == "Detected sources":
            self._apply_choices()
            return None  # known after detection, which runs with the task
        return make_cutouts(self.request(limit=1)).cutouts[0]

    def update_thumbnail(self, *_):
        try:
            cutout = self.preview_cutout()
        except AstroVLMError as error:
            self.thumbnail.setText("no cutout")
            self.thumbnail.setToolTip(str(error))
            return
        except Exception as error:  # noqa: BLE001 - a preview must never break the panel
            log.debug("thumbnail failed: %s", error)
            self.thumbnail.setText("no cutout")
            return
        self.show_conversation()
        if cutout is None:
            self.thumbnail.setText("sources are\ndetected at run")
            return
        self.thumbnail.setPixmap(_pixmap(cutout.to_image()))
        self.thumbnail.setToolTip(f"{cutout.shape[1]}x{cutout.shape[0]} px, {cutout.stretch_text()}")

    # ----------------------------------------------------------------------------------- running
    def _sync_model(self) -> None:
        self.vlm.model = self.model_combo.currentText().strip() or self.vlm.model
        self.vlm.adapter = self.adapter_edit.text().strip() or None

    def _labels(self):
        data = self._data()
        source = image_source_from_data(data) if data is not None else None
        return label_set_for(self.preset_combo.currentText(), self.labels_edit.text(), source)

    def load_model(self) -> None:
        """Load the chosen model on the worker thread; the window stays responsive."""
        self._sync_model()
        self._busy(True, f"Loading {self.vlm.model}…")
        future = self.vlm.session.load_in_background()
        future.add_done_callback(lambda f: self.signals.loaded.emit(f))

    def _on_loaded(self, future) -> None:
        error = future.exception()
        self._busy(False, finished=error is None)
        if error is not None:
            self._show_error(error)
            self.model_status.setText("not loaded")
        else:
            self._show_model_status()
            self.message.setText("Model loaded.")

    def run(self) -> None:
        """Start the selected task in the background (progress below; Cancel stops after the current batch).

        Only the choices are read here; cutting out, detection, model loading and inference all run on
        the session's worker thread, and results are written back on the GUI thread.
        """
        if self._running is not None:
            return
        try:
            self._sync_model()
            task, context, request = self._prepare()
        except AstroVLMError as error:
            self._show_error(error)
            return
        self._running = (task, context)
        self._busy(True, f"Running {task}…")
        if task == "ask":  # one turn of the conversation about this selection
            future = self.vlm.turn(context["question"], request, background=True)
            future.add_done_callback(self._finished)
            return
        future = self.vlm.session.submit(request, progress=lambda done, total: self.signals.progress.emit(done, total),
                                         on_prepared=lambda prepared: context.update(table=prepared.table))
        future.add_done_callback(self._finished)

    def _prepare(self):
        """The task, what the write-back will need, and the request; raises if a choice is missing."""
        task, source = self.task, self.source_combo.currentText()
        if task == "ask" and not self.question_edit.text().strip():
            raise AstroVLMError("Type a question first.")
        if task == "tag" and source not in ("Catalogue sources", "Detected sources"):
            raise AstroVLMError("Tagging needs sources: choose 'Catalogue sources' or 'Detected sources'.")
        if task != "tag" and source not in ("Subset", "Current view"):
            raise AstroVLMError("Choose a subset or the current view for this task.")
        if task == "ask":
            question = self.question_edit.text().strip()
            request = self.request(task="ask", question=question)
            return task, {"question": question, "title": self.vlm.conversation_title(request)}, request
        context = {"labels": self._labels(), "image": self._data()}
        if task == "tag" and source == "Catalogue sources":
            context["catalog"] = self.vlm.data(self.catalog_combo.currentText())
        elif task == "classify" and source == "Subset":
            context["subset"] = self.subset_combo.currentText()
        return task, context, self.request(labels=context["labels"])

    def _finished(self, future) -> None:  # worker thread: hand over to the GUI thread
        error = future.exception()
        if error is None:
            self.signals.done.emit(future.result())
        else:
            self.signals.failed.emit(error)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _show_model_status(self) -> None:
        session = self.vlm.session
        if session.is_loaded:
            vlm = session.vlm()
            self.model_status.setText(f"{vlm!r} on {getattr(vlm, 'device', 'server')}")
        else:
            self.model_status.setText("not loaded")

    def _on_done(self, results) -> None:
        task, context = self._running
        self._running = None
        self._show_model_status()
        self._busy(False, "Answered." if task == "ask" else f"{len(results)} result(s).")
        self._write_back(task, context, results)

    def _on_failed(self, error) -> None:
        task, context = self._running or (None, None)
        self._running = None
        self._show_model_status()
        self._busy(False, finished=False)
        finished = getattr(error, "results", None)  # cancelled, or a server that failed part way
        if finished and task not in (None, "ask"):
            self._write_back(task, context, finished)
        self._show_error(error)

    def _write_back(self, task, context, results) -> None:
        self._last_results = list(results)
        if task == "tag":
            catalog = context.get("catalog")
            if catalog is None:  # detected sources: their dataset joins the collection now
                catalog = detections_data(context["image"], context["table"])
                self.vlm.add_detections(catalog)
            self.vlm.write_tags(context["image"], catalog, results, context["labels"].labels)
            self._fill_tag_table(results)
        elif task == "classify":
            if context.get("subset"):
                self.vlm.write_classification(self.vlm.subset(context["subset"], context["image"]), results[0])
            else:
                writeback.store_results(self.vlm.data_collection, results)
            self._fill_probabilities(results[0])
        else:  # ask: ``results`` is the turn's (conversation, result)
            self.vlm.finish_turn(results, context["title"])
            self._last_results = [results[1]]
            self.question_edit.clear()
        self.refresh()
        self.show_conversation()

    # ----------------------------------------------------------------------------------- conversations
    def conversation_title(self) -> str | None:
        """What the Ask tab's conversation is about now (``'<data> / <subset or view>'``), if anything."""
        try:
            return self.vlm.conversation_title(self.request(limit=1))
        except AstroVLMError:
            return None

    def show_conversation(self) -> None:
        """Show the conversation about the current selection in the Ask tab."""
        import html

        title = self.conversation_title()
        conversation = self.vlm.active_conversation(title) if title else None
        if conversation is None:
            self.conversation_label.setText(f"New conversation about {title}" if title else "")
            self.history.setHtml("")
            return
        self.conversation_label.setText(f"Conversation about {title}: {len(conversation)} turn(s). "
                                        "A question continues it.")
        parts = []
        for turn in conversation.turns:
            answer = html.escape(turn.final_answer)
            if turn.corrected is not None:
                answer += f" <i>(corrected; the model said: {html.escape(turn.answer)})</i>"
            parts.append(f"<p><b>Q:</b> {html.escape(turn.question)}<br><b>A:</b> {answer}</p>")
        self.history.setHtml("".join(parts))

    def new_conversation(self) -> None:
        """The next question about the current selection starts a new conversation (the old one is kept)."""
        title = self.conversation_title()
        if title is not None:
            self.vlm.new_conversation(title)
        self.show_conversation()
        self.message.setText("The next question starts a new conversation; the earlier one is kept for "
                             "export.")

    def correct_answer(self, answer: str | None = None, turn: int | None = None) -> None:
        """Replace an answer (the last by default; ``turn`` counts from 1) of the current conversation
        with the astronomer's."""
        title = self.conversation_title()
        conversation = self.vlm.active_conversation(title) if title else None
        if conversation is None or not conversation.turns:
            self._show_error(AstroVLMError("There is no answer to correct yet: ask a question first."))
            return
        turn = len(conversation.turns) if turn is None else turn
        if answer is None:
            try:
                entry = conversation.turn(turn)
            except AstroVLMError as error:
                self._show_error(error)
                return
            answer, ok = QInputDialog.getMultiLineText(self, "Correct the answer", entry.question,
                                                       entry.final_answer)
            if not ok:
                return
        try:
            self.vlm.correct(title, turn, answer)
        except AstroVLMError as error:
            self._show_error(error)
            return
        self.show_conversation()
        self.message.setText("Answer corrected; later questions and exports use your answer.")

    def export_conversations(self, path: str | None = None) -> None:
        """Write every conversation as LLaVA JSON (with its images) for ``astrovlm finetune``."""
        self._write_chosen(path, "Export conversations (LLaVA JSON)", "conversations.json",
                           self.vlm.export_conversations,
                           lambda written: f"Wrote {written}; fine-tune with: "
                                           f"astrovlm finetune {written} --model ...")

    def _fill_probabilities(self, result) -> None:
        items = sorted(result.probabilities.items(), key=lambda kv: -kv[1])
        self.prob_table.setRowCount(len(items))
        for row, (label, p) in enumerate(items):
            self.prob_table.setItem(row, 0, QTableWidgetItem(label))
            self.prob_table.setItem(row, 1, QTableWidgetItem(f"{p:.3f}"))

    def _fill_tag_table(self, results) -> None:
        self.tag_table.setRowCount(len(results))
        for row, result in enumerate(results):
            for col, text in enumerate((result.source_id, result.label or "", f"{result.confidence:.3f}")):
                self.tag_table.setItem(row, col, QTableWidgetItem(text))

    def select_source(self, row: int, _column: int = 0) -> None:
        """Centre the image viewer on a tagged source (clicking a row of the results table)."""
        if not 0 <= row < len(self._last_results):
            return
        viewer = self._image_viewer()
        xmin, xmax, ymin, ymax = self._last_results[row].provenance.bbox
        if viewer is None:
            return
        pad = max(xmax - xmin, ymax - ymin)
        viewer.state.x_min, viewer.state.x_max = xmin - pad, xmax + pad
        viewer.state.y_min, viewer.state.y_max = ymin - pad, ymax + pad

    def cancel(self) -> None:
        """Stop the running task after its current batch; finished results are kept and written."""
        self.vlm.session.cancel()
        self.message.setText("Cancelling after the current batch…")

    def export(self, prefix: str | None = None) -> None:
        """Write all results as an ECSV table and a region file (asks for a name without ``prefix``)."""
        self._write_chosen(prefix, "Export AstroVLM results (prefix)", "astrovlm_results", self.vlm.export,
                           lambda written: "Wrote " + ", ".join(str(p) for p in written))

    def _write_chosen(self, path, title: str, default: str, write, said) -> None:
        """``write(path)``, asking for ``path`` with a save dialog when it is None; shows ``said(written)``."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, title, default)
            if not path:
                return
        try:
            written = write(path)
        except AstroVLMError as error:
            self._show_error(error)
            return
        self.message.setText(said(written))

    def clear_results(self) -> None:
        self.vlm.clear()
        self.prob_table.setRowCount(0)
        self.tag_table.setRowCount(0)
        self.refresh()
        self.message.setText("Removed the plugin's results; your subsets are unchanged.")

    def choose_model_folder(self, folder: str | None = None) -> None:
        """Point the model field at a folder on this machine (asks with a folder browser without one)."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Choose a model folder (with config.json)")
            if not folder:
                return
        self.model_combo.setCurrentText(str(folder))

    def _busy(self, busy: bool, text: str | None = None, finished: bool = True) -> None:
        self.run_button.setEnabled(not busy)
        self.load_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setRange(0, 0)  # indeterminate until the first batch reports
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if finished else 0)  # a failure never reads 100%
        self.message.setStyleSheet("")
        if text is not None:
            self.message.setText(text)

    def _show_error(self, error) -> None:
        self.message.setStyleSheet("color: #b00020;")
        self.message.setText(in_panel_words(str(error)) if isinstance(error, AstroVLMError)
                             else f"{type(error).__name__}: {error}")
        if not isinstance(error, AstroVLMError):
            log.error("AstroVLM task failed", exc_info=error)
