"""Domains widget: tissue domains of the slide on show from its predicted (or measured) expression,
the spots coloured by domain with a legend; pick a domain → its differential expression against the
rest (or another domain) → the enrichment of its up genes in the user's gene sets; save the tables.

The work is the downstream flows (:mod:`napari_spahgc.downstream.flow`), run in a thread of napari's
process: they import no torch.
"""

from __future__ import annotations

import anndata as ad
import napari
import pandas as pd
from napari.layers import Layer
from napari.utils.notifications import show_info
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_spahgc._qt._common import PathField, RunPanel, SessionWidget, guarded, layer_info
from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_folder
from napari_spahgc.downstream.domains import DEFAULT_SPATIAL_WEIGHT, DomainOptions
from napari_spahgc.downstream.flow import (
    DomainsRequest,
    MarkersRequest,
    MarkersResult,
    domains,
    markers,
    write_markers,
)
from napari_spahgc.downstream.labels import score_line
from napari_spahgc.downstream.markers import DEFAULT_MIN_PCC, Comparison
from napari_spahgc.run.runners import InProcess
from napari_spahgc.view.figures import domain_colours
from napari_spahgc.view.layers import LayerKind, domain_layer

_SOURCES = {"predicted expression": None, "measured expression": "measured"}
_DE_COLUMNS = ("gene", "score", "log2_fold_change", "padj", "validation_pcc")
_SET_COLUMNS = ("set", "hits", "set_size", "ora_padj", "ulm_score")
_ROWS = 50  # rows of a table shown (the saved CSV has them all)


