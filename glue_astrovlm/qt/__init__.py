"""The glue-qt front end: a dockable AstroVLM panel and the terminal's ``vlm`` object."""

from __future__ import annotations

__all__ = ["open_panel", "vlm_for", "application_for"]

_PANELS = {}


def application_for(data_collection):
    """The running GlueApplication that shows ``data_collection``."""
    from qtpy.QtWidgets import QApplication

    from glue_qt.app import GlueApplication

    for widget in QApplication.topLevelWidgets():
        if isinstance(widget, GlueApplication) and widget.data_collection is data_collection:
            return widget
    raise RuntimeError("No glue window shows this data collection.")


def vlm_for(application):
    """The `~glue_astrovlm.glue_bridge.scripting.GlueVLM` shared by the panel and glue's terminal."""
    from ..glue_bridge.scripting import GlueVLM

    vlm = getattr(application, "_astrovlm", None)
    if vlm is None:
        vlm = GlueVLM(application.data_collection)
        application._astrovlm = vlm
    return vlm


def _inject_into_terminal(application, vlm) -> None:
    terminal = getattr(application, "_terminal", None)
    if terminal is not None:
        try:
            terminal.widget().update_namespace({"vlm": vlm})
        except Exception:  # a terminal without a kernel (IPython missing) must not break the panel
            pass


def open_panel(application):
    """Show the AstroVLM panel docked in ``application`` (created once per window) and return it."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    from .panel import AstroVLMPanel

    panel = _PANELS.get(id(application))
    if panel is None:
        vlm = vlm_for(application)
        panel = AstroVLMPanel(vlm, application=application)
        dock = QDockWidget("AstroVLM", application)
        dock.setObjectName("AstroVLMDock")
        dock.setWidget(panel)
        application.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        panel.dock = dock
        _PANELS[id(application)] = panel
        _inject_into_terminal(application, vlm)
        application.destroyed.connect(lambda *_: _PANELS.pop(id(application), None))
        # the one unavoidable stall (importing torch) happens now, and a model already on this machine
        # loads while the user is still choosing
        panel.warm_up = vlm.session.warm_up(preload=True)
    panel.dock.show()
    panel.dock.raise_()
    panel.refresh()
    return panel
