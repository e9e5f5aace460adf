"""How long from clicking Run, with no model loaded, to the first classification in the glue panel? (issue 14)

Each scenario runs in a fresh Python process, as a user's glue does: a real ``GlueApplication``
(offscreen), a real FITS image (the DSS Horsehead plate) with a box subset, the AstroVLM panel opened from the plugin, and
the full-size SmolVLM-256M (random weights: the time is real, the answer is not). The clock starts when
Run is clicked and stops when the answer has been written back on the GUI thread.

- ``at-once``: Run is clicked as soon as the panel opens (the import of torch is still under way);
- ``after-choosing``: the user spends ``--choose`` seconds choosing labels first, while the panel's
  warm-up imports torch and transformers on the worker thread.

The answer's time is split into import (waiting for torch/transformers), model load, the first
forward pass (warm-up of the kernels, included in classify) and write-back. A 10 ms ``QTimer``
records how long glue's event loop stalls at worst while all this runs in the background; the
panel promises a GUI that never freezes.

Run: ``QT_QPA_PLATFORM=offscreen python benchmarks/bench_first_answer.py --out first_answer.json``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# glue's own FITS reader refuses the MiraBest files (tabs in their COMMENT cards), so a DSS plate
DEFAULT_FITS = HERE.parent.parent / "shared" / "data" / "fits" / "HorseHead.fits"


def _scenario(model_dir: str, fits: str, choose: float) -> dict:
    """One user's first answer, in this (fresh) process."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    started = time.perf_counter()
    from glue.core import DataCollection
    from glue.core.data_factories import load_data
    from glue.core.roi import RectangularROI
    from glue.core.subset import RoiSubsetState
    from glue_qt.app import GlueApplication
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from glue_astrovlm.qt import open_panel

    app = GlueApplication(DataCollection())
    loaded = load_data(fits)  # glue's reader, without the GUI's dialogs
    for data in loaded if isinstance(loaded, list) else [loaded]:
        app.data_collection.append(data)
    image = next(d for d in app.data_collection if d.ndim == 2)
    x, y = image.pixel_component_ids[1], image.pixel_component_ids[0]
    group = app.data_collection.new_subset_group("source", RoiSubsetState(x, y, RectangularROI(380, 520, 280, 420)))
    glue_ready = time.perf_counter() - started

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)

    opened = time.perf_counter()
    panel = open_panel(app)
    panel.model_combo.setCurrentText(model_dir)
    panel.preset_combo.setCurrentText("radio-morphology")
    panel.select_subset(group)
    panel.set_task("classify")
    marks = _instrument(panel)
    until = time.perf_counter() + choose
    while time.perf_counter() < until:
        QApplication.processEvents()
        time.sleep(0.005)

    clicked = time.perf_counter()
    panel.run()
    while panel._running is not None or not panel.run_button.isEnabled():
        QApplication.processEvents()
        time.sleep(0.002)
    answered = time.perf_counter()
    timer.stop()
    result = panel.vlm.results[-1]
    gaps = [b - a for a, b in zip(ticks, ticks[1:]) if a >= opened]
    warm = getattr(panel, "warm_up", None)
    imports_done = marks.get("imports_done")
    return {
        "choose_seconds": choose,
        "glue_and_data_seconds": glue_ready,
        "click_to_answer_seconds": answered - clicked,
        "split_after_click": {
            "waiting_for_imports": max(0.0, (imports_done or clicked) - clicked),
            "model_load": marks["load_end"] - marks["load_start"],
            "classify_incl_first_forward": marks["classify_end"] - marks["classify_start"],
            "cutout_and_write_back": (answered - clicked) - (marks["load_end"] - marks["load_start"])
            - (marks["classify_end"] - marks["classify_start"])
            - max(0.0, (imports_done or clicked) - clicked),
        },
        "warm_up_imports_seconds_after_panel_opened": (imports_done - opened) if imports_done else None,
        "warm_up_finished": bool(warm and warm.done()),
        "event_loop": {
            "worst_stall_seconds": max(gaps) if gaps else None,
            "stalls_over_100ms": sum(g > 0.1 for g in gaps),
            "ticks": len(gaps),
            # when each long stall began, and the phases, in seconds after the panel opened
            "stalls": [[round(a - opened, 2), round(b - a, 2)] for a, b in zip(ticks, ticks[1:])
                       if a >= opened and b - a > 0.1],
            "phases": {name: round(t - opened, 2) for name, t in sorted(
                {**marks, "clicked": clicked, "answered": answered}.items(), key=lambda kv: kv[1])},
        },
        "label": result.label,
        "dtype": str(getattr(panel.vlm.session.vlm(), "dtype", "")),
    }


def _instrument(panel) -> dict:
    """Timestamps around the session's import, load and classify (the benchmark's own wrappers)."""
    marks = {}
    session = panel.vlm.session
    load = session.vlm

    def timed_vlm():
        if not session.is_loaded:
            marks.setdefault("load_start", time.perf_counter())
            vlm = load()
            marks.setdefault("load_end", time.perf_counter())
            return vlm
        return load()

    call = session._call

    def timed_call(*args, **kwargs):
        marks["classify_start"] = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            marks["classify_end"] = time.perf_counter()

    session.vlm, session._call = timed_vlm, timed_call

    def imports_finished(_future):
        marks["imports_done"] = time.perf_counter()

    panel.warm_up.add_done_callback(imports_finished)
    return marks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp") / "smolvlm-256m-full")
    parser.add_argument("--fits", type=Path, default=DEFAULT_FITS)
    parser.add_argument("--choose", type=float, default=10.0, help="seconds spent choosing before Run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_scenario(args.child[0], args.child[1], float(args.child[2]))))
        return 0

    from bench_classify import ensure_model, machine_info

    ensure_model(args.model_dir)
    report = {"machine": machine_info(), "scenarios": []}
    for _ in range(args.repeats):
        for name, choose in (("at-once", 0.0), ("after-choosing", args.choose)):
            # a new user: no remembered model, no cached CPU-precision choice
            env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "TRANSFORMERS_VERBOSITY": "error",
                   "ASTROVLM_CONFIG_DIR": tempfile.mkdtemp(prefix="astrovlm-first-answer-")}
            child = subprocess.run([sys.executable, __file__, "--child", str(args.model_dir), str(args.fits),
                                    str(choose)], capture_output=True, text=True, env=env, timeout=900)
            if child.returncode:
                print(child.stderr[-3000:], file=sys.stderr)
                return 1
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            report["scenarios"].append({"scenario": name, **figures})
            print(name, json.dumps(figures), flush=True)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
