"""Writing results into a glue data collection, without ever touching the user's own subsets' content.

- A classified subset gets a visible label suffix, ``"my box [AstroVLM: FRII 0.93]"``; the original
  name is the part before the suffix, so clearing restores it exactly, also after a session restore.
- Tagged sources become one subset group per class, ``"AstroVLM: FRII"``, coloured per class, made of
  ROIs of the source regions. Re-running replaces only these groups.
- A catalogue gets components ``vlm_label``, ``vlm_confidence``, ``vlm_p_<label>``, ``vlm_model`` and
  ``vlm_adapter``.
- All results also live in a dataset ``"AstroVLM results"`` (one row per result), which glue saves in
  its ``.glu`` session files like any other dataset.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import AstroVLMError
from ..results import Result, class_colors, pixel_region, probability_columns, results_to_table

__all__ = ["RESULTS_LABEL", "CLASS_PREFIX", "label_subset_group", "clear_subset_label", "store_results",
           "write_catalog_components", "create_class_subsets", "clear_plugin_results", "plugin_subset_groups",
           "results_data_table", "store_conversations", "read_conversations", "CONVERSATIONS_KEY"]

RESULTS_LABEL = "AstroVLM results"
CLASS_PREFIX = "AstroVLM: "
_SUFFIX = re.compile(r" \[AstroVLM: [^\]]*\]$")


def original_label(label: str) -> str:
    """A subset label without the plugin's suffix."""
    return _SUFFIX.sub("", label or "")


def label_subset_group(subset_group, result: Result) -> str:
    """Show ``result`` in the subset's name; returns the new label."""
    label = f"{original_label(subset_group.label)} [AstroVLM: {result.short_label()}]"
    subset_group.label = label
    return label


def clear_subset_label(subset_group) -> None:
    """Restore the subset's own name."""
    subset_group.label = original_label(subset_group.label)


def plugin_subset_groups(data_collection) -> list:
    """Subset groups created by the plugin (never the user's)."""
    return [group for group in data_collection.subset_groups if (group.label or "").startswith(CLASS_PREFIX)]


def _results_data(data_collection):
    for data in data_collection:
        if data.label == RESULTS_LABEL:
            return data
    return None


def store_results(data_collection, results: Sequence[Result], *, replace: bool = False):
    """Add results to the ``"AstroVLM results"`` dataset (created if needed); returns it.

    With ``replace=True`` earlier results are dropped first.
    """
    from astropy.table import vstack
    from glue.core import Data
    from glue.core.component import CategoricalComponent

    if not results:
        raise AstroVLMError("There are no results to store.")
    table = results_to_table(results)
    existing = _results_data(data_collection)
    if existing is not None:
        if not replace:
            earlier = results_data_table(existing)
            for name in set(earlier.colnames) & set(table.colnames):
                if earlier[name].dtype.kind != table[name].dtype.kind:  # e.g. ids "7" stored by older sessions
                    earlier[name] = earlier[name].astype(str)
                    table[name] = table[name].astype(str)
            table = vstack([earlier, table], join_type="outer")
        data_collection.remove(existing)
    columns = {}
    for name in table.colnames:
        column = table[name]
        blank = np.nan if column.dtype.kind == "f" else (-1 if column.dtype.kind in "iu" else "")
        values = np.asarray(column.filled(blank) if hasattr(column, "filled") else column)
        columns[name] = values.astype(str) if values.dtype.kind in "OUS" else values
    data = Data(label=RESULTS_LABEL)
    for name, values in columns.items():  # one by one: a column may be called "label"
        # text stays text: glue would turn ids such as "007" into the number 7
        data.add_component(CategoricalComponent(values) if values.dtype.kind == "U" else values, name)
    data.meta.update(existing.meta if existing is not None else {})  # e.g. store_conversations's
    data.meta["astrovlm"] = "results"
    data_collection.append(data)
    return data


#: The key of the results dataset's ``meta`` that holds the conversations (JSON), saved with the session.
CONVERSATIONS_KEY = "astrovlm_conversations"


