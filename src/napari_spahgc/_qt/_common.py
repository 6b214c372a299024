"""What every widget shares: the session of a viewer, the layer sync, and a Run/Cancel progress panel."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Layer
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_spahgc.base.errors import describe
from napari_spahgc.base.progress import Progress
from napari_spahgc.view.layers import METADATA_KEY, LayerKind, prediction_layers, slide_layers
from napari_spahgc.view.session import Session

_SESSIONS: dict[int, tuple[Session, LayerSync]] = {}


def session_for(viewer: napari.Viewer) -> Session:
    """The one :class:`Session` of ``viewer`` (made on first use, with its layer sync).

    napari hands plugin widgets a proxy of the viewer; the session belongs to the viewer behind it.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    if key not in _SESSIONS:
        session = Session()
        _SESSIONS[key] = (session, LayerSync(viewer, session))
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return _SESSIONS[key][0]


def layer_info(layer: Layer) -> dict:
    return layer.metadata.get(METADATA_KEY, {}) if isinstance(layer.metadata, dict) else {}


def notify_failure(action: str, error: Exception) -> str:
    """Show "``action`` failed: reason" as an error notification; return that message."""
    message = f"{action} failed: {describe(error)}"
    show_error(message)
    return message


def guarded(action: str, handler: Callable[[], object]) -> Callable[[], None]:
    """``handler`` for a button: an exception becomes a notification instead of reaching Qt's event loop."""

    def call() -> None:
        try:
            handler()
        except Exception as err:
            notify_failure(action, err)

    return call


class _CarriedRuntimeError(Exception):
    """A RuntimeError of a worker's work, as ``__cause__``: napari's workers would only warn about it."""


def _carrying_runtime_errors(work: Callable[[threading.Event], Generator]) -> Callable:
    def carried(cancel: threading.Event) -> Generator:
        try:
            return (yield from work(cancel))
        except RuntimeError as err:
            raise _CarriedRuntimeError(describe(err)) from err

    return carried


class LayerSync:
    """Keeps the viewer's layers in step with the session: slides, the slide on show, predictions."""

    def __init__(self, viewer: napari.Viewer, session: Session) -> None:
        self.viewer, self.session = viewer, session
        session.slides_changed.connect(self._add_new_slides)
        session.current_changed.connect(self._show_current)
        session.prediction_changed.connect(self._show_prediction)
        self._adopt(list(viewer.layers))
        viewer.layers.events.inserted.connect(lambda event: self._adopt([event.value]))
        viewer.mouse_drag_callbacks.append(self._picked)

    def _picked(self, _viewer, event) -> None:
        """A click on a spot of the slide on show, predicted or measured beside it, picks that spot."""
        slide_id = self.session.current
        prediction = self.session.predictions.get(slide_id) if slide_id else None
        if prediction is None or event.button != 1:
            return
        kinds = (LayerKind.PREDICTED, LayerKind.MEASURED_BESIDE_PREDICTION)
        for layer in self.layers_of(slide_id, *kinds):
            row = spot_under(layer, event.position) if layer.visible else None
            if row is not None:
                self.session.set_spot(str(prediction.obs_names[row]))
                return

    def _adopt(self, layers: list[Layer]) -> None:
        """Slides whose layers came from elsewhere (File ▸ Open, sample data) join the session."""
        new = {}
        for layer in layers:
            slide = layer_info(layer).get("slide")
            if slide is not None and slide.slide_id not in self.session.slides:
                new.setdefault(slide.slide_id, slide)
        if new:
            self.session.add_slides(new.values())

    def layers_of(self, slide_id: str, *kinds: LayerKind) -> list[Layer]:
        return [
            layer
            for layer in self.viewer.layers
            if layer_info(layer).get("slide_id") == slide_id
            and (not kinds or layer_info(layer)["kind"] in kinds)
        ]

    def _add_new_slides(self) -> None:
        shown = {layer_info(layer).get("slide_id") for layer in self.viewer.layers}
        for slide_id, slide in self.session.slides.items():
            if slide_id not in shown:
                for data, meta, layer_type in slide_layers(slide, visible=slide_id == self.session.current):
                    self.viewer.add_layer(Layer.create(data, meta, layer_type))

    def _show_current(self, slide_id: str | None) -> None:
        for layer in self.viewer.layers:
            owner = layer_info(layer).get("slide_id")
            if owner is not None:
                layer.visible = owner == slide_id
        if slide_id in self.session.predictions:
            self._hide_plain_spots(slide_id)
        if slide_id is not None:
            self.viewer.reset_view()

    def _show_prediction(self, slide_id: str) -> None:
        slide, prediction = self.session.slides[slide_id], self.session.predictions[slide_id]
        made = (LayerKind.PREDICTED, LayerKind.MEASURED_BESIDE_PREDICTION, LayerKind.IMAGE_BESIDE_PREDICTION)
        for layer in self.layers_of(slide_id, *made):
            self.viewer.layers.remove(layer)
        gene = (
            self.session.gene if self.session.gene in prediction.var_names else str(prediction.var_names[0])
        )
        for data, meta, layer_type in prediction_layers(slide, prediction, gene):
            meta["visible"] = slide_id == self.session.current
            self.viewer.add_layer(Layer.create(data, meta, layer_type))
        self._hide_plain_spots(slide_id)
        if slide_id == self.session.current:
            self.viewer.reset_view()

    def _hide_plain_spots(self, slide_id: str) -> None:
        for layer in self.layers_of(slide_id, LayerKind.MEASURED, LayerKind.SPOTS):
            layer.visible = False


