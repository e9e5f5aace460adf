"""Entry point of the glue plugin (``glue.plugins``): registers the AstroVLM panel and subset actions.

`setup` only fills glue's registries; nothing heavy (Qt widgets, torch) is imported until the user
opens the panel or runs an action, so installing the plugin does not slow glue's start-up.
"""

from __future__ import annotations

__all__ = ["setup"]

_registered = False


def _open_panel(session, data_collection):
    from .qt import open_panel

    open_panel(session.application)


def _classify_subset(subset, data_collection):
    from .qt import open_panel

    panel = open_panel(_application_of(data_collection))
    panel.select_subset(subset)
    panel.set_task("classify")
    panel.run()


def _ask_subset(subset, data_collection):
    from .qt import open_panel

    panel = open_panel(_application_of(data_collection))
    panel.select_subset(subset)
    panel.set_task("ask")
    panel.focus_question()


def _application_of(data_collection):
    from .qt import application_for

    return application_for(data_collection)


def _register_jdaviz_plugin() -> None:
    """Register the jdaviz tray plugin when jdaviz is the one creating this glue application.

    jdaviz imports itself before it creates its glue application (which calls this entry point), so
    ``'jdaviz' in sys.modules`` tells the two apart without importing jdaviz, which takes seconds,
    into a plain glue session.
    """
    import sys

    if "jdaviz" not in sys.modules:
        return
    try:
        from jdaviz_plugin import register
    except ImportError:  # glue-astrovlm installed without its jdaviz front end
        return
    try:
        register()
    except Exception:  # glue would swallow the error silently: say why the tray lacks AstroVLM
        import logging

        logging.getLogger("glue_astrovlm").warning("Could not register the AstroVLM jdaviz plugin",
                                                   exc_info=True)


def setup():
    """Register the AstroVLM menu entry and the subset right-click actions with glue-qt, the AstroVLM
    tray plugin with jdaviz when jdaviz is running, and a reader for FITS files whose header glue's
    own reader refuses (the FIRST survey's)."""
    global _registered
    _register_jdaviz_plugin()
    if _registered:
        return
    from .glue_bridge.fits_loader import register

    register()  # FITS files whose header glue's own reader refuses (every FIRST image)
    try:
        from glue_qt.config import layer_action, menubar_plugin
    except ImportError:  # glue without its Qt front end (e.g. glue-jupyter or jdaviz only)
        _registered = True
        return
    menubar_plugin.add("AstroVLM", _open_panel)
    layer_action("Classify with AstroVLM", single=True, subset=True,
                 tooltip="Classify this subset's cutout with the AstroVLM panel's labels")(_classify_subset)
    layer_action("Ask AstroVLM about this subset", single=True, subset=True,
                 tooltip="Open the AstroVLM panel with this subset selected")(_ask_subset)
    _registered = True
