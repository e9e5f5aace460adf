"""The AstroVLM panel in a real offscreen GlueApplication, with real FITS and a tiny real model."""

import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from glue.core import Data
from glue.core.roi import RectangularROI
from glue.core.subset import RoiSubsetState

from glue_astrovlm.glue_bridge import writeback
from glue_astrovlm.qt import open_panel, vlm_for


def _load(app, path):
    loaded = app.load_data(str(path))
    return loaded[0] if isinstance(loaded, list) else loaded


def _box(app, image, label="my box", roi=None):
    x, y = image.pixel_component_ids[1], image.pixel_component_ids[0]
    return app.data_collection.new_subset_group(label, RoiSubsetState(x, y, roi or RectangularROI(380, 520, 280, 420)))


def _panel(app, model_dir, labels="star, galaxy, nebula"):
    panel = open_panel(app)
    panel.model_combo.setCurrentText(str(model_dir))
    panel.vlm.session.load_options = {"dtype": "float32", "batch_size": 1}
    panel.preset_combo.setCurrentText("Custom labels")
    panel.labels_edit.setText(labels)
    return panel


def _wait(qtbot, panel, timeout=60000):
    qtbot.waitUntil(lambda: panel._running is None and panel.run_button.isEnabled(), timeout=timeout)


def test_plugin_registers_menu_and_subset_actions():
    from glue_qt.config import layer_action, menubar_plugin

    from glue_astrovlm.glue_plugin import setup

    setup()
    assert "AstroVLM" in [label for label, _ in menubar_plugin]
    labels = [item.label for item in layer_action]
    assert "Classify with AstroVLM" in labels and "Ask AstroVLM about this subset" in labels


def test_panel_classifies_a_subset_end_to_end(qtbot, glue_app, fits_dir, tiny_smolvlm_dir):
    image = _load(glue_app, fits_dir / "HorseHead.fits")
    group = _box(glue_app, image)
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.select_subset(group)
    assert panel.thumbnail.pixmap() is not None and not panel.thumbnail.pixmap().isNull()
    panel.set_task("classify")
    panel.run()
    _wait(qtbot, panel)
    result = vlm_for(glue_app).results[-1]
    assert group.label == f"my box [AstroVLM: {result.label} {result.confidence:.2f}]"
    assert panel.prob_table.rowCount() == 3
    assert float(panel.prob_table.item(0, 1).text()) == pytest.approx(result.confidence, abs=1e-3)
    results = glue_app.data_collection[writeback.RESULTS_LABEL]
    assert list(results["label"]) == [result.label]


def test_terminal_object_is_the_panels(qtbot, glue_app, fits_dir, tiny_smolvlm_dir):
    image = _load(glue_app, fits_dir / "HorseHead.fits")
    _box(glue_app, image)
    panel = _panel(glue_app, tiny_smolvlm_dir)
    vlm = vlm_for(glue_app)
    assert vlm is panel.vlm
    vlm.model = str(tiny_smolvlm_dir)
    result = vlm.classify("my box", labels=["FRI", "FRII"])
    assert "[AstroVLM: " in glue_app.data_collection.subset_groups[0].label and result.label in ("FRI", "FRII")
    if glue_app.has_terminal(create_if_not=False):
        assert glue_app._terminal.widget().namespace.get("vlm") is vlm


class _EventLoopWatch:
    """Ticks of a 10-ms QTimer: the gaps between them show how long the GUI thread was kept busy."""

    def __init__(self):
        self.gaps, self._last = [], time.perf_counter()
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def __enter__(self):
        self._last = self.began = time.perf_counter()
        self.timer.start(10)
        return self

    def __exit__(self, *exc):
        self.timer.stop()
        self._tick()  # the time since the last tick counts too
        self.elapsed = time.perf_counter() - self.began

    @property
    def longest(self) -> float:
        return max(self.gaps)


