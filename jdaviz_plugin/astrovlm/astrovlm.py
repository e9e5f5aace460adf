"""The AstroVLM tray plugin for jdaviz: ask about, classify and tag sources with a small VLM.

The plugin holds only UI state (traitlets) and calls the engine: `selection` turns the choices into an
engine `~glue_astrovlm.requests.Request` through the glue bridge, `VLMSession` runs it (cutouts and
model) on its worker thread, and `writeback` writes subsets and markers into the app. Results are
applied on the kernel's main thread.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging

from traitlets import Bool, Float, Int, List, Unicode, observe

from glue.core.message import DataCollectionAddMessage, DataCollectionDeleteMessage
from jdaviz.core.custom_traitlets import FloatHandleEmpty, IntHandleEmpty
from jdaviz.core.events import SnackbarMessage
from jdaviz.core.registries import tray_registry
from jdaviz.core.template_mixin import (DatasetSelectMixin, PluginTemplateMixin, SelectPluginComponent,
                                        SubsetSelect, TableMixin, ViewerSelectMixin)
from jdaviz.core.user_api import PluginUserApi

from glue_astrovlm.cutout_types import OUTSIDE_MODES
from glue_astrovlm.errors import AstroVLMError, in_panel_words
from glue_astrovlm.glue_bridge.catalogs import has_positions
from glue_astrovlm.labelsets import CUSTOM, label_set_for, menu_choices
from glue_astrovlm.requests import make_cutouts
from glue_astrovlm.results import REGION_FORMATS, class_colors
from glue_astrovlm.stretch import AUTO, INTERVALS, STRETCHES, Stretch, chosen_stretch

from . import selection, writeback

__all__ = ["AstroVLM"]

log = logging.getLogger("glue_astrovlm")

TASKS = ("ask", "classify", "tag")
SUBSETS_PER = {"Per class": "class", "Per source": "source"}


def _thumbnail(cutout) -> str:
    """A PNG data URL of exactly what the model sees."""
    buffer = io.BytesIO()
    cutout.to_image().save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@tray_registry('astrovlm', label='AstroVLM', category='data:analysis')
class AstroVLM(PluginTemplateMixin, DatasetSelectMixin, ViewerSelectMixin, TableMixin):
    """
    Ask about, classify and tag sources in images and cubes with a small vision-language model.

    Only the following attributes and methods are available through the public plugin API
    (``plg = viz.plugins['AstroVLM']``):

    * :meth:`~jdaviz.core.template_mixin.PluginTemplateMixin.show`
    * :meth:`~jdaviz.core.template_mixin.PluginTemplateMixin.open_in_tray`
    * :meth:`~jdaviz.core.template_mixin.PluginTemplateMixin.close_in_tray`
    * ``vlm_session`` (`~glue_astrovlm.session.VLMSession`): the engine session; assign one to share a loaded
      model with glue or a script.
    * ``model``, ``adapter`` (str): model id, folder or server URL, and an optional LoRA adapter.
    * ``dataset`` (:class:`~jdaviz.core.template_mixin.DatasetSelect`): image or cube to send.
    * ``send`` (:class:`~jdaviz.core.template_mixin.SelectPluginComponent`): ``'Viewer area'`` or
      ``'Spatial subset'`` for :meth:`ask` and :meth:`classify`.
    * ``viewer`` (:class:`~jdaviz.core.template_mixin.ViewerSelect`): image viewer whose visible area,
      displayed slice and markers are used.
    * ``subset`` (:class:`~jdaviz.core.template_mixin.SubsetSelect`): spatial subset to send.
    * ``cube_mode`` (:class:`~jdaviz.core.template_mixin.SelectPluginComponent`): for cubes,
      ``'Displayed slice'``, ``'Sum'``, ``'Mean'`` or ``'Moment 0'``.
    * ``spectral_subset`` (:class:`~jdaviz.core.template_mixin.SubsetSelect`): spectral range to collapse.
    * ``interval``, ``stretch``, ``outside``: how the cutout is scaled, and what happens outside a subset.
    * ``cutout_size`` (int): cutout side in pixels when tagging sources.
    * ``question`` (str), ``preset`` (select of label-set presets or ``'Custom labels'``),
      ``custom_labels`` (comma-separated str).
    * ``tag_source`` (``'Catalogue in jdaviz'``, ``'Table file'``, ``'Detected in view'``), ``catalog``,
      ``table_file``, ``nsigma``, ``max_sources``.
    * ``write_subsets``, ``subsets_per`` (``'Per class'`` or ``'Per source'``), ``write_markers``.
    * :meth:`preview`, :meth:`ask`, :meth:`classify`, :meth:`tag`, :meth:`cancel`
    * ``conversations`` (list of `~glue_astrovlm.Conversation`): :meth:`ask` continues the conversation
      about the current subset or viewer area; :meth:`new_conversation` starts again,
      :meth:`correct_answer` replaces an answer, :meth:`export_conversations` writes LLaVA JSON for
      ``astrovlm finetune``; :meth:`export` saves them with the results and :meth:`load_conversations`
      reads them back.
    * ``results`` (list of `~glue_astrovlm.Result`), :meth:`results_table`, :meth:`export`,
      :meth:`clear_results`, ``table`` (the results table shown in the plugin) and :meth:`export_table`.
    """
    template_file = __file__, "astrovlm.vue"

    model = Unicode("").tag(sync=True)
    adapter = Unicode("").tag(sync=True)
    model_status = Unicode("not loaded").tag(sync=True)

    send_items = List().tag(sync=True)
    send_selected = Unicode().tag(sync=True)
    subset_items = List().tag(sync=True)
    subset_selected = Unicode().tag(sync=True)
    is_cube = Bool(False).tag(sync=True)
    cube_mode_items = List().tag(sync=True)
    cube_mode_selected = Unicode().tag(sync=True)
    spectral_subset_items = List().tag(sync=True)
    spectral_subset_selected = Unicode().tag(sync=True)
    interval_items = List().tag(sync=True)
    interval_selected = Unicode().tag(sync=True)
    stretch_items = List().tag(sync=True)
    stretch_selected = Unicode().tag(sync=True)
    outside_items = List().tag(sync=True)
    outside_selected = Unicode().tag(sync=True)
    cutout_size = IntHandleEmpty(64).tag(sync=True)

    thumbnail = Unicode("").tag(sync=True)
    thumbnail_caption = Unicode("").tag(sync=True)

    task_tab = Int(1).tag(sync=True)  # 0: ask, 1: classify, 2: tag
    question = Unicode("").tag(sync=True)
    ask_history = List().tag(sync=True)
    conversation_title = Unicode("").tag(sync=True)
    corrected_answer = Unicode("").tag(sync=True)
    conversations_file = Unicode("conversations.json").tag(sync=True)
    preset_items = List().tag(sync=True)
    preset_selected = Unicode().tag(sync=True)
    custom_labels = Unicode("").tag(sync=True)
    probabilities = List().tag(sync=True)

    tag_source_items = List().tag(sync=True)
    tag_source_selected = Unicode().tag(sync=True)
    catalog_items = List().tag(sync=True)
    catalog_selected = Unicode().tag(sync=True)
    table_file = Unicode("").tag(sync=True)
    nsigma = FloatHandleEmpty(5.0).tag(sync=True)
    max_sources = IntHandleEmpty(50).tag(sync=True)
    write_subsets = Bool(True).tag(sync=True)
    subsets_per_items = List().tag(sync=True)
    subsets_per_selected = Unicode().tag(sync=True)
    write_markers = Bool(True).tag(sync=True)

    running = Bool(False).tag(sync=True)
    progress_value = Float(0).tag(sync=True)
    progress_indeterminate = Bool(False).tag(sync=True)
    progress_text = Unicode("").tag(sync=True)
    message = Unicode("").tag(sync=True)
    message_type = Unicode("info").tag(sync=True)
    export_prefix = Unicode("astrovlm_results").tag(sync=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._vlm_session = None
        self._future = None
        self._rows = []             # (task, result, subset label): what the table shows and export writes
        self._written_subsets = {}  # subset label -> class, for the last tagging run
        self._written_markers = {}  # viewer id -> marker names, for the last tagging run
        self._tagged_data = None
        self._conversations = []    # every conversation (closed ones are kept for export)
        self._warm_up = None        # the Future of the imports/preload started when first opened

        self.dataset.add_filter('is_image_or_flux_cube')
        self.viewer.add_filter('is_image_viewer')
        self.send = SelectPluginComponent(self, items='send_items', selected='send_selected',
                                          manual_options=[selection.SEND_VIEW, selection.SEND_SUBSET])
        self.subset = SubsetSelect(self, 'subset_items', 'subset_selected', dataset='dataset',
                                   filters=['is_spatial'], default_mode='first')
        self.cube_mode = SelectPluginComponent(self, items='cube_mode_items', selected='cube_mode_selected',
                                               manual_options=list(selection.CUBE_MODES))
        self.spectral_subset = SubsetSelect(self, 'spectral_subset_items', 'spectral_subset_selected',
                                            default_text=selection.ENTIRE_SPECTRUM,
                                            filters=[selection.is_range_subset])
        self.interval = SelectPluginComponent(self, items='interval_items', selected='interval_selected',
                                              manual_options=[AUTO, *INTERVALS])
        self.stretch = SelectPluginComponent(self, items='stretch_items', selected='stretch_selected',
                                             manual_options=list(STRETCHES))
        self.outside = SelectPluginComponent(self, items='outside_items', selected='outside_selected',
                                             manual_options=list(OUTSIDE_MODES))
        self.preset = SelectPluginComponent(self, items='preset_items', selected='preset_selected',
                                            manual_options=menu_choices())
        self.tag_source = SelectPluginComponent(self, items='tag_source_items', selected='tag_source_selected',
                                                manual_options=[selection.TAG_CATALOG, selection.TAG_FILE,
                                                                selection.TAG_DETECT])
        self.catalog = SelectPluginComponent(self, items='catalog_items', selected='catalog_selected')
        self.subsets_per = SelectPluginComponent(self, items='subsets_per_items',
                                                 selected='subsets_per_selected',
                                                 manual_options=list(SUBSETS_PER))
        self.table.headers_avail = ['source', 'task', 'label', 'confidence', 'answer', 'subset', 'x', 'y']
        self.table.headers_visible = ['source', 'task', 'label', 'confidence', 'subset']
        self.table._clear_callback = self._forget_table_rows

        from glue_astrovlm.models.loading import DEFAULT_MODEL

        self.model = DEFAULT_MODEL
        self._plugin_description = 'Ask about, classify and tag sources with a vision-language model.'
        self.docs_description = ("Send a subset, the viewer's area or catalogue sources to a small "
                                 "vision-language model; results become subsets, markers and a table.")
        self.hub.subscribe(self, DataCollectionAddMessage, handler=self._update_catalogs)
        self.hub.subscribe(self, DataCollectionDeleteMessage, handler=self._update_catalogs)
        self._update_catalogs()
        self._on_dataset_changed()
        self._update_thumbnail()

    @property
    def user_api(self):
        return PluginUserApi(self, expose=(
            'vlm_session', 'model', 'adapter', 'dataset', 'send', 'viewer', 'subset', 'cube_mode',
            'spectral_subset', 'interval', 'stretch', 'outside', 'cutout_size', 'question', 'preset',
            'custom_labels', 'tag_source', 'catalog', 'table_file', 'nsigma', 'max_sources',
            'write_subsets', 'subsets_per', 'write_markers', 'preview', 'ask', 'classify', 'tag',
            'cancel', 'results', 'results_table', 'export', 'clear_results', 'table', 'export_table',
            'conversations', 'new_conversation', 'correct_answer', 'export_conversations',
            'load_conversations'),
            readonly=('results', 'conversations'))

    # ------------------------------------------------------------------------------ engine session
    @property
    def vlm_session(self):
        """The `~glue_astrovlm.VLMSession` that runs the model (created on first use)."""
        if self._vlm_session is None:
            from glue_astrovlm.session import VLMSession

            self._vlm_session = VLMSession(self.model or None, self.adapter or None)
        return self._vlm_session

    @vlm_session.setter
    def vlm_session(self, session) -> None:
        self._vlm_session = session
        self.model = session.model
        self.adapter = session.adapter or ""
        self._show_model_status()

    @observe('model', 'adapter')
    def _model_changed(self, event={}):
        if self._vlm_session is not None:
            self._vlm_session.model = self.model.strip() or self._vlm_session.model
            self._vlm_session.adapter = self.adapter.strip() or None
            self._show_model_status()

    @observe('plugin_opened')
    def _warm_up_when_opened(self, event={}):
        """The first time the plugin is opened: import torch (its one unavoidable pause) and load a model
        that is already on this machine, while the user is still choosing; nothing is downloaded."""
        if self.plugin_opened and self._warm_up is None:
            self._warm_up = self.vlm_session.warm_up(preload=True)

    def _show_model_status(self):
        session = self._vlm_session
        if session is None or not session.is_loaded:
            self.model_status = "not loaded (loads at the first run)"
        else:
            vlm = session.vlm()
            self.model_status = f"loaded on {getattr(vlm, 'device', 'server')}"

    def vue_load_model(self, *args):
        """Load the model on the session's worker thread (the notebook stays responsive)."""
        self.model_status = f"loading {self.vlm_session.model}..."
        future = self.vlm_session.load_in_background()
        loop = _running_loop()

        def done(f):
            error = f.exception()
            if error is not None:
                self._report_error(error)
            self._show_model_status()

        if loop is None:
            wait_for(future)
            done(future)
        else:
            future.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    # ------------------------------------------------------------------------------ choices
    @property
    def _viz(self):
        return self._app._jdaviz_helper

    def _data(self):
        if not self.dataset.selected:
            raise AstroVLMError("Load an image or a cube into jdaviz (and show it in a viewer) first.")
        return self.dataset.selected_dc_item

    def _viewer(self):
        return self.viewer.selected_obj if self.viewer.selected else None

    def _stretch(self) -> Stretch | None:
        return chosen_stretch(self.interval.selected, self.stretch.selected)

    def _cube(self, data):
        return selection.cube_options(self._viz, data, self.cube_mode.selected, viewer=self._viewer(),
                                      spectral_subset=self.spectral_subset.selected)

    def _label_set(self, labels=None, preset=None):
        if labels is not None:
            self.preset.selected = CUSTOM
            self.custom_labels = ", ".join(labels) if not isinstance(labels, str) else labels
        elif preset is not None:
            self.preset.selected = preset
        from glue_astrovlm.glue_bridge.sources import image_source_from_data

        source = image_source_from_data(self.dataset.selected_dc_item) if self.dataset.selected else None
        return label_set_for(self.preset.selected, self.custom_labels, source)

    @observe('dataset_selected')
    def _on_dataset_changed(self, event={}):
        if not hasattr(self, 'cube_mode'):
            return
        try:
            self.is_cube = bool(self.dataset.selected) and self.dataset.selected_dc_item.ndim == 3
        except Exception:  # noqa: BLE001 - the selection may be mid-update
            self.is_cube = False

    @observe('subset_items')
    def _select_first_subset(self, event={}):
        # a new subset is selected when none was (jdaviz keeps the empty choice otherwise)
        if hasattr(self, 'subset') and not self.subset_selected and self.subset.choices:
            self.subset_selected = self.subset.choices[0]

    def _update_catalogs(self, msg=None):
        if not hasattr(self, 'catalog'):
            return
        own = writeback.MARKER_PREFIX
        labels = [data.label for data in self._app.data_collection
                  if not data.label.startswith(own) and has_positions(data)]
        self.catalog_items = [{'label': label} for label in labels]
        if self.catalog_selected not in labels:
            self.catalog_selected = labels[0] if labels else ''

    def preview(self):
        """The cutout the model would see for the current choices (the first source when tagging, or
        the area searched when sources are detected at run time); also shown as the plugin's thumbnail.
        """
        note = ""
        if TASKS[self.task_tab] == "tag" and self.tag_source.selected == selection.TAG_DETECT:
            # detection runs with the task; show the area it searches
            data = self._data()
            request = selection.view_request_of(data, self._viewer(), cube=self._cube(data), stretch=self._stretch())
            note = " (sources are detected here when you run)"
        else:
            request, _ = self._request(TASKS[self.task_tab], limit=1)
        cutout = make_cutouts(request).cutouts[0]
        ny, nx = cutout.shape
        where = f", {cutout.provenance.cube}" if cutout.provenance.cube else ""
        self.thumbnail = _thumbnail(cutout)
        self.thumbnail_caption = (f"{cutout.provenance.source_id}: {nx} x {ny} px{where}, "
                                  f"{cutout.stretch_text()}{note}")
        return cutout

    @observe('dataset_selected', 'send_selected', 'subset_selected', 'viewer_selected', 'cube_mode_selected',
             'spectral_subset_selected', 'interval_selected', 'stretch_selected', 'outside_selected',
             'task_tab', 'tag_source_selected', 'catalog_selected', 'cutout_size')
    def _update_thumbnail(self, event={}):
        if not hasattr(self, 'catalog') or self.running:
            return
        try:
            self.preview()
        except AstroVLMError as error:
            self.thumbnail, self.thumbnail_caption = "", str(error)
        except Exception as error:  # noqa: BLE001 - a preview must never break the plugin
            log.debug("AstroVLM thumbnail failed: %s", error)
            self.thumbnail, self.thumbnail_caption = "", "No preview for these choices."

    def vue_update_thumbnail(self, *args):
        self._update_thumbnail()

    def _request(self, tab: str, *, cube=None, **fields):
        """The engine request for the plugin's choices (read now, on the kernel's thread), and the glue
        catalogue dataset behind a tagging run (`None` otherwise). ``fields`` are more `Request` fields."""
        data = self._data()
        cube = cube if cube is not None else self._cube(data)
        options = dict(cube=cube if data.ndim == 3 else None, stretch=self._stretch(), **fields)
        if tab == "tag":
            return selection.tag_request(self._app, data, self.tag_source.selected, catalog=self.catalog.selected,
                                         table_file=self.table_file.strip() or None, viewer=self._viewer(),
                                         nsigma=float(self.nsigma), max_sources=int(self.max_sources),
                                         size=int(self.cutout_size), **options)
        if self.send.selected == selection.SEND_SUBSET:
            return selection.subset_request_of(self._app, data, self.subset.selected, outside=self.outside.selected,
                                               **options), None
        return selection.view_request_of(data, self._viewer(), **options), None

    # ------------------------------------------------------------------------------ tasks
    def ask(self, question: str | None = None, *, cube: dict | None = None, wait: bool = True,
            max_new_tokens: int = 128):
        """Ask a question about the subset or viewer area; the answer joins the history.

        Parameters
        ----------
        question : str, optional
            Replaces the plugin's question.
        cube : dict, optional
            Engine cube options (e.g. ``dict(mode='moment0', spectral_range=(10, 40))``), overriding
            ``cube_mode``.
        wait : bool, optional
            Block until the answer is back (default) and return the `~glue_astrovlm.Result`. With
            ``False``, return the running `~concurrent.futures.Future` at once; the plugin is updated
            when the kernel is next idle.
        max_new_tokens : int, optional
            Longest answer, in tokens.

        The question continues the conversation about the current subset or viewer area (see
        :meth:`new_conversation`); the result's ``turn`` says which turn it is.
        """
        if question is not None:
            self.question = question
        self._max_new_tokens = max_new_tokens
        return self._start("ask", cube=cube, wait=wait)

    def classify(self, labels=None, *, preset: str | None = None, cube: dict | None = None, wait: bool = True):
        """Classify the subset or viewer area; the plugin shows the probability of every label.

        Parameters
        ----------
        labels : list of str, optional
            Custom labels (sets ``preset`` to ``'Custom labels'``).
        preset : str, optional
            A shipped label-set preset (``glue_astrovlm.list_presets()``).
        cube, wait
            As in :meth:`ask`. Returns a `~glue_astrovlm.Result` (or a Future).
        """
        self._label_set(labels, preset)
        return self._start("classify", cube=cube, wait=wait)

    def tag(self, labels=None, *, preset: str | None = None, source: str | None = None, catalog: str | None = None,
            table_file: str | None = None, cube: dict | None = None, wait: bool = True):
        """Classify every source of a catalogue, a table file or the detections in the view.

        Writes subsets (``write_subsets``, one per class or per source), coloured markers
        (``write_markers``, in image viewers that support them) and the results table. Re-running
        replaces only what the previous run wrote.

        Parameters
        ----------
        labels, preset
            As in :meth:`classify`.
        source : {'Catalogue in jdaviz', 'Table file', 'Detected in view'}, optional
            Sets ``tag_source``.
        catalog : str, optional
            Label of a catalogue dataset in the app; sets ``catalog``.
        table_file : str, optional
            Path of a table file; sets ``table_file`` (and ``source`` to ``'Table file'``).
        cube, wait
            As in :meth:`ask`. Returns the list of `~glue_astrovlm.Result` (or a Future).
        """
        self._label_set(labels, preset)
        if table_file is not None:
            self.table_file = str(table_file)
            source = source or selection.TAG_FILE
        if catalog is not None:
            self.catalog.selected = catalog
            source = source or selection.TAG_CATALOG
        if source is not None:
            self.tag_source.selected = source
        return self._start("tag", cube=cube, wait=wait)

    def vue_run(self, *args):
        """The Run button: start the selected tab's task without blocking the notebook."""
        try:
            self._start(TASKS[self.task_tab], wait=False)
        except Exception:  # noqa: BLE001 - already reported in the plugin and the snackbar
            pass

    def cancel(self) -> None:
        """Stop the running task after its current batch; finished results are kept and written."""
        if self.running:
            self.vlm_session.cancel()
            self.progress_text = "Cancelling after the current batch..."

    def vue_cancel(self, *args):
        self.cancel()

    def _prepare(self, task: str, cube=None) -> dict:
        """What a run needs: its request, and what the write-back will need."""
        context = {"task": task, "data": self._data()}
        if task == "ask":
            if not self.question.strip():
                raise AstroVLMError("Type a question first.")
            fields = {"task": "ask", "question": self.question.strip(),
                      "max_new_tokens": getattr(self, "_max_new_tokens", 128)}
            context["question"] = fields["question"]
        else:
            context["labels"] = self._label_set()
            fields = {"labels": context["labels"]}
        context["request"], context["catalog"] = self._request(task, cube=cube, **fields)
        return context

    def _start(self, task: str, *, cube=None, wait: bool):
        if self.running:
            raise self._report_error(AstroVLMError("A run is in progress; cancel it or wait for it to finish."))
        try:
            context = self._prepare(task, cube)
        except Exception as error:
            raise self._report_error(error)
        loop = None if wait else _running_loop()
        self._set_running(True, f"Preparing the cutouts to {task}...")
        if loop is None:
            progress = self._on_progress
        else:
            def progress(done, total):
                loop.call_soon_threadsafe(self._on_progress, done, total)
        if task == "ask":  # the next turn of the conversation about this selection
            context["title"] = self._title_of(context["request"])
            active = self._active_conversation(context["title"])
            future = self.vlm_session.submit_converse(
                context["question"], conversation=active, request=None if active else context["request"],
                max_new_tokens=context["request"].max_new_tokens)
        else:
            future = self.vlm_session.submit(
                context["request"], progress=progress,
                on_prepared=lambda prepared: context.update(cutouts=prepared.cutouts))
        self._future = future
        if loop is not None:
            future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, context, f))
            return future
        wait_for(future, self.vlm_session)
        results = self._finish(context, future)
        if future.exception() is not None:
            raise future.exception()
        return results[0] if task in ("ask", "classify") else results

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_indeterminate = False
        self.progress_value = 100.0 * done / max(total, 1)
        self.progress_text = f"{done} of {total} cutout(s) done"

    def _finish(self, context: dict, future):
        """Apply a finished run (on the main thread): results, or the error and any partial results."""
        from glue_astrovlm.models.base import OperationCancelled

        self._future = None
        self._set_running(False)
        self._show_model_status()
        error = future.exception()
        results = future.result() if error is None else getattr(error, "results", [])
        if context["task"] == "ask" and error is None:  # a turn: (conversation, result)
            context["conversation"], results = results[0], [results[1]]
        try:
            if results:
                self._apply(context, results)
        except Exception as write_error:  # noqa: BLE001 - reported below, results stay in the session
            self._report_error(write_error)
            return results
        if isinstance(error, OperationCancelled):
            self._report(f"Cancelled: {len(results)} of {len(context.get('cutouts', results))} result(s) kept.",
                         "warning")
        elif error is not None:
            self._report_error(error)
        return results

    def _apply(self, context: dict, results) -> None:
        task = context["task"]
        if task == "tag":
            self._write_tags(context, results)
            self._report(self._tag_summary(results), "success")
        elif task == "classify":
            result = results[0]
            colors = class_colors(context["labels"].labels)
            self.probabilities = [{"label": label, "probability": round(float(p), 4),
                                   "percent": round(100 * float(p), 1), "color": colors[label]}
                                  for label, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1])]
            self._add_rows("classify", results)
            self._report(f"{result.source_id}: {result.label} ({result.confidence:.2f})", "success")
        else:
            conversation = context["conversation"]
            conversation.title = context["title"]
            if conversation not in self._conversations:
                self._conversations.append(conversation)
            self._show_conversation(context["title"])
            self._add_rows("ask", results)
            self._report(f"Answered (turn {results[0].turn} of the conversation about {context['title']}).",
                         "success")
        self.hub.broadcast(SnackbarMessage(f"AstroVLM: {self.message}", color="success", sender=self))

    def _write_tags(self, context: dict, results) -> None:
        viz, data, labels = self._viz, context["data"], context["labels"].labels
        self._remove_written()
        subsets_of = {}
        if self.write_subsets:
            per = SUBSETS_PER[self.subsets_per.selected]
            self._written_subsets, subset_labels = writeback.write_subsets(viz, data, results, labels, per=per)
            subsets_of = {id(result): label for result, label in zip(results, subset_labels)}
        if self.write_markers:
            self._written_markers = writeback.write_markers(viz, data, results, labels)
        if context.get("catalog") is not None:
            from glue_astrovlm.glue_bridge.writeback import write_catalog_components

            write_catalog_components(context["catalog"], results, labels)
        self._tagged_data = data
        self._rows = [row for row in self._rows if row[0] != "tag"]  # a new tagging run replaces the last
        self._add_rows("tag", results, subsets_of)

    def _tag_summary(self, results) -> str:
        counts = {}
        for result in results:
            counts[result.label] = counts.get(result.label, 0) + 1
        text = f"Tagged {len(results)} source(s): " + ", ".join(f"{n} {label}" for label, n in counts.items())
        if self.write_subsets:
            text += f"; {len(self._written_subsets)} subset(s)"
        if self.write_markers:
            n_markers = sum(len(v) for v in self._written_markers.values())
            text += (f"; markers in {len(self._written_markers)} viewer(s)" if n_markers else
                     "; no viewer here supports markers (Cubeviz's cube viewers do not)")
        return text + "."

    def _remove_written(self) -> None:
        """Remove the previous tagging run's subsets and markers (never the user's)."""
        if self._written_subsets:
            writeback.remove_subsets(self._viz, list(self._written_subsets), self._tagged_data)
        if self._written_markers:
            writeback.remove_markers(self._viz, self._written_markers)
        self._written_subsets, self._written_markers = {}, {}

    # ------------------------------------------------------------------------------ conversations
    @property
    def conversations(self) -> list:
        """Every conversation of this plugin, oldest first (a new conversation keeps the old ones)."""
        return list(self._conversations)

    @staticmethod
    def _title_of(request) -> str:
        source = request.extra.get("glue_data") or getattr(request.image, "label", None) or "image"
        return f"{source} / {request.source_id or 'selection'}"

    def _active_conversation(self, title: str):
        return next((c for c in reversed(self._conversations) if c.title == title and not c.closed), None)

    def _current_title(self) -> str | None:
        try:
            return self._title_of(self._request("ask", task="ask", question="?", limit=1)[0])
        except Exception:  # noqa: BLE001 - no data or subset yet: no conversation to show
            return None

    def _show_conversation(self, title: str | None = None) -> None:
        """Show the conversation about the current subset or viewer area in the Ask tab."""
        title = title or self._current_title()
        conversation = self._active_conversation(title) if title else None
        self.conversation_title = (f"Conversation about {title}: {len(conversation)} turn(s)" if conversation
                                   else (f"New conversation about {title}" if title else ""))
        self.ask_history = [] if conversation is None else [
            {"question": t.question, "answer": t.final_answer, "source": title, "turn": i + 1,
             "corrected": t.corrected is not None, "model_answer": t.answer}
            for i, t in enumerate(conversation.turns)]

    @observe('send_selected', 'subset_selected', 'dataset_selected')
    def _selection_changed(self, event={}):
        if self.task_tab == 0:
            self._show_conversation()

    def new_conversation(self) -> None:
        """The next question about the current subset or viewer area starts a new conversation."""
        title = self._current_title()
        current = self._active_conversation(title) if title else None
        if current is not None:
            current.closed = True
            current.backend_state.clear()  # a closed conversation needs no attention cache
        self._show_conversation(title)
        self._report("The next question starts a new conversation; the earlier one is kept for export.",
                     "info")

    def vue_new_conversation(self, *args):
        self.new_conversation()

    def correct_answer(self, answer: str | None = None, turn: int | None = None) -> None:
        """Replace an answer (the last by default; ``turn`` counts from 1) of the current conversation.

        Later questions and exports use the corrected answer; the model's answer is kept beside it.
        """
        title = self._current_title()
        conversation = self._active_conversation(title) if title else None
        if conversation is None or not conversation.turns:
            raise self._report_error(AstroVLMError("There is no answer to correct yet: ask a question "
                                                   "first."))
        answer = self.corrected_answer if answer is None else answer
        try:
            conversation.correct(len(conversation.turns) if turn is None else turn, answer)
        except AstroVLMError as error:
            raise self._report_error(error)
        self.corrected_answer = ""
        self._show_conversation(title)
        self._report("Answer corrected; later questions and exports use your answer.", "success")

    def vue_correct_answer(self, *args):
        try:
            self.correct_answer()
        except AstroVLMError:
            pass  # shown in the plugin

    def export_conversations(self, path: str | None = None, *, overwrite: bool = False):
        """Write every conversation (corrections included) as LLaVA JSON, with its images, for
        ``astrovlm finetune``. Returns the path written."""
        from glue_astrovlm.conversations import write_llava_json

        return write_llava_json(self._conversations, path or self.conversations_file, overwrite=overwrite)

    def vue_export_conversations(self, *args):
        try:
            written = self.export_conversations()
        except AstroVLMError as error:
            self._report_error(error)
            return
        self._report(f"Wrote {written}; fine-tune with: astrovlm finetune {written} --model ...", "success")

    def load_conversations(self, path: str) -> None:
        """Read back the conversations that :meth:`export` saved (``PREFIX.conversations.json``)."""
        import json
        from pathlib import Path

        from glue_astrovlm.conversations import Conversation

        try:
            entries = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise self._report_error(AstroVLMError(f"Cannot read conversations from {path}: {error}.")
                                     ) from None
        self._conversations += [Conversation.from_dict(entry) for entry in entries]
        self._show_conversation()

    # ------------------------------------------------------------------------------ results
    def _add_rows(self, task: str, results, subsets_of=None) -> None:
        subsets_of = subsets_of or {}
        self._rows = self._rows + [(task, result, subsets_of.get(id(result), "")) for result in results]
        self.table._clear_table()
        for task, result, subset in self._rows:
            x, y = result.provenance.center_pixel
            self.table.add_item({
                "source": result.source_id, "task": task, "label": result.label or "",
                "confidence": float("nan") if result.confidence is None else float(result.confidence),
                "answer": result.answer if result.task != "classify" else "",
                "subset": subset, "x": float(x), "y": float(y)})

    def _forget_table_rows(self) -> None:
        self._rows = []

    @property
    def _results(self) -> list:
        return [result for _, result, _ in self._rows]

    @property
    def results(self) -> list:
        """The results shown in the plugin's table, oldest first (every result: ``vlm_session.history``)."""
        return self._results

    def results_table(self):
        """The results as an astropy Table (full provenance, one ``p_<label>`` column per label, and
        ``subset``: the jdaviz subset each tagged source went to, next to its full ``label``)."""
        from glue_astrovlm.results import results_to_table

        if not self._results:
            raise AstroVLMError("There are no results yet.")
        table = results_to_table(self._results)
        table["subset"] = [subset for _, _, subset in self._rows]
        return table

    def export(self, prefix: str | None = None, *, overwrite: bool = False, region_format: str = "ds9") -> list:
        """Write the results as ``PREFIX.ecsv`` and a region file ``PREFIX.reg`` (``.crtf`` for CASA).

        Files are written atomically and never overwritten unless ``overwrite=True``.
        Returns the paths written.
        """
        from glue_astrovlm.results import export

        if region_format not in REGION_FORMATS:
            raise AstroVLMError(f"Unknown region format {region_format!r}; use one of {', '.join(REGION_FORMATS)}.")
        prefix = prefix or self.export_prefix
        written = export(self._results, prefix, formats=("ecsv", region_format), overwrite=overwrite,
                         table=self.results_table())
        if self._conversations:  # the conversations go with the results, to be read back
            written.append(self._save_conversations(f"{prefix}.conversations.json", overwrite))
        return written

    def _save_conversations(self, path: str, overwrite: bool):
        import json
        from pathlib import Path

        from glue_astrovlm.results import atomic_write

        text = json.dumps([c.to_dict() for c in self._conversations])
        return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite)

    def vue_export_results(self, *args):
        try:
            written = self.export()
        except AstroVLMError as error:
            self._report_error(error)
            return
        self._report("Wrote " + ", ".join(str(p) for p in written), "success")

    def clear_results(self) -> None:
        """Remove what the plugin wrote (its subsets, markers, catalogue columns) and its table.

        Your own subsets are never touched; ``vlm_session.history`` keeps every result.
        """
        self._remove_written()
        catalog_results = [d for d in self._app.data_collection
                           if any(c.label.startswith("vlm_") for c in d.components)]
        for data in catalog_results:
            for cid in [c for c in data.components if c.label.startswith("vlm_")]:
                data.remove_component(cid)
        self._rows = []
        self.table._clear_table()
        self.probabilities, self.ask_history = [], []
        self._conversations = []
        self.conversation_title = ""
        self._report("Removed the plugin's results; your subsets are unchanged.", "info")

    def vue_clear_results(self, *args):
        self.clear_results()

    # ------------------------------------------------------------------------------ feedback
    def _set_running(self, running: bool, text: str = "") -> None:
        self.running = running
        self.progress_indeterminate = running
        self.progress_value = 0 if running else 100
        self.progress_text = text
        if running:
            self.message = ""

    def _report(self, text: str, kind: str = "info") -> None:
        self.message, self.message_type = text, kind

    def _report_error(self, error):
        """Show an error in the plugin and the jdaviz snackbar; returns it (for ``raise``)."""
        if isinstance(error, AstroVLMError):
            text, trace = in_panel_words(str(error)), None
        else:
            text, trace = f"{type(error).__name__}: {error}", error
            log.error("AstroVLM task failed", exc_info=error)
        self._report(text, "error")
        self.hub.broadcast(SnackbarMessage(f"AstroVLM: {text}", color="error", sender=self, traceback=trace))
        return error


def wait_for(future, session=None) -> None:
    """Block until ``future`` is done; interrupting (Ctrl-C, or the notebook's stop button) cancels the
    session's run after its current batch and keeps waiting for the finished results."""
    while True:
        try:
            future.exception()
            return
        except KeyboardInterrupt:
            if session is None:
                raise
            session.cancel()
