"""glue-qt start-up time with the AstroVLM plugin enabled against the same start-up with it disabled.

    QT_QPA_PLATFORM=offscreen python benchmarks/bench_glue_startup.py --repeats 7

Each run is a fresh Python process that imports glue-qt, creates a GlueApplication (which loads the
``glue.plugins`` entry points) and exits. Runs alternate between the two settings (a separate
``~/.glue/plugins.cfg`` disables the plugin) so that drift affects both. It also checks that starting
glue with the plugin imports neither torch nor transformers. Target: median difference under 0.3 s.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, time
start = time.perf_counter()
from glue.core import DataCollection
from glue_qt.app import GlueApplication
app = GlueApplication(DataCollection())
elapsed = time.perf_counter() - start
from glue_qt.config import menubar_plugin
loaded = any(label == "AstroVLM" for label, _ in menubar_plugin)
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
app.close()
print(f"{elapsed:.4f} {int(loaded)} {','.join(heavy) or '-'}")
"""


def run_once(home: Path) -> tuple[float, bool, str]:
    env = dict(os.environ, HOME=str(home), QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    elapsed, loaded, heavy = out.stdout.split()[-3:]
    return float(elapsed), loaded == "1", heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        enabled, disabled = Path(tmp) / "enabled", Path(tmp) / "disabled"
        for home in (enabled, disabled):
            (home / ".glue").mkdir(parents=True)
        (disabled / ".glue" / "plugins.cfg").write_text("[plugins]\nglue_astrovlm = 0\n")
        run_once(enabled)  # warm the file cache
        times = {"with plugin": [], "without plugin": []}
        heavy = set()
        for _ in range(args.repeats):
            for name, home in (("with plugin", enabled), ("without plugin", disabled)):
                elapsed, loaded, imported = run_once(home)
                if loaded != (name == "with plugin"):
                    raise SystemExit(f"plugin {'not ' if not loaded else ''}loaded in the '{name}' run")
                times[name].append(elapsed)
                if imported != "-" and name == "with plugin":
                    heavy.add(imported)
    medians = {name: statistics.median(values) for name, values in times.items()}
    delta = medians["with plugin"] - medians["without plugin"]
    print(f"GlueApplication start-up, median of {args.repeats} runs:")
    for name, value in medians.items():
        print(f"  {name:<15} {value:.3f} s")
    print(f"  difference      {delta:+.3f} s (target < +0.3 s)")
    print(f"  heavy modules imported at start-up with the plugin: {', '.join(sorted(heavy)) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"times": times, "medians": medians, "delta": delta,
                                               "heavy_imports": sorted(heavy)}, indent=1))
    return 0 if delta < 0.3 and not heavy else 1


if __name__ == "__main__":
    sys.exit(main())
