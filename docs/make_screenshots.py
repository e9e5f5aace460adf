"""Make the screenshots used in README.md and the docs, on real data.

    python docs/make_screenshots.py                 # glue (offscreen Qt) and jdaviz (headless Chromium)
    python docs/make_screenshots.py --only glue     # or --only jdaviz

glue: a real GlueApplication with HorseHead.fits from ../shared/data in an image viewer that fills its
tab, a subset drawn on the Horsehead, the sources photutils finds as a catalogue, and the AstroVLM
panel after classifying the subset. jdaviz: ``jdaviz_plugin/render_check.py`` serves Imviz and
Cubeviz with the plugin, runs a classification and a tagging, checks the page in Chromium and saves
its screenshots.

The model is SmolVLM's real architecture, tokenizer and processor, shrunk, with **random weights**
(built from ../shared/models into a folder named ``SmolVLM-256M-tiny-random``): its answers are
meaningless and every caption says so. The screenshots show the interface.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
#: The model folder's name, as the panels show it: what it is, and that its weights are random.
MODEL_NAME = "SmolVLM-256M-tiny-random"


def _settle(qapp, seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        qapp.processEvents()
        time.sleep(0.02)


def _glue_app(image_path: Path):
    """glue with the image in a viewer filling its tab, a subset on the Horsehead and a catalogue."""
    from glue.core import Data, DataCollection
    from glue.core.roi import RectangularROI
    from glue.core.subset import RoiSubsetState
    from glue_qt.app import GlueApplication
    from glue_qt.viewers.image import ImageViewer

    from glue_astrovlm import detect_sources, open_image

    app = GlueApplication(DataCollection())
    app.resize(1600, 1000)
    image = app.load_data(str(image_path))
    image = image[0] if isinstance(image, list) else image
    viewer = app.new_data_viewer(ImageViewer, data=image)
    x, y = image.pixel_component_ids[1], image.pixel_component_ids[0]
    box = RoiSubsetState(x, y, RectangularROI(470, 690, 320, 620))  # the horse's head
    group = app.data_collection.new_subset_group("horsehead", box)
    found = detect_sources(open_image(image_path), nsigma=10, max_sources=12)
    app.data_collection.append(Data(label="sources", ra=list(found["ra"]), dec=list(found["dec"])))
    return app, viewer, group


def glue_screenshots(out: Path, work: Path, model: str) -> list[Path]:
    from qtpy.QtWidgets import QApplication

    from glue_astrovlm.qt import open_panel

    app, viewer, group = _glue_app(SHARED / "data" / "fits" / "HorseHead.fits")
    panel = open_panel(app)
    panel.model_combo.setCurrentText(model)
    panel.vlm.session.load_options = {"dtype": "float32"}
    panel.preset_combo.setCurrentText("Custom labels")
    panel.labels_edit.setText("dark nebula, emission nebula, star, galaxy")
    panel.select_subset(group)
    panel.set_task("classify")
    app.show()
    qapp = QApplication.instance()
    _settle(qapp)
    viewer.parent().showMaximized()  # the viewer fills its tab: axes, labels and tools all visible
    _settle(qapp, 1.0)
    shots = [out / "glue_panel_loaded.png", out / "glue_panel_classified.png"]
    app.grab().save(str(shots[0]))
    panel.run()
    while panel._running is not None:
        _settle(qapp, 0.1)
    _settle(qapp, 1.0)
    app.grab().save(str(shots[1]))
    print("subset after classifying:", group.label)
    app.close()
    return shots


def jdaviz_screenshots(out: Path) -> int:
    """The jdaviz screenshots, through the browser render check (which also checks the page)."""
    check = HERE.parent / "jdaviz_plugin" / "render_check.py"
    return subprocess.call([sys.executable, str(check), "--out", str(out)], cwd=HERE.parent)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["glue", "jdaviz"], help="make only these screenshots")
    parser.add_argument("--out", type=Path, default=HERE / "_static", help="folder (default: docs/_static)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    if args.only in (None, "glue"):
        from glue_astrovlm.testing import build_smolvlm

        with tempfile.TemporaryDirectory() as tmp:
            build_smolvlm(Path(tmp) / MODEL_NAME)
            here = os.getcwd()
            os.chdir(tmp)  # the model is the folder's name, as a user in that folder would type it
            try:
                print("wrote", *glue_screenshots(args.out, Path(tmp), MODEL_NAME))
            finally:
                os.chdir(here)
    if args.only in (None, "jdaviz"):
        status = jdaviz_screenshots(args.out)
    return status


if __name__ == "__main__":
    sys.exit(main())