def store_conversations(data_collection, conversations) -> None:
    """Keep ``conversations`` in the results dataset's ``meta``, which glue saves in its session files."""
    import json

    data = _results_data(data_collection)
    if data is None:
        raise AstroVLMError("There is no results dataset to keep the conversations in; ask a question first.")
    data.meta[CONVERSATIONS_KEY] = json.dumps([c.to_dict() for c in conversations])


def read_conversations(data_collection) -> list:
    """The conversations kept by `store_conversations` (after a session restore too); ``[]`` if none."""
    import json

    from ..conversations import Conversation

    data = _results_data(data_collection)
    text = data.meta.get(CONVERSATIONS_KEY) if data is not None else None
    if not text:
        return []
    try:
        entries = json.loads(text)
    except ValueError:
        raise AstroVLMError("The conversations saved in this session are damaged (not JSON).") from None
    return [Conversation.from_dict(entry) for entry in entries]


def results_data_table(data):
    """The ``"AstroVLM results"`` dataset as an astropy Table (for export after a session restore)."""
    from astropy.table import Table

    names = [c.label for c in data.main_components]
    columns = {}
    for name in names:
        values = np.asarray(data[name])
        columns[name] = values.astype(str) if values.dtype.kind == "O" else values
    return Table(columns)


def _set_component(data, name: str, values) -> None:
    existing = [c for c in data.components if c.label == name]
    for cid in existing:
        data.remove_component(cid)
    data.add_component(np.asarray(values), name)


def write_catalog_components(catalog, results: Sequence[Result], labels: Sequence[str]) -> None:
    """Add ``vlm_*`` components to a catalogue dataset, one value per row (empty where not tagged).

    Each result carries its row of the catalogue as ``provenance.extra['row']`` (as catalogue cutouts do).
    """
    n = catalog.size
    label = np.array([""] * n, dtype=object)
    confidence = np.full(n, np.nan)
    probs = {name: np.full(n, np.nan) for name in labels}
    model = np.array([""] * n, dtype=object)
    adapter = np.array([""] * n, dtype=object)
    for result in results:
        row = (result.provenance.extra or {}).get("row") if result.provenance else None
        if row is None:
            continue
        label[row] = result.label or ""
        confidence[row] = result.confidence if result.confidence is not None else np.nan
        for name, p in result.probabilities.items():
            if name in probs:
                probs[name][row] = p
        model[row] = result.model
        adapter[row] = result.adapter or ""
    _set_component(catalog, "vlm_label", label.astype(str))
    _set_component(catalog, "vlm_confidence", confidence)
    columns = probability_columns(labels)
    for name, values in probs.items():
        _set_component(catalog, "vlm_" + columns[name], values)
    _set_component(catalog, "vlm_model", model.astype(str))
    _set_component(catalog, "vlm_adapter", adapter.astype(str))


def create_class_subsets(data_collection, image_data, results: Sequence[Result], labels: Sequence[str]) -> list:
    """One subset group per class (ROIs of the sources' regions, colour per class), replacing the
    plugin's earlier class groups and nothing else. Returns the new groups."""
    from .regions import regions_to_subset_state

    for group in plugin_subset_groups(data_collection):
        data_collection.remove_subset_group(group)
    colors = class_colors(labels)
    groups = []
    for name in labels:
        shapes = [pixel_region(r) for r in results if r.label == name]
        shapes = [s for s in shapes if s is not None]
        if not shapes:
            continue
        state = regions_to_subset_state(shapes, image_data)
        group = data_collection.new_subset_group(label=CLASS_PREFIX + name, subset_state=state)
        group.style.color = colors[name]
        groups.append(group)
    return groups


def clear_plugin_results(data_collection) -> None:
    """Remove everything the plugin wrote: class groups, subset label suffixes, ``vlm_*`` components
    and the results dataset. The user's subsets keep their shapes and get their names back."""
    for group in plugin_subset_groups(data_collection):
        data_collection.remove_subset_group(group)
    for group in data_collection.subset_groups:
        clear_subset_label(group)
    results = _results_data(data_collection)
    if results is not None:
        data_collection.remove(results)
    for data in data_collection:
        for cid in [c for c in data.components if c.label.startswith("vlm_")]:
            data.remove_component(cid)
