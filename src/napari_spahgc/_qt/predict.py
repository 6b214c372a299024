"""Predict widget: train SpaHGC on reference slides or load a model folder, and predict the shown slide."""

from __future__ import annotations

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QListWidget,
    QListWidgetItem,
    QRadioButton,
    QSpinBox,
)

from napari_spahgc._qt._common import DEVICES, PathField, RunPanel, SessionWidget
from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_folder
from napari_spahgc.io.expression import GeneChoice
from napari_spahgc.model.config import PRESETS, SpaHGCConfig
from napari_spahgc.predict.flow import PredictRequest, predict
from napari_spahgc.run.runners import WorkerProcess
from napari_spahgc.train.flow import TrainRequest


class PredictWidget(SessionWidget):
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
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setToolTip("default: our cross-validated ensemble; paper: the published configuration")
        self.epochs = QSpinBox(minimum=1, maximum=2000, value=SpaHGCConfig().train.epochs)
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
        form.addRow("Preset", self.preset)
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
        """Predict the current slide in a worker process (training first in train mode); bad input raises
        (the Predict button makes that a notification)."""
        work = self._train_work() if self.train_mode.isChecked() else self._load_work()
        return self.panel.start(work, "Predicting", self._done)

    def _done(self, result) -> None:
        """Show the prediction; a saved model folder becomes the one "Model folder" mode uses."""
        slide_id, predicted = result
        if predicted.model_folder:
            self.model_dir.set_text(predicted.model_folder)
        self.session.set_prediction(slide_id, predicted.predictions[slide_id])

    def _target(self):
        target = self.session.require_current()
        if target.slide_id not in self.session.embeddings:
            raise InputError(f"slide {target.slide_id} has no embeddings yet: run the Embed widget first")
        return target

    def _train_work(self):
        target, references = self._target(), self.reference_ids()
        if not references:
            raise InputError("tick at least one reference slide with measured counts")
        missing = self.session.missing_embeddings(references)
        if missing:
            raise InputError(f"reference slide(s) {', '.join(missing)} have no embeddings: run Embed first")
        genes = (
            GeneChoice.from_file(self.genes.text) if self.genes.text else GeneChoice(n_hvg=self.n_hvg.value())
        )
        config = SpaHGCConfig.from_options(
            {"epochs": self.epochs.value()},
            self.preset.currentText(),
            seed=self.seed.value(),
            device=self.device.currentText(),
        )
        if self.save_to.text:  # before any work starts, so no training is lost at its end
            prepare_output_folder(self.save_to.text, "model folder")
        embeddings = self.session.embeddings.only([*references, target.slide_id])
        slides = [self.session.slides[s] for s in references]
        training = TrainRequest(slides, embeddings, genes, config, self.save_to.text or None)
        return _in_worker(PredictRequest(training, [target], embeddings, device=self.device.currentText()))

    def _load_work(self):
        target = self._target()
        if not self.model_dir.text:
            raise InputError("choose a trained model folder (written by 'spahgc train' or this widget)")
        embeddings = self.session.embeddings.only([target.slide_id])
        return _in_worker(
            PredictRequest(self.model_dir.text, [target], embeddings, device=self.device.currentText())
        )


def _in_worker(request: PredictRequest):
    """Work for :class:`RunPanel`: the prediction flow in a worker process, returning (the slide id,
    its :class:`~napari_spahgc.predict.flow.PredictResult`)."""

    def work(cancel):
        result = yield from WorkerProcess(cancel).run(predict, request)
        return request.slides[0].slide_id, result

    return work
