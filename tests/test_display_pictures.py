"""Rendered pictures (a colour JPEG, an 8-bit PNG) reach the model as the astronomer sees them, through
the API, the command line and glue: the model's input is the file's pixels, resized only (issue 11).
The jdaviz plugin's test of the same sits beside the plugin."""

import numpy as np
import pytest
from PIL import Image

from glue_astrovlm import open_image, whole_image
from glue_astrovlm.requests import make_cutouts


@pytest.fixture(scope="module")
def pictures(shared_data):
    jpg = sorted((shared_data / "gz2_spiral" / "spirals").glob("*.jpg"))[0]
    png = sorted((shared_data / "first_radio_galaxies" / "test" / "FRI").glob("*.png"))[0]
    return {"colour JPEG": jpg, "8-bit PNG": png}


def _file_pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_api(pictures):
    for path in pictures.values():
        np.testing.assert_array_equal(np.asarray(whole_image(open_image(path)).to_image()), _file_pixels(path))


def test_cli_request(pictures):
    from glue_astrovlm.cli.parser import build_parser
    from glue_astrovlm.cli.run import request_from_args

    for path in pictures.values():
        args = build_parser().parse_args(["describe", str(path)])
        cut, = make_cutouts(request_from_args(args)).cutouts
        np.testing.assert_array_equal(np.asarray(cut.to_image()), _file_pixels(path))
        args = build_parser().parse_args(["describe", str(path), "--interval", "zscale"])  # asked for
        assert make_cutouts(request_from_args(args)).cutouts[0].stretch.interval == "zscale"


def test_glue(pictures):
    pytest.importorskip("glue")
    from glue.core.data_factories import load_data

    from glue_astrovlm.glue_bridge.selections import view_request

    for path in pictures.values():
        data = load_data(str(path))
        data = data[0] if isinstance(data, list) else data
        ny, nx = data.shape
        cut, = make_cutouts(view_request(data, (-0.5, nx - 0.5, -0.5, ny - 0.5))).cutouts
        np.testing.assert_array_equal(np.asarray(cut.to_image()), _file_pixels(path))
