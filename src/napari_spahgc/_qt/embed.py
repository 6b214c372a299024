"""Embed widget: embed every loaded slide's spot patches with an encoder, in a worker process."""

from __future__ import annotations

import napari
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QFormLayout, QLineEdit, QSpinBox

from .._files import cache_dir, prepare_output_folder
from ..child import run_in_child
from ..embedding import load_embeddings
from ..encoders import DEFAULT_ENCODER, REGISTRY, list_encoders  # torch-free: torch loads only to build
from ._common import DEVICES, PathField, RunPanel, SessionWidget


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
        form.addRow("Cache", self.cache)
        form.addRow("Dask scheduler", self.scheduler)
        form.addRow(self.panel)
        self.setLayout(form)
        self.encoder.currentTextChanged.connect(self._encoder_changed)
        self._encoder_changed(self.encoder.currentText())

    def _encoder_changed(self, name: str) -> None:
        self.weights.setEnabled(REGISTRY[name].takes_weights_file)

    def run(self):
        """Embed all loaded slides in a worker process (or, with a scheduler address, one task per slide
        on that Dask cluster); the embeddings join the session when every slide is done."""
        slides = list(self.session.slides.values())
        if not slides:
            show_error("Open slides first (Slide widget).")
            return None
        weights = (self.weights.text or None) if self.weights.isEnabled() else None  # packaged: ships its own
        prepare_output_folder(self.cache.text, "cache folder")
        settings = (self.encoder.currentText(), weights, self.device.currentText(), self.batch_size.value(),
                    self.cache.text)  # fmt: skip
        scheduler = self.scheduler.text().strip()

        def work(cancel):
            if scheduler:
                from ..cluster import EmbedSettings, embed_flow_on_cluster

                flow = embed_flow_on_cluster(slides, EmbedSettings(*settings), scheduler, cancel)
            else:
                flow = run_in_child("napari_spahgc.embedding:embed_flow", slides, *settings, cancel=cancel)
            encoder, paths = yield from flow
            return encoder, {slide_id: load_embeddings(path)[0] for slide_id, path in paths.items()}

        return self.panel.start(work, "Embedding", lambda result: self.session.set_embeddings(*result))
