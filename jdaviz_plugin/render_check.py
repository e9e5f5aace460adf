"""Render the AstroVLM plugin's ``.vue`` template in a real browser and check its controls.

Python tests never compile ``.vue`` templates, so template mistakes only show in a front end. This
script serves Imviz (HorseHead.fits, a subset, a catalogue, the AstroVLM plugin open in the tray,
after a tagging and a classification run with a tiny random-weight SmolVLM) through solara, the
widget front end jdaviz itself uses for its standalone app (the real ipywidgets, ipyvue and
ipyvuetify JavaScript), loads it in headless Chromium with Playwright, checks that the plugin's
controls are in the DOM, that Vue reported no template errors, and saves screenshots.

Run it from the repository root::

    python jdaviz_plugin/render_check.py                 # screenshots into docs/_static
    python jdaviz_plugin/render_check.py --out /tmp/shots

It needs Chromium (Debian: ``apt-get install chromium``; or ``--chromium PATH`` /
``$ASTROVLM_CHROMIUM``) and the ``playwright`` Python package (its own browser download is not
needed). Without either it prints ``SKIPPED: <reason>`` and exits 0, so CI can run it everywhere.
Exit status 1 means the render check failed.

The same template serves jdaviz 5.0 (Vue 2, ipyvue 1) and jdaviz 5.1 (Vue 3, ipyvue 3): the check
renders whichever is installed, and after the screenshots it changes a select and a tab in the browser
and waits for the Python side's answer, which proves that the template's two-way bindings work.
jdaviz 5.1's layout loads a few ES modules from esm.sh and unpkg.com at run time; offline, give
``--offline-modules MAP.json`` (``{"https://esm.sh/...": "/local/file.js", ...}``) to serve them from
local files (docs/jdaviz.md says how to build them).

When solara runs this file as its app, only `Page` below is used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import solara

#: Set by the runner: folder of the tiny model to run tasks with (no tasks without it).
MODEL_ENV = "ASTROVLM_RENDER_MODEL"
#: Set by the runner: the folder of FITS files.
FITS_ENV = "ASTROVLM_RENDER_FITS"
#: Set by the runner: which jdaviz configuration to serve ('imviz' or 'cubeviz').
CONFIG_ENV = "ASTROVLM_RENDER_CONFIG"

#: Texts that the plugin's template must put on the page (labels, tabs, buttons, sections), per view.
EXPECTED_TEXTS = {
    "common": ("Model", "Load model", "What to send", "Data", "Viewer", "Interval", "Stretch",
               "Model sees", "Refresh preview", "Ask", "Classify", "Tag sources", "Label set", "Cancel",
               "Results", "Export", "Clear results"),
    # Imviz: the Classify tab after classifying a subset
    "imviz": ("Send", "Spatial subset", "Outside the subset"),
    # Cubeviz: the Tag sources tab after tagging sources detected on a moment map
    "cubeviz": ("Cube", "Spectral range", "Sources", "Threshold (sigma)", "Max sources", "Cutout size (px)",
                "Write subsets", "Subsets", "Write markers"),
    # Imviz: the Ask tab after a two-turn conversation about a subset, its last answer corrected
    "conversation": ("Send", "Spatial subset", "New conversation", "Correct the last answer",
                     "Export conversations", "Q2"),
}

#: The browser changes this select to this option; the thumbnail caption, made in Python, must follow.
ROUND_TRIP = ("Interval", "minmax")


# ------------------------------------------------------------------------------------------ the app
def _register_jdaviz_components() -> None:
    # what jdaviz.solara does for its own standalone app (without its exit-on-close kernel hook)
    import ipyvue
    import jdaviz
    from jdaviz.app import custom_components

    root = Path(jdaviz.__file__).parent
    for name, path in custom_components.items():
        ipyvue.register_component_from_file(None, name, str(root / path))
    ipyvue.register_component_from_file("g-viewer-tab", "container.vue", jdaviz.__file__)


def _viz(name: str):
    """jdaviz's `name` helper with the plugin; the App where jdaviz no longer has it (5.2)."""
    import jdaviz

    import jdaviz_plugin

    return getattr(jdaviz_plugin, name)() if hasattr(jdaviz, name) else jdaviz_plugin.new_app()