class DomainsWidget(SessionWidget):
    """Domains of the slide on show; a domain's markers and enriched gene sets."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.source = QComboBox()
        self.source.addItems(list(_SOURCES))
        self.n_domains = QSpinBox()
        self.n_domains.setRange(0, 50)
        self.n_domains.setSpecialValueText("Leiden (by resolution)")
        self.n_domains.setValue(0)
        self.resolution = _spin(0.05, 5.0, 1.0, 0.1)
        self.spatial_weight = _spin(0.0, 1.0, DEFAULT_SPATIAL_WEIGHT, 0.05)
        self.labels = PathField(
            "file", "Labels table", "Tables (*.csv *.tsv *.txt *.gz)", "optional: spot → label"
        )
        self.find = RunPanel("Find domains", self.run_domains)
        self.scores = QLabel("")
        self.scores.setWordWrap(True)
        self.legend = _table(("", "domain", "spots", "share"))
        self.legend.setMinimumHeight(200)  # about seven domains without scrolling
        self.legend.itemSelectionChanged.connect(self._on_pick)
        self.versus = QComboBox()
        self.min_pcc = _spin(-1.0, 1.0, DEFAULT_MIN_PCC, 0.05)
        self.gene_sets = PathField("file", "Gene sets", "GMT (*.gmt *.txt)", "optional: gene sets .gmt")
        self.compare = RunPanel("Find markers", self.run_markers)
        self.de_table, self.set_table = _table(_DE_COLUMNS), _table(_SET_COLUMNS)
        for table in (self.de_table, self.set_table):
            table.setMinimumHeight(150)
        self.folder = PathField("folder", "Save tables in", placeholder="folder for the CSV tables")
        save = QPushButton("Save tables")
        save.clicked.connect(guarded("Save tables", self.save_tables))
        form = QFormLayout()
        form.addRow("values", self.source)
        form.addRow("domains", self.n_domains)
        form.addRow("resolution", self.resolution)
        form.addRow("spatial weight", self.spatial_weight)
        form.addRow("labels", self.labels)
        compare = QFormLayout()
        compare.addRow("versus", self.versus)
        compare.addRow("min. validation PCC", self.min_pcc)
        compare.addRow("gene sets", self.gene_sets)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (self.find, self.scores, self.legend):
            layout.addWidget(widget)
        layout.addLayout(compare)
        for widget in (self.compare, QLabel("Differential expression"), self.de_table):
            layout.addWidget(widget)
        for widget in (QLabel("Gene sets"), self.set_table, self.folder, save):
            layout.addWidget(widget)
        self.found: tuple[Comparison, MarkersResult] | None = None  # the last markers shown
        self.session.current_changed.connect(self._clear)

    # --------------------------------------------------------------------------------- domains
    def run_domains(self) -> None:
        """Find the domains of the slide on show in a thread."""
        slide_id, prediction = self._prediction()
        layer = _SOURCES[self.source.currentText()]
        n_domains = self.n_domains.value() or None
        options = DomainOptions(n_domains, self.resolution.value(), self.spatial_weight.value())
        request = DomainsRequest(prediction, options, layer, self.labels.text or None)
        what = "measured" if layer else "predicted"
        self.find.start(
            lambda _cancel: InProcess().run(domains, request),
            "Domains",
            lambda result: self._show_domains(slide_id, result, what),
        )

    def _show_domains(self, slide_id: str, result, what: str) -> None:
        self.session.set_domains(slide_id, result.obs(), what)
        slide = self.session.slides[slide_id]
        for layer in [layer for layer in self.viewer.layers if _is_domains_of(layer, slide_id)]:
            self.viewer.layers.remove(layer)
        data, meta, layer_type = domain_layer(slide, result.domains, what)
        self.viewer.add_layer(Layer.create(data, meta, layer_type))
        self.scores.setText("; ".join(score_line(name, s) for name, s in result.scores.items()))
        colours = domain_colours(len(result.sizes))
        self.legend.setRowCount(len(result.sizes))
        for row, (domain, spots, share) in enumerate(result.sizes.itertuples(index=False)):
            swatch = QTableWidgetItem("")
            swatch.setBackground(QColor.fromRgbF(*map(float, colours[row])))
            self.legend.setItem(row, 0, swatch)
            for column, text in enumerate((domain, f"{spots:,}", f"{share:.1%}"), 1):
                self.legend.setItem(row, column, QTableWidgetItem(text))
        self.versus.clear()
        self.versus.addItems(["rest", *result.sizes["domain"]])
        self._fill(self.de_table, None, _DE_COLUMNS)
        self._fill(self.set_table, None, _SET_COLUMNS)

    # --------------------------------------------------------------------------------- markers
    def picked_domain(self) -> str | None:
        rows = self.legend.selectionModel().selectedRows() if self.legend.selectionModel() else []
        return self.legend.item(rows[0].row(), 1).text() if rows else None

    def _on_pick(self) -> None:
        if self.picked_domain() is not None and not self.compare.running:
            self.compare.run_button.click()

    def run_markers(self) -> None:
        """DE of the picked domain (and enrichment with a GMT) in a thread."""
        _, prediction = self._prediction()
        domain = self.picked_domain()
        if domain is None or "domain" not in prediction.obs:
            raise InputError("find domains first, then pick one in the legend")
        layer = _SOURCES[self.source.currentText()]
        min_pcc = None if self.min_pcc.value() <= -1 else self.min_pcc.value()
        comparison = Comparison(domain, self.versus.currentText() or "rest")
        view = ad.AnnData(
            X=prediction.X, obs=prediction.obs[["domain"]], var=prediction.var, layers=dict(prediction.layers)
        )  # shares the values: nothing copied
        request = MarkersRequest(view, comparison, layer, min_pcc, self.gene_sets.text or None)
        self.compare.start(
            lambda _cancel: InProcess().run(markers, request),
            f"Markers of domain {domain}",
            lambda result: self._show_markers(comparison, result),
        )

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables on show by the names they are saved under (empty before any markers)."""
        if self.found is None:
            return {}
        comparison, result = self.found
        tables = {f"de_{comparison.name}": result.de}
        if result.enrichment is not None:
            tables[f"enrichment_{comparison.name}"] = result.enrichment
        return tables

    def _show_markers(self, comparison: Comparison, result: MarkersResult) -> None:
        self.found = comparison, result
        self._fill(self.de_table, result.de, _DE_COLUMNS)
        self._fill(self.set_table, result.enrichment, _SET_COLUMNS)

    def _fill(self, table: QTableWidget, frame: pd.DataFrame | None, columns) -> None:
        rows = [] if frame is None else list(frame[list(columns)].head(_ROWS).itertuples(index=False))
        table.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                text = f"{value:.3g}" if isinstance(value, float) else str(value)
                table.setItem(row, column, QTableWidgetItem(text))

    def save_tables(self) -> None:
        """The DE and enrichment tables (and the enrichment plot) as ``spahgc markers`` writes them."""
        if self.found is None:
            raise InputError("find a domain's markers first")
        if not self.folder.text:
            raise InputError("choose a folder for the tables first")
        comparison, result = self.found
        folder = prepare_output_folder(self.folder.text)
        written = write_markers(folder, comparison, result.de, result.enrichment)
        show_info(f"saved {', '.join(written.values())}")

    # --------------------------------------------------------------------------------- helpers
    def _prediction(self) -> tuple[str, ad.AnnData]:
        slide = self.session.require_current()
        if slide.slide_id not in self.session.predictions:
            raise InputError(f"slide {slide.slide_id} has no predictions yet: run the Predict widget first")
        return slide.slide_id, self.session.predictions[slide.slide_id]

    def _clear(self, *_) -> None:
        self.scores.setText("")
        self.legend.setRowCount(0)
        self.found = None
        self._fill(self.de_table, None, _DE_COLUMNS)
        self._fill(self.set_table, None, _SET_COLUMNS)


def _is_domains_of(layer: Layer, slide_id: str) -> bool:
    info = layer_info(layer)
    return info.get("slide_id") == slide_id and info.get("kind") == LayerKind.DOMAINS


def _spin(low: float, high: float, value: float, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(2)
    spin.setValue(value)
    return spin


def _table(columns) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    return table
