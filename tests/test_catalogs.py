"""One catalogue vocabulary: the CLI, the datasets of eval/finetune and the glue bridge accept the same tables."""

import numpy as np
import pytest
from astropy.table import Table

from glue_astrovlm import AstroVLMError
from glue_astrovlm.catalogs import (ID_COLUMNS, PIXEL_COLUMNS, SKY_COLUMNS, find_column, find_pair, read_table,
                                    row_ids, table_positions)
from glue_astrovlm.cutouts import cutouts_from_catalog
from glue_astrovlm.datasets import load_fits_catalog, load_image_table
from glue_astrovlm.sources import open_image


@pytest.fixture(scope="module")
def horsehead(fits_dir):
    return open_image(fits_dir / "HorseHead.fits")


def test_pairs_are_found_in_any_case_and_in_order_of_preference():
    assert find_pair(["Name", "RAJ2000", "DEJ2000", "x", "y"], SKY_COLUMNS) == ("RAJ2000", "DEJ2000")
    assert find_pair(["X_IMAGE", "Y_IMAGE"], PIXEL_COLUMNS) == ("X_IMAGE", "Y_IMAGE")
    assert find_pair(["ra"], SKY_COLUMNS) is None  # a pair needs both
    assert find_column(["Object ID", "name"], ID_COLUMNS) == "Object ID"
    with pytest.raises(AstroVLMError, match="No column 'flux' in the catalogue; its columns are ra, dec"):
        find_column(["ra", "dec"], ID_COLUMNS, given="flux")


def test_explicit_columns_win_and_ids_fall_back_to_row_numbers(horsehead):
    sky = horsehead.celestial_wcs.pixel_to_world([100, 400], [150, 300])
    table = Table({"alpha": sky.ra.deg, "delta": sky.dec.deg, "xpos": [1.0, 2.0], "ypos": [3.0, 4.0]})
    with pytest.raises(AstroVLMError, match="no position columns.*--ra-col/--dec-col"):
        table_positions(table, horsehead.celestial_wcs, "hh")
    on_sky = table_positions(table, horsehead.celestial_wcs, "hh", ra_col="alpha", dec_col="delta")
    np.testing.assert_allclose(on_sky.x, [100, 400], atol=1e-6)
    assert on_sky.columns == "columns alpha, delta"
    pixels = table_positions(table, None, "hh", x_col="xpos", y_col="ypos")
    assert list(pixels.x) == [1.0, 2.0] and pixels.sky is None
    with pytest.raises(AstroVLMError, match="both x and y"):
        table_positions(table, None, "hh", x_col="xpos")
    with pytest.raises(AstroVLMError, match="no celestial WCS"):
        table_positions(table, None, "hh", ra_col="alpha", dec_col="delta")
    assert row_ids(table) == ["0", "1"]


def test_an_unreadable_catalogue_is_one_line(tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not a table at all" * 10)
    with pytest.raises(AstroVLMError) as info:
        read_table(bad)
    assert "\n" not in str(info.value) and "ECSV, CSV with a header line, FITS, VOTable or Parquet" in str(info.value)
    with pytest.raises(AstroVLMError, match="No such catalogue file"):
        read_table(tmp_path / "missing.ecsv")
    with pytest.raises(AstroVLMError, match="not a regular file"):
        read_table(tmp_path)


def test_the_same_table_works_for_the_cli_and_the_datasets(tmp_path, fits_dir, horsehead):
    """A catalogue with VizieR-style columns is accepted by the cutout path and by both dataset loaders."""
    sky = horsehead.celestial_wcs.pixel_to_world([200, 420], [250, 500])
    catalog = Table({"Name": ["a", "b"], "RAJ2000": sky.ra.deg, "DEJ2000": sky.dec.deg, "class": ["x", "y"]})
    catalog.write(tmp_path / "cat.ecsv")
    cut = cutouts_from_catalog(horsehead, tmp_path / "cat.ecsv", size=16)
    assert [c.provenance.source_id for c in cut] == ["a", "b"]
    labelled = load_fits_catalog(fits_dir / "HorseHead.fits", tmp_path / "cat.ecsv", size=16)
    assert [item.label for item in labelled] == ["x", "y"]
    np.testing.assert_allclose([item.position.ra.deg for item in labelled], sky.ra.deg)
    files = Table({"filename": [str(fits_dir / "HorseHead.fits")] * 2, "Category": ["x", "y"],
                   "RAJ2000": sky.ra.deg, "DEJ2000": sky.dec.deg})
    files.write(tmp_path / "files.ecsv")
    dataset = load_image_table(tmp_path / "files.ecsv", size=16)
    assert [item.label for item in dataset] == ["x", "y"]
    np.testing.assert_allclose(dataset[1].position.dec.deg, sky.dec.deg[1])
