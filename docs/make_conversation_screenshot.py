"""Make the screenshot of a conversation in the glue panel's Ask tab (docs/glue.md).

    QT_QPA_PLATFORM=offscreen python docs/make_conversation_screenshot.py

A real GlueApplication with HorseHead.fits from ../shared/data in an image viewer, a subset on the
Horsehead, a tiny random-weight SmolVLM from ../shared/models, two questions in one conversation and a
corrected answer, saved as docs/_static/glue_panel_conversation.png. The model's answers are
meaningless (random weights); the screenshot shows the interface. (The jdaviz screenshot is made by
``python jdaviz_plugin/render_check.py --configs conversation``.)
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
    from glue.core import DataCollection
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
    group = app.data_collection.new_subset_group(
        "horsehead", RoiSubsetState(x, y, RectangularROI(380, 560, 250, 450))
    )
    panel = open_panel(app)
    panel.model_combo.setCurrentText(str(model_dir))
    panel.vlm.session.load_options = {"dtype": "float32"}
    panel.select_subset(group)
    panel.set_task("ask")
    app.show()
    qapp = QApplication.instance()

    def settle(seconds=0.5):
        end = time.time() + seconds
        while time.time() < end:
            qapp.processEvents()
            time.sleep(0.02)

    for question in ("Is there a dark nebula in this box?", "Which side of it is brighter?"):
        panel.question_edit.setText(question)
        panel.run()
        while panel._running is not None:
            settle(0.1)
    panel.correct_answer("The western side, where the nebula meets the bright rim of IC 434.")
    panel.question_edit.setText("Is the rim ionised gas?")
    settle()
    out = HERE / "_static" / "glue_panel_conversation.png"
    app.grab().save(str(out))
    print("wrote", out)
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
