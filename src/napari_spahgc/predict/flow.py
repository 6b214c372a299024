"""The prediction stage's one flow: a :class:`PredictRequest` in, a :class:`PredictResult` out.

A slide's predictions are an AnnData: X = predicted log1p(CPM) on the model's genes, ``obsm['spatial']``,
provenance, ``var['validation_pcc']`` (the members' held-out PCC per gene), each spot's uncertainty
and references and the per-gene interval quantiles (:mod:`napari_spahgc.io.intervals`, read back by
:func:`~napari_spahgc.io.intervals.prediction_interval`) and, when the slide has counts,
``layers['measured']`` (same preprocessing) and ``var['pcc']``. With an output folder each
slide's predictions are written block by block straight into ``SLIDE_ID.h5ad`` (no slide-sized
prediction in memory: a Visium HD slide's is 2.2 GB) or, with ``format="zarr"``, into a SpatialData
store ``SLIDE_ID.zarr`` (through a temporary h5ad); without one they are returned in memory.

The model is a folder (loaded once per process and folder version: a Dask worker keeps it for its later
tasks), a model in memory, or a :class:`~napari_spahgc.train.flow.TrainRequest` trained first (the
Predict widget's "train on reference slides"). This is the one place that checks embeddings against
the model that will read them. The module imports no torch (requests are made in napari's process).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from napari_spahgc.base.conformal import DEFAULT_LEVEL, check_level
from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_folder, slide_file
from napari_spahgc.base.progress import Progress
from napari_spahgc.embed.cache import MODES
from napari_spahgc.embed.flow import Embeddings, EmbedRequest, embeddings_for
from napari_spahgc.io.export import blockwise_pcc, measured_values, spot_anndata, stream_h5ad
from napari_spahgc.io.slide import Slide
from napari_spahgc.model.slide_data import slide_data
from napari_spahgc.train.flow import TrainRequest, train

if TYPE_CHECKING:  # torch: the requests are made in napari's process, which never imports it
    from napari_spahgc.model.predictor import SpaHGCPredictor


@dataclass(frozen=True)
class PredictRequest:
    """Predict ``slides`` with ``model`` (a model folder, a model, or a training request) from their
    ``embeddings`` (or embedded now, in the model's own mode unless the request names one); write one
    ``SLIDE_ID.h5ad`` per slide into ``out`` when given. ``level``: the prediction intervals' level
    (the files hold every level from 0.50 to 0.99 in steps of 0.01 besides)."""

    model: str | Path | SpaHGCPredictor | TrainRequest
    slides: Sequence[Slide]
    embeddings: Embeddings | EmbedRequest
    out: str | Path | None = None
    device: str = "auto"
    level: float = DEFAULT_LEVEL
    #: ``h5ad`` or ``zarr`` (a SpatialData store per slide: :mod:`napari_spahgc.io.spatialdata`)
    format: str = "h5ad"
    #: a store holds the slide's H&E as a multiscale image
    with_image: bool = True
    #: how a store draws binned spots: ``auto`` (a labels raster), ``raster`` or ``squares``
    bins: str = "auto"

    def for_slides(self, slides: Sequence[Slide]) -> PredictRequest:
        """The same request for other slides (one task a slide on a cluster)."""
        source = self.embeddings
        ids = [s.slide_id for s in slides]
        embeddings = source.for_slides(slides) if isinstance(source, EmbedRequest) else source.only(ids)
        return replace(self, slides=list(slides), embeddings=embeddings)

    def finished(self) -> PredictResult:
        """Nothing is skipped: every slide is predicted again."""
        return PredictResult()


@dataclass(frozen=True)
class PredictResult:
    """Each slide's predictions (in memory), or the file they were written to; and the model folder
    (the one trained when the request trained one and saved it)."""

    predictions: dict[str, AnnData] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    model_folder: str | None = None

    @classmethod
    def merge(cls, parts: Sequence[PredictResult]) -> PredictResult:
        """One result of per-slide results (a cluster's tasks)."""
        folder = next((p.model_folder for p in parts if p.model_folder), None)
        merged = cls(model_folder=folder)
        for part in parts:
            merged.predictions.update(part.predictions)
            merged.files.update(part.files)
        return merged


def predict(request: PredictRequest) -> Generator[Progress, None, PredictResult]:
    """Get the model, embed when asked, check the embeddings fit the model, predict every slide
    (yielding blocks) with its uncertainty and intervals. Stop iterating to cancel: no output file is
    left."""
    level = check_level(request.level)
    check_output_format(request.format, request.bins)
    if request.out is not None:
        prepare_output_folder(request.out)
    model, folder = yield from _model(request.model)
    source = request.embeddings
    if isinstance(source, EmbedRequest) and source.mode is None:  # no mode asked for: the model's own
        recorded = model.metadata.encoder.get("embedding_mode")  # {slide: mode} if mixed: the default
        source = replace(source, mode=recorded if recorded in MODES else None)
    embeddings = yield from embeddings_for(source)
    model.check_embeddings(embeddings.info)
    if model.calibration is None:
        yield Progress(0, 1, "no intervals", "predict", warning=NO_INTERVALS)
    result = PredictResult(model_folder=folder)
    for slide in request.slides:
        data = slide_data(slide, embeddings[slide.slide_id], None)
        if request.out is None:
            predicted = yield from model.predict_steps(data, device=request.device)
            adata = prediction_anndata(model, slide, predicted.values)
            model.annotate(adata, predicted, level)
            result.predictions[slide.slide_id] = adata
        else:
            path = slide_file(request.out, slide.slide_id, f".{request.format}")
            with _predictions_file(request, slide, path) as h5ad:
                adata = prediction_anndata(model, slide, None)
                with stream_h5ad(adata, h5ad) as x:
                    predicted = yield from model.predict_steps(data, device=request.device, out=x)
                    if "measured" in adata.layers:
                        adata.var["pcc"] = blockwise_pcc(adata.layers["measured"], x).astype(np.float32)
                    model.annotate(adata, predicted, level)
            result.files[slide.slide_id] = str(path)
    return result


OUTPUT_FORMATS = ("h5ad", "zarr")


def check_output_format(output_format: str, bins: str = "auto") -> None:
    """An unknown output format or way of drawing bins is an error before any work."""
    from napari_spahgc.io.spatialdata import check_bins

    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    check_bins(bins)


@contextmanager
def _predictions_file(request: PredictRequest, slide: Slide, path: Path) -> Iterator[Path]:
    """Where the predictions stream to: ``path`` itself (h5ad), or a temporary h5ad beside it that
    becomes the store ``path`` (zarr) when the block succeeds and is removed in any case."""
    if request.format == "h5ad":
        yield path
        return
    from napari_spahgc.io.spatialdata import write_predictions_store

    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        h5ad = Path(folder) / "predictions.h5ad"
        yield h5ad
        image = slide.image if request.with_image else None
        write_predictions_store(h5ad, path, image=image, bins=request.bins)


NO_INTERVALS = (
    "this model has no calibration for prediction intervals (saved before intervals existed, or "
    "trained without held-out slides): predicting without intervals"
)


def _model(source) -> Generator[Progress, None, tuple[SpaHGCPredictor, str | None]]:
    """(model, its folder) of a request: loaded, given, or trained now."""
    if isinstance(source, TrainRequest):
        trained = yield from train(source)
        return trained.model, trained.folder
    if not isinstance(source, (str, Path)):  # a model in memory
        return source, None if source.folder is None else str(source.folder)
    folder = Path(source)
    yield Progress(0, 1, f"loading {folder.name}", "predict")
    return load_model(folder), str(folder)


def load_model(folder: str | Path) -> SpaHGCPredictor:
    """A model folder, loaded once per process for as long as it is not rewritten."""
    config = Path(folder) / "config.json"
    return _loaded(str(folder), config.stat().st_mtime_ns if config.is_file() else 0)


@functools.lru_cache(maxsize=2)
def _loaded(folder: str, _config_mtime_ns: int) -> SpaHGCPredictor:
    from napari_spahgc.model.predictor import SpaHGCPredictor

    return SpaHGCPredictor.load(folder)


def prediction_anndata(model: SpaHGCPredictor, slide: Slide, prediction: np.ndarray | None) -> AnnData:
    """A slide's predictions as AnnData around a computed prediction (None: without X, and without
    ``var['pcc']``, for the flow to stream in). X is the model's float32 output, not copied."""
    layers = {}
    if slide.expression is not None:
        # NaN for genes the slide lacks; sparse CSR on large slides with sparse counts (Visium HD bins)
        layers["measured"] = measured_values(slide.expression, list(model.genes))
    adata = spot_anndata(
        slide,
        prediction,
        model.genes,
        layers=layers,
        provenance={
            "kind": "SpaHGC prediction",
            "units": "log1p(counts / spot total × 1e6)",
            "encoder": model.metadata.encoder,
            "patch": model.metadata.patch,
            "training_slides": model.metadata.training_slides,
            "validation": {k: v for k, v in model.metadata.validation.items() if k != "gene_pcc"},
        },
    )
    validation_pcc = model.metadata.validation.get("gene_pcc")
    if validation_pcc is not None:
        adata.var["validation_pcc"] = np.array(
            [np.nan if v is None else v for v in validation_pcc], np.float32
        )
    if "measured" in layers and prediction is not None:
        adata.var["pcc"] = blockwise_pcc(layers["measured"], adata.X).astype(np.float32)
    return adata
