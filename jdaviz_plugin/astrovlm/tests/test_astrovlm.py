"""The AstroVLM tray plugin in real jdaviz helpers (Imviz, Cubeviz, App) with real data and a tiny
real SmolVLM (random weights: the answers are meaningless, the machinery is what is tested).

The helpers are created once per module and shared, since creating one takes seconds.
"""

import asyncio
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

jdaviz = pytest.importorskip("jdaviz")

from glue.core.hub import HubListener  # noqa: E402
from jdaviz.core.events import SnackbarMessage  # noqa: E402
from regions import CirclePixelRegion, PixCoord, Regions  # noqa: E402

import jdaviz_plugin  # noqa: E402
from glue_astrovlm import AstroVLMError, detect_sources, open_image  # noqa: E402
from glue_astrovlm.results import class_colors  # noqa: E402
from glue_astrovlm.session import VLMSession  # noqa: E402
from jdaviz_plugin.astrovlm.writeback import META_KEY, safe_subset_label  # noqa: E402

HORSEHEAD = "HorseHead.fits"
CUBE = "l1448_13co.fits"


class Snackbars(HubListener):
    """Records the snackbar messages of an app, with the thread each arrived on."""

    def __init__(self, viz):
        self.messages = []
        viz._app.hub.subscribe(self, SnackbarMessage, handler=self._record)

    def _record(self, message):
        self.messages.append((message.color, message.text, threading.current_thread()))

    def of(self, color):
        return [(text, thread) for c, text, thread in self.messages if c == color]


@pytest.fixture(scope="module")
def vlm_session(tiny_smolvlm_dir):
    # batch_size=1: progress after every cutout, so a run can be cancelled part-way
    session = VLMSession(str(tiny_smolvlm_dir), dtype="float32", batch_size=1)
    yield session
    session.close()


def _needs_helper(name):
    if not hasattr(jdaviz, name):
        pytest.skip(f"jdaviz {jdaviz.__version__} has no {name} (jdaviz 5.2 removed it); the App tests "
                    "cover the plugin")


