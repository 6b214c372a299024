"""The training stage's one flow: a :class:`TrainRequest` in, a :class:`TrainResult` out.

Genes are chosen on the training slides only; the ensemble members choose their epochs on held-out
training slides (:mod:`napari_spahgc.train.model_selection`). This is the one place that drives
:meth:`~napari_spahgc.train.trainer.Trainer.steps`: the CLI's ``train``, the Predict widget (through
the prediction flow), the demo and the benchmark's SpaHGC methods all train here. The module imports
no torch (requests are made in napari's process); the work imports it when it runs.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_folder
from napari_spahgc.base.progress import Progress
from napari_spahgc.embed.flow import Embeddings, EmbedRequest, embeddings_for
from napari_spahgc.io.expression import GeneChoice
from napari_spahgc.io.slide import Slide
from napari_spahgc.model.config import SpaHGCConfig
from napari_spahgc.model.slide_data import fold_data

if TYPE_CHECKING:  # torch: the requests are made in napari's process, which never imports it
    from napari_spahgc.model.predictor import SpaHGCPredictor
    from napari_spahgc.train.trainer import Trainer


@dataclass(frozen=True)
class TrainRequest:
    """Train SpaHGC (``config``) on ``slides`` (each with counts) with their ``embeddings`` (or embedded
    now, through the cache), on the ``genes`` chosen on these slides; write the model folder to ``out``
    when given."""

    slides: Sequence[Slide]
    embeddings: Embeddings | EmbedRequest
    genes: GeneChoice
    config: SpaHGCConfig = field(default_factory=SpaHGCConfig)
    out: str | Path | None = None


@dataclass(frozen=True)
class TrainResult:
    """The trained model, its folder when the request named one, and the members' predictions of
    their own held-out training slides (slide id → spots × genes; the benchmark's inner validation of
    what it chooses after training, e.g. the tissue-domain settings)."""

    model: SpaHGCPredictor
    folder: str | None = None
    held_out: dict[str, np.ndarray] = field(default_factory=dict)


def train(request: TrainRequest) -> Generator[Progress, None, TrainResult]:
    """Embed when asked, train (yielding every epoch: ``values`` loss, validation_pcc, member_pcc), save.
    Stop iterating to cancel: nothing is written."""
    missing = [s.slide_id for s in request.slides if s.expression is None]
    if missing:
        raise InputError(f"training slides need measured counts; none for {', '.join(missing)}")
    if request.out is not None:  # before training, so no run is lost at its end
        prepare_output_folder(request.out, "model folder")
    embeddings = yield from embeddings_for(request.embeddings)
    epochs = request.config.train.epochs
    yield Progress(0, epochs, "building graphs", "train")
    trainer = _trainer(request, embeddings)
    del embeddings  # the trainer holds its own table of them: embedded ones go before training
    yield from trainer.steps()
    model = trainer.result
    folder = str(model.save(request.out)) if request.out is not None else None
    return TrainResult(model, folder, trainer.held_out_predictions)


def _trainer(request: TrainRequest, embeddings: Embeddings) -> Trainer:
    """The trainer of the request's slides, on its genes, with the provenance a model folder records."""
    from napari_spahgc.model.predictor import ModelMetadata
    from napari_spahgc.train.trainer import Trainer

    genes, data, _ = fold_data(request.slides, embeddings, request.genes)
    metadata = ModelMetadata(
        genes=genes,
        embedding_dim=int(data[0].embeddings.shape[1]),
        encoder=embeddings.info,
        patch=dict(embeddings.patch),
        preprocessing={"normalize": "counts / spot total × 1e6, log1p", "genes": request.genes.describe()},
        reference_images={s.slide_id: _image_record(s) for s in request.slides},
    )
    return Trainer(data, genes, request.config, metadata)


def _image_record(slide: Slide) -> dict:
    """Where a training slide's image file is (absolute; "" when it has none of its own) and its
    pixel size: what the model folder records to show reference patches later."""
    path = getattr(slide.image, "reopen_from", None)
    return {"image": str(Path(path).resolve()) if path else "", "pixel_size_um": slide.pixel_size_um}
