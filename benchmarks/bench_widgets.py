"""What opening the plugin costs a napari user: import time of each widget module, time from the
menu click to a docked widget (viewer drawn first, as a user has it), and the start-up of the worker
process that embedding, training and prediction run in. Prints a table.

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/bench_widgets.py [--repeats 5]

Every measurement runs in a fresh Python process (imports are cached within one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

MODULES = ("napari_spahgc._qt.viewer", "napari_spahgc._reader", "napari_spahgc.view.sample_data")
WIDGETS = ("Slide", "Embed", "Predict", "Genes", "Export")

IMPORT = """
import json, sys, time
import napari  # napari's own import is not the plugin's cost
started = time.perf_counter()
import {module}
print(json.dumps({{"s": time.perf_counter() - started, "torch": "torch" in sys.modules}}))
"""

DOCK = """
import json, time
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
viewer.screenshot(canvas_only=True, flash=False)
times = {{}}
for name in {widgets!r}:
    started = time.perf_counter()
    viewer.window.add_plugin_dock_widget("napari-spahgc", name)
    QApplication.processEvents()
    times[name] = time.perf_counter() - started
viewer.close()
print(json.dumps(times))
"""


def _python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker_start(flow: str, request: str) -> float:
    """Seconds from asking for a worker process (``ns.WorkerProcess``, the widgets' runner) to the first
    item of ``flow(request)`` (both Python expressions, ``ns`` being the package)."""
    code = textwrap.dedent(f"""
        import json, time
        import napari_spahgc as ns
        started = time.perf_counter()
        next(ns.WorkerProcess().run({flow}, {request}))
        print(json.dumps({{"s": time.perf_counter() - started}}))
    """)
    return _python(code)["s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats

    print(f"median of {repeats} fresh processes, seconds")
    print("| what | median | min | max | torch imported |")
    print("|---|---|---|---|---|")
    for module in MODULES:
        runs = [_python(IMPORT.format(module=module)) for _ in range(repeats)]
        seconds = [r["s"] for r in runs]
        print(f"| import {module} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
              f"{max(seconds):.2f} | {any(r['torch'] for r in runs)} |")  # fmt: skip
    docks = [_python(DOCK.format(widgets=WIDGETS)) for _ in range(repeats)]
    for name in WIDGETS:
        seconds = [d[name] for d in docks]
        print(f"| click → docked: {name} (in the order listed) | {statistics.median(seconds):.2f} | "
              f"{min(seconds):.2f} | {max(seconds):.2f} | False |")  # fmt: skip
    tasks = {
        "worker process start, trivial task": ("iter", "[1]"),
        "worker process start + embedding flow import, its first progress (the Embed widget's path)": (
            "ns.embed", "ns.EmbedRequest([], device='cpu')"),
    }  # fmt: skip
    for label, (flow, request) in tasks.items():
        seconds = [_worker_start(flow, request) for _ in range(repeats)]
        print(f"| {label} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
              f"{max(seconds):.2f} | in the worker |")  # fmt: skip


if __name__ == "__main__":
    main()
