"""Slide widget: open slides (cohort table, Space Ranger outs/, h5ad, or image + spot table) and pick the one shown."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import napari
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from napari_spahgc._qt._common import PathField, RunPanel, SessionWidget, guarded
from napari_spahgc.base.progress import Progress
from napari_spahgc.io.slide import PLAUSIBLE_UM_PER_PX


class SlideWidget(SessionWidget):
    """Open slides (cohort table, Space Ranger outs/, h5ad, or image + spot table) and pick the one shown."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.source = PathField(
            "file",
            "Cohort table, h5ad or spot table",
            "Spatial data (*.csv *.h5ad *.tsv *.gz *.parquet);;All (*)",
            "cohort .csv, .h5ad, spot table, outs/ folder or .zarr store",
        )
        self.image = PathField("file", "H&E image (with a spot table)", placeholder="optional: H&E image")
        self.panel = RunPanel("Open", self._open)
        self.slides = QComboBox()
        self.pixel_size = QDoubleSpinBox(
            decimals=4, minimum=0.0, maximum=PLAUSIBLE_UM_PER_PX[1], singleStep=0.01
        )
        self.pixel_size.setSuffix(" µm/px")
        self.pixel_source, self.counts = QLabel(""), QLabel("")
        self.apply_pixel = QPushButton("Set pixel size")
        self.bins_per_side = QSpinBox(minimum=2, maximum=32, value=2)
        self.bins_per_side.setPrefix("× ")
        self.bins_per_side.setToolTip("Bins per side of a square: 8 µm bins × 2 are 16 µm squares")
        self.aggregate = QPushButton("Add aggregated slide")
        self.aggregate.setToolTip(
            "Sum the shown slide's Visium HD bins into coarser squares, as a new slide "
            "(e.g. 16 µm reference slides train faster)"
        )
        aggregation = QHBoxLayout()
        aggregation.addWidget(self.bins_per_side)
        aggregation.addWidget(self.aggregate)
        form = QFormLayout()
        form.addRow("Open", self.source)
        form.addRow("Image", self.image)
        form.addRow(self.panel)
        form.addRow("Slide", self.slides)
        form.addRow("Pixel size", self.pixel_size)
        form.addRow("", self.apply_pixel)
        form.addRow("Source", self.pixel_source)
        form.addRow("Spots / genes", self.counts)
        form.addRow("Aggregate bins", aggregation)
        self.setLayout(form)
        self.slides.currentTextChanged.connect(self._choose)
        self.apply_pixel.clicked.connect(guarded("Pixel size", self._set_pixel_size))
        self.aggregate.clicked.connect(guarded("Aggregate bins", self.aggregate_bins))
        self.session.slides_changed.connect(self._refresh)
        self.session.current_changed.connect(self._describe)
        self._refresh()

    def open(self, path: str | Path, image: str | Path | None = None):
        """Open ``path`` (and ``image``) in a worker; the slides join the session when read."""
        from napari_spahgc.io.cohort import is_cohort_table, open_slides, read_cohort

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

    def aggregate_bins(self):
        """Add the shown slide's bins summed into squares of ``bins_per_side`` × their side as a new
        slide, ``{slide id}_{side}um``, summed in a thread (a slide that is not bins on one grid: a
        notification)."""
        from napari_spahgc.io.bins import aggregate_bins, side_name

        slide, factor = self.session.require_current(), self.bins_per_side.value()

        def work(_cancel):
            yield Progress(0, 1, f"summing the bins of {slide.slide_id} into {factor} × {factor} squares")
            coarse = aggregate_bins(slide, factor)
            return [replace(coarse, slide_id=f"{slide.slide_id}_{side_name(slide, factor)}")]

        return self.panel.start(work, "Aggregating bins", self.session.add_slides)

    def _open(self) -> None:
        if not self.source.text:
            show_error(
                "Choose a cohort table, an h5ad, a spot table, an outs/ folder or a .zarr store to open."
            )
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
        self.aggregate.setEnabled(slide is not None)
        self.pixel_source.setText(
            ""
            if slide is None
            else slide.pixel_size_source or "unknown: enter the µm per full-resolution pixel"
        )
        self.counts.setText("" if slide is None else f"{slide.n_spots} spots, {slide.n_genes} genes measured")

    def _set_pixel_size(self) -> None:
        if self.session.current and self.pixel_size.value() > 0:
            self.session.set_pixel_size(self.session.current, self.pixel_size.value())
