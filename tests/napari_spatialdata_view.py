"""Open a SpatialData store of predictions in napari-spatialdata as a user does — napari first, then
the store's image and the element its table annotates — and colour that element by a predicted gene
(the first, or GENE) through napari-spatialdata's View widget. Prints one JSON line of what the
viewer shows; with WINDOW.png, saves a picture of the window there.

    python tests/napari_spatialdata_view.py STORE.zarr [WINDOW.png [GENE]]
"""

from __future__ import annotations

import json
import sys
import time

import napari
import numpy as np

started = time.perf_counter()
viewer = napari.Viewer(show=True)
viewer.window._qt_window.resize(1600, 1000)

import spatialdata as sd  # noqa: E402 - after the viewer, as a user opens the store in a running napari
from napari_spatialdata import Interactive  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402


def settle(layers: int, timeout: float = 300) -> None:
    """Process Qt events until the viewer has ``layers`` layers (napari-spatialdata adds them in a
    thread), then a little longer for the canvas to draw."""
    begin = time.time()
    while len(viewer.layers) < layers and time.time() - begin < timeout:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)


sdata = sd.read_zarr(sys.argv[1])
interactive = Interactive(sdata, headless=True)
table = sdata.tables["table"]
region = table.uns["spatialdata_attrs"]["region"]
for index, element in enumerate([*sdata.images, region], start=1):
    interactive.add_element(element, "global")
    settle(index)
layer = viewer.layers[-1]
viewer.layers.selection.active = layer
view = viewer.window.dock_widgets["View (napari-spatialdata)"]
gene = sys.argv[3] if len(sys.argv) > 3 else str(table.var_names[0])
view.var_widget._onAction([gene])
settle(len(viewer.layers))
colours = np.asarray(layer.face_color) if hasattr(layer, "face_color") else None
shot = viewer.screenshot(canvas_only=True, flash=False)
if len(sys.argv) > 2:
    from PIL import Image

    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(sys.argv[2])
seen = {
    "layer": type(layer).__name__,
    "coloured_by": view.model.color_by,
    "gene": gene,
    "colours": 0 if colours is None else len(np.unique(colours.round(3), axis=0)),
    "labels_colormap": type(layer.colormap).__name__ if colours is None else "",
    "canvas_std": float(shot.std()),
    "torch": "torch" in sys.modules,
    "seconds": time.perf_counter() - started,
}
print(json.dumps(seen))