def test_tag_session_round_trip_and_gui_stays_responsive(qtbot, glue_app, fits_dir, tiny_smolvlm_dir, tmp_path,
                                                        monkeypatch):
    import threading

    from glue_qt.app import GlueApplication

    import glue_astrovlm.models.loading as loading_module
    import glue_astrovlm.requests as requests_module

    calls = []

    def on_thread(module, name):  # record which thread does the heavy work
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            limit = getattr(args[0], "limit", None) if args else None  # make_cutouts(request)
            calls.append((name, limit, threading.current_thread() is threading.main_thread()))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    on_thread(loading_module, "load_model")
    on_thread(requests_module, "make_cutouts")

    image = _load(glue_app, fits_dir / "HorseHead.fits")
    _box(glue_app, image, "user box")  # a subset of the user's own, which tagging must leave alone
    rng = np.random.default_rng(3)
    n_sources = 48
    sky = image.coords.pixel_to_world(rng.uniform(100, 800, n_sources), rng.uniform(100, 800, n_sources))
    catalog = Data(label="sources", ra=sky.ra.deg, dec=sky.dec.deg)
    glue_app.data_collection.append(catalog)
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.refresh()
    panel.data_combo.setCurrentText(image.label)
    panel.source_combo.setCurrentText("Catalogue sources")
    panel.catalog_combo.setCurrentText("sources")
    panel.size_spin.setValue(48)
    panel.set_task("tag")
    # Opening the panel started importing torch, whose C++ start-up holds the GIL (~0.2 s) in any thread.
    qtbot.waitUntil(panel.warm_up.done, timeout=60000)

    # Loading happens on the worker. One short stall is left: transformers parses tokenizer.json with
    # the C json decoder, which holds the GIL (~0.2 s on a 2-core VM).
    with _EventLoopWatch() as loading:
        panel.load_model()
        qtbot.waitUntil(lambda: panel.vlm.session.is_loaded and panel.run_button.isEnabled(), timeout=60000)
    assert [call for call in calls if call[0] == "load_model"] == [("load_model", None, False)]
    calls.clear()

    # Running: run() only reads the panel's choices; cutting out and inference happen on the worker.
    with _EventLoopWatch() as running:
        panel.run()
        returned = time.perf_counter() - running.began
        _wait(qtbot, panel)
    print(f"loading: longest gap {loading.longest * 1000:.0f} ms of {loading.elapsed:.2f} s; run(): returned "
          f"after {returned * 1000:.0f} ms, longest gap {running.longest * 1000:.0f} ms of {running.elapsed:.2f} s")
    # every cutout of the run was made on the worker (the GUI thread only makes the one-source thumbnail)
    assert ("make_cutouts", None, False) in calls
    assert all(not on_main or limit == 1 for _, limit, on_main in calls), calls
    assert not any(name == "load_model" for name, _, _ in calls)  # the loaded model was reused
    # The timings are a coarse guard (a busy 2-core machine can delay the GUI thread): a run on the GUI
    # thread would stall the event loop for the whole task, over a second here.
    assert returned < 0.25, returned
    assert running.longest < min(0.5, running.elapsed / 2), (running.longest, running.elapsed)
    assert len(running.gaps) > 10

    assert panel.tag_table.rowCount() == n_sources
    tagged = list(catalog["vlm_label"])
    assert all(label in ("star", "galaxy", "nebula") for label in tagged)
    panel.select_source(0)  # no viewer open: must not fail
    session_file = tmp_path / "tagged.glu"
    glue_app.save_session(str(session_file))

    restored = GlueApplication.restore_session(str(session_file))
    try:
        dc = restored.data_collection
        labels = {g.label for g in dc.subset_groups}
        assert "user box" in labels
        assert {"AstroVLM: " + t for t in tagged} <= labels
        assert list(dc["sources"]["vlm_label"]) == tagged
        assert len(writeback.results_data_table(dc[writeback.RESULTS_LABEL])) == n_sources
    finally:
        restored.close()


def test_cancel_keeps_finished_results(qtbot, glue_app, fits_dir, tiny_smolvlm_dir):
    image = _load(glue_app, fits_dir / "HorseHead.fits")
    sky = image.coords.pixel_to_world(np.linspace(100, 800, 12), np.linspace(100, 800, 12))
    glue_app.data_collection.append(Data(label="many", ra=sky.ra.deg, dec=sky.dec.deg))
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.refresh()
    panel.data_combo.setCurrentText(image.label)
    panel.source_combo.setCurrentText("Catalogue sources")
    panel.catalog_combo.setCurrentText("many")
    panel.set_task("tag")
    panel.signals.progress.connect(lambda done, total: panel.cancel() if done >= 2 else None)
    panel.run()
    _wait(qtbot, panel)
    assert "Cancelled" in panel.message.text()
    kept = panel.tag_table.rowCount()
    assert 2 <= kept < 12
    assert int((np.asarray(glue_app.data_collection["many"]["vlm_label"]) != "").sum()) == kept


