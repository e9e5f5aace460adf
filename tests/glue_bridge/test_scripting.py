"""The glue bridge and the scripting object on a real glue DataCollection with real FITS data."""

import operator

import numpy as np
import pytest

pytest.importorskip("glue")
pytest.importorskip("glue_astronomy")

from glue.core import Data  # noqa: E402
from glue.core.roi import CircularROI, RectangularROI  # noqa: E402
from glue.core.subset import InequalitySubsetState  # noqa: E402

from glue_astrovlm import AstroVLMError  # noqa: E402
from .glue_helpers import box as _box  # noqa: E402
from glue_astrovlm.glue_bridge import writeback  # noqa: E402
from glue_astrovlm.glue_bridge.scripting import GlueVLM  # noqa: E402
from glue_astrovlm.session import VLMSession  # noqa: E402

LABELS = ["star", "galaxy", "nebula"]


@pytest.fixture()
def vlm(horsehead, tiny_smolvlm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROVLM_CONFIG_DIR", str(tmp_path / "config"))
    dc, _ = horsehead
    return GlueVLM(dc, VLMSession(str(tiny_smolvlm_dir), dtype="float32"))


def test_classify_subset_labels_it_and_stores_results(horsehead, vlm):
    dc, image = horsehead
    group = _box(dc, image)
    result = vlm.classify("my box", labels=LABELS)
    assert result.label in LABELS and sum(result.probabilities.values()) == pytest.approx(1)
    assert group.label == f"my box [AstroVLM: {result.label} {result.confidence:.2f}]"
    assert result.provenance.bbox[0] <= 100 and result.provenance.bbox[1] >= 200
    assert result.provenance.extra["glue_subset"] == "my box"
    table = writeback.results_data_table(dc[writeback.RESULTS_LABEL])
    assert list(table["label"]) == [result.label] and table["p_star"][0] == pytest.approx(result.probabilities["star"])
    # Re-classifying keeps the original name underneath; clearing restores it and keeps the shape.
    vlm.classify(group, labels=["a", "b"])
    assert group.label.startswith("my box [AstroVLM: ") and group.label.count("AstroVLM") == 1
    vlm.clear()
    assert group.label == "my box" and group in dc.subset_groups
    assert writeback.RESULTS_LABEL not in [d.label for d in dc]


def test_ask_about_a_circle_and_a_value_threshold(horsehead, vlm):
    dc, image = horsehead
    _box(dc, image, "circle", CircularROI(400, 400, 30))
    answer = vlm.ask("What is this?", subset="circle", max_new_tokens=3)
    assert answer.task == "ask" and isinstance(answer.answer, str)
    bright = dc.new_subset_group("bright", InequalitySubsetState(image.main_components[0], 15000, operator.gt))
    cutout = vlm.cutout(bright)
    assert cutout.mask is not None and cutout.mask.any()


def test_tag_catalogue_writes_class_subsets_and_components(horsehead, vlm):
    dc, image = horsehead
    user = _box(dc, image, "user box")
    positions = image.coords.pixel_to_world([150, 420, 600, 700], [200, 450, 300, 650])
    catalog = Data(label="sources", ra=positions.ra.deg, dec=positions.dec.deg, name=np.array(["a", "b", "c", "d"]))
    dc.append(catalog)
    results = vlm.tag(image, catalog=catalog, labels=LABELS, size=48)
    assert len(results) == 4
    groups = writeback.plugin_subset_groups(dc)
    assert {g.label for g in groups} == {"AstroVLM: " + r.label for r in results}
    assert all(g.style.color.startswith("#") for g in groups)
    assert list(catalog["vlm_label"]) == [r.label for r in results]
    np.testing.assert_allclose(catalog["vlm_p_star"] + catalog["vlm_p_galaxy"] + catalog["vlm_p_nebula"], 1.0)
    # The class subsets select the sources' pixels on the image.
    first = next(g for g in groups if g.label == "AstroVLM: " + results[0].label)
    mask = next(s for s in first.subsets if s.data is image).to_mask()
    assert mask[200, 150]
    # Re-running replaces only the plugin's groups; the user's subset is untouched.
    vlm.tag(image, catalog=catalog, labels=["a", "b"], size=48)
    assert user in dc.subset_groups and user.label == "user box"
    assert {g.label for g in writeback.plugin_subset_groups(dc)} <= {"AstroVLM: a", "AstroVLM: b"}
    assert "vlm_p_a" in [c.label for c in catalog.components]


def test_view_cutout_and_errors(horsehead, vlm, fits_dir):
    dc, image = horsehead
    cutout = vlm.cutout(data=image, view=None) if False else None  # noqa: F841 (view needs a viewer; see Qt tests)
    empty = _box(dc, image, "empty", RectangularROI(2000, 2100, 2000, 2100))
    with pytest.raises(AstroVLMError, match="selects no pixels"):
        vlm.classify(empty, labels=LABELS)
    with pytest.raises(AstroVLMError, match="No subset named"):
        vlm.classify("nothing", labels=LABELS)
    with pytest.raises(AstroVLMError, match="catalog"):
        vlm.tag(image, labels=LABELS)
    vlm.model = "astro-nobody/not-a-model"
    _box(dc, image)
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with pytest.raises(AstroVLMError, match="not in the local Hugging Face cache"):
            vlm.classify("my box", labels=LABELS)
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert vlm.results == []  # nothing half-written


def test_detect_creates_a_catalogue(horsehead, vlm):
    dc, image = horsehead
    results = vlm.tag(image, detect=True, nsigma=20, max_sources=5, labels=LABELS, size=32)
    assert 1 <= len(results) <= 5
    catalog = next(d for d in dc if d.label.endswith("sources (AstroVLM)"))
    assert "vlm_label" in [c.label for c in catalog.components]


def test_same_object_in_a_glue_jupyter_app(fits_dir, tiny_smolvlm_dir, tmp_path, monkeypatch):
    """The scripting object works unchanged on a glue-jupyter application's data collection."""
    gj = pytest.importorskip("glue_jupyter")
    monkeypatch.setenv("ASTROVLM_CONFIG_DIR", str(tmp_path / "config"))
    app = gj.jglue()
    loaded = app.load_data(str(fits_dir / "HorseHead.fits"))
    image = loaded[0] if isinstance(loaded, list) else loaded
    _box(app.data_collection, image, "jupyter box")
    vlm = GlueVLM(app.data_collection, VLMSession(str(tiny_smolvlm_dir), dtype="float32"))
    result = vlm.classify("jupyter box", preset="radio-morphology")
    assert app.data_collection.subset_groups[0].label == f"jupyter box [AstroVLM: {result.short_label()}]"


def test_a_survey_run_comes_back_as_class_subsets_and_catalogue_columns(fits_dir, tiny_smolvlm, tmp_path):
    """Issue 15: a notebook hands a survey catalogue to tag_catalog (here the local engine; Ray gives the
    same rows) and writes one image's results back as glue subsets and ``vlm_*`` catalogue columns."""
    pytest.importorskip("pyarrow")
    from astropy.table import Table
    from glue.core import DataCollection

    from glue_astrovlm import open_image
    from glue_astrovlm.survey import tag_catalog

    from ..survey_helpers import make_survey

    path, _ = make_survey(tmp_path / "survey", fits_dir)
    run = tag_catalog(path, tmp_path / "tags", model=tiny_smolvlm, labels=["FRI", "FRII"], size=32,
                      progress=False)
    survey = Table.read(path)
    catalog = Data(label="survey", ra=np.asarray(survey["ra"]), dec=np.asarray(survey["dec"]))
    by_image = run.results()
    first_file = next(iter(by_image))
    with open_image(first_file) as source:  # glue's FITS reader refuses FIRST's tab-holding COMMENT cards
        image = Data(label="first", image=np.asarray(source.read()), coords=source.celestial_wcs)
    dc = DataCollection([image, catalog])
    GlueVLM(dc, VLMSession(str(tiny_smolvlm.name))).write_tags(image, catalog, by_image[first_file],
                                                                ["FRI", "FRII"])
    rows = [r.provenance.extra["row"] for r in by_image[first_file]]
    assert list(np.asarray(catalog["vlm_label"])[rows]) == [r.label for r in by_image[first_file]]
    assert {g.label for g in writeback.plugin_subset_groups(dc)} == \
        {"AstroVLM: " + r.label for r in by_image[first_file]}
    others = np.setdiff1d(np.arange(len(survey)), rows)
    assert set(np.asarray(catalog["vlm_label"])[others]) == {""}
