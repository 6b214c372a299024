"""The plugin's dock widgets: Slide, Embed, Predict, Genes, Export.

Each widget is a view of the viewer's :class:`~napari_spahgc.session.Session`; heavy work (embedding,
training, prediction) runs the Qt-free core's flows in a worker process driven from a generator worker
(:class:`RunPanel`), so torch is never imported into napari's process; the result is stored in the
session from the GUI thread, which then updates the layers (:class:`LayerSync`).
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._files import cache_dir
from ..child import run_in_child
from ..errors import InputError
from ..layers import MEASURED, PREDICTED, gene_raster, gene_values, layer_name, shared_limits
from ..progress import Progress
from ..session import gene_scores
from ._common import PathField, RunPanel, layer_info, session_for

DEVICES = ("auto", "cpu", "cuda")
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "gray")


class _SessionWidget(QWidget):
    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer, self.session = napari_viewer, session_for(napari_viewer)


# ------------------------------------------------------------------------------------------- Slide
class SlideWidget(_SessionWidget):
    """Open slides (cohort table, Space Ranger outs/, h5ad, or image + spot table) and pick the one shown."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.source = PathField(
            "file", "Cohort table, h5ad or spot table", "Spatial data (*.csv *.h5ad *.tsv *.gz *.parquet);;All (*)",
            "cohort .csv, .h5ad, spot table, or an outs/ folder",
        )  # fmt: skip
        self.image = PathField("file", "H&E image (with a spot table)", placeholder="optional: H&E image")
        self.panel = RunPanel("Open", self._open)
        self.slides = QComboBox()
        self.pixel_size = QDoubleSpinBox(decimals=4, minimum=0.0, maximum=100.0, singleStep=0.01)
        self.pixel_size.setSuffix(" µm/px")
        self.pixel_source, self.counts = QLabel(""), QLabel("")
        self.apply_pixel = QPushButton("Set pixel size")
        form = QFormLayout()
        form.addRow("Open", self.source)
        form.addRow("Image", self.image)
        form.addRow(self.panel)
        form.addRow("Slide", self.slides)
        form.addRow("Pixel size", self.pixel_size)
        form.addRow("", self.apply_pixel)
        form.addRow("Source", self.pixel_source)
        form.addRow("Spots / genes", self.counts)
        self.setLayout(form)
        self.slides.currentTextChanged.connect(self._choose)
        self.apply_pixel.clicked.connect(self._set_pixel_size)
        self.session.slides_changed.connect(self._refresh)
        self.session.current_changed.connect(self._describe)
        self._refresh()

    def open(self, path: str | Path, image: str | Path | None = None):
        """Open ``path`` (and ``image``) in a worker; the slides join the session when read."""
        from ..io.cohort import is_cohort_table, open_slides, read_cohort

        path, image = Path(path), Path(image) if image else None

        def work(_cancel):  # light reading, in the thread (between slides, Cancel stops it)
            if path.suffix.lower() == ".csv" and image is None and is_cohort_table(path):
                entries = read_cohort(path)
                slides = []
                for index, entry in enumerate(entries):
                    yield Progress(index, len(entries), f"reading {entry.slide_id}")
                    slides.append(entry.load())
                yield Progress(len(entries), len(entries), "")
                return slides
            yield Progress(0, 1, f"reading {path.name}")
            return open_slides(path, image)

        return self.panel.start(work, "Opening slides", self.session.add_slides)

    def _open(self) -> None:
        if not self.source.text:
            show_error("Choose a cohort table, an h5ad, a spot table or an outs/ folder to open.")
            return
        self.open(self.source.text, self.image.text or None)

    def _refresh(self) -> None:
        self.slides.blockSignals(True)
        self.slides.clear()
        self.slides.addItems(list(self.session.slides))
        if self.session.current:
            self.slides.setCurrentText(self.session.current)
        self.slides.blockSignals(False)
        self._describe(self.session.current)

    def _choose(self, slide_id: str) -> None:
        if slide_id and slide_id != self.session.current:
            self.session.set_current(slide_id)

    def _describe(self, slide_id: str | None) -> None:
        slide = self.session.slides.get(slide_id) if slide_id else None
        if slide_id and self.slides.currentText() != slide_id:
            self.slides.setCurrentText(slide_id)
        known = slide is not None and slide.pixel_size_um is not None
        self.pixel_size.setValue(slide.pixel_size_um if known else 0.0)
        self.pixel_size.setEnabled(slide is not None and not known)
        self.apply_pixel.setEnabled(slide is not None and not known)
        self.pixel_source.setText(
            ""
            if slide is None
            else slide.pixel_size_source or "unknown: enter the µm per full-resolution pixel"
        )
        self.counts.setText("" if slide is None else f"{slide.n_spots} spots, {slide.n_genes} genes measured")

    def _set_pixel_size(self) -> None:
        if self.session.current and self.pixel_size.value() > 0:
            self.session.set_pixel_size(self.session.current, self.pixel_size.value())