def test_current_view_of_a_real_image_viewer(qtbot, glue_app, fits_dir, tiny_smolvlm_dir):
    from glue_qt.viewers.image import ImageViewer

    image = _load(glue_app, fits_dir / "HorseHead.fits")
    viewer = glue_app.new_data_viewer(ImageViewer, data=image)
    viewer.state.aspect = "auto"  # keep the limits we set whatever the widget's shape
    viewer.state.x_min, viewer.state.x_max = 199.5, 399.5
    viewer.state.y_min, viewer.state.y_max = 299.5, 449.5
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.refresh()
    panel.data_combo.setCurrentText(image.label)
    panel.source_combo.setCurrentText("Current view")
    assert panel.preview_cutout().provenance.bbox == (200, 400, 300, 450)
    panel.set_task("ask")
    panel.question_edit.setText("What is in this field?")
    panel.run()
    viewer.state.x_min, viewer.state.x_max = 0, 50  # panning after Run must not change what was sent
    _wait(qtbot, panel)
    result = vlm_for(glue_app).results[-1]
    assert result.task == "ask" and isinstance(result.answer, str)
    assert result.provenance.bbox == (200, 400, 300, 450) and result.provenance.source_id == "view"
    assert "What is in this field?" in panel.history.toPlainText()

    # tagging, then clicking a row centres this viewer on the source
    sky = image.coords.pixel_to_world([150, 600], [200, 650])
    glue_app.data_collection.append(Data(label="two", ra=sky.ra.deg, dec=sky.dec.deg))
    panel.refresh()
    # HorseHead.fits also brings a 1-D mask table without positions: it is not offered as a catalogue
    assert any(d.ndim == 1 and d.label != "two" for d in glue_app.data_collection)
    assert [panel.catalog_combo.itemText(i) for i in range(panel.catalog_combo.count())] == ["two"]
    panel.source_combo.setCurrentText("Catalogue sources")
    panel.catalog_combo.setCurrentText("two")
    panel.size_spin.setValue(40)
    panel.set_task("tag")
    panel.run()
    _wait(qtbot, panel)
    panel.select_source(1)
    centre_x = (viewer.state.x_min + viewer.state.x_max) / 2
    centre_y = (viewer.state.y_min + viewer.state.y_max) / 2
    assert abs(centre_x - 600) <= 1 and abs(centre_y - 650) <= 1


def test_tag_detected_sources_adds_the_detections_after_the_run(qtbot, glue_app, fits_dir, tiny_smolvlm_dir):
    image = _load(glue_app, fits_dir / "HorseHead.fits")
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.refresh()
    panel.data_combo.setCurrentText(image.label)
    panel.source_combo.setCurrentText("Detected sources")
    panel.set_task("tag")
    assert panel.preview_cutout() is None
    before = len(glue_app.data_collection)
    panel.run()
    assert len(glue_app.data_collection) == before  # detection runs on the worker, the collection waits
    _wait(qtbot, panel)
    detections = glue_app.data_collection[f"{image.label} sources (AstroVLM)"]
    assert detections.meta["astrovlm"] == "detections"
    assert panel.tag_table.rowCount() == detections.size
    assert set(detections["vlm_label"]) <= {"star", "galaxy", "nebula"}
    panel.run()  # again: the detections dataset is replaced, not duplicated
    _wait(qtbot, panel)
    assert [d.label for d in glue_app.data_collection].count(detections.label) == 1


def test_errors_show_in_the_panel(qtbot, glue_app, fits_dir, tiny_smolvlm_dir, tmp_path, monkeypatch):
    from astropy.io import fits

    bare = tmp_path / "m67_pixels.fits"
    fits.PrimaryHDU(fits.getdata(fits_dir / "M6707HH.fits")).writeto(bare)
    image = _load(glue_app, bare)
    glue_app.data_collection.append(Data(label="sky sources", ra=np.array([132.8]), dec=np.array([11.8])))
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.refresh()
    panel.data_combo.setCurrentText(image.label)
    panel.source_combo.setCurrentText("Catalogue sources")
    panel.catalog_combo.setCurrentText("sky sources")
    panel.set_task("tag")
    panel.run()
    _wait(qtbot, panel)
    assert "WCS" in panel.message.text() and panel.run_button.isEnabled()

    empty = _box(glue_app, image, "empty", RectangularROI(5000, 5100, 5000, 5100))
    panel.select_subset(empty)
    panel.set_task("classify")
    panel.run()
    _wait(qtbot, panel)
    assert "selects no pixels" in panel.message.text()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok = _box(glue_app, image, "ok box", RectangularROI(100, 200, 100, 200))
    panel.select_subset(ok)
    panel.model_combo.setCurrentText("astro-nobody/no-such-vlm")
    panel.run()
    _wait(qtbot, panel)
    assert "not in the local Hugging Face cache" in panel.message.text()
    assert ok.label == "ok box"


