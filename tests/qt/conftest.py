"""A real GlueApplication, offscreen."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("glue_qt")
pytest.importorskip("pytestqt")


@pytest.fixture()
def glue_app(qtbot, tmp_path, monkeypatch):
    from glue.core import DataCollection
    from glue_qt.app import GlueApplication

    monkeypatch.setenv("ASTROVLM_CONFIG_DIR", str(tmp_path / "config"))
    app = GlueApplication(DataCollection())
    app.resize(1400, 900)
    yield app
    app.close()
