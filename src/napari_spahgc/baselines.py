"""Baselines run on the same embeddings and genes as SpaHGC, fitted on the training slides only.

- ``ridge``: the HEST-Benchmark probe: standardise, PCA to 256 components, ridge (α = 1000).
- ``knn``: mean expression of the k = 7 cosine-nearest training spots, as BLEEP / mclSTExp infer.
- ``ridge_spatial``: each spot's ridge prediction averaged with its Q = 5 nearest spots in the same
  slide (0.5 · self + 0.5 · neighbour mean) — a graph model must beat it to claim its graph helps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .dataset import SlideData
from .neighbours import spatial_neighbours, topk_cosine

Baseline = Callable[[Sequence[SlideData], SlideData], np.ndarray]


def ridge(
    train: Sequence[SlideData], test: SlideData, alpha: float = 1000.0, components: int = 256
) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([s.embeddings for s in train])
    y = np.concatenate([s.expression for s in train])
    probe = make_pipeline(
        StandardScaler(), PCA(min(components, *x.shape), random_state=0), Ridge(alpha=alpha)
    )
    return probe.fit(x, y).predict(test.embeddings).astype(np.float32)


def knn(train: Sequence[SlideData], test: SlideData, k: int = 7) -> np.ndarray:
    bank = np.concatenate([s.embeddings for s in train])
    expression = np.concatenate([s.expression for s in train])
    return expression[topk_cosine(test.embeddings, bank, k)].mean(axis=1).astype(np.float32)


def spatial_average(prediction: np.ndarray, coords: np.ndarray, q: int = 5) -> np.ndarray:
    """0.5 · each spot's value + 0.5 · the mean of its q nearest spots in the slide."""
    neighbours = spatial_neighbours(coords, q)
    if neighbours.shape[1] == 0:
        return prediction
    return (0.5 * prediction + 0.5 * prediction[neighbours].mean(axis=1)).astype(np.float32)


def ridge_spatial(train: Sequence[SlideData], test: SlideData) -> np.ndarray:
    return spatial_average(ridge(train, test), test.coords)


BASELINES: dict[str, Baseline] = {"ridge": ridge, "knn": knn, "ridge_spatial": ridge_spatial}
