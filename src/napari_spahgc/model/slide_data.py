"""Per-slide arrays that every model and baseline consumes: embeddings, coordinates, expression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from napari_spahgc.io.expression import GeneChoice, log_cpm
from napari_spahgc.io.slide import Slide


@dataclass
class SlideData:
    """One slide for modelling.

    ``embeddings`` (n, d) float32 patch embeddings; ``coords`` (n, 2) full-resolution pixel centres
    (x, y); ``expression`` (n, g) float32 log1p-CPM on the model's genes, or None for a slide to predict.
    """

    slide_id: str
    spot_ids: np.ndarray
    embeddings: np.ndarray
    coords: np.ndarray
    expression: np.ndarray | None = None
    patient: str | None = None

    @property
    def n_spots(self) -> int:
        return len(self.spot_ids)

    def subset(self, rows: np.ndarray) -> SlideData:
        """The same slide restricted to spots ``rows``."""
        expression = None if self.expression is None else self.expression[rows]
        return replace(
            self,
            spot_ids=self.spot_ids[rows],
            embeddings=self.embeddings[rows],
            coords=self.coords[rows],
            expression=expression,
        )

    def standardised(self, scale: FeatureScale) -> SlideData:
        """A copy with embeddings standardised by ``scale``."""
        return replace(self, embeddings=scale.transform(self.embeddings))


@dataclass
class FeatureScale:
    """Per-column standardisation z = (x − mean) / sd, fitted on training slides only: of the
    expression (the network's targets and the references' expression features) and of the patch
    embeddings (every spot's image features, before retrieval and the network)."""

    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def fit(cls, slides: Sequence[SlideData], field: str = "expression") -> FeatureScale:
        """The mean and sd of ``field`` over every spot of ``slides``, accumulated ``_FIT_ROWS`` rows at a
        time in float64 (Chan et al.'s pairwise update; no concatenated copy of the slides)."""
        count, mean, squares = 0, 0.0, 0.0
        for slide in slides:
            values = getattr(slide, field)
            for start in range(0, len(values), _FIT_ROWS):
                block = np.asarray(values[start : start + _FIT_ROWS], dtype=np.float64)
                n, block_mean = len(block), block.mean(axis=0)
                delta = block_mean - mean
                squares = (
                    squares + ((block - block_mean) ** 2).sum(axis=0) + delta**2 * count * n / (count + n)
                )
                mean, count = mean + delta * n / (count + n), count + n
        sd = np.sqrt(squares / count)
        return cls(np.asarray(mean, np.float32), np.where(sd > 1e-6, sd, 1.0).astype(np.float32))

    @classmethod
    def identity(cls, columns: int) -> FeatureScale:
        return cls(np.zeros(columns, dtype=np.float32), np.ones(columns, dtype=np.float32))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.sd).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return (values * self.sd + self.mean).astype(np.float32)


_FIT_ROWS = 1 << 14  # rows a scale is accumulated over at a time


def _is_half(values) -> bool:
    return isinstance(values, np.ndarray) and values.dtype == np.float16


def slide_data(slide: Slide, embeddings: np.ndarray, genes: Sequence[str] | None) -> SlideData:
    """Arrays of ``slide`` on ``genes`` (expression left out when the slide has no counts or no genes).
    Embeddings stay float16 when they are (dense ones: half the memory), else become float32; the
    expression takes the embeddings' float type (a Visium HD slide's log1p-CPM in float16: half of
    2.2 GB for 700,000 bins × 785 genes)."""
    if len(embeddings) != slide.n_spots:
        raise ValueError(f"{slide.slide_id}: {len(embeddings)} embeddings for {slide.n_spots} spots")
    dtype = np.float16 if _is_half(embeddings) else np.float32
    expression = None
    if slide.expression is not None and genes is not None:
        expression = log_cpm(slide.expression, list(genes)).X.astype(dtype, copy=False)
    return SlideData(
        slide_id=slide.slide_id,
        spot_ids=slide.spot_ids.to_numpy(dtype=str),
        embeddings=np.asarray(embeddings, dtype=dtype),
        coords=slide.centers_px.astype(np.float64),
        expression=expression,
        patient=slide.patient,
    )


def fold_data(
    training: Sequence[Slide],
    embeddings: Mapping[str, np.ndarray],
    choice: GeneChoice,
    held_out: Sequence[Slide] = (),
) -> tuple[list[str], list[SlideData], list[SlideData]]:
    """The one road from slides to model data: genes chosen on the ``training`` slides only (a panel,
    or their top HVGs intersected), then the arrays of the training and the ``held_out`` slides on
    those genes."""
    genes = choice.select([s.expression for s in training])
    train = [slide_data(s, embeddings[s.slide_id], genes) for s in training]
    return genes, train, [slide_data(s, embeddings[s.slide_id], genes) for s in held_out]


def make_folds(slides: Sequence[Slide] | Sequence[SlideData]) -> tuple[str, list[list[str]]]:
    """(``"leave-one-patient-out"`` | ``"leave-one-slide-out"``, the held-out slide ids of each fold):
    one patient per fold when the slides name at least two patients, else one slide."""
    patients = [s.patient for s in slides]
    if all(patients) and len(set(patients)) >= 2:
        groups = {p: [s.slide_id for s in slides if s.patient == p] for p in dict.fromkeys(patients)}
        return "leave-one-patient-out", list(groups.values())
    return "leave-one-slide-out", [[s.slide_id] for s in slides]
