"""Genes widget: the gene shown by the predicted and measured maps, what the predicted map shows (the
value, its interval's width, or the value faded where the interval is wide), colour scale and display."""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Image
from napari.utils.colormaps import ensure_colormap
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_spahgc._qt._common import SessionWidget, layer_info
from napari_spahgc.io.intervals import has_intervals, prediction_interval
from napari_spahgc.view.layers import LayerKind, gene_raster, gene_values, layer_name, shared_limits
from napari_spahgc.view.session import gene_scores

COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "gray")
#: The spot layers that show the gene, in the order of :func:`~napari_spahgc.view.layers.gene_values`.
_GENE_KINDS = (LayerKind.PREDICTED, LayerKind.MEASURED_BESIDE_PREDICTION)
#: What the predicted map can show
VALUE, WIDTH, FADED = "predicted value", "interval width", "predicted, faded where uncertain"
#: the least opacity of a spot faded for its interval's width
_FAINTEST = 0.15


class GenesWidget(SessionWidget):
    """Pick the gene shown by the predicted and measured spot layers; colour scale and spot display."""

    COLUMNS = ("gene", "validation PCC", "PCC here", "interval width", "coverage here")

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("type to filter genes…")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.show_mode = QComboBox()
        self.show_mode.addItems((VALUE, WIDTH, FADED))
        self.show_mode.setToolTip(
            "What the predicted map shows: the value, the width of its prediction interval (wide: less to "
            "trust), or the value with spots faded where the interval is wide"
        )
        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.low, self.high = (QDoubleSpinBox(decimals=3, minimum=-1e6, maximum=1e6) for _ in range(2))
        self.auto = QPushButton("Auto (1–99 %)")
        self.spot_size = QDoubleSpinBox(decimals=1, minimum=1.0, maximum=10000.0, suffix=" µm")
        self.opacity = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100, value=100)
        self.title = QLabel("")
        limits = QHBoxLayout()
        for widget in (self.low, self.high, self.auto):
            limits.addWidget(widget)
        display = QFormLayout()
        display.addRow("Show", self.show_mode)
        display.addRow("Colormap", self.colormap)
        display.addRow("Limits", limits)
        display.addRow("Spot size", self.spot_size)
        display.addRow("Opacity", self.opacity)
        box = QGroupBox("Display")
        box.setLayout(display)
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.table)
        layout.addWidget(self.title)
        layout.addWidget(box)
        self.filter.textChanged.connect(self._filter)
        self.table.itemSelectionChanged.connect(self._picked)
        self.show_mode.currentTextChanged.connect(lambda _: self.auto_limits())
        self.colormap.currentTextChanged.connect(lambda _: self.apply())
        self.low.editingFinished.connect(self.apply)
        self.high.editingFinished.connect(self.apply)
        self.auto.clicked.connect(self.auto_limits)
        self.spot_size.editingFinished.connect(self.apply)
        self.opacity.valueChanged.connect(lambda _: self.apply())
        self._new_layers = False
        self.session.prediction_changed.connect(self._prediction_changed)
        self.session.current_changed.connect(self._prediction_changed)
        self.session.gene_changed.connect(self.show_gene)

    @property
    def prediction(self):
        return self.session.predictions.get(self.session.current) if self.session.current else None

    def gene_layers(self) -> list:
        """The current slide's predicted and measured spot layers."""
        slide_id = self.session.current
        return [
            layer
            for layer in self.viewer.layers
            if layer_info(layer).get("slide_id") == slide_id and layer_info(layer).get("kind") in _GENE_KINDS
        ]

    def _prediction_changed(self, *_) -> None:
        prediction = self.prediction
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        if prediction is None:
            return
        validation = gene_scores(prediction, "validation_pcc")
        columns = [validation, *(gene_scores(prediction, c) for c in ("pcc", "interval_width", "coverage"))]
        intervals = has_intervals(prediction)
        if not intervals:
            self.show_mode.setCurrentText(VALUE)
        self.show_mode.setEnabled(intervals)
        self.table.setRowCount(prediction.n_vars)
        for row, gene in enumerate(map(str, prediction.var_names)):
            self.table.setItem(row, 0, QTableWidgetItem(gene))
            for column, scores in enumerate(columns, 1):
                item = QTableWidgetItem()
                value = scores.get(gene, np.nan)
                item.setData(
                    Qt.ItemDataRole.DisplayRole, round(float(value), 3) if np.isfinite(value) else None
                )
                self.table.setItem(row, column, item)
        self.table.setSortingEnabled(True)
        self.table.sortItems(
            1 if validation else 0, Qt.SortOrder.DescendingOrder if validation else Qt.AscendingOrder
        )
        slide = self.session.current_slide
        self.spot_size.setValue((slide.spot_diameter_px or 10.0) * (slide.pixel_size_um or 1.0))
        self._filter(self.filter.text())
        self._new_layers = True  # they need the display settings once
        if self.session.gene in prediction.var_names:
            self.show_gene(self.session.gene)

    def _filter(self, text: str) -> None:
        text = text.strip().upper()
        for row in range(self.table.rowCount()):
            self.table.setRowHidden(row, bool(text) and text not in self.table.item(row, 0).text().upper())

    def _picked(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            gene = self.table.item(rows[0].row(), 0).text()
            if gene != self.session.gene:
                self.session.set_gene(gene)

    def show_gene(self, gene: str) -> None:
        """Colour both spot layers by ``gene`` on one scale (auto limits), rename them, update the title."""
        prediction = self.prediction
        if prediction is None or gene not in prediction.var_names:
            return
        values = self.shown_values(gene)
        shown = values[LayerKind.PREDICTED] if self.show_mode.currentText() == WIDTH else None
        low, high = shared_limits(shown) if shown is not None else shared_limits(*values.values())
        self.low.setValue(low)
        self.high.setValue(high)
        self.apply(display=self._new_layers)
        self._new_layers = False
        scores = [
            f"{label} {v:.2f}"
            for label, col in (
                ("validation PCC", "validation_pcc"),
                ("PCC here", "pcc"),
                ("interval width", "interval_width"),
                ("coverage here", "coverage"),
            )
            if np.isfinite(v := gene_scores(prediction, col).get(gene, np.nan))
        ]
        self.title.setText(
            f"<b>{gene}</b> — {self.session.current}" + (f" ({', '.join(scores)})" if scores else "")
        )
        matches = self.table.findItems(gene, Qt.MatchFlag.MatchExactly)
        if matches and not self.table.item(matches[0].row(), 0).isSelected():
            self.table.selectRow(matches[0].row())

    def auto_limits(self) -> None:
        if self.session.gene and self.prediction is not None:
            self.show_gene(self.session.gene)

    def shown_values(self, gene: str) -> dict:
        """Per spot layer kind, the values it shows of ``gene``: the predicted layer its value, or its
        interval's width (Show: interval width); the measured layer the measured values."""
        predicted, measured = gene_values(self.prediction, gene)
        if self.show_mode.currentText() == WIDTH:
            lower, upper = prediction_interval(self.prediction, genes=[gene])
            predicted = (upper - lower)[:, 0]
        return dict(zip(_GENE_KINDS, (predicted, measured), strict=True))

    def apply(self, display: bool = True) -> None:
        """Colour the current slide's spot layers by the gene on the set limits; with ``display`` also
        apply colormap, spot size and opacity (a gene switch leaves those as they are)."""
        gene, slide = self.session.gene, self.session.current_slide
        if gene is None or slide is None or self.prediction is None:
            return
        mode = self.show_mode.currentText()
        limits = (self.low.value(), max(self.high.value(), self.low.value() + 1e-6))
        values = self.shown_values(gene)
        for layer in self.gene_layers():
            kind = layer_info(layer)["kind"]
            own = limits if kind == LayerKind.PREDICTED or mode != WIDTH else shared_limits(values[kind])
            raster = isinstance(layer, Image)  # binned spots drawn as one pixel per bin
            if raster:
                layer.data = gene_raster(values[kind], layer_info(layer)["grid_index"])
                layer.contrast_limits = own
            elif kind == LayerKind.PREDICTED and mode != VALUE:
                self._colour_by_interval(layer, values[kind], own, mode)
            else:
                layer.face_color = gene
                layer.face_contrast_limits = own
            layer.name = layer_name(slide.slide_id, gene, kind) + (
                " (interval width)" if kind == LayerKind.PREDICTED and mode == WIDTH else ""
            )
            if display:
                colorbar = layer.colorbar if raster else layer.face_colorbar
                colorbar.visible = kind == LayerKind.PREDICTED
                layer.opacity = self.opacity.value() / 100
                if raster:
                    layer.colormap = self.colormap.currentText()
                else:
                    layer.face_colormap = self.colormap.currentText()
                    layer.size = self.spot_size.value() / (slide.pixel_size_um or 1.0)

    def _colour_by_interval(self, layer, values: np.ndarray, limits: tuple[float, float], mode: str) -> None:
        """Predicted spots coloured by their interval's width, or by their value with an opacity that
        falls from 1 (the gene's narrowest interval) to ``_FAINTEST`` (its widest)."""
        if mode == WIDTH:
            features = layer.features.copy()
            features[WIDTH] = values
            layer.features = features
            layer.face_color = WIDTH
            layer.face_contrast_limits = limits
            return
        lower, upper = prediction_interval(self.prediction, genes=[self.session.gene])
        width = (upper - lower)[:, 0]
        spread = max(float(np.ptp(width)), 1e-6)
        scaled = np.clip((values - limits[0]) / (limits[1] - limits[0]), 0, 1)
        colours = ensure_colormap(self.colormap.currentText()).map(scaled)
        colours[:, 3] = 1 - (1 - _FAINTEST) * (width - width.min()) / spread
        layer.face_color = colours
