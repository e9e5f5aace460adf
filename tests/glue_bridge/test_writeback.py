"""Writes into glue: they never touch the user's own subsets, and survive mixed types and label sets."""

import numpy as np
from .glue_helpers import box

from glue_astrovlm.cutout_types import Provenance
from glue_astrovlm.glue_bridge import writeback
from glue_astrovlm.results import Result


def _result(label, row, source_id, probabilities):
    provenance = Provenance(source="hh", bbox=(100 + 10 * row, 110 + 10 * row, 100, 110),
                            center_pixel=(104.5 + 10 * row, 104.5), source_id=source_id, extra={"row": row})
    return Result(task="classify", provenance=provenance, label=label, confidence=probabilities[label],
                  probabilities=probabilities, answer=label)


def test_subset_labels_are_shown_and_restored(horsehead):
    dc, image = horsehead
    group = box(dc, image)
    result = _result("FRII", 0, "my box", {"FRI": 0.1, "FRII": 0.9})
    assert writeback.label_subset_group(group, result) == "my box [AstroVLM: FRII 0.90]"
    writeback.label_subset_group(group, result)  # twice: still one suffix
    assert writeback.original_label(group.label) == "my box" and group.label.count("AstroVLM") == 1
    writeback.clear_subset_label(group)
    assert group.label == "my box"


def test_class_subsets_catalogue_columns_and_clearing(horsehead):
    from glue.core import Data

    dc, image = horsehead
    user = box(dc, image, "user box")
    catalog = Data(label="sources", x=[105.0, 115.0, 125.0], y=[105.0, 105.0, 105.0])
    dc.append(catalog)
    labels = ["FR-I", "FR I"]  # distinct columns although they differ only in punctuation
    results = [_result("FR-I", 0, "a", {"FR-I": 0.7, "FR I": 0.3}), _result("FR I", 2, "c", {"FR-I": 0.4, "FR I": 0.6})]
    groups = writeback.create_class_subsets(dc, image, results, labels)
    assert [g.label for g in groups] == ["AstroVLM: FR-I", "AstroVLM: FR I"]
    writeback.write_catalog_components(catalog, results, labels)
    assert list(catalog["vlm_label"]) == ["FR-I", "", "FR I"]
    np.testing.assert_allclose(catalog["vlm_p_FR_I"], [0.7, np.nan, 0.4])
    np.testing.assert_allclose(catalog["vlm_p_FR_I_2"], [0.3, np.nan, 0.6])
    writeback.clear_plugin_results(dc)
    assert user in dc.subset_groups and not writeback.plugin_subset_groups(dc)
    assert not [c for c in catalog.components if c.label.startswith("vlm_")]


def test_results_dataset_accumulates_text_ids_and_mixed_label_sets(horsehead):
    dc, _ = horsehead
    writeback.store_results(dc, [_result("FRI", 0, "007", {"FRI": 0.6, "FRII": 0.4})])
    data = writeback.store_results(dc, [_result("star", 1, "8", {"star": 0.8, "galaxy": 0.2})])
    table = writeback.results_data_table(data)
    assert list(table["source_id"]) == ["007", "8"]  # text stays text
    assert set(table.colnames) >= {"p_FRI", "p_star"} and len(table) == 2
    assert [d.label for d in dc].count(writeback.RESULTS_LABEL) == 1
