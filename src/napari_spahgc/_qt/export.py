"""Export widget: the shown slide's predictions as h5ad or a SpatialData store, and a PNG of the view."""

from __future__ import annotations

from pathlib import Path

import napari
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QFormLayout, QPushButton

from napari_spahgc._qt._common import PathField, SessionWidget, notify_failure
from napari_spahgc.base.errors import InputError


class ExportWidget(SessionWidget):
    """Save the shown slide's predictions as h5ad or as a SpatialData store (``.zarr``: the H&E when
    "with the H&E" is ticked, the spots or bins, the predictions as the table), and a PNG of the view."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.h5ad = PathField(
            "save",
            "Save predictions",
            "AnnData (*.h5ad);;SpatialData store (*.zarr)",
            "predictions .h5ad or .zarr",
        )
        self.with_image = QCheckBox("with the H&&E (.zarr)")  # "&&": a lone "&" marks a shortcut key in Qt
        self.with_image.setChecked(True)
        self.png = PathField("save", "Save view", "PNG (*.png)", "view .png")
        save_h5ad, save_png = QPushButton("Save predictions"), QPushButton("Save PNG of the view")
        save_h5ad.clicked.connect(lambda: self._guarded(self.export_predictions, self.h5ad.text))
        save_png.clicked.connect(lambda: self._guarded(self.export_png, self.png.text))
        form = QFormLayout()
        form.addRow("predictions", self.h5ad)
        form.addRow(self.with_image)
        form.addRow(save_h5ad)
        form.addRow("PNG", self.png)
        form.addRow(save_png)
        self.setLayout(form)

    def _guarded(self, action, path: str) -> None:
        try:
            if not path:
                raise InputError("choose a file name first")
            show_info(f"saved {action(path)}")
        except Exception as err:  # bad file names and failed writes alike
            notify_failure("Export", err)

    def export_predictions(self, path: str | Path) -> Path:
        """Write the current slide's predictions to ``path``, as ``spahgc predict`` does: ``.zarr`` a
        SpatialData store (with the slide's H&E when ticked), anything else an h5ad."""
        slide_id = self.session.current
        if slide_id not in self.session.predictions:
            raise InputError(f"slide {slide_id} has no predictions yet: run the Predict widget first")
        adata, path = self.session.predictions[slide_id], Path(path)
        if path.suffix.lower() != ".zarr":
            from napari_spahgc.io.export import write_h5ad

            return write_h5ad(adata, path)
        from napari_spahgc.io.spatialdata import to_spatialdata, write_spatialdata

        image = self.session.slides[slide_id].image if self.with_image.isChecked() else None
        return write_spatialdata(to_spatialdata(adata, image=image), path)

    def export_png(self, path: str | Path) -> Path:
        """A PNG of the canvas as shown (predicted | measured, colorbar)."""
        from PIL import Image

        from napari_spahgc.base.files import atomic_path

        path = Path(path).with_suffix(".png")
        pixels = self.viewer.screenshot(canvas_only=True, flash=False)
        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        return path
