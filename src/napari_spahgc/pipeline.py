"""Train a SpaHGC model on a cohort and write predictions: the steps the CLI and the widgets share.

Embeddings are passed in (one (n_spots, d) array per slide id), so the same functions serve cached
embeddings from the CLI and embeddings computed in a napari worker. The ``*_flow`` generators (and
:func:`~napari_spahgc.embedding.embed_flow`) are the widgets' long jobs: they yield
:class:`~napari_spahgc.progress.Progress` and return plain data (arrays, AnnData, paths), so they run
in a worker process (:mod:`napari_spahgc.child`) and torch never enters the viewer's process.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData

from ._device import resolve_device
from ._files import slide_file
from .dataset import fold_data, slide_data
from .errors import InputError
from .io.export import blockwise_pcc, measured_values, spot_anndata, stream_h5ad
from .options import SpaHGCConfig
from .patches import PatchSpec
from .predictor import ModelMetadata, SpaHGCPredictor
from .progress import Progress, run_to_end
from .slide import Slide
from .trainer import Trainer


def make_trainer(
    slides: Sequence[Slide],
    embeddings: Mapping[str, np.ndarray],
    panel: Sequence[str] | None = None,
    n_hvg: int | None = None,
    encoder: Mapping | None = None,
    patch: Mapping | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str = "default",
    **options,
) -> Trainer:
    """A :class:`Trainer` on ``slides`` (all need counts); genes from ``panel`` or ``n_hvg`` chosen on
    these slides only; the ensemble members choose their epochs on held-out training slides."""
    missing = [s.slide_id for s in slides if s.expression is None]
    if missing:
        raise InputError(f"training slides need measured counts; none for {', '.join(missing)}")
    genes, data, _ = fold_data(slides, embeddings, panel, n_hvg)
    config = SpaHGCConfig.from_options(options, preset=preset, seed=seed, device=device)
    metadata = ModelMetadata(
        genes=genes,
        embedding_dim=int(data[0].embeddings.shape[1]),
        encoder=dict(encoder or {}),
        patch=dict(patch or {}),
        preprocessing={
            "normalize": "counts / spot total × 1e6, log1p",
            "genes": "panel" if panel is not None else f"top {n_hvg} HVGs per training slide, intersected",
        },
    )
    return Trainer(data, genes, config, metadata)


def predict_slide(model: SpaHGCPredictor, slide: Slide, embeddings: np.ndarray, device: str = "cpu"):
    """Predictions of one slide as AnnData: X = predicted log1p-CPM on the model's genes; with counts,
    ``layers['measured']`` (same preprocessing, NaN for genes the slide lacks; sparse CSR on large slides
    with sparse counts) and ``var['pcc']``. X is the model's float32 output, not copied."""
    return prediction_anndata(model, slide, model.predict(slide_data(slide, embeddings, None), device=device))


def predict_slide_steps(
    model: SpaHGCPredictor, slide: Slide, embeddings: np.ndarray, device: str = "cpu"
) -> Generator[Progress, None, AnnData]:
    """:func:`predict_slide` yielding progress block by block (stop iterating to cancel)."""
    prediction = yield from model.predict_steps(slide_data(slide, embeddings, None), device=device)
    return prediction_anndata(model, slide, prediction)


def prediction_anndata(model: SpaHGCPredictor, slide: Slide, prediction: np.ndarray | None) -> AnnData:
    """The AnnData of :func:`predict_slide` around a computed prediction (None: without X, and
    without ``var['pcc']``, for :func:`write_prediction_steps` to stream in)."""
    layers = {}
    if slide.expression is not None:
        layers["measured"] = _measured(slide, model.genes)
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


def write_prediction_steps(
    model: SpaHGCPredictor, slide: Slide, embeddings: np.ndarray, path: str | Path, device: str = "cpu"
) -> Generator[Progress, None, Path]:
    """:func:`predict_slide` written to ``path`` as it is computed: every block of predictions goes
    straight into the file's X, so no slide-sized prediction is held in memory (a Visium HD slide's is
    2.2 GB); ``var['pcc']`` is then computed from the file in row blocks. Stop iterating to cancel
    (no file is left)."""
    adata = prediction_anndata(model, slide, None)
    with stream_h5ad(adata, path) as x:
        yield from model.predict_steps(slide_data(slide, embeddings, None), device=device, out=x)
        if "measured" in adata.layers:
            adata.var["pcc"] = blockwise_pcc(adata.layers["measured"], x).astype(np.float32)
    return Path(path)


def write_predictions(
    model: SpaHGCPredictor,
    slides: Sequence[Slide],
    embeddings: Mapping[str, np.ndarray],
    out_dir: str | Path,
    device: str = "cpu",
) -> list[Path]:
    """One ``SLIDE_ID.h5ad`` per slide in ``out_dir`` (:func:`write_prediction_steps`)."""
    out_dir = Path(out_dir)
    return [
        run_to_end(
            write_prediction_steps(
                model, s, embeddings[s.slide_id], slide_file(out_dir, s.slide_id, ".h5ad"), device
            )
        )
        for s in slides
    ]


def _measured(slide: Slide, genes: Sequence[str]):
    """Measured log1p-CPM on ``genes`` (NaN for genes the slide lacks): dense, or a sparse CSR matrix
    for large slides with sparse counts (Visium HD bins; :func:`~napari_spahgc.io.export.measured_values`)."""
    return measured_values(slide.expression, list(genes))


def train_predict_flow(
    slides: Sequence[Slide],
    target: Slide,
    embeddings: Mapping[str, np.ndarray],
    panel: Sequence[str] | None,
    n_hvg: int | None,
    encoder: Mapping,
    epochs: int,
    seed: int,
    device: str,
    save_to: str | Path | None,
    preset: str = "default",
) -> Generator[Progress, None, tuple[str | None, AnnData]]:
    """Train on ``slides`` (``preset``, at most ``epochs``; yielding epochs), save the model to
    ``save_to`` when given, predict ``target``; return (the model folder or None, the prediction)."""
    yield Progress(0, epochs, "building graphs")
    trainer = make_trainer(
        slides, embeddings, panel=panel, n_hvg=n_hvg, encoder=encoder, patch=PatchSpec().to_dict(),
        seed=seed, device=device, preset=preset, epochs=epochs,
    )  # fmt: skip
    for p in trainer.steps():
        score = "" if p.validation_pcc is None else f", validation PCC {p.validation_pcc:.3f}"
        yield Progress(p.epoch, epochs, f"epoch {p.epoch}/{epochs}: loss {p.loss:.3f}{score}")
    model = trainer.result
    folder = str(model.save(save_to)) if save_to else None
    yield Progress(epochs, epochs, f"predicting {target.slide_id}")
    device = str(resolve_device(device))
    return folder, (yield from predict_slide_steps(model, target, embeddings[target.slide_id], device))


def load_predict_flow(
    folder: str | Path, target: Slide, embeddings: np.ndarray, encoder: Mapping, device: str
) -> Generator[Progress, None, tuple[str, AnnData]]:
    """Load the model folder, check it was trained on ``encoder``'s embeddings, predict ``target``."""
    yield Progress(0, 1, f"loading {Path(folder).name}")
    model = SpaHGCPredictor.load(folder)
    model.check_embeddings(encoder)
    yield Progress(0, 1, f"predicting {target.slide_id}")
    return str(folder), (
        yield from predict_slide_steps(model, target, embeddings, str(resolve_device(device)))
    )