def build_imviz():
    """Imviz with HorseHead.fits, a user subset, a catalogue and the AstroVLM plugin open."""
    import warnings

    from astropy.table import Table
    from regions import CirclePixelRegion, PixCoord

    from glue_astrovlm import detect_sources, open_image

    fits_dir = Path(os.environ[FITS_ENV])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viz = _viz("Imviz")
        viz.load(str(fits_dir / "HorseHead.fits"), format="Image", extension=0)
        found = detect_sources(open_image(fits_dir / "HorseHead.fits"), nsigma=5, max_sources=6)
        viz.load(Table({"ra": found["ra"], "dec": found["dec"]}), format="Catalog", data_label="stars")
    viz.plugins["Subset Tools"].import_region(CirclePixelRegion(PixCoord(480, 420), 70))
    plg = viz.plugins["AstroVLM"]
    model = os.environ.get(MODEL_ENV)
    if model:
        from glue_astrovlm.session import VLMSession

        plg.vlm_session = VLMSession(model, dtype="float32")
        plg.tag(["star", "galaxy", "artefact"], catalog="stars")
        plg.send = "Spatial subset"
        plg.subset = "Subset 1"
        plg.classify(["star", "galaxy", "dark nebula"])
    # columns that fit the tray (the others stay one click away in the table's column menu)
    plg._obj.table.headers_visible = ["source", "task", "label", "confidence"]
    plg.open_in_tray()
    return viz._app


def build_cubeviz():
    """Cubeviz with the L1448 13CO cube, sources detected on its moment-0 map and tagged."""
    import warnings

    import astropy.units as u
    from astropy.io import fits
    from astropy.wcs import WCS
    from specutils import Spectrum

    with fits.open(Path(os.environ[FITS_ENV]) / "l1448_13co.fits") as hdul:
        cube = Spectrum(flux=hdul[0].data * u.K / u.pix ** 2, wcs=WCS(hdul[0].header))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viz = _viz("Cubeviz")
        viz.load(cube, format="3D Spectrum", data_label="L1448 13CO")
    plg = viz.plugins["AstroVLM"]
    plg.cube_mode = "Moment 0"
    plg._obj.task_tab = 2
    plg.tag_source = "Detected in view"
    plg.nsigma = 3
    plg.max_sources = 6
    plg.cutout_size = 16  # the map is 105 px across: small boxes leave the emission visible
    model = os.environ.get(MODEL_ENV)
    if model:
        from glue_astrovlm.session import VLMSession

        plg.vlm_session = VLMSession(model, dtype="float32")
        plg.tag(["dense core", "outflow", "diffuse"])
    # columns that fit the tray (the others stay one click away in the table's column menu)
    plg._obj.table.headers_visible = ["source", "label", "confidence", "subset"]
    plg.open_in_tray()
    return viz._app


def build_conversation():
    """Imviz with HorseHead.fits, a subset on the Horsehead and a conversation about it in the Ask tab."""
    import warnings

    from regions import CirclePixelRegion, PixCoord

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viz = _viz("Imviz")
        viz.load(str(Path(os.environ[FITS_ENV]) / "HorseHead.fits"), format="Image", extension=0)
    viz.plugins["Subset Tools"].import_region(CirclePixelRegion(PixCoord(480, 420), 70))
    plg = viz.plugins["AstroVLM"]
    plg.send = "Spatial subset"
    plg.subset = "Subset 1"
    plg._obj.task_tab = 0
    model = os.environ.get(MODEL_ENV)
    if model:
        from glue_astrovlm.session import VLMSession

        plg.vlm_session = VLMSession(model, dtype="float32")
        plg.ask("Is there a dark nebula in this subset?", max_new_tokens=12)
        plg.ask("Which side of it is brighter?", max_new_tokens=12)
        plg.correct_answer("The western side, where the nebula meets the bright rim of IC 434.")
        plg.question = "Is the rim ionised gas?"
    plg.open_in_tray()
    return viz._app


