"""A napari session in the order a user works, for ``test_viewer_first.py`` (run as a fresh process).

The viewer is created, shown and drawn first (so the OpenGL context, and with Mesa its LLVM, is
loaded), then data comes in through the plugin's reader or sample-data menu, then every widget is
docked through the plugin manager, as ``Plugins ▸ SpaHGC`` does. With ``flow``, the widgets then embed,
train and predict. Writes a JSON record of what happened to the path given last.

    python viewer_first.py open COHORT.csv GENE_PANEL RECORD.json
    python viewer_first.py sample - - RECORD.json
"""

from __future__ import annotations

import json
import sys
import time

import napari
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-spahgc"
WIDGETS = ("Slide", "Embed", "Predict", "Genes", "Export")
HEAVY = ("torch", "triton", "torch_geometric", "timm", "torchvision")


def wait_for(panel, timeout_s: float = 600.0) -> None:
    """Run the Qt event loop until the panel's worker has finished."""
    deadline = time.monotonic() + timeout_s
    while panel.running:
        if time.monotonic() > deadline:
            raise TimeoutError("the widget's work did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()


def main(mode: str, source: str, panel_file: str, record_path: str) -> None:
    messages: list[str] = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    viewer = napari.Viewer(show=True)
    viewer.screenshot(canvas_only=True, flash=False)  # a drawn frame: the GL context exists
    if mode == "sample":
        viewer.open_sample(PLUGIN, "her2st_section")
    else:
        viewer.open(source, plugin=PLUGIN)
    viewer.screenshot(canvas_only=True, flash=False)
    record: dict = {"layers": [layer.name for layer in viewer.layers], "dock_s": {}}
    widgets = {}
    for name in WIDGETS:
        started = time.perf_counter()
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        QApplication.processEvents()
        record["dock_s"][name] = round(time.perf_counter() - started, 3)
    slide_names = widgets["Slide"]
    record["slides"] = [slide_names.slides.itemText(i) for i in range(slide_names.slides.count())]
    if mode == "open":
        widgets["Embed"].mode.setCurrentText("per-spot")  # quick on legacy ST's few spots
        widgets["Embed"].run()
        wait_for(widgets["Embed"].panel)
        target = record["slides"][-1]
        widgets["Slide"].slides.setCurrentText(target)
        predict = widgets["Predict"]
        record["references"] = predict.reference_ids()
        predict.epochs.setValue(3)
        predict.genes.set_text(panel_file)
        predict.run()
        wait_for(predict.panel)
        prediction = widgets["Genes"].session.predictions.get(target)
        record["prediction_shape"] = None if prediction is None else list(prediction.shape)
        record["visible_layers"] = [layer.name for layer in viewer.layers if layer.visible]
        record["genes_listed"] = widgets["Genes"].table.rowCount()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    record["screenshot_std"] = float(shot[..., :3].std())
    record["heavy_modules_loaded"] = [name for name in HEAVY if name in sys.modules]
    record["notifications"] = messages
    viewer.close()
    with open(record_path, "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main(*sys.argv[1:5])
