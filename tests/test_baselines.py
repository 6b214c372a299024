"""Baselines on synthetic data whose answer is known: ridge, k-NN, the spatial average."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc.baselines import knn, ridge, ridge_spatial, spatial_average
from napari_spahgc.dataset import SlideData


def _slide(name, embeddings, expression, coords=None):
    coords = coords if coords is not None else np.c_[np.arange(len(embeddings)), np.zeros(len(embeddings))]
    return SlideData(name, np.array([f"{name}{i}" for i in range(len(embeddings))]),
                     embeddings.astype(np.float32), coords.astype(float), expression.astype(np.float32))  # fmt: skip


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(10, 4))
    train = [_slide(f"T{i}", x := rng.normal(size=(300, 10)), x @ weights) for i in range(2)]
    test = _slide("Q", x := rng.normal(size=(50, 10)), x @ weights)
    prediction = ridge(train, test, alpha=1e-3)
    assert np.corrcoef(prediction.ravel(), test.expression.ravel())[0, 1] > 0.999


def test_knn_returns_the_expression_of_duplicated_spots():
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(30, 6))
    expression = rng.random((30, 3))
    train = [_slide("T", np.repeat(embeddings, 7, axis=0), np.repeat(expression, 7, axis=0))]
    prediction = knn(train, _slide("Q", embeddings * 3.0, expression))  # cosine ignores the scale
    np.testing.assert_allclose(prediction, expression, rtol=1e-5)


def test_spatial_average_on_a_line():
    values = np.array([[0.0], [10.0], [20.0], [30.0]])
    coords = np.array([[0, 0], [1, 0], [2, 0], [3, 0]], dtype=float)
    smoothed = spatial_average(values, coords, q=2)
    # spot 1's two nearest are spots 0 and 2: 0.5·10 + 0.5·(0 + 20)/2 = 10
    assert smoothed[1, 0] == pytest.approx(10.0) and smoothed[0, 0] == pytest.approx(0.5 * 0 + 0.5 * 15)
    rng = np.random.default_rng(3)
    train = [_slide("T", rng.normal(size=(80, 5)), rng.random((80, 2)))]
    test = _slide("Q", rng.normal(size=(9, 5)), rng.random((9, 2)), coords=np.c_[np.arange(9), np.zeros(9)])
    np.testing.assert_allclose(
        ridge_spatial(train, test), spatial_average(ridge(train, test), test.coords, 5)
    )