BUILDERS = {"imviz": build_imviz, "cubeviz": build_cubeviz, "conversation": build_conversation}


@solara.component
def Page():
    solara.use_memo(_register_jdaviz_components, [])
    app, set_app = solara.use_state(None)
    which = os.environ.get(CONFIG_ENV, "imviz")
    solara.use_effect(lambda: set_app(BUILDERS[which]()), [])
    import jdaviz

    # no return: solara shows every element made here (the style and title included)
    solara.Style(Path(jdaviz.__file__).parent / "solara.css")
    solara.Title(f"AstroVLM in {which.capitalize()}")
    solara.Column(children=[app] if app is not None else [])


# ------------------------------------------------------------------------------------------ the runner
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _find_chromium(explicit: str | None) -> str | None:
    import shutil

    for candidate in (explicit, os.environ.get("ASTROVLM_CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome", "google-chrome-stable"):
        if candidate:
            found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
            if found:
                return found
    return None


def _wait_for_server(url: str, server, timeout: float) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the solara server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the solara server did not answer at {url} within {timeout:.0f} s")


def _tiny_model(folder: Path) -> str | None:
    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG, build_smolvlm

    if not SHARED_SMOLVLM_CONFIG.is_dir():
        print(f"note: no model configuration at {SHARED_SMOLVLM_CONFIG}; rendering without running tasks")
        return None
    build_smolvlm(folder)
    return folder.name  # the server runs in the folder's parent: the panel shows a clean name


def check_page(page, config: str, timeout_ms: int, with_results: bool) -> list[str]:
    """The problems found on the rendered page (empty when it passes)."""
    problems = []
    page.wait_for_selector("text=What to send", timeout=timeout_ms)
    page.wait_for_selector("text=Tag sources", timeout=timeout_ms)
    if with_results:
        page.wait_for_selector(".astrovlm-message", timeout=timeout_ms)
    page.wait_for_timeout(1500)  # let images and bqplot settle before the screenshot
    plugin = page.locator(".tray-plugin").filter(has_text="What to send")
    if plugin.count() != 1:
        problems.append(f"expected one AstroVLM plugin container, found {plugin.count()}")
        return problems
    text = plugin.text_content().lower()  # the DOM's text: buttons and tabs are upper-cased by CSS only
    expected = EXPECTED_TEXTS["common"] + EXPECTED_TEXTS[config]
    if config == "conversation":  # the Ask tab is open: no label set
        expected = tuple(text for text in expected if text != "Label set")
    missing = [label for label in expected if label.lower() not in text]
    if missing:
        problems.append("controls missing from the plugin: " + ", ".join(missing))
    inputs = plugin.locator("input, button, .v-select").count()
    if inputs < 15:
        problems.append(f"only {inputs} inputs, buttons and selects rendered")
    thumbnail = plugin.locator("img[alt='What the model sees']")
    if thumbnail.count() != 1 or not thumbnail.evaluate("img => img.complete && img.naturalWidth > 0"):
        problems.append("the 'Model sees' thumbnail did not render")
    if with_results:
        message = plugin.locator(".astrovlm-message").text_content()
        if config == "imviz":
            bars = plugin.locator(".astrovlm-probability").count()
            if bars != 3:
                problems.append(f"expected 3 probability bars after classifying, found {bars}")
        elif config == "conversation":
            turns = plugin.locator(".astrovlm-answer").count()
            if turns != 2:
                problems.append(f"expected 2 turns in the Ask tab, found {turns}")
        elif "Tagged" not in message:
            problems.append(f"expected the tagging summary, the plugin says {message.strip()!r}")
        if "error" in (plugin.locator(".astrovlm-message").get_attribute("class") or ""):
            problems.append(f"the plugin reports an error: {message.strip()}")
    return problems


def check_bindings(page, timeout_ms: int) -> list[str]:
    """Change a select and a tab in the browser and wait for the result: the problems found.

    A select's choice reaches Python only through the template's ``update:selected`` binding; the
    thumbnail caption that then changes is made in Python, so seeing it proves the round trip.
    """
    problems = []
    plugin = page.locator(".tray-plugin").filter(has_text="What to send")
    label, option = ROUND_TRIP
    try:
        plugin.locator(".v-select").filter(has_text=label).first.click()
        choice = page.get_by_role("option", name=option, exact=True)
        if choice.count() == 0:  # a Vuetify release without ARIA roles in the list
            choice = page.locator(".v-list-item").filter(has_text=option)
        choice.first.click()
        plugin.locator(".astrovlm-thumbnail").filter(has_text=option).wait_for(timeout=timeout_ms)
    except Exception as error:  # noqa: BLE001 - a control that did not respond is a failed check
        problems.append(f"choosing {option!r} as {label} did not reach Python and back "
                        f"({type(error).__name__}: {str(error).splitlines()[0]})")
    try:
        plugin.locator(".v-tab").filter(has_text="Ask").first.click()
        # attached, not visible: Vuetify 3 keeps a hidden copy of each field's label
        plugin.get_by_text("Question", exact=True).first.wait_for(state="attached", timeout=timeout_ms)
    except Exception as error:  # noqa: BLE001
        problems.append(f"the Ask tab did not open its question field "
                        f"({type(error).__name__}: {str(error).splitlines()[0]})")
    return problems


def _close_snackbars(page, rounds: int = 10) -> None:
    """Dismiss jdaviz's queued notifications so that they do not cover the screenshot."""
    for _ in range(rounds):
        # Vuetify 2 (jdaviz 5.0) and Vuetify 3 (jdaviz 5.1) name the snackbar differently
        buttons = page.locator(".v-snack__wrapper button, .v-snackbar__wrapper button")
        if buttons.count() == 0 or not buttons.first.is_visible():
            return
        try:
            buttons.first.click(timeout=2000)
        except Exception:  # noqa: BLE001 - a notification that vanished by itself
            pass
        page.wait_for_timeout(400)


def _screenshot_ask_tab(page, plugin, path: Path) -> None:
    """The Ask tab alone, from its tab to the plugin's message: the conversation for docs/jdaviz.md."""
    box = plugin.bounding_box()
    top = plugin.locator(".v-tab").filter(has_text="Ask").first.bounding_box()
    bottom = plugin.locator(".astrovlm-message").bounding_box()
    if box and top and bottom:
        page.screenshot(path=str(path), clip={"x": box["x"], "y": top["y"] - 8, "width": box["width"],
                                              "height": bottom["y"] + bottom["height"] - top["y"] + 16})


def _serve_offline_modules(page, modules: dict) -> None:
    """Answer requests for the URLs in `modules` (URL -> local file) from the local files."""
    def fulfil(route):
        path = modules[route.request.url]
        kind = "text/css" if path.endswith(".css") else "application/javascript"
        route.fulfill(path=path, headers={"Access-Control-Allow-Origin": "*", "Content-Type": kind})

    page.route(lambda url: url in modules, fulfil)


def render(config: str, chromium: str, env: dict, out: Path, timeout: float, cwd: str,
           offline_modules: dict | None = None) -> list[str]:
    """Serve one jdaviz configuration, check it in Chromium and save its screenshots."""
    import subprocess

    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "solara", "run", "jdaviz_plugin.render_check",
                               "--port", str(port), "--host", "127.0.0.1", "--production", "--no-open",
                               "--log-level", "warning"], env={**env, CONFIG_ENV: config}, cwd=cwd)
    console, problems = [], []
    try:
        _wait_for_server(url, server, timeout=60)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            if offline_modules:
                _serve_offline_modules(page, offline_modules)
            page.goto(url)
            problems = check_page(page, config, int(timeout * 1000), with_results=MODEL_ENV in env)
            _close_snackbars(page)
            page.screenshot(path=str(out / f"jdaviz_{config}_astrovlm.png"))
            # the tray scrolls: a tall window shows the whole plugin for its own screenshot
            page.set_viewport_size({"width": 1500, "height": 3000})
            page.wait_for_timeout(1000)
            plugin = page.locator(".tray-plugin").filter(has_text="What to send")
            if plugin.count() == 1:
                plugin.screenshot(path=str(out / f"jdaviz_{config}_astrovlm_panel.png"))
                if config == "conversation":
                    _screenshot_ask_tab(page, plugin, out / "jdaviz_conversation_ask_tab.png")
                problems += check_bindings(page, timeout_ms=30_000)
            problems += [f"browser console: {line}" for line in console if "Vue warn" in line
                         or "compiling template" in line or line.startswith("pageerror")]
            browser.close()
    except Exception as error:  # noqa: BLE001 - any failure of the render is a failed check
        problems.append(f"{type(error).__name__}: {error}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return [f"{config}: {problem}" for problem in problems]


def main(argv=None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "_static",
                        help="folder for the screenshots (default: docs/_static)")
    parser.add_argument("--chromium", help="Chromium executable (default: $ASTROVLM_CHROMIUM or on PATH)")
    parser.add_argument("--fits-dir", type=Path,
                        default=Path(os.environ.get("ASTROVLM_SHARED_DATA",
                                                    Path(__file__).resolve().parents[2] / "shared" / "data"))
                        / "fits", help="folder holding HorseHead.fits and l1448_13co.fits")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for each page")
    parser.add_argument("--configs", nargs="+", choices=sorted(BUILDERS), default=["imviz", "cubeviz"],
                        help="jdaviz configurations to render (default: both)")
    parser.add_argument("--offline-modules", type=Path, default=os.environ.get("ASTROVLM_OFFLINE_MODULES"),
                        help="JSON map of the ES-module URLs jdaviz 5.1 loads at run time to local files "
                             "(default: $ASTROVLM_OFFLINE_MODULES; not needed online)")
    args = parser.parse_args(argv)

    chromium = _find_chromium(args.chromium)
    if chromium is None:
        print("SKIPPED: browser render check: no Chromium found (apt-get install chromium, or pass "
              "--chromium PATH / set ASTROVLM_CHROMIUM)")
        return 0
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        print("SKIPPED: browser render check: the playwright Python package is not installed "
              "(pip install playwright; its browser download is not needed)")
        return 0
    missing = [name for name in ("HorseHead.fits", "l1448_13co.fits") if not (args.fits_dir / name).is_file()]
    if missing:
        print(f"SKIPPED: browser render check: {', '.join(missing)} not found in {args.fits_dir}")
        return 0

    offline_modules = None
    if args.offline_modules:
        import json

        offline_modules = json.loads(Path(args.offline_modules).read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny_model(Path(tmp) / "SmolVLM-256M-tiny-random")
        env = {**os.environ, FITS_ENV: str(args.fits_dir)}
        if model:
            env[MODEL_ENV] = model
        for config in args.configs:
            problems += render(config, chromium, env, args.out, args.timeout, tmp, offline_modules)
    if problems:
        print("FAILED: browser render check:")
        for problem in problems:
            print("  -", problem)
        return 1
    shots = ", ".join(f"jdaviz_{c}_astrovlm.png, jdaviz_{c}_astrovlm_panel.png" for c in args.configs)
    print(f"PASSED: browser render check with {chromium}; screenshots in {args.out}: {shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
