"""`GlueVLM`: drive the engine from glue's IPython terminal or a glue-jupyter notebook.

In glue-qt's terminal the panel injects it as ``vlm``; anywhere else::

    from glue_astrovlm.glue_bridge.scripting import GlueVLM
    vlm = GlueVLM(dc)                          # dc: the DataCollection (app.data_collection)
    vlm.model = "HuggingFaceTB/SmolVLM-256M-Instruct"
    vlm.classify("my box", preset="radio-morphology")       # labels the subset "my box [AstroVLM: FRII 0.93]"
    vlm.ask("Is there a jet?", subset="my box")
    vlm.tag(image, catalog=sources, preset="radio-morphology")   # class subsets + vlm_* catalogue columns
    vlm.export("results")                      # results.ecsv + results.reg
    vlm.clear()                                # remove everything the plugin wrote

Every call writes into glue exactly what the panel's buttons write.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import AstroVLMError
from ..results import Result
from ..session import VLMSession
from ..stretch import DEFAULT_STRETCH, Stretch
from . import writeback
from .cutouts import cutout_from_subset, cutout_from_view, cutouts_from_catalog_data

__all__ = ["GlueVLM"]


class GlueVLM:
    """The scripting face of the AstroVLM panel for one glue data collection.

    Parameters
    ----------
    data_collection : glue.core.DataCollection
        Where subsets, catalogues and results live.
    session : VLMSession, optional
        Shared with a panel; created if not given.
    """

    def __init__(self, data_collection, session: VLMSession | None = None, **load_options):
        self.data_collection = data_collection
        self.session = session or VLMSession(**load_options)
        self.stretch: Stretch = DEFAULT_STRETCH
        self.outside = "keep"

    # model choice ---------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """Model id, path or server URL; assigning loads the new model at the next call."""
        return self.session.model

    @model.setter
    def model(self, spec: str) -> None:
        self.session.model = spec

    @property
    def adapter(self) -> str | None:
        return self.session.adapter

    @adapter.setter
    def adapter(self, path: str | None) -> None:
        self.session.adapter = path

    # lookups -------------------------------------------------------------------------------
    def _data(self, data):
        if isinstance(data, str):
            for candidate in self.data_collection:
                if candidate.label == data:
                    return candidate
            names = ", ".join(d.label for d in self.data_collection)
            raise AstroVLMError(f"No dataset named {data!r}; datasets: {names}.")
        return data

    def _subset(self, subset, data=None):
        """A glue Subset on image data, from a Subset, a SubsetGroup or a subset label."""
        from glue.core.subset_group import SubsetGroup

        if isinstance(subset, str):
            matches = [g for g in self.data_collection.subset_groups
                       if writeback.original_label(g.label) == subset or g.label == subset]
            if not matches:
                names = ", ".join(writeback.original_label(g.label) for g in self.data_collection.subset_groups)
                raise AstroVLMError(f"No subset named {subset!r}; subsets: {names or 'none'}.")
            subset = matches[0]
        if isinstance(subset, SubsetGroup):
            data = self._data(data) if data is not None else None
            candidates = [s for s in subset.subsets if s.data.ndim >= 2 and (data is None or s.data is data)]
            if not candidates:
                raise AstroVLMError(f"Subset {subset.label!r} is not defined on an image or cube.")
            return candidates[0]
        return subset

    @staticmethod
    def _group(subset):
        return getattr(subset, "group", None) or subset

    # tasks ---------------------------------------------------------------------------------
    def cutout(self, subset=None, *, data=None, view=None, attribute=None, cube: dict | None = None):
        """The cutout the model would see: of a subset, or of a viewer's visible area."""
        return self.cutout_maker(subset, data=data, view=view, attribute=attribute, cube=cube)()

    def cutout_maker(self, subset=None, *, data=None, view=None, attribute=None, cube: dict | None = None):
        """Like `cutout`, in two steps: glue's state (subset, viewer limits, stretch) is read now, on
        the GUI thread; the returned function does the pixel work and may run on any thread."""
        stretch, outside = self.stretch, self.outside
        if subset is not None:
            glue_subset = self._subset(subset, data)
            return lambda: cutout_from_subset(glue_subset, attribute=attribute, cube=cube, outside=outside,
                                              stretch=stretch)
        if view is not None:
            state = view.state
            layer_data = self._data(data) if data is not None else state.reference_data
            if cube is None and layer_data.ndim == 3:
                cube = {"mode": "slice", "index": int(state.slices[0])}
            bounds = (state.x_min, state.x_max, state.y_min, state.y_max)
            return lambda: cutout_from_view(layer_data, *bounds, attribute=attribute, cube=cube, stretch=stretch)
        raise AstroVLMError("Say what to send: subset=..., or view=<an image viewer>.")

    def ask(self, question: str, subset=None, *, data=None, view=None, attribute=None, cube: dict | None = None,
            max_new_tokens: int = 128, progress=None) -> Result:
        """Ask a question about a subset or a viewer's visible area; the answer is stored with the results."""
        cutout = self.cutout(subset, data=data, view=view, attribute=attribute, cube=cube)
        result = self.session.run("ask", [cutout], question=question, max_new_tokens=max_new_tokens,
                                  progress=progress)[0]
        writeback.store_results(self.data_collection, [result])
        return result

    def classify(self, subset, labels=None, *, preset: str | None = None, question: str | None = None,
                 data=None, attribute=None, cube: dict | None = None, progress=None) -> Result:
        """Classify a subset; its name shows the class and confidence, e.g. ``my box [AstroVLM: FRII 0.93]``."""
        glue_subset = self._subset(subset, data)
        cutout = cutout_from_subset(glue_subset, attribute=attribute, cube=cube, outside=self.outside,
                                    stretch=self.stretch)
        result = self.session.run("classify", [cutout], labels=labels, preset=preset, question=question,
                                  progress=progress)[0]
        writeback.label_subset_group(self._group(glue_subset), result)
        writeback.store_results(self.data_collection, [result])
        return result

    def tag(self, data, catalog=None, labels=None, *, preset: str | None = None, question: str | None = None,
            size: int = 64, detect: bool = False, nsigma: float = 5.0, max_sources: int = 200, attribute=None,
            cube: dict | None = None, progress=None) -> list[Result]:
        """Classify every source of a catalogue dataset (or detected sources) on an image.

        Writes one subset group per class (``AstroVLM: <label>``, coloured per class), ``vlm_*``
        components on the catalogue, and the results dataset. Re-running replaces only those.
        """
        from ..labelsets import resolve_labels

        image = self._data(data)
        label_set = resolve_labels(labels, preset, question)
        if catalog is None and not detect:
            raise AstroVLMError("Give a catalogue dataset (catalog=...) or detect=True.")
        if catalog is None:
            catalog = self._detect(image, attribute, cube, nsigma, max_sources)
        catalog = self._data(catalog)
        cutouts = cutouts_from_catalog_data(image, catalog, size=size, attribute=attribute, cube=cube,
                                            stretch=self.stretch)
        results = self.session.run("classify", cutouts, labels=label_set, progress=progress)
        self.write_tags(image, catalog, results, label_set.labels)
        return results

    def write_tags(self, image, catalog, results: Sequence[Result], labels: Sequence[str]) -> None:
        """The writes of `tag` (also used by the panel after a cancelled run, with the finished results)."""
        writeback.create_class_subsets(self.data_collection, image, results, labels)
        writeback.write_catalog_components(catalog, results, labels)
        writeback.store_results(self.data_collection, results)

    def _detect(self, image, attribute, cube, nsigma, max_sources):
        catalog = self._detections(image, attribute, cube, nsigma, max_sources)
        self._add_detections(catalog)
        return catalog

    def _add_detections(self, catalog) -> None:
        """Put a detections dataset into the collection, replacing the last one of the same image."""
        for existing in [d for d in self.data_collection if d.label == catalog.label]:
            self.data_collection.remove(existing)
        self.data_collection.append(catalog)

    @staticmethod
    def _detections(image, attribute, cube, nsigma, max_sources):
        """Detect sources on ``image`` as a new glue dataset (not yet in the collection; any thread)."""
        from glue.core import Data

        from ..detect import detect_sources
        from .cutouts import image_source_from_data

        table = detect_sources(image_source_from_data(image, attribute, cube=cube), nsigma=nsigma,
                               max_sources=max_sources)
        label = f"{image.label} sources (AstroVLM)"
        columns = {name: table[name] for name in ("id", "xcentroid", "ycentroid") if name in table.colnames}
        for name in ("ra", "dec"):
            if name in table.colnames:
                columns[name] = table[name]
        catalog = Data(label=label, **{k: np.asarray(v) for k, v in columns.items()})
        catalog.meta["astrovlm"] = "detections"
        return catalog

    # outputs -------------------------------------------------------------------------------
    @property
    def results(self) -> list[Result]:
        """Results of this session, oldest first."""
        return list(self.session.history)

    def export(self, prefix: str, *, overwrite: bool = False, region_format: str = "ds9") -> list:
        """Write all results as ``PREFIX.ecsv`` and ``PREFIX.reg`` (or ``.crtf``); never overwrites unless asked."""
        from pathlib import Path

        from ..results import write_regions, write_table

        if not self.session.history:
            raise AstroVLMError("There are no results to export yet.")
        prefix = Path(prefix)
        paths = [prefix.with_name(prefix.name + ".ecsv"),
                 prefix.with_name(prefix.name + (".reg" if region_format == "ds9" else ".crtf"))]
        for path in paths:
            if path.exists() and not overwrite:
                raise AstroVLMError(f"{path} already exists; choose another name or pass overwrite=True.")
        written = [write_table(self.session.history, paths[0], overwrite=overwrite)]
        try:
            written.append(write_regions(self.session.history, paths[1], overwrite=overwrite))
        except AstroVLMError:
            pass  # results without positions have no region
        return written

    def clear(self) -> None:
        """Remove what the plugin wrote into glue; the user's subsets keep their shapes and names."""
        writeback.clear_plugin_results(self.data_collection)
        self.session.history.clear()

    def __repr__(self) -> str:
        return f"<GlueVLM model={self.model!r}, {len(self.session.history)} result(s)>"
