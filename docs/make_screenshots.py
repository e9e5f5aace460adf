"""Make the offscreen screenshots used in README.md and the docs.

    QT_QPA_PLATFORM=offscreen python docs/make_screenshots.py

It opens a real GlueApplication with HorseHead.fits from ../shared/data in an image viewer, draws a
subset, builds a tiny random-weight SmolVLM from ../shared/models, classifies the subset with the
AstroVLM panel and tags a few catalogue sources, then saves window grabs into docs/_static/. The model's
answers are meaningless (random weights); the screenshots show the interface.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"


def main() -> int:
    from glue.core import Data, DataCollection
    from glue.core.roi import RectangularROI
    from glue.core.subset import RoiSubsetState
    from glue_qt.app import GlueApplication
    from glue_qt.viewers.image import ImageViewer
    from qtpy.QtWidgets import QApplication

    from glue_astrovlm.qt import open_panel
    from glue_astrovlm.testing import build_smolvlm

    model_dir = build_smolvlm(Path(tempfile.mkdtemp()) / "tiny-smolvlm")
    app = GlueApplication(DataCollection())
    app.resize(1500, 950)
    image = app.load_data(str(SHARED / "data" / "fits" / "HorseHead.fits"))
    image = image[0] if isinstance(image, list) else image
    viewer = app.new_data_viewer(ImageViewer, data=image)
    viewer.viewer_size = (760, 720)
    x, y = image.pixel_component_ids[1], image.pixel_component_ids[0]
    group = app.data_collection.new_subset_group("horsehead", RoiSubsetState(x, y, RectangularROI(380, 560, 250, 450)))
    sky = image.coords.pixel_to_world([150, 420, 600, 700, 300], [200, 450, 300, 650, 700])
    app.data_collection.append(Data(label="sources", ra=sky.ra.deg, dec=sky.dec.deg))

    panel = open_panel(app)
    panel.model_combo.setCurrentText(str(model_dir))
    panel.vlm.session.load_options = {"dtype": "float32"}
    panel.preset_combo.setCurrentText("Custom labels")
    panel.labels_edit.setText("dark nebula, emission nebula, star, galaxy")
    panel.select_subset(group)
    panel.set_task("classify")
    app.show()
    qapp = QApplication.instance()

    def settle(seconds=0.5):
        end = time.time() + seconds
        while time.time() < end:
            qapp.processEvents()
            time.sleep(0.02)

    settle()
    out = HERE / "_static"
    app.grab().save(str(out / "glue_panel_loaded.png"))
    panel.run()
    while panel._running is not None:
        settle(0.1)
    settle()
    app.grab().save(str(out / "glue_panel_classified.png"))
    print("wrote", out / "glue_panel_loaded.png", out / "glue_panel_classified.png", "subset:", group.label)
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
