"""Subsets to regions and back, on real glue data."""

import numpy as np
import pytest
from regions import (CirclePixelRegion, CircleSkyRegion, EllipsePixelRegion, PixCoord, PointPixelRegion,
                     PolygonPixelRegion, RectanglePixelRegion)

from glue_astrovlm import AstroVLMError
from glue_astrovlm.glue_bridge.regions import region_to_roi, region_to_subset_state, regions_to_subset_state, \
    subset_to_region


def test_shapes_round_trip_through_glue_subsets():
    from glue.core import Data, DataCollection
    from glue.core.subset import RoiSubsetState

    data = Data(label="img", x=np.zeros((50, 60)))
    dc = DataCollection([data])
    for region in (CirclePixelRegion(PixCoord(20, 25), 6), RectanglePixelRegion(PixCoord(30, 20), 10, 8),
                   EllipsePixelRegion(PixCoord(30, 25), 12, 6)):
        roi = region_to_roi(region)
        group = dc.new_subset_group("r", RoiSubsetState(data.pixel_component_ids[1], data.pixel_component_ids[0], roi))
        back = subset_to_region(group.subsets[0])
        assert back.center.x == pytest.approx(region.center.x) and back.center.y == pytest.approx(region.center.y)
        np.testing.assert_array_equal(group.subsets[0].to_mask(), region.to_mask(mode="center").to_image((50, 60)) > 0)


def test_rotated_rectangles_and_polygons_become_polygons(horsehead):
    from glue.core.roi import PolygonalROI
    from glue.core.subset import MultiOrState

    rotated = RectanglePixelRegion(PixCoord(100, 100), 20, 10, angle=30 * __import__("astropy.units").units.deg)
    assert isinstance(region_to_roi(rotated), PolygonalROI)
    triangle = PolygonPixelRegion(PixCoord([0, 10, 5], [0, 0, 8]))
    assert list(region_to_roi(triangle).vx) == [0, 10, 5]
    _, image = horsehead
    both = regions_to_subset_state([rotated, triangle], image)
    assert isinstance(both, MultiOrState)


def test_sky_regions_use_the_datas_wcs_and_points_are_refused(horsehead):
    _, image = horsehead
    sky = image.coords.pixel_to_world(300, 400)
    import astropy.units as u

    state = region_to_subset_state(CircleSkyRegion(sky, 30 * u.arcsec), image)
    assert state.roi.xc == pytest.approx(300, abs=1e-6) and state.roi.yc == pytest.approx(400, abs=1e-6)
    with pytest.raises(AstroVLMError, match="PointPixelRegion cannot become a glue subset"):
        region_to_roi(PointPixelRegion(PixCoord(1, 1)))
    with pytest.raises(AstroVLMError, match="on the sky but the data have no celestial WCS"):
        region_to_roi(CircleSkyRegion(sky, 30 * u.arcsec))
    with pytest.raises(AstroVLMError, match="No regions"):
        regions_to_subset_state([], image)