def spot_under(layer: Layer, position) -> int | None:
    """The row of the spot under a world ``position`` in a spot layer: the point there, or the bin of
    a raster of binned spots; None where there is none."""
    if isinstance(layer, Image):
        row, col = np.round(np.asarray(layer.world_to_data(position))[-2:]).astype(int)
        found = np.flatnonzero((layer_info(layer)["grid_index"] == (row, col)).all(axis=1))
        return int(found[0]) if len(found) else None
    value = layer.get_value(position, world=True)
    return None if value is None else int(value)


class RunPanel(QWidget):
    """Run and Cancel buttons, a progress bar with counts and a status line for one generator worker.

    The work runs in a :func:`napari.qt.threading.create_worker` thread (heavy work there drives a
    worker process, :func:`napari_spahgc.run.worker.run_in_child`); Cancel sets the event handed to the work
    and stops the thread between two yields; errors of the Run handler, of the work (a crashed worker
    process included) and of ``on_done`` become napari notifications (the viewer never sees the
    exception), and so do the work's warnings (:attr:`Progress.warning`); a napari progress bar in the
    activity dock mirrors the counts.
    """

    def __init__(self, run_text: str, on_run: Callable[[], None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_button, self.cancel_button = QPushButton(run_text), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar, self.status = QProgressBar(), QLabel("")
        self.bar.setFormat("%v / %m")
        self.status.setWordWrap(True)
        self.worker: GeneratorWorker | None = None
        self._cancel = threading.Event()
        self._napari_bar: progress | None = None
        self.run_button.clicked.connect(guarded(run_text, on_run))
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        work: Callable[[threading.Event], Generator[Progress, None, Any]],
        label: str,
        on_done: Callable[[Any], None],
    ) -> GeneratorWorker:
        """Run ``work(cancel)`` in a thread; ``cancel`` is set when the user cancels; ``on_done(result)``
        runs in the GUI thread when it completes."""
        if self.worker is not None:
            raise RuntimeError("a run is already in progress")
        self.label, self._cancel = label, threading.Event()
        self.status.setText(f"{label}…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        # errors are not raised in the GUI thread: _on_error turns them into notifications
        worker = create_worker(
            _carrying_runtime_errors(work), self._cancel, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(self._on_step)
        worker.returned.connect(lambda result: self._on_returned(result, on_done))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self.status.setText(f"{label}: cancelled"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.status.setText(f"{self.label}: cancelling after the current batch…")
            self._cancel.set()
            self.worker.quit()

    def _on_step(self, step: Progress) -> None:
        if step.warning:  # e.g. a long per-spot embedding, announced before it starts
            show_warning(f"{self.label}: {step.warning}")
        self.bar.setMaximum(max(step.total, 1))
        self.bar.setValue(step.done)
        if step.text:
            self.status.setText(step.text)
        if self._napari_bar is None or self._napari_bar.total != step.total:
            self._close_napari_bar()
            self._napari_bar = progress(total=step.total, desc=self.label)
        self._napari_bar.update(step.done - self._napari_bar.n)

    def _on_returned(self, result: Any, on_done: Callable[[Any], None]) -> None:
        try:
            on_done(result)
        except Exception as err:  # the result cannot be shown: a failure like any other
            self._on_error(err)
            return
        self.status.setText(f"{self.label}: done")

    def _on_error(self, error: Exception) -> None:
        if isinstance(error, _CarriedRuntimeError):
            error = error.__cause__
        self.status.setText(notify_failure(self.label, error))

    def _on_finished(self) -> None:
        self.worker = None
        self._close_napari_bar()
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _close_napari_bar(self) -> None:
        if self._napari_bar is not None:
            self._napari_bar.close()
            self._napari_bar = None


class PathField(QWidget):
    """A line edit with a Browse… button (file, save file or folder)."""

    def __init__(
        self, mode: str = "file", caption: str = "", filter: str = "", placeholder: str = ""
    ) -> None:
        super().__init__()
        self.mode, self.caption, self.filter = mode, caption, filter
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        layout.addWidget(browse)

    @property
    def text(self) -> str:
        return self.edit.text().strip()

    def set_text(self, value: str) -> None:
        self.edit.setText(value)

    def _browse(self) -> None:
        if self.mode == "folder":
            chosen = QFileDialog.getExistingDirectory(self, self.caption)
        elif self.mode == "save":
            chosen, _ = QFileDialog.getSaveFileName(self, self.caption, self.text, self.filter)
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, self.caption, self.text, self.filter)
        if chosen:
            self.edit.setText(chosen)


DEVICES = ("auto", "cpu", "cuda")


class SessionWidget(QWidget):
    """A dock widget of the viewer's session (one per viewer, shared by every widget)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer, self.session = napari_viewer, session_for(napari_viewer)
