"""glue datasets as engine sources: one rule for the celestial WCS, and no copy of the whole image."""

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError
from glue_astrovlm.glue_bridge.sources import celestial_wcs_of, component_of, image_source_from_data


def test_the_celestial_wcs_of_images_cubes_and_plain_arrays(horsehead, cube):
    from glue.core import Data

    _, image = horsehead
    assert celestial_wcs_of(image).naxis == 2 and celestial_wcs_of(image).has_celestial
    assert celestial_wcs_of(cube).naxis == 2  # the cube's sky part
    assert celestial_wcs_of(Data(label="plain", x=np.zeros((4, 4)))) is None


def test_the_source_wraps_the_component_without_copying_it(horsehead):
    _, image = horsehead
    source = image_source_from_data(image)
    assert source.data is image.get_component(image.main_components[0]).data  # read lazily, per cutout
    assert source.label == image.label and source.celestial_wcs is not None
    np.testing.assert_array_equal(source.read(np.s_[10:12, 20:23]),
                                  np.asarray(image[image.main_components[0]][10:12, 20:23], dtype=np.float32))


def test_cubes_components_and_bad_data(cube, horsehead):
    from glue.core import Data

    assert image_source_from_data(cube).is_cube
    plane = image_source_from_data(cube, cube={"mode": "slice", "index": 10})
    assert plane.cube == "slice 10" and plane.ndim == 2
    _, image = horsehead
    with pytest.raises(AstroVLMError, match="2-D image; cube options do not apply"):
        image_source_from_data(image, cube={"mode": "slice", "index": 1})
    with pytest.raises(AstroVLMError, match="has no component 'flux'"):
        component_of(image, "flux")
    with pytest.raises(AstroVLMError, match="1 dimension"):
        image_source_from_data(Data(label="table", a=[1.0, 2.0]))
