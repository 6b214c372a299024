"""Embed widget: every loaded slide's spots through an encoder, per spot or densely, in a worker process."""

from __future__ import annotations

import napari
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFormLayout, QLineEdit, QSpinBox

from napari_spahgc._qt._common import DEVICES, PathField, RunPanel, SessionWidget
from napari_spahgc.base.files import cache_dir, prepare_output_folder
from napari_spahgc.embed.encoders import (  # torch-free: torch loads only to build
    DEFAULT_ENCODER,
    REGISTRY,
    list_encoders,
)
from napari_spahgc.embed.flow import EmbedRequest, embed
from napari_spahgc.run.runners import DaskCluster, WorkerProcess

#: The Mode choices, the default first: (label, the embedding request's mode, what it means).
MODES = (
    ("dense", "dense", "one encoder pass per tissue tile, spot fields averaged: cost follows the tissue"),
    ("per-spot", "spot", "one 224 px patch per spot through the encoder: its cost grows with the spots"),
)


def mode_box() -> QComboBox:
    """The Mode combo box: dense (the default) / per-spot, each with its meaning as tooltip."""
    box = QComboBox()
    for index, (label, mode, meaning) in enumerate(MODES):
        box.addItem(label, mode)
        box.setItemData(index, meaning, Qt.ItemDataRole.ToolTipRole)
    box.currentIndexChanged.connect(lambda i: box.setToolTip(box.itemData(i, Qt.ItemDataRole.ToolTipRole)))
    box.setToolTip(MODES[0][2])
    return box


class EmbedWidget(SessionWidget):
    """Embed every loaded slide's spot patches with an encoder (cached per slide; Cancel between batches)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.encoder = QComboBox()
        self.encoder.addItems(list_encoders())
        self.encoder.setCurrentText(DEFAULT_ENCODER)
        self.weights = PathField(
            "file", "Encoder weights", "Weights (*.bin *.safetensors *.pth *.pt)", "UNI: pytorch_model.bin"
        )
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.batch_size = QSpinBox(minimum=1, maximum=4096, value=64)
        self.mode = mode_box()
        self.cache = PathField("folder", "Embedding cache folder")
        self.cache.set_text(str(cache_dir("embeddings")))
        self.scheduler = QLineEdit()
        self.scheduler.setPlaceholderText("optional: tcp://host:8786 (one task per slide)")
        self.panel = RunPanel("Embed slides", self.run)
        form = QFormLayout()
        form.addRow("Encoder", self.encoder)
        form.addRow("Weights", self.weights)
        form.addRow("Device", self.device)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Mode", self.mode)
        form.addRow("Cache", self.cache)
        form.addRow("Dask scheduler", self.scheduler)
        form.addRow(self.panel)
        self.setLayout(form)
        self.encoder.currentTextChanged.connect(self._encoder_changed)
        self._encoder_changed(self.encoder.currentText())

    def _encoder_changed(self, name: str) -> None:
        self.weights.setEnabled(REGISTRY[name].takes_weights_file)

    def run(self):
        """Embed all loaded slides in a worker process, in the chosen mode (or, with a scheduler address,
        one task per slide on that Dask cluster); the embeddings join the session when every slide is
        done."""
        slides = list(self.session.slides.values())
        if not slides:
            show_error("Open slides first (Slide widget).")
            return None
        scheduler, mode = self.scheduler.text().strip(), self.mode.currentData()
        weights = (self.weights.text or None) if self.weights.isEnabled() else None  # packaged: ships its own
        prepare_output_folder(self.cache.text, "cache folder")
        request = EmbedRequest(
            slides,
            self.encoder.currentText(),
            weights,
            self.device.currentText(),
            self.batch_size.value(),
            self.cache.text,
            mode,
        )

        def work(cancel):
            runner = DaskCluster(scheduler, cancel=cancel) if scheduler else WorkerProcess(cancel)
            return (yield from runner.run(embed, request))

        return self.panel.start(work, "Embedding", self.session.set_embeddings)