@pytest.fixture(scope="module")
def imviz(fits_dir, vlm_session):
    """Imviz made by ``jdaviz_plugin.Imviz()``, which adds the plugin, showing HorseHead.fits.

    ``viz.creation_warnings`` keeps the deprecation warnings that creating it raised.
    """
    _needs_helper("Imviz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viz = jdaviz_plugin.Imviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viz.load(str(fits_dir / HORSEHEAD), format="Image", extension=0)
    viz.creation_warnings = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    viz.plugins["AstroVLM"].vlm_session = vlm_session
    viz.snackbars = Snackbars(viz)
    return viz


@pytest.fixture(scope="module")
def cubeviz(fits_dir, vlm_session):
    """Cubeviz with the L1448 13CO cube, the plugin added with the documented one-liner.

    jdaviz 5.0.2's cube importer needs a surface-brightness unit and the file has no BUNIT: the cube
    (brightness temperature) is given as K per pixel, what jdaviz itself makes of per-pixel data.
    """
    import astropy.units as u
    from astropy.io import fits
    from astropy.wcs import WCS
    from specutils import Spectrum

    _needs_helper("Cubeviz")
    with fits.open(fits_dir / CUBE) as hdul:
        cube = Spectrum(flux=hdul[0].data * u.K / u.pix ** 2, wcs=WCS(hdul[0].header))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viz = jdaviz.Cubeviz()
        viz.load(cube, format="3D Spectrum", data_label="L1448 13CO")
    plg = jdaviz_plugin.add_to(viz)
    plg.vlm_session = vlm_session
    viz.snackbars = Snackbars(viz)
    return viz


def _subset_labels(viz):
    return [group.label for group in viz._app.data_collection.subset_groups]


def _horsehead_catalog(fits_dir, n=4):
    from astropy.table import Table

    found = detect_sources(open_image(fits_dir / HORSEHEAD), nsigma=5, max_sources=n)
    # plain degrees: jdaviz 5.0.2's Catalog Search multiplies columns that carry a unit by degrees again
    return Table({"ra": np.asarray(found["ra"]), "dec": np.asarray(found["dec"]),
                  "name": [f"star {i}" for i in found["id"]]})


# ------------------------------------------------------------------------------------------ naming
def test_safe_subset_labels_keep_letters_digits_and_spaces():
    assert safe_subset_label("galaxy/AGN") == "AstroVLM galaxy AGN"
    assert safe_subset_label("artefact (ghost)") == "AstroVLM artefact ghost"
    assert safe_subset_label("Sérsic") == "AstroVLM Sersic"
    assert safe_subset_label("???") == "AstroVLM class"
    assert safe_subset_label("FR-I", taken={"astrovlm fr i"}) == "AstroVLM FR I 2"
    for name in ("galaxy/AGN", "Sérsic", "edge-on disk", "FRII"):
        assert safe_subset_label(name).replace(" ", "").isascii()
        assert safe_subset_label(name).replace(" ", "").isalnum()


# ------------------------------------------------------------------------------------------ registration
def test_plain_glue_setup_does_not_import_jdaviz():
    code = ("import sys\nfrom glue_astrovlm.glue_plugin import setup\nsetup()\nimport jdaviz_plugin\n"
            "assert 'jdaviz' not in sys.modules and 'jdaviz_plugin.astrovlm' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_app_tray_gets_plugin_through_glue_entry_point():
    # a fresh process: glue loads each entry point once per process, so this is the first jdaviz app
    code = ("import warnings; warnings.simplefilter('ignore')\nimport jdaviz\napp = jdaviz.App()\n"
            "names = [item['name'] for item in app._app.state.tray_items]\n"
            "assert 'astrovlm' in names, names\nassert 'AstroVLM' in app.plugins\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_add_to_is_idempotent(imviz):
    before = [item["name"] for item in imviz._app.state.tray_items]
    plg = jdaviz_plugin.add_to(imviz)
    assert [item["name"] for item in imviz._app.state.tray_items] == before
    assert before.count("astrovlm") == 1
    for name in ("ask", "classify", "tag", "cancel", "export", "vlm_session", "dataset", "subset", "cube_mode"):
        assert name in dir(plg)
    assert ":meth:`tag`" in type(plg._obj).__doc__


def test_imviz_is_jdaviz_imviz_with_the_plugin_and_one_warning_on_the_callers_line(imviz):
    assert type(imviz) is jdaviz.Imviz  # jdaviz's own helper, not a subclass that 5.2 would break
    assert [item["name"] for item in imviz._app.state.tray_items].count("astrovlm") == 1
    ours = [w for w in imviz.creation_warnings if "jdaviz_plugin.Imviz()" in str(w.message)]
    assert len(ours) == 1 and "5.2" in str(ours[0].message) and "new_app()" in str(ours[0].message)
    assert ours[0].filename == __file__  # the line that called it, which users see
    # jdaviz's own "Imviz is deprecated" is not repeated (it would name jdaviz_plugin's line)
    assert not [w for w in imviz.creation_warnings if str(w.message).startswith("Imviz is deprecated")]


def test_helpers_that_jdaviz_removed_say_what_to_use(monkeypatch):
    # jdaviz 5.2 has no Imviz and no Cubeviz: emulate it by removing them from this jdaviz
    for name in ("Imviz", "Cubeviz"):
        monkeypatch.delattr(jdaviz, name, raising=False)
        with pytest.raises(AstroVLMError, match=rf"has no {name} .*jdaviz_plugin\.new_app\(\)"):
            getattr(jdaviz_plugin, name)()


# ------------------------------------------------------------------------------------------ template
def _template_tags():
    """(tag, [(attribute, value), ...]) of every element of the plugin's template."""
    from html.parser import HTMLParser
    from pathlib import Path

    import jdaviz_plugin.astrovlm.astrovlm as module

    tags = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, attrs))

        handle_startendtag = handle_starttag

    Tags().feed((Path(module.__file__).parent / "astrovlm.vue").read_text())
    return tags


def test_template_binds_two_way_in_the_form_vue_2_and_vue_3_both_compile():
    """Vue 3 (jdaviz 5.1) ignores Vue 2's ``.sync``; Vue 2 (jdaviz 5.0) misreads ``v-model:x``. Both
    compile ``:x="y" @update:x="y = $event"`` to the same prop and listener."""
    # the props that jdaviz's components (and the tray around the plugin) change from the browser
    two_way = {"j-tray-plugin": ("api_hints_enabled", "scroll_to"), "plugin-switch": ("value",)}
    checked = 0
    for tag, attrs in _template_tags():
        names = dict(attrs)
        for name, value in attrs:
            assert not name.endswith(".sync") and not name.startswith("v-model:"), f"<{tag} {name}>"
            if name.startswith("@update:"):
                prop = name.removeprefix("@update:")
                target, _, event = value.partition(" = ")
                assert event == "$event" and names.get(f":{prop}") == target, f"<{tag} {name}={value!r}>"
        for prop in two_way.get(tag, ("selected",) if tag.startswith("plugin-") else ()):
            if f":{prop}" in names:
                assert f"@update:{prop}" in names, f"<{tag} :{prop}> is bound one way only"
                checked += 1
    assert checked >= 15  # every select and switch of the plugin, and the tray's two


# ------------------------------------------------------------------------------------------ Imviz
def test_imviz_classifies_a_subset(imviz):
    imviz.plugins["Subset Tools"].import_region(CirclePixelRegion(PixCoord(480, 420), 70))
    plg = imviz.plugins["AstroVLM"]
    plg.send = "Spatial subset"
    plg.subset = "Subset 1"
    result = plg.classify(["star", "galaxy", "dark nebula"])
    assert result.source_id == "Subset 1"
    assert result.label in ("star", "galaxy", "dark nebula")
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    shown = plg._obj.probabilities
    assert [item["label"] for item in shown] == sorted(result.probabilities, key=lambda k: -result.probabilities[k])
    assert plg._obj.thumbnail.startswith("data:image/png;base64,")
    assert "Subset 1" in plg._obj.thumbnail_caption
    rows = plg.export_table()
    assert rows["source"][-1] == "Subset 1" and rows["task"][-1] == "classify"
    assert plg._obj.message_type == "success"
    assert "Subset 1" in _subset_labels(imviz)  # the user's subset keeps its name


def test_imviz_tags_a_catalogue_with_subsets_and_markers(imviz, fits_dir, tmp_path):
    imviz.load(_horsehead_catalog(fits_dir), format="Catalog", data_label="stars")
    plg = imviz.plugins["AstroVLM"]
    user_state = next(g for g in imviz._app.data_collection.subset_groups if g.label == "Subset 1").subset_state
    labels = ["star", "galaxy/AGN", "artefact (ghost)"]

    results = plg.tag(labels, catalog="stars")
    assert len(results) == 4
    image = imviz._app.data_collection[0]
    written = image.meta[META_KEY]
    colors = class_colors(labels)
    for name in {r.label for r in results}:
        label = safe_subset_label(name)
        assert written[label] == name
        group = next(g for g in imviz._app.data_collection.subset_groups if g.label == label)
        assert group.style.color.lower() == colors[name].lower()
        marker = safe_subset_label(name, prefix="AstroVLM markers")
        assert marker in imviz._app.data_collection.labels
        assert marker in imviz._app.get_viewer("imviz-0")._marktags
    catalog = imviz._app.data_collection["stars"]
    assert sorted(set(catalog["vlm_label"])) == sorted({r.label for r in results})
    table = plg.results_table()
    assert set(table["subset"][-4:]) == {safe_subset_label(r.label) for r in results}
    assert set(table["label"][-4:]) == {r.label for r in results}  # the full class names

    # on the Tag tab the thumbnail is the first catalogue source, cut out alone
    plg._obj.task_tab = 2
    preview = plg._obj.preview()
    assert preview.provenance.source_id == results[0].source_id
    assert plg._obj.thumbnail_caption.startswith(f"{results[0].source_id}: ")

    # re-running replaces only the plugin's own subsets and markers
    old_subsets = set(written)
    plg.subsets_per = "Per source"
    again = plg.tag(["point source", "extended"], catalog="stars")
    labels_now = _subset_labels(imviz)
    assert not old_subsets & set(labels_now)
    assert "Subset 1" in labels_now
    assert next(g for g in imviz._app.data_collection.subset_groups if g.label == "Subset 1").subset_state \
        is user_state
    per_source = [label for label in labels_now if label.startswith("AstroVLM ")]
    assert len(per_source) == len(again) == 4
    assert sorted(plg.results_table()["subset"][-4:]) == sorted(per_source)
    assert not [d for d in imviz._app.data_collection.labels if d.startswith("AstroVLM markers star")]
    assert len(plg.export_table()) == 1 + 4  # the classification stays, the old tags are replaced

    written_files = plg.export(tmp_path / "tags")
    assert [p.name for p in written_files] == ["tags.ecsv", "tags.reg"]
    from astropy.table import Table

    exported = Table.read(written_files[0])
    assert "subset" in exported.colnames and "p_point_source" in exported.colnames
    assert len(Regions.read(written_files[1])) == len(exported)
    with pytest.raises(AstroVLMError, match="already exists"):
        plg.export(tmp_path / "tags")
    plg.subsets_per = "Per class"


def test_imviz_tags_catalog_search_results(imviz, fits_dir):
    search = imviz.plugins["Catalog Search"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.import_catalog(_horsehead_catalog(fits_dir, n=3))
        search.search()
    plg = imviz.plugins["AstroVLM"]
    assert "catalog_results" in plg.catalog.choices
    results = plg.tag(["star", "galaxy"], catalog="catalog_results")
    assert len(results) == 3
    assert {safe_subset_label(r.label) for r in results} <= set(_subset_labels(imviz))


def test_errors_reach_the_snackbar_and_the_plugin(imviz, tmp_path):
    plg = imviz.plugins["AstroVLM"]
    before = len(imviz.snackbars.of("error"))
    missing = tmp_path / "missing.ecsv"
    with pytest.raises(AstroVLMError, match="No such catalogue file"):
        plg.tag(["star", "galaxy"], table_file=missing)
    assert plg._obj.message_type == "error" and "missing.ecsv" in plg._obj.message
    errors = imviz.snackbars.of("error")
    assert len(errors) == before + 1 and "missing.ecsv" in errors[-1][0]

    plg._obj.task_tab = 1
    plg.custom_labels = "only one"
    plg.preset = "Custom labels"
    plg._obj.vue_run()  # the button reports instead of raising
    assert "at least two labels" in plg._obj.message
    assert "at least two labels" in imviz.snackbars.of("error")[-1][0]
    assert not plg._obj.running
    plg.tag_source = "Catalogue in jdaviz"


def test_run_button_does_not_block_and_applies_on_the_main_thread(imviz):
    plg = imviz.plugins["AstroVLM"]
    plg.send = "Viewer area"
    plg.preset = "spiral"
    obj = plg._obj
    obj.task_tab = 1

    async def click_and_wait():
        obj.vue_run()
        assert obj.running  # returned at once; the model runs on the session's worker thread
        while obj.running:
            await asyncio.sleep(0.02)

    successes = len(imviz.snackbars.of("success"))
    asyncio.run(click_and_wait())
    assert obj.message_type == "success", obj.message
    text, thread = imviz.snackbars.of("success")[successes]
    assert thread is threading.main_thread()
    assert obj.progress_value == 100
    assert plg.export_table()["source"][-1] == "view"


def test_cancel_keeps_the_finished_results(imviz):
    plg = imviz.plugins["AstroVLM"]
    obj = plg._obj
    plg.tag_source = "Detected in view"
    plg.nsigma = 5
    plg.max_sources = 8
    plg.preset = "spiral"
    obj.task_tab = 2

    async def run_then_cancel():
        obj.vue_run()
        while obj.running and obj.progress_value == 0:
            await asyncio.sleep(0.005)
        obj.vue_cancel()
        while obj.running:
            await asyncio.sleep(0.02)

    asyncio.run(run_then_cancel())
    assert obj.message_type == "warning" and obj.message.startswith("Cancelled"), obj.message
    tagged = [row for row in plg.export_table() if row["task"] == "tag"]
    assert 1 <= len(tagged) < 8
    plg.tag_source = "Catalogue in jdaviz"


def test_clear_results_removes_only_what_the_plugin_wrote(imviz):
    plg = imviz.plugins["AstroVLM"]
    plg.tag(["star", "galaxy"], catalog="stars")
    assert any(label.startswith("AstroVLM ") for label in _subset_labels(imviz))
    plg.clear_results()
    assert _subset_labels(imviz) == ["Subset 1"]
    assert not [d for d in imviz._app.data_collection.labels if d.startswith("AstroVLM markers")]
    assert not [c for c in imviz._app.data_collection["stars"].components if c.label.startswith("vlm_")]
    assert len(plg.results) == 0


# ------------------------------------------------------------------------------------------ Cubeviz
def test_cubeviz_classifies_the_displayed_slice_and_a_moment_map(cubeviz):
    import astropy.units as u
    from specutils import SpectralRegion

    plg = cubeviz.plugins["AstroVLM"]
    assert plg.dataset.selected == "L1448 13CO" and plg._obj.is_cube
    plg.send = "Viewer area"
    plg.cube_mode = "Displayed slice"
    shown = cubeviz._app.get_viewer("flux-viewer").state.slices[0]
    result = plg.classify(["outflow", "core", "noise"])
    assert result.provenance.cube == f"slice {shown}"

    # in the spectral axis' own unit: jdaviz 5.0.2's import_region does not convert units
    cubeviz.plugins["Subset Tools"].import_region(SpectralRegion(4000 * u.m / u.s, 5000 * u.m / u.s))
    plg.cube_mode = "Moment 0"
    plg.spectral_subset = "Subset 1"
    result = plg.classify(["outflow", "core", "noise"])
    assert result.provenance.cube.startswith("moment0") and "km/s" in result.provenance.cube
    assert "moment0" in plg._obj.thumbnail_caption


def test_cubeviz_tags_detected_sources_as_subsets(cubeviz):
    plg = cubeviz.plugins["AstroVLM"]
    plg.cube_mode = "Moment 0"
    plg.spectral_subset = "Entire Spectrum"
    plg.tag_source = "Detected in view"
    plg.nsigma = 3
    plg.max_sources = 3
    results = plg.tag(["dense core", "diffuse"])
    assert 1 <= len(results) <= 3
    cube = cubeviz._app.data_collection["L1448 13CO"]
    for name in {r.label for r in results}:
        group = next(g for g in cubeviz._app.data_collection.subset_groups if g.label == safe_subset_label(name))
        subset = next(s for s in group.subsets if s.data is cube)
        assert subset.to_mask().any()
    assert all(r.provenance.cube.startswith("moment0") for r in results)
    assert "no viewer here supports markers" in plg._obj.message  # Cubeviz's cube viewers draw no markers
    assert np.isfinite(plg.results_table()["ra"]).all()


# ------------------------------------------------------------------------------------------ App
def test_new_app_classifies_a_cube_without_deprecation_warnings(fits_dir, vlm_session):
    """The path that outlives Imviz and Cubeviz (jdaviz 5.2): the App, for images and cubes alike.

    No warnings filter around new_app(): pytest turns any DeprecationWarning into an error.
    """
    import astropy.units as u
    from astropy.io import fits
    from astropy.wcs import WCS
    from specutils import Spectrum

    app = jdaviz_plugin.new_app()
    assert isinstance(app, jdaviz.App) and jdaviz.gca() is app
    assert [item["name"] for item in app._app.state.tray_items].count("astrovlm") == 1
    with fits.open(fits_dir / CUBE) as hdul:
        cube = Spectrum(flux=hdul[0].data * u.K / u.pix ** 2, wcs=WCS(hdul[0].header))
    with warnings.catch_warnings():
        # jdaviz 5.0.2's aperture marks pass traitlets an argument it deprecates, while loading a cube
        warnings.simplefilter("ignore")
        app.load(cube, format="3D Spectrum", data_label="L1448 13CO")
    plg = app.plugins["AstroVLM"]
    plg.vlm_session = vlm_session
    assert plg.dataset.selected == "L1448 13CO" and plg._obj.is_cube
    plg.send = "Viewer area"
    plg.cube_mode = "Displayed slice"
    shown = plg._obj.viewer.selected_obj.state.slices[0]
    result = plg.classify(["outflow", "core", "noise"])
    assert result.provenance.cube == f"slice {shown}"


def _horsehead_app(fits_dir):
    """A jdaviz App of its own showing HorseHead.fits, and its AstroVLM plugin (already there through the
    entry point unless glue loaded it earlier; ``add_to`` is idempotent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = jdaviz.App()
        app.load(str(fits_dir / HORSEHEAD), format="Image", extension=0)
    return app, jdaviz_plugin.add_to(app)


def test_app_asks_about_the_view(fits_dir, vlm_session):
    app, plg = _horsehead_app(fits_dir)  # already there through the entry point unless glue loaded it earlier
    assert [item["name"] for item in app._app.state.tray_items].count("astrovlm") == 1
    plg.vlm_session = vlm_session
    plg.send = "Viewer area"
    result = plg.ask("Is there a dark nebula?")
    assert result.task == "ask" and result.prompt == "Is there a dark nebula?"
    assert plg._obj.ask_history[-1]["answer"] == result.answer


def test_the_ask_tab_holds_a_conversation(fits_dir, vlm_session, tmp_path):
    """Its own app: the conversation's rows and subsets stay out of the shared Imviz's state."""
    from glue_astrovlm.datasets import load_llava_json

    app, plg = _horsehead_app(fits_dir)
    plg.vlm_session = vlm_session
    plg.send = "Viewer area"
    plg._obj.task_tab = 0
    first = plg.ask("Is there a dark nebula?", max_new_tokens=6)
    second = plg.ask("Which side is brighter?", max_new_tokens=6)
    assert (first.turn, second.turn) == (1, 2)
    conversation = plg.conversations[-1]
    assert [t.question for t in conversation.turns] == ["Is there a dark nebula?", "Which side is brighter?"]
    assert [item["turn"] for item in plg._obj.ask_history] == [1, 2]
    assert "2 turn(s)" in plg._obj.conversation_title and "view" in plg._obj.conversation_title
    plg.correct_answer("The western side.")
    assert plg._obj.ask_history[-1]["answer"] == "The western side." and plg._obj.ask_history[-1]["corrected"]
    plg.new_conversation()
    assert plg._obj.ask_history == [] and conversation.closed
    assert plg.ask("What is this?", max_new_tokens=6).turn == 1
    written = plg.export(str(tmp_path / "results"))
    assert written[-1].name == "results.conversations.json"
    plg._obj._conversations = []
    plg.load_conversations(written[-1])
    assert len(plg.conversations) == 2
    assert plg.conversations[0].turns[1].final_answer == "The western side."
    data = load_llava_json(plg.export_conversations(str(tmp_path / "train.json")))
    assert len(data) == 2 and ("assistant", "The western side.") in data.items[0].conversation


def test_a_jpeg_reaches_the_model_as_jdaviz_shows_it(shared_data):
    """jdaviz reads a JPEG as grey levels in 0-1; the model gets exactly those, not a zscale of them."""
    jpg = sorted((shared_data / "gz2_spiral" / "spirals").glob("*.jpg"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viz = jdaviz_plugin.Imviz()
        viz.load(str(jpg))
    plg = viz.plugins["AstroVLM"]
    shown = np.asarray(viz._app.data_collection[0]["DATA"], dtype=float)
    plg.send = "Viewer area"
    cutout = plg._obj.preview()
    assert cutout.stretch_text() == "as displayed"
    xmin, xmax, ymin, ymax = cutout.provenance.bbox
    ny, nx = shown.shape
    xs, ys = slice(max(xmin, 0), min(xmax, nx)), slice(max(ymin, 0), min(ymax, ny))
    inside = cutout.data[ys.start - ymin:ys.stop - ymin, xs.start - xmin:xs.stop - xmin]
    np.testing.assert_array_equal(inside, shown[ys, xs])  # the pixels jdaviz holds
    levels = np.asarray(cutout.to_image())[::-1, :, 0][ys.start - ymin:ys.stop - ymin, xs.start - xmin:xs.stop - xmin]
    np.testing.assert_array_equal(levels, np.round(shown[ys, xs] * 255))  # shown as they are: level = value x 255


def test_opening_the_plugin_loads_a_model_on_this_machine_ahead(fits_dir, tiny_smolvlm_dir, monkeypatch):
    from glue_astrovlm.models import loading

    app, plg = _horsehead_app(fits_dir)
    plg.model = str(tiny_smolvlm_dir)
    plg.vlm_session.load_options = {"dtype": "float32"}
    assert not plg.vlm_session.is_loaded
    plg._obj.plugin_opened = True  # what jdaviz sets when the user opens it in the tray
    plg._obj._warm_up.result(timeout=300)
    assert plg.vlm_session.is_loaded
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the first run loaded the model again"))
    plg.send = "Viewer area"
    assert plg.classify(["star", "nebula"]).label in ("star", "nebula")
