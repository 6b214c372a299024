"""Synthetic training slides and a small trainer, shared by the trainer, predictor, network, blocks,
model-selection and batch tests: expression is a smooth function of the embeddings, so there is
something to learn; and a small cohort of count tables for the benchmark's tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import napari_spahgc as ns
from napari_spahgc import SpaHGCPredictor
from napari_spahgc.model.config import SpaHGCConfig
from napari_spahgc.model.slide_data import SlideData
from napari_spahgc.train.trainer import Trainer

GENES = [f"G{i}" for i in range(5)]


def make_slides(n_slides: int = 4, n: int = 36, dim: int = 16, seed: int = 0) -> list[SlideData]:
    """Slides whose expression is a smooth function of the embeddings (learnable, honestly generated)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, len(GENES)))
    slides = []
    for s in range(n_slides):
        embeddings = rng.normal(size=(n, dim)).astype(np.float32)
        expression = np.log1p(np.exp(embeddings @ mixing / 2)).astype(np.float32)
        coords = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2) * 272.0
        ids = np.array([f"{s}x{i}" for i in range(n)])
        slides.append(SlideData(f"S{s}", ids, embeddings, coords.astype(float), expression))
    return slides


def make_trainer(slides, preset: str = "default", **options) -> Trainer:
    """A small trainer: ``options`` (flat option names) on top of small defaults and the ``preset``."""
    config = SpaHGCConfig.from_options(
        {"epochs": 6, "eval_every": 2, "hidden": 32, "q": 3, "k": 4, **options}, preset=preset
    )
    return Trainer(slides, GENES, config)


def fit(trainer: Trainer) -> SpaHGCPredictor:
    """The trained model: :meth:`Trainer.steps` run to its end, as the training flow runs it."""
    for progress in trainer.steps():
        assert progress.stage == "train" and progress.values["loss"] > 0
    assert trainer.result is not None
    return trainer.result


COHORT_GENES, COHORT_DIM = 30, 12


def poisson_cohort(seed: int = 0) -> tuple[list[ns.Slide], ns.Embeddings]:
    """Four 7 × 7-spot slides whose counts are Poisson draws with rates set by the spot embedding."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(COHORT_DIM, COHORT_GENES)) / 2
    grid = [(x, y) for x in range(7) for y in range(7)]
    ids = pd.Index([f"{x}x{y}" for x, y in grid])
    slides, arrays = [], {}
    for s in range(4):
        emb = rng.normal(size=(len(grid), COHORT_DIM)).astype(np.float32)
        counts = rng.poisson(np.exp(1.5 + emb @ loadings / 2)).astype(np.float32)
        slides.append(
            ns.Slide(
                f"S{s}",
                ids,
                np.array(grid) * 272.0,
                expression=count_table(counts, ids),
                pixel_size_um=0.735,
                spot_diameter_px=136,
            )
        )
        arrays[f"S{s}"] = emb
    return slides, ns.Embeddings(encoder={"name": "synthetic", "dim": COHORT_DIM}, arrays=arrays)


def count_table(values: np.ndarray, ids: pd.Index) -> ad.AnnData:
    """Counts (spots × genes GENE0…) as the cohort reader gives them."""
    counts = ad.AnnData(sp.csr_matrix(values), obs=pd.DataFrame(index=ids))
    counts.var_names = [f"GENE{g}" for g in range(values.shape[1])]
    return counts
