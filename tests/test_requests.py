"""The engine Request: every way of choosing what to send ends in `make_cutouts`, with the same cutouts as
the builder it stands for."""

import numpy as np
import pytest
from astropy.table import Table
from regions import CirclePixelRegion, PixCoord

from glue_astrovlm import AstroVLMError
from glue_astrovlm.cutouts import cutout_at, cutouts_from_catalog, cutouts_from_regions, whole_image
from glue_astrovlm.requests import SEND_MODES, Detection, Request, make_cutouts
from glue_astrovlm.sources import open_image
from glue_astrovlm.stretch import Stretch


@pytest.fixture(scope="module")
def horsehead(fits_dir):
    return open_image(fits_dir / "HorseHead.fits")


def test_each_send_mode_equals_its_builder(horsehead):
    circle = CirclePixelRegion(PixCoord(300, 400), 12)
    catalog = Table({"id": ["a", "b"], "x": [100.0, 600.0], "y": [120.0, 640.0]})
    expected = {
        "image": [whole_image(horsehead)],
        "position": [cutout_at(horsehead, (250.0, 260.0), 40)],
        "regions": cutouts_from_regions(horsehead, [circle]),
        "catalog": cutouts_from_catalog(horsehead, catalog, size=40),
    }
    requests = {
        "image": Request(image=horsehead),
        "position": Request(image=horsehead, send="position", position=(250.0, 260.0), size=40),
        "regions": Request(image=horsehead, send="regions", regions=[circle]),
        "catalog": Request(image=horsehead, send="catalog", catalog=catalog, size=40),
    }
    for mode, request in requests.items():
        got = make_cutouts(request).cutouts
        assert [c.provenance.bbox for c in got] == [c.provenance.bbox for c in expected[mode]], mode
        for a, b in zip(got, expected[mode]):
            np.testing.assert_array_equal(a.data, b.data)


def test_mask_and_view_modes(horsehead):
    mask = np.zeros(horsehead.image_shape, bool)
    mask[200:220, 300:330] = True
    cut, = make_cutouts(Request(image=horsehead, send="mask", mask=mask, outside="mask", padding=0)).cutouts
    assert cut.provenance.bbox == (300, 330, 200, 220) and cut.mask.all() and cut.outside == "mask"
    view, = make_cutouts(Request(image=horsehead, send="view", bounds=(-50, 100.5, 10, 60))).cutouts
    assert view.provenance.bbox == (0, 101, 10, 60) and view.provenance.source_id == "view"
    with pytest.raises(AstroVLMError, match="shows no part"):
        make_cutouts(Request(image=horsehead, send="view", bounds=(2000, 2100, 0, 10)))


def test_detection_keeps_the_table_and_only_sources_within(horsehead):
    everything = make_cutouts(Request(image=horsehead, send="detect", detection=Detection(nsigma=20), size=24))
    assert len(everything) == len(everything.table) >= 3
    assert [c.provenance.extra["row"] for c in everything.cutouts] == list(range(len(everything)))
    x = np.asarray(everything.table["xcentroid"])
    within = (float(np.median(x)), float(x.max()) + 1, 0, 10_000)
    some = make_cutouts(Request(image=horsehead, send="detect", size=24,
                                detection=Detection(nsigma=20, max_sources=2, within=within)))
    assert 1 <= len(some) <= 2 and all(c.provenance.center_pixel[0] >= within[0] for c in some.cutouts)


def test_extra_source_id_limit_and_stretch_reach_every_cutout(horsehead):
    catalog = Table({"x": [100.0, 200.0, 300.0], "y": [100.0, 200.0, 300.0]})
    stretch = Stretch(interval="minmax", stretch="asinh")
    got = make_cutouts(Request(image=horsehead, send="catalog", catalog=catalog, size=16, limit=2, stretch=stretch,
                               extra={"glue_catalog": "sources"}))
    assert len(got) == 2 and all(c.provenance.extra["glue_catalog"] == "sources" for c in got.cutouts)
    assert all(c.stretch is stretch for c in got.cutouts)
    named, = make_cutouts(Request(image=horsehead, send="position", position=(50, 50), size=8,
                                  source_id="my box")).cutouts
    assert named.provenance.source_id == "my box"


def test_a_cube_needs_its_plane_and_gets_it(fits_dir):
    cube = open_image(fits_dir / "l1448_13co.fits")
    with pytest.raises(AstroVLMError, match="is a cube"):
        make_cutouts(Request(image=cube))
    plane, = make_cutouts(Request(image=cube, cube={"mode": "slice", "index": 20})).cutouts
    assert plane.provenance.cube == "slice 20"


def test_bad_requests_say_what_is_missing(horsehead):
    for send, needed in (("position", "position"), ("regions", "regions"), ("mask", "mask"), ("view", "bounds"),
                         ("catalog", "catalog")):
        with pytest.raises(AstroVLMError, match=f"send={send!r} needs {needed}="):
            Request(image=horsehead, send=send)
    with pytest.raises(AstroVLMError, match="Unknown send 'subset'; use one of " + ", ".join(SEND_MODES)):
        Request(send="subset")
    with pytest.raises(AstroVLMError, match="Unknown task"):
        Request(task="segment")
    with pytest.raises(AstroVLMError, match="outside must be one of"):
        Request(outside="hide")
    with pytest.raises(AstroVLMError, match="column roles"):
        Request(columns={"flux": "f"})
    with pytest.raises(AstroVLMError, match="names no image"):
        make_cutouts(Request())
    assert Request(image=horsehead).replace(task="ask").task == "ask"