# ------------------------------------------------------------------------------------------- Embed
class EmbedWidget(_SessionWidget):
    """Embed every loaded slide's spot patches with an encoder (cached per slide; Cancel between batches)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        from ..encoders import DEFAULT_ENCODER, list_encoders  # the registry only: no torch

        self.encoder = QComboBox()
        self.encoder.addItems(list_encoders())
        self.encoder.setCurrentText(DEFAULT_ENCODER)
        self.weights = PathField(
            "file", "Encoder weights", "Weights (*.bin *.safetensors *.pth *.pt)", "UNI: pytorch_model.bin"
        )
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.batch_size = QSpinBox(minimum=1, maximum=4096, value=64)
        self.cache = PathField("folder", "Embedding cache folder")
        self.cache.set_text(str(cache_dir("embeddings")))
        self.panel = RunPanel("Embed slides", self.run)
        form = QFormLayout()
        form.addRow("Encoder", self.encoder)
        form.addRow("Weights", self.weights)
        form.addRow("Device", self.device)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Cache", self.cache)
        form.addRow(self.panel)
        self.setLayout(form)
        self.encoder.currentTextChanged.connect(self._encoder_changed)
        self._encoder_changed(self.encoder.currentText())

    def _encoder_changed(self, name: str) -> None:
        from ..encoders import REGISTRY

        self.weights.setEnabled(REGISTRY[name].takes_weights_file)

    def run(self):
        """Embed all loaded slides in a worker process; the embeddings join the session when every
        slide is done."""
        from ..embedding import load_embeddings

        slides = list(self.session.slides.values())
        if not slides:
            show_error("Open slides first (Slide widget).")
            return None
        settings = (self.encoder.currentText(), self.weights.text or None, self.device.currentText(),
                    self.batch_size.value(), self.cache.text)  # fmt: skip

        def work(cancel):
            encoder, paths = yield from run_in_child(
                "napari_spahgc.pipeline:embed_flow", slides, *settings, cancel=cancel
            )
            return encoder, {slide_id: load_embeddings(path)[0] for slide_id, path in paths.items()}

        return self.panel.start(work, "Embedding", lambda result: self.session.set_embeddings(*result))


# ----------------------------------------------------------------------------------------- Predict
class PredictWidget(_SessionWidget):
    """Predict the shown slide: with a trained model folder, or training one on reference slides."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.train_mode, self.load_mode = (
            QRadioButton("Train on reference slides"),
            QRadioButton("Model folder"),
        )
        self.train_mode.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.train_mode)
        group.addButton(self.load_mode)
        self.model_dir = PathField("folder", "Trained model folder")
        self.references = QListWidget()
        self.references.setMaximumHeight(110)
        self.genes = PathField(
            "file", "Gene panel (one name per line)", placeholder="gene panel file (optional)"
        )
        self.n_hvg = QSpinBox(minimum=10, maximum=5000, value=300)
        self.epochs = QSpinBox(minimum=1, maximum=2000, value=200)
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.save_to = PathField("folder", "Save the trained model to", placeholder="optional: save model")
        self.panel = RunPanel("Predict", self.run)
        form = QFormLayout()
        form.addRow(self.train_mode)
        form.addRow("References", self.references)
        form.addRow("Genes", self.genes)
        form.addRow("or top HVGs", self.n_hvg)
        form.addRow("Epochs", self.epochs)
        form.addRow("Seed", self.seed)
        form.addRow("Save model", self.save_to)
        form.addRow(self.load_mode)
        form.addRow("Model", self.model_dir)
        form.addRow("Device", self.device)
        form.addRow(self.panel)
        self.setLayout(form)
        self.session.slides_changed.connect(self._list_references)
        self.session.current_changed.connect(self._list_references)
        self._list_references()

    def _list_references(self, *_) -> None:
        self.references.clear()
        for slide_id, slide in self.session.slides.items():
            if slide.has_expression and slide_id != self.session.current:
                item = QListWidgetItem(slide_id)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked)
                self.references.addItem(item)

    def reference_ids(self) -> list[str]:
        items = (self.references.item(i) for i in range(self.references.count()))
        return [item.text() for item in items if item.checkState() == Qt.CheckState.Checked]

    def run(self):
        """Predict the current slide in a worker process (training first in train mode)."""
        try:
            work = self._train_work() if self.train_mode.isChecked() else self._load_work()
        except InputError as err:
            show_error(str(err))
            return None
        return self.panel.start(work, "Predicting", self._done)

    def _done(self, result) -> None:
        """Show the prediction; a saved model folder becomes the one "Model folder" mode uses."""
        folder, slide_id, prediction = result
        if folder:
            self.model_dir.set_text(folder)
        self.session.set_prediction(slide_id, prediction)

    def _target(self):
        target = self.session.require_current()
        if target.slide_id not in self.session.embeddings:
            raise InputError(f"slide {target.slide_id} has no embeddings yet: run the Embed widget first")
        return target

    def _train_work(self):
        from ..expression import read_gene_panel

        target, references = self._target(), self.reference_ids()
        if not references:
            raise InputError("tick at least one reference slide with measured counts")
        missing = self.session.missing_embeddings(references)
        if missing:
            raise InputError(f"reference slide(s) {', '.join(missing)} have no embeddings: run Embed first")
        panel = read_gene_panel(self.genes.text) if self.genes.text else None
        slides = [self.session.slides[s] for s in references]
        embeddings = {s: self.session.embeddings[s] for s in (*references, target.slide_id)}
        arguments = (slides, target, embeddings, panel, None if panel else self.n_hvg.value(),
                     dict(self.session.encoder or {}), self.epochs.value(), self.seed.value(),
                     self.device.currentText(), self.save_to.text or None)  # fmt: skip
        return _in_child("napari_spahgc.pipeline:train_predict_flow", target.slide_id, *arguments)

    def _load_work(self):
        target = self._target()
        if not self.model_dir.text:
            raise InputError("choose a trained model folder (written by 'spahgc train' or this widget)")
        arguments = (self.model_dir.text, target, self.session.embeddings[target.slide_id],
                     dict(self.session.encoder or {}), self.device.currentText())  # fmt: skip
        return _in_child("napari_spahgc.pipeline:load_predict_flow", target.slide_id, *arguments)