def test_the_panel_follows_glue_as_it_changes(qtbot, glue_app, fits_dir, tiny_smolvlm_dir):
    """Subsets, data and catalogues added, renamed or removed after the panel opened show up at once."""
    image = _load(glue_app, fits_dir / "HorseHead.fits")
    panel = _panel(glue_app, tiny_smolvlm_dir)

    def items(combo):
        return [combo.itemText(i) for i in range(combo.count())]

    assert items(panel.subset_combo) == []
    group = _box(glue_app, image, "drawn later")
    qtbot.waitUntil(lambda: items(panel.subset_combo) == ["drawn later"], timeout=5000)
    group.label = "renamed"
    qtbot.waitUntil(lambda: items(panel.subset_combo) == ["renamed"], timeout=5000)
    glue_app.data_collection.remove_subset_group(group)
    qtbot.waitUntil(lambda: items(panel.subset_combo) == [], timeout=5000)
    sky = image.coords.pixel_to_world([200, 300], [300, 400])
    glue_app.data_collection.append(Data(label="late catalogue", ra=sky.ra.deg, dec=sky.dec.deg))
    qtbot.waitUntil(lambda: items(panel.catalog_combo) == ["late catalogue"], timeout=5000)
    second = Data(label="second image", x=np.random.default_rng(0).normal(size=(64, 64)))
    glue_app.data_collection.append(second)
    qtbot.waitUntil(lambda: "second image" in items(panel.data_combo), timeout=5000)
    glue_app.data_collection.remove(second)
    qtbot.waitUntil(lambda: "second image" not in items(panel.data_combo), timeout=5000)


def test_the_preview_is_rebuilt_when_any_of_its_inputs_changes(qtbot, glue_app, fits_dir, tiny_smolvlm_dir):
    image = _load(glue_app, fits_dir / "HorseHead.fits")
    sky = image.coords.pixel_to_world([200, 300], [300, 400])
    glue_app.data_collection.append(Data(label="sources", ra=sky.ra.deg, dec=sky.dec.deg))
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.data_combo.setCurrentText(image.label)
    panel.source_combo.setCurrentText("Catalogue sources")
    panel.size_spin.setValue(64)
    assert panel.thumbnail.toolTip().startswith("64x64 px")
    panel.size_spin.setValue(40)  # the size alone changes: the preview follows (it went stale before)
    assert panel.thumbnail.toolTip().startswith("40x40 px")
    panel.interval_combo.setCurrentText("minmax")
    assert "minmax" in panel.thumbnail.toolTip()
    assert panel.preview_cutout().shape == (40, 40)


def test_choosing_a_model_offline(qtbot, glue_app, fits_dir, tiny_smolvlm_dir, tmp_path, monkeypatch):
    """A folder browser, errors in the panel's own words, no 100% after a failure, and the last model
    that worked comes back in a new window (a restart or a session restore)."""
    from glue.core import DataCollection
    from glue_qt.app import GlueApplication

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _load(glue_app, fits_dir / "HorseHead.fits")
    panel = open_panel(glue_app)
    panel.model_combo.setCurrentText("nobody/no-such-vlm")
    panel.load_model()
    qtbot.waitUntil(lambda: panel.load_button.isEnabled(), timeout=60000)
    text = panel.message.text()
    assert "Folder… button next to the Model field" in text and "--model" not in text
    assert panel.progress.value() == 0
    panel.choose_model_folder(str(tiny_smolvlm_dir))
    panel.vlm.session.load_options = {"dtype": "float32"}
    panel.load_model()
    qtbot.waitUntil(lambda: panel.vlm.session.is_loaded and panel.load_button.isEnabled(), timeout=60000)
    assert panel.progress.value() == panel.progress.maximum()
    other = GlueApplication(DataCollection())
    try:
        assert open_panel(other).model_combo.currentText() == str(tiny_smolvlm_dir)
    finally:
        other.close()


def test_a_model_used_before_loads_while_the_user_is_still_choosing(qtbot, glue_app, fits_dir, tiny_smolvlm_dir,
                                                                     monkeypatch):
    from glue_astrovlm.models import loading
    from glue_astrovlm.session import remember_model

    remember_model(str(tiny_smolvlm_dir))
    image = _load(glue_app, fits_dir / "HorseHead.fits")
    group = _box(glue_app, image)
    panel = open_panel(glue_app)
    assert panel.model_combo.currentText() == str(tiny_smolvlm_dir)
    panel.warm_up.result(timeout=300)
    assert panel.vlm.session.is_loaded
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("Run loaded the model again"))
    panel.preset_combo.setCurrentText("Custom labels")
    panel.labels_edit.setText("star, nebula")
    panel.select_subset(group)
    panel.set_task("classify")
    panel.run()
    _wait(qtbot, panel)
    assert group.label.startswith("my box [AstroVLM: "), panel.message.text()
