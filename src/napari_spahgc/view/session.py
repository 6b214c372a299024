"""What the widgets of one viewer share (Qt-free, torch-free): slides, embeddings and predictions.

The widgets are views of a :class:`Session`: they change it through its methods and redraw when its
signals fire, so every widget sees the same state whichever one changed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from psygnal import Signal

from napari_spahgc.base.errors import InputError
from napari_spahgc.io.slide import Slide, check_pixel_size
from napari_spahgc.view.figures import best_genes


class Session:
    """Loaded slides, the slide on show, embeddings of one encoder, predictions, the gene on show
    and the spot picked on the canvas (whose prediction the Why panel explains).

    The models live in their folders (training and prediction run in a worker process); the session
    holds only plain data: the embeddings (an :class:`~napari_spahgc.embed.flow.Embeddings` of cache
    files, read by the worker process that needs them) and AnnData.
    """

    slides_changed = Signal()
    current_changed = Signal(object)  # slide id or None
    prediction_changed = Signal(str)  # slide id
    gene_changed = Signal(str)
    spot_changed = Signal(object)  # spot id or None
    domains_changed = Signal(str, str)  # slide id, what was clustered ("predicted" or "measured")

    def __init__(self) -> None:
        self.slides: dict[str, Slide] = {}
        self.current: str | None = None
        self.embeddings: Mapping[str, np.ndarray] = {}
        self.predictions: dict[str, AnnData] = {}
        self.gene: str | None = None
        self.spot: str | None = None

    # ------------------------------------------------------------------------------------ slides
    def add_slides(self, slides: Iterable[Slide]) -> None:
        """Add (or replace, by slide id) slides; what was derived from a replaced slide is dropped."""
        slides = list(slides)
        for slide in slides:
            self.slides[slide.slide_id] = slide
            self._drop_embeddings(slide.slide_id)
            self.predictions.pop(slide.slide_id, None)
        self.slides_changed.emit()
        if slides and (self.current is None or self.current in {s.slide_id for s in slides}):
            self.set_current(slides[0].slide_id)

    def set_current(self, slide_id: str | None) -> None:
        if slide_id is not None and slide_id not in self.slides:
            raise InputError(f"no slide {slide_id!r} is loaded")
        self.current = slide_id
        self.current_changed.emit(slide_id)
        self.set_spot(None)

    @property
    def current_slide(self) -> Slide | None:
        return self.slides.get(self.current) if self.current is not None else None

    def require_current(self) -> Slide:
        if self.current_slide is None:
            raise InputError("no slide is loaded: open a cohort table, an outs/ folder or an h5ad first")
        return self.current_slide

    def set_pixel_size(self, slide_id: str, microns_per_pixel: float) -> None:
        """The user's pixel size for a slide that had none (embeddings made at another scale are dropped)."""
        slide = self.slides[slide_id]
        size = check_pixel_size(float(microns_per_pixel), f"entered for slide {slide_id!r}")
        slide.pixel_size_um, slide.pixel_size_source = size, "entered by the user"
        self._drop_embeddings(slide_id)
        self.slides_changed.emit()

    # -------------------------------------------------------------------------------- embeddings
    def set_embeddings(self, embeddings) -> None:
        """The embedding flow's :class:`~napari_spahgc.embed.flow.Embeddings`; another encoder (or other
        weights, or the other mode) replaces all earlier ones, the same one adds its slides."""
        if getattr(self.embeddings, "info", None) == embeddings.info:
            embeddings = type(embeddings).merge([self.embeddings, embeddings])
        self.embeddings = embeddings

    def _drop_embeddings(self, slide_id: str) -> None:
        if slide_id in self.embeddings:
            self.embeddings = self.embeddings.only([s for s in self.embeddings if s != slide_id])

    def missing_embeddings(self, slide_ids: Sequence[str]) -> list[str]:
        return [s for s in slide_ids if s not in self.embeddings]

    # ------------------------------------------------------------------------------- predictions
    def set_prediction(self, slide_id: str, prediction: AnnData) -> None:
        self.predictions[slide_id] = prediction
        self.prediction_changed.emit(slide_id)
        if self.gene not in prediction.var_names:
            self.set_gene(default_gene(prediction))

    def set_domains(self, slide_id: str, columns: pd.DataFrame, what: str) -> None:
        """Domains of a predicted slide: ``columns`` (``domain``, maybe ``domain_measured``) go into its
        predictions' obs, so the Export widget writes them; ``what`` was clustered."""
        prediction = self.predictions[slide_id]
        prediction.obs = prediction.obs.drop(columns=["domain", "domain_measured"], errors="ignore")
        for name, values in columns.items():
            prediction.obs[name] = values.reindex(prediction.obs_names)
        self.domains_changed.emit(slide_id, what)

    def set_gene(self, gene: str) -> None:
        self.gene = gene
        self.gene_changed.emit(gene)

    def set_spot(self, spot: str | None) -> None:
        """The spot of the slide on show picked on the canvas (None: none)."""
        self.spot = spot
        self.spot_changed.emit(spot)


def default_gene(prediction: AnnData) -> str:
    """The gene shown first: the best cross-validated one when the model knows, else the first."""
    return best_genes(prediction, 1, by="validation_pcc")[0]


def gene_scores(prediction: AnnData, column: str) -> dict[str, float]:
    """``{gene: value}`` of a ``var`` column (``validation_pcc`` or ``pcc``); empty when absent."""
    if column not in prediction.var:
        return {}
    return dict(zip(map(str, prediction.var_names), prediction.var[column].astype(float), strict=True))