def _in_child(flow: str, slide_id: str, *arguments):
    """Work for :class:`RunPanel`: ``flow`` in a worker process, its (model folder, prediction) result
    returned as (model folder, ``slide_id``, prediction)."""

    def work(cancel):
        folder, prediction = yield from run_in_child(flow, *arguments, cancel=cancel)
        return folder, slide_id, prediction

    return work


# ------------------------------------------------------------------------------------------- Genes
class GenesWidget(_SessionWidget):
    """Pick the gene shown by the predicted and measured spot layers; colour scale and spot display."""

    COLUMNS = ("gene", "validation PCC", "PCC here")

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
            if layer_info(layer).get("slide_id") == slide_id
            and layer_info(layer).get("kind") in (PREDICTED, MEASURED)
        ]

    def _prediction_changed(self, *_) -> None:
        prediction = self.prediction
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        if prediction is None:
            return
        validation, here = gene_scores(prediction, "validation_pcc"), gene_scores(prediction, "pcc")
        self.table.setRowCount(prediction.n_vars)
        for row, gene in enumerate(map(str, prediction.var_names)):
            self.table.setItem(row, 0, QTableWidgetItem(gene))
            for column, scores in ((1, validation), (2, here)):
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
        low, high = shared_limits(*gene_values(prediction, gene))
        self.low.setValue(low)
        self.high.setValue(high)
        self.apply(display=self._new_layers)
        self._new_layers = False
        scores = [f"{label} {v:.2f}" for label, col in (("validation PCC", "validation_pcc"), ("PCC here", "pcc"))
                  if np.isfinite(v := gene_scores(prediction, col).get(gene, np.nan))]  # fmt: skip
        self.title.setText(
            f"<b>{gene}</b> — {self.session.current}" + (f" ({', '.join(scores)})" if scores else "")
        )
        matches = self.table.findItems(gene, Qt.MatchFlag.MatchExactly)
        if matches and not self.table.item(matches[0].row(), 0).isSelected():
            self.table.selectRow(matches[0].row())

    def auto_limits(self) -> None:
        if self.session.gene and self.prediction is not None:
            self.show_gene(self.session.gene)

    def apply(self, display: bool = True) -> None:
        """Colour the current slide's spot layers by the gene on the set limits; with ``display`` also
        apply colormap, spot size and opacity (a gene switch leaves those as they are)."""
        gene, slide = self.session.gene, self.session.current_slide
        if gene is None or slide is None or self.prediction is None:
            return
        limits = (self.low.value(), max(self.high.value(), self.low.value() + 1e-6))
        values = dict(zip((PREDICTED, MEASURED), gene_values(self.prediction, gene), strict=True))
        for layer in self.gene_layers():
            kind = layer_info(layer)["kind"]
            raster = isinstance(layer, Image)  # binned spots drawn as one pixel per bin
            if raster:
                layer.data = gene_raster(values[kind], layer_info(layer)["grid_index"])
                layer.contrast_limits = limits
            else:
                layer.face_color = gene
                layer.face_contrast_limits = limits
            layer.name = layer_name(slide.slide_id, gene, kind)
            if display:
                colorbar = layer.colorbar if raster else layer.face_colorbar
                colorbar.visible = kind == PREDICTED
                layer.opacity = self.opacity.value() / 100
                if raster:
                    layer.colormap = self.colormap.currentText()
                else:
                    layer.face_colormap = self.colormap.currentText()
                    layer.size = self.spot_size.value() / (slide.pixel_size_um or 1.0)


