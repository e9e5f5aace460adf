"""What is selected in glue becomes an engine Request; the request's cutouts are what the model sees."""

import operator

import numpy as np
import pytest
from .glue_helpers import box

from glue_astrovlm import AstroVLMError
from glue_astrovlm.glue_bridge.selections import catalog_request, detect_request, subset_request, view_request
from glue_astrovlm.requests import make_cutouts


def test_a_shape_subset_is_sent_as_a_region_and_a_threshold_as_a_mask(horsehead):
    from glue.core.subset import InequalitySubsetState

    dc, image = horsehead
    shape = box(dc, image).subsets[0]
    request = subset_request(shape, outside="dim")
    assert request.send == "regions" and request.source_id == "my box"
    cut, = make_cutouts(request).cutouts
    assert cut.provenance.extra == {"region_index": 0, "glue_data": image.label, "glue_subset": "my box"}
    assert cut.outside == "dim" and cut.provenance.bbox[0] <= 100 <= 200 <= cut.provenance.bbox[1]
    bright = dc.new_subset_group("bright", InequalitySubsetState(image.main_components[0], 15000, operator.gt))
    request = subset_request(bright.subsets[0])
    assert request.send == "mask"
    cut, = make_cutouts(request).cutouts
    assert cut.mask.any() and cut.provenance.source_id == "bright"


def test_an_empty_subset_is_refused_before_any_pixel_work(horsehead):
    from glue.core.roi import RectangularROI

    dc, image = horsehead
    empty = box(dc, image, "empty", RectangularROI(2000, 2100, 2000, 2100))
    with pytest.raises(AstroVLMError, match="selects no pixels"):
        subset_request(empty.subsets[0])


def test_view_catalogue_and_detection_requests(horsehead):
    from glue.core import Data

    dc, image = horsehead
    view, = make_cutouts(view_request(image, (200, 400, 300, 450))).cutouts
    assert view.provenance.bbox == (200, 400, 300, 450) and view.provenance.extra["glue_data"] == image.label
    sky = image.coords.pixel_to_world([150, 5000, 600], [200, 10, 300])  # the second is off the image
    catalog = Data(label="sources", ra=sky.ra.deg, dec=sky.dec.deg)
    got = make_cutouts(catalog_request(image, catalog, size=24))
    assert [c.provenance.extra["row"] for c in got.cutouts] == [0, 2]  # the dataset's own rows
    assert {c.provenance.extra["glue_catalog"] for c in got.cutouts} == {"sources"}
    found = make_cutouts(detect_request(image, nsigma=20, max_sources=3, size=24))
    assert 1 <= len(found) <= 3 and len(found.table) == len(found)
    np.testing.assert_allclose(found.cutouts[0].provenance.center_pixel,
                               (found.table["xcentroid"][0], found.table["ycentroid"][0]))
