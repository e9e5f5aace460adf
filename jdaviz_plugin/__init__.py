"""glue-astrovlm's jdaviz front end: the AstroVLM tray plugin (``jdaviz_plugin.astrovlm``).

How the plugin enters jdaviz 5.0.2 and later:

- ``jdaviz.App`` (``jdaviz.show()``, ``jdaviz.gca()``): nothing to do. jdaviz creates a glue application,
  glue calls the ``glue.plugins`` entry points, and ``glue_astrovlm.glue_plugin.setup`` registers the
  tray plugin (only when jdaviz is already imported). The App builds its tray from the registry.
- ``Imviz`` and ``Cubeviz`` build their trays from their configuration files, so add it with one line::

      import jdaviz_plugin
      plg = jdaviz_plugin.add_to(imviz)        # returns imviz.plugins['AstroVLM']

  or create the viewer from the helper classes that do the same: ``jdaviz_plugin.Imviz()``,
  ``jdaviz_plugin.Cubeviz()``.
- `register` also installs jdaviz's new-app hook (present from 5.0.2), so Apps that existed before the
  plugin was registered get it too.
"""

from __future__ import annotations

__all__ = ["REGISTRY_NAME", "PLUGIN_LABEL", "register", "add_to", "Imviz", "Cubeviz"]

REGISTRY_NAME = "astrovlm"
PLUGIN_LABEL = "AstroVLM"

_hook_installed = False


def register() -> None:
    """Register the AstroVLM tray plugin with jdaviz (idempotent; imports jdaviz)."""
    global _hook_installed
    import jdaviz

    from . import astrovlm  # noqa: F401 - the @tray_registry decorator registers the plugin

    if not _hook_installed:
        _hook_installed = True
        hook = getattr(jdaviz, "register_new_app_hook", None) or getattr(jdaviz, "_register_new_app_hook", None)
        if hook is not None:
            hook(_add_quietly)


def add_to(viz):
    """Add the AstroVLM plugin to the tray of a jdaviz helper (``Imviz``, ``Cubeviz``, ``App``, ...).

    Does nothing if the tray already has it. Returns the plugin's user API,
    ``viz.plugins['AstroVLM']``.
    """
    from jdaviz.core.registries import tray_registry

    register()
    app = viz._app
    if REGISTRY_NAME not in [item.get("name") for item in app.state.tray_items]:
        app.state.tray_items.append(app._create_tray_item(tray_registry.members[REGISTRY_NAME]))
    return viz.plugins[PLUGIN_LABEL]


def _add_quietly(viz) -> None:
    add_to(viz)


def _helper_class(name: str):
    import jdaviz

    base = getattr(jdaviz, name)

    class Helper(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            add_to(self)

    Helper.__name__ = Helper.__qualname__ = name
    Helper.__module__ = __name__
    Helper.__doc__ = f"jdaviz's ``{name}`` with the AstroVLM plugin in its tray.\n\n{base.__doc__ or ''}"
    return Helper


def __getattr__(name: str):
    if name in ("Imviz", "Cubeviz"):
        helper = _helper_class(name)
        globals()[name] = helper
        return helper
    raise AttributeError(f"module 'jdaviz_plugin' has no attribute {name!r}")
