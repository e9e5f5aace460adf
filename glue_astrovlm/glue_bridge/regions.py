"""Subsets to `regions` shapes (through glue-astronomy's translator) and back (region -> ROI -> subset state).

The reverse direction lives here once, so that the glue panel and the jdaviz plugin build subsets from
regions the same way.
"""

from __future__ import annotations

import numpy as np

from ..errors import AstroVLMError
from .sources import celestial_wcs_of

__all__ = ["subset_to_region", "region_to_roi", "region_to_subset_state", "regions_to_subset_state"]


def subset_to_region(subset):
    """The `regions` pixel shape of a glue subset, or `None` when the subset is not a spatial shape
    (e.g. a selection on pixel values), in which case callers fall back to the subset's mask."""
    from glue_astronomy.translators.regions import AstropyRegionsHandler

    try:
        return AstropyRegionsHandler().to_object(subset)
    except (NotImplementedError, ValueError, TypeError, AttributeError):
        return None


def region_to_roi(region, wcs=None):
    """A glue ROI for a pixel region (a sky region is converted with ``wcs`` first).

    Circles, ellipses, rectangles (rotated ones as polygons) and polygons are supported.
    """
    from glue.core.roi import CircularROI, EllipticalROI, PolygonalROI, RectangularROI
    from regions import (CirclePixelRegion, EllipsePixelRegion, PixelRegion, PolygonPixelRegion,
                         RectanglePixelRegion)

    if not isinstance(region, PixelRegion):
        if wcs is None:
            raise AstroVLMError(f"{type(region).__name__} is on the sky but the data have no celestial WCS; "
                                "use a pixel region.")
        region = region.to_pixel(wcs)
    if isinstance(region, CirclePixelRegion):
        return CircularROI(region.center.x, region.center.y, region.radius)
    if isinstance(region, EllipsePixelRegion):
        return EllipticalROI(region.center.x, region.center.y, region.width / 2, region.height / 2,
                             theta=float(region.angle.to_value("rad")))
    if isinstance(region, RectanglePixelRegion):
        if abs(float(region.angle.to_value("deg"))) % 360 < 1e-9:
            return RectangularROI(region.center.x - region.width / 2, region.center.x + region.width / 2,
                                  region.center.y - region.height / 2, region.center.y + region.height / 2)
        corners = region.corners
        return PolygonalROI(vx=[c[0] for c in corners], vy=[c[1] for c in corners])
    if isinstance(region, PolygonPixelRegion):
        return PolygonalROI(vx=list(np.asarray(region.vertices.x)), vy=list(np.asarray(region.vertices.y)))
    raise AstroVLMError(f"{type(region).__name__} cannot become a glue subset; use a circle, ellipse, "
                        "rectangle or polygon.")


def _xy_components(data):
    if data.ndim < 2:
        raise AstroVLMError(f"{data.label} is not an image; subsets from regions need 2-D or 3-D data.")
    return data.pixel_component_ids[-1], data.pixel_component_ids[-2]


def region_to_subset_state(region, data, wcs=None):
    """A `glue.core.subset.RoiSubsetState` on ``data``'s pixel axes for one region."""
    from glue.core.subset import RoiSubsetState

    x_id, y_id = _xy_components(data)
    return RoiSubsetState(x_id, y_id, region_to_roi(region, wcs if wcs is not None else celestial_wcs_of(data)))


def regions_to_subset_state(regions, data, wcs=None):
    """One subset state selecting the union of several regions."""
    from glue.core.subset import MultiOrState

    states = [region_to_subset_state(region, data, wcs) for region in regions]
    if not states:
        raise AstroVLMError("No regions were given.")
    return states[0] if len(states) == 1 else MultiOrState(states)