# ------------------------------------------------------------------------------------------ Export
class ExportWidget(_SessionWidget):
    """Save the shown slide's predictions as h5ad, and a PNG of the current gene view."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.h5ad = PathField("save", "Save predictions", "AnnData (*.h5ad)", "predictions .h5ad")
        self.png = PathField("save", "Save view", "PNG (*.png)", "view .png")
        save_h5ad, save_png = QPushButton("Save predictions"), QPushButton("Save PNG of the view")
        save_h5ad.clicked.connect(lambda: self._guarded(self.export_h5ad, self.h5ad.text))
        save_png.clicked.connect(lambda: self._guarded(self.export_png, self.png.text))
        form = QFormLayout()
        form.addRow("h5ad", self.h5ad)
        form.addRow(save_h5ad)
        form.addRow("PNG", self.png)
        form.addRow(save_png)
        self.setLayout(form)

    def _guarded(self, action, path: str) -> None:
        try:
            if not path:
                raise InputError("choose a file name first")
            show_info(f"saved {action(path)}")
        except (InputError, OSError) as err:
            show_error(f"Export failed: {err}")

    def export_h5ad(self, path: str | Path) -> Path:
        """Write the current slide's predictions (the ``spahgc predict`` format) to ``path``."""
        from ..io.export import write_h5ad

        slide_id = self.session.current
        if slide_id not in self.session.predictions:
            raise InputError(f"slide {slide_id} has no predictions yet: run the Predict widget first")
        return write_h5ad(self.session.predictions[slide_id], Path(path))

    def export_png(self, path: str | Path) -> Path:
        """A PNG of the canvas as shown (predicted | measured, colorbar)."""
        from PIL import Image

        from .._files import atomic_path

        path = Path(path).with_suffix(".png")
        pixels = self.viewer.screenshot(canvas_only=True, flash=False)
        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        return path
