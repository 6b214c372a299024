"""Where to trust a prediction, in a real viewer (Xvfb, show=True) on the real HER2ST sections: a model
trained on C2–C5 by ``spahgc train`` (conftest's ``her2st_model``, another process), C6 opened,
embedded and predicted through the widgets; the Genes widget's interval columns and Show modes; a
click on a predicted spot opens its references in the Why widget."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Points
from qtpy.QtCore import QPoint, Qt

from conftest import predicted_c6_viewer
from napari_spahgc._qt._common import session_for
from napari_spahgc._qt.genes import FADED, VALUE, WIDTH
from napari_spahgc.io.intervals import prediction_interval

LONG = 300_000  # ms: generous for 2 busy cores


def test_confidence_view_and_why_panel_in_a_real_viewer(
    make_napari_viewer, qtbot, her2st_model, tmp_path, notifications
):
    viewer, widgets = predicted_c6_viewer(make_napari_viewer, qtbot, her2st_model, tmp_path, LONG)
    session = session_for(viewer)
    assert not notifications, [str(n.message) for n in notifications]
    prediction = session.predictions["C6"]

    genes = widgets["Genes"]
    header = [genes.table.horizontalHeaderItem(c).text() for c in range(genes.table.columnCount())]
    assert header[-2:] == ["interval width", "coverage here"]
    row = genes.table.findItems("SCD", Qt.MatchFlag.MatchExactly)[0].row()
    genes.table.selectRow(row)
    width_cell = float(genes.table.item(row, 3).data(Qt.ItemDataRole.DisplayRole))
    assert width_cell == pytest.approx(float(prediction.var.loc["SCD", "interval_width"]), abs=1e-3)
    assert 0.5 < float(genes.table.item(row, 4).data(Qt.ItemDataRole.DisplayRole)) <= 1.0

    predicted = next(
        layer for layer in viewer.layers if isinstance(layer, Points) and layer.name == "C6 SCD predicted"
    )
    lower, upper = prediction_interval(prediction, genes=["SCD"])
    width = (upper - lower)[:, 0]
    genes.show_mode.setCurrentText(WIDTH)  # the map shows the interval's width
    assert predicted.name == "C6 SCD predicted (interval width)"
    np.testing.assert_allclose(predicted.features[WIDTH], width, rtol=1e-6)
    assert genes.low.value() == pytest.approx(np.percentile(width, 1), abs=1e-3)
    genes.show_mode.setCurrentText(FADED)  # the value, faded where the interval is wide
    alpha = predicted.face_color[:, 3]
    assert alpha.min() == pytest.approx(0.15, abs=1e-3) and alpha.max() == pytest.approx(1.0)
    assert np.corrcoef(alpha, width)[0, 1] < -0.99
    genes.show_mode.setCurrentText(VALUE)
    assert predicted.name == "C6 SCD predicted" and np.all(predicted.face_color[:, 3] == 1)

    # a click on a predicted spot: the camera centred on it, the canvas clicked in its middle
    spot = 42
    viewer.camera.center = predicted.data_to_world(predicted.data[spot])
    viewer.camera.zoom = 2.0
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=QPoint(canvas.width() // 2, canvas.height() // 2))
    qtbot.waitUntil(lambda: session.spot == str(prediction.obs_names[spot]), timeout=5000)
    why = widgets["Why"]
    assert why.table.rowCount() == 7
    assert (
        why.summary.text().startswith(f"{prediction.obs_names[spot]}, SCD: predicted")
        and "interval" in why.summary.text()
    )
    slides = {why.table.item(r, 0).text() for r in range(7)}
    assert slides <= {"C2", "C3", "C4", "C5"}
    pixmaps = [why.grid.itemAt(i).widget().pixmap() for i in range(why.grid.count())]
    assert len(pixmaps) == 7 and all(p is not None and p.width() == 112 for p in pixmaps)
    assert why.table.horizontalHeaderItem(4).text() == "measured SCD"
    session.set_gene("KRT8")  # another gene: the same references, their values of it
    assert why.table.horizontalHeaderItem(4).text() == "measured KRT8"
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot[..., :3].std() > 5
