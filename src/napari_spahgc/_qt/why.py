"""Why widget: click a spot of a predicted slide; the reference spots its prediction drew on — slide,
spot, cosine similarity, attention, their measured value of the gene on show and a patch of each —
with the spot's predicted value and interval (:mod:`napari_spahgc.view.explain`)."""

from __future__ import annotations

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_spahgc._qt._common import SessionWidget
from napari_spahgc.base.errors import describe
from napari_spahgc.view.explain import reference_patches, reference_table, summary_line

_HINT = "Click a spot of a predicted slide to see the reference spots its prediction drew on."
_COLUMNS = ("slide", "spot", "similarity", "attention", "measured")
_PER_ROW = 4  # patches per row of the grid


class WhyWidget(SessionWidget):
    """The references behind the picked spot's prediction of the gene on show."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.summary = QLabel(_HINT)
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.patches = QWidget()
        self.grid = QGridLayout(self.patches)
        self.notes = QLabel("")
        self.notes.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widget in (self.summary, self.table, self.patches, self.notes):
            layout.addWidget(widget)
        layout.addStretch()
        self._patches: dict[tuple[str, str], tuple[list, list[str]]] = {}  # (slide, spot) → patches, notes
        for signal in (self.session.spot_changed, self.session.gene_changed, self.session.prediction_changed):
            signal.connect(self.refresh)

    def refresh(self, *_) -> None:
        """Show the picked spot's references for the gene on show (or the hint when none is picked)."""
        slide, spot = self.session.current, self.session.spot
        prediction = self.session.predictions.get(slide) if slide else None
        if prediction is None or spot is None:
            self._show(_HINT)
            return
        try:
            frame = reference_table(prediction, spot, self.session.gene)
            if (slide, spot) not in self._patches:
                self._patches[slide, spot] = reference_patches(prediction, frame)
        except Exception as error:  # a file without references, an unreadable image: said, not raised
            self._show(f"{spot}: {describe(error)}")
            return
        patches, notes = self._patches[slide, spot]
        self._show(summary_line(frame), frame, patches, notes)

    def _show(self, text: str, frame=None, patches=(), notes=()) -> None:
        self.summary.setText(text)
        rows = [] if frame is None else list(frame.itertuples())
        self.table.setRowCount(len(rows))
        gene = "" if frame is None else frame.attrs["gene"]
        self.table.setHorizontalHeaderLabels([*_COLUMNS[:-1], f"measured {gene}".strip()])
        for row, ref in enumerate(rows):
            cells = (
                ref.slide_id,
                ref.spot_id,
                f"{ref.similarity:.3f}",
                f"{ref.attention:.3f}",
                f"{ref.measured:.2f}",
            )
            for column, text_ in enumerate(cells):
                self.table.setItem(row, column, QTableWidgetItem(text_))
        while self.grid.count():
            self.grid.takeAt(0).widget().deleteLater()
        for index, (patch, ref) in enumerate(zip(patches, rows, strict=False)):
            label = QLabel()
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            if patch is None:
                label.setText(f"{ref.slide_id} {ref.spot_id}\n(no image)")
            else:
                label.setPixmap(_pixmap(patch))
                label.setToolTip(f"{ref.slide_id} {ref.spot_id}: {gene} {ref.measured:.2f}")
            self.grid.addWidget(label, index // _PER_ROW, index % _PER_ROW)
        self.notes.setText("\n".join(notes))


def _pixmap(patch: np.ndarray) -> QPixmap:
    """An RGB uint8 array as a pixmap (copied: the array may go)."""
    patch = np.ascontiguousarray(patch[..., :3])
    height, width = patch.shape[:2]
    image = QImage(patch.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())
