"""What a glue image viewer shows, in a dataset's own pixels (viewer states without any GUI)."""

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError
from glue_astrovlm.glue_bridge.views import displayed_slice, view_bounds


def _state(dc, reference):
    from glue.viewers.image.state import ImageLayerState, ImageViewerState

    state = ImageViewerState()
    state.layers.append(ImageLayerState(layer=reference, viewer_state=state))
    assert state.reference_data is reference
    return state


def test_bounds_of_the_reference_data_and_of_data_aligned_by_wcs(horsehead):
    from glue.core import Data

    dc, image = horsehead
    state = _state(dc, image)
    state.x_min, state.x_max, state.y_min, state.y_max = 100.0, 300.0, 200.0, 350.0
    assert view_bounds(state, image) == (100.0, 300.0, 200.0, 350.0)
    # the same sky on a grid shifted by (10, 20) pixels
    shifted_wcs = image.coords.deepcopy()
    shifted_wcs.wcs.crpix = shifted_wcs.wcs.crpix + [10, 20]
    other = Data(label="shifted", x=np.zeros(image.shape), coords=shifted_wcs)
    np.testing.assert_allclose(view_bounds(state, other), (110, 310, 220, 370), atol=1e-6)
    plain = Data(label="plain", x=np.zeros((10, 10)))
    with pytest.raises(AstroVLMError, match="cannot be matched"):
        view_bounds(state, plain)


def test_the_displayed_slice_of_a_cube(cube):
    from glue.core import DataCollection

    dc = DataCollection([cube])
    state = _state(dc, cube)
    state.slices = (17, 0, 0)
    assert displayed_slice(state, cube) == 17
    assert displayed_slice(state, dc[0]) == 17
