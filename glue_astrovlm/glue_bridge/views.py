"""What part of a dataset an image viewer shows, in that dataset's own pixels."""

from __future__ import annotations

import numpy as np

from ..errors import AstroVLMError
from .sources import celestial_wcs_of

__all__ = ["view_bounds", "displayed_slice"]


def view_bounds(viewer_state, data) -> tuple[float, float, float, float]:
    """``(x_min, x_max, y_min, y_max)`` of a glue image viewer's visible area in ``data``'s pixels.

    The viewer's limits are in the pixels of its reference data. When ``data`` is another dataset
    (jdaviz aligned by WCS, for instance), the four corners go through the sky and the result is
    their bounding box.

    Raises
    ------
    AstroVLMError
        When ``data`` is not the reference data and either has no celestial WCS.
    """
    limits = (float(viewer_state.x_min), float(viewer_state.x_max),
              float(viewer_state.y_min), float(viewer_state.y_max))
    reference = viewer_state.reference_data
    if reference is None or reference is data:
        return limits
    ref_wcs, data_wcs = celestial_wcs_of(reference), celestial_wcs_of(data)
    if ref_wcs is None or data_wcs is None:
        if reference.shape[-2:] == data.shape[-2:]:
            return limits  # linked by pixels on the same grid
        raise AstroVLMError(f"The viewer shows {reference.label}, which cannot be matched to {data.label} "
                            "without celestial WCS on both; choose the viewer's own data.")
    xs = [limits[0], limits[1], limits[1], limits[0]]
    ys = [limits[2], limits[2], limits[3], limits[3]]
    sky = ref_wcs.pixel_to_world(xs, ys)
    x, y = data_wcs.world_to_pixel(sky)
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(x.min()), float(x.max()), float(y.min()), float(y.max())


def displayed_slice(viewer_state, data) -> int | None:
    """The channel of a cube that an image viewer displays, or `None` when the viewer does not
    show ``data`` as its reference cube."""
    if viewer_state.reference_data is not data or data.ndim != 3:
        return None
    shown = {viewer_state.x_att.axis, viewer_state.y_att.axis}
    axis = next(i for i in range(3) if i not in shown)
    return int(viewer_state.slices[axis])
