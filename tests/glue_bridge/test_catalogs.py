"""glue catalogue datasets read with the engine's one column vocabulary (and jdaviz's column choices)."""

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError
from glue_astrovlm.glue_bridge.catalogs import catalog_table_from_data, has_positions


def test_vizier_and_photutils_names_are_found():
    from glue.core import Data

    vizier = Data(label="vizier", RAJ2000=[85.2, 85.3], DEJ2000=[-2.4, -2.5], Name=np.array(["a", "b"]))
    photutils = Data(label="phot", xcentroid=[1.0, 2.0], ycentroid=[3.0, 4.0])
    assert has_positions(vizier) and has_positions(photutils)
    assert not has_positions(Data(label="flux", flux=[1.0, 2.0]))
    table = catalog_table_from_data(vizier)
    assert list(table["ra"]) == [85.2, 85.3] and list(table["id"]) == ["a", "b"]
    table = catalog_table_from_data(photutils)
    assert list(table["x"]) == [1.0, 2.0] and list(table["id"]) == ["0", "1"]


def test_jdaviz_loader_choices_and_units_win():
    from glue.core import Data

    data = Data(label="sources", alpha=[5.5, 5.6], delta=[-2.4, -2.5], tag=["a", "b"], flux=[1.0, 2.0])
    assert not has_positions(data)
    data.get_component("alpha").units = "hourangle"
    data.meta.update(_jdaviz_loader_ra_col="alpha", _jdaviz_loader_dec_col="delta", _jdaviz_id_col="tag")
    assert has_positions(data)
    table = catalog_table_from_data(data)
    assert list(table["ra"]) == pytest.approx([82.5, 84.0])
    assert list(table["dec"]) == [-2.4, -2.5]
    assert list(table["id"]) == ["a", "b"] and len(table) == data.size  # row i is the dataset's row i


def test_unusable_catalogues_say_why():
    from glue.core import Data

    bad_unit = Data(label="bad", ra=[1.0], dec=[2.0])
    bad_unit.get_component("ra").units = "Jy"
    with pytest.raises(AstroVLMError, match="unit 'Jy', which is not an angle"):
        catalog_table_from_data(bad_unit)
    with pytest.raises(AstroVLMError, match="no position columns"):
        catalog_table_from_data(Data(label="flux", flux=[1.0]))
    with pytest.raises(AstroVLMError, match="not a table"):
        catalog_table_from_data(Data(label="img", x=np.zeros((3, 3))))
