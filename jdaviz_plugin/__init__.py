"""glue-astrovlm's jdaviz front end: the AstroVLM tray plugin (``jdaviz_plugin.astrovlm``).

How the plugin enters jdaviz 5.0.2 and later:

- ``jdaviz.App`` (``jdaviz.show()``, ``jdaviz.gca()``, ``jdaviz.new_app()``): nothing to do. jdaviz
  creates a glue application, glue calls the ``glue.plugins`` entry points, and
  ``glue_astrovlm.glue_plugin.setup`` registers the tray plugin (only when jdaviz is already imported).
  The App builds its tray from the registry. `new_app` does the same and makes sure of it.
- ``Imviz`` and ``Cubeviz`` build their trays from their configuration files, so add it with one line::

      import jdaviz_plugin
      plg = jdaviz_plugin.add_to(imviz)        # returns imviz.plugins['AstroVLM']

- `register` also installs jdaviz's new-app hook (present from 5.0.2), so Apps that existed before the
  plugin was registered get it too.

jdaviz deprecates Imviz and Cubeviz (from 5.0) and removes them in 5.2; the App shows images and
cubes. This module therefore holds no subclass of any jdaviz helper: it creates jdaviz's own helpers
and adds the plugin to them, which works whichever helpers a jdaviz release has. `Imviz` and `Cubeviz`
remain for older scripts and warn that they go away with jdaviz's.
"""

from __future__ import annotations

import warnings

__all__ = ["REGISTRY_NAME", "PLUGIN_LABEL", "register", "add_to", "new_app", "Imviz", "Cubeviz"]

REGISTRY_NAME = "astrovlm"
PLUGIN_LABEL = "AstroVLM"

_hook_installed = False


def register() -> None:
    """Register the AstroVLM tray plugin with jdaviz (idempotent; imports jdaviz).

    Also installs jdaviz's new-app hook, which adds the plugin to every App that exists or is created
    later (the hook is ``jdaviz._register_new_app_hook`` up to jdaviz 5.1; a public
    ``register_new_app_hook`` is used when a release adds it).
    """
    global _hook_installed
    import jdaviz

    from . import astrovlm  # noqa: F401 - the @tray_registry decorator registers the plugin

    if not _hook_installed:
        _hook_installed = True
        hook = (getattr(jdaviz, "register_new_app_hook", None)
                or getattr(jdaviz, "_register_new_app_hook", None))
        if hook is not None:
            hook(_add_quietly)


def add_to(viz):
    """Add the AstroVLM plugin to the tray of a jdaviz helper (``App``, ``Imviz``, ``Cubeviz``, ...).

    Parameters
    ----------
    viz : jdaviz helper
        Any jdaviz configuration helper: it needs only ``viz._app`` and ``viz.plugins``.

    Returns
    -------
    plugin user API
        ``viz.plugins['AstroVLM']``. Does nothing else if the tray already has the plugin.
    """
    from jdaviz.core.registries import tray_registry

    register()
    app = viz._app
    if REGISTRY_NAME not in [item.get("name") for item in app.state.tray_items]:
        app.state.tray_items.append(app._create_tray_item(tray_registry.members[REGISTRY_NAME]))
    return viz.plugins[PLUGIN_LABEL]


def _add_quietly(viz) -> None:
    add_to(viz)


def new_app(**kwargs):
    """Create a jdaviz App with the AstroVLM plugin in its tray and make it jdaviz's current app.

    The App (jdaviz's ``jdaviz.new_app``) shows images and cubes alike; it is what jdaviz 5.2 keeps
    when it removes Imviz and Cubeviz, and it raises no deprecation warning.

    Parameters
    ----------
    **kwargs
        Passed to ``jdaviz.new_app`` (``replace``, ``set_as_current``).

    Returns
    -------
    jdaviz.App
        The new App; its plugin is ``app.plugins['AstroVLM']``, and ``jdaviz.gca()`` returns it.
    """
    register()  # before the App builds its tray, so the plugin takes its place among the analysis ones
    import jdaviz

    app = jdaviz.new_app(**kwargs)
    add_to(app)
    return app


def _config_helper(name: str, args, kwargs):
    import jdaviz

    helper = getattr(jdaviz, name, None)
    if helper is None:
        from glue_astrovlm.errors import AstroVLMError

        raise AstroVLMError(f"jdaviz {jdaviz.__version__} has no {name} (jdaviz 5.2 removed it): use "
                            f"jdaviz_plugin.new_app() and load images and cubes into the App")
    warnings.warn(f"jdaviz_plugin.{name}() makes jdaviz's {name}, which jdaviz deprecates and removes in "
                  f"5.2; use jdaviz_plugin.new_app() (the App shows images and cubes), or "
                  f"jdaviz_plugin.add_to(viz) on a helper you made", DeprecationWarning, stacklevel=3)
    with warnings.catch_warnings():
        # the same deprecation, which jdaviz would otherwise attribute to this module
        warnings.filterwarnings("ignore", message=f"{name} is deprecated", category=DeprecationWarning)
        viz = helper(*args, **kwargs)
    add_to(viz)
    return viz


def Imviz(*args, **kwargs):  # noqa: N802 - keeps the name of the class it used to be
    """jdaviz's ``Imviz`` with the AstroVLM plugin in its tray (deprecated, as jdaviz's Imviz is).

    Parameters
    ----------
    *args, **kwargs
        Passed to ``jdaviz.Imviz``.

    Returns
    -------
    jdaviz.Imviz
        The helper; its plugin is ``imviz.plugins['AstroVLM']``.

    Raises
    ------
    AstroVLMError
        When the installed jdaviz no longer has Imviz (5.2 and later): use `new_app`.
    """
    return _config_helper("Imviz", args, kwargs)


def Cubeviz(*args, **kwargs):  # noqa: N802 - keeps the name of the class it used to be
    """jdaviz's ``Cubeviz`` with the AstroVLM plugin in its tray (deprecated, as jdaviz's Cubeviz is).

    Parameters
    ----------
    *args, **kwargs
        Passed to ``jdaviz.Cubeviz``.

    Returns
    -------
    jdaviz.Cubeviz
        The helper; its plugin is ``cubeviz.plugins['AstroVLM']``.

    Raises
    ------
    AstroVLMError
        When the installed jdaviz no longer has Cubeviz (5.2 and later): use `new_app`.
    """
    return _config_helper("Cubeviz", args, kwargs)
