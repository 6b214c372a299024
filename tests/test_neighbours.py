"""Neighbour searches: nearest spots in a slide and the blockwise top-k cosine search."""

from __future__ import annotations

import numpy as np
import pytest

import napari_spahgc.model.neighbours as neighbours_module
from napari_spahgc.base.spatial import spatial_mix, spatial_neighbours
from napari_spahgc.model.neighbours import topk_cosine


def test_spatial_neighbours_on_a_grid():
    coords = np.array([[x, y] for y in range(3) for x in range(3)], dtype=float)  # 3 × 3 grid, centre = 4
    neighbours = spatial_neighbours(coords, 4)
    assert sorted(neighbours[4]) == [1, 3, 5, 7]  # the four at distance 1, not the diagonals
    assert set(neighbours[0][:2]) == {1, 3} and neighbours[0][2] == 4 and neighbours[0][3] in (2, 6)
    distances = np.linalg.norm(coords[neighbours] - coords[:, None], axis=-1)
    assert (np.diff(distances, axis=1) >= 0).all()  # nearest first
    assert not (neighbours == np.arange(9)[:, None]).any()  # no self
    duplicated = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    assert spatial_neighbours(duplicated, 1)[:, 0].tolist() == [1, 0, 1]  # a twin at distance 0 is not self
    assert spatial_neighbours(coords[:1], 5).shape == (1, 0)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunked_search_equals_brute_force(monkeypatch, exclude_self):
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(57, 8)).astype(np.float32)
    keys = queries if exclude_self else rng.normal(size=(71, 8)).astype(np.float32)
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    similarity = unit_q @ unit_k.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    brute = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    monkeypatch.setattr(neighbours_module, "_CHUNK", 10)  # many query and key blocks
    np.testing.assert_array_equal(topk_cosine(queries, keys, 5, exclude_self=exclude_self), brute)
    monkeypatch.setattr(neighbours_module, "_CHUNK", 4096)
    np.testing.assert_array_equal(topk_cosine(queries, keys, 5, exclude_self=exclude_self), brute)


def test_spatial_mix_on_a_line():
    values = np.array([[0.0], [10.0], [20.0], [30.0]])
    neighbours = spatial_neighbours(np.array([[0, 0], [1, 0], [2, 0], [3, 0]], dtype=float), 2)
    # spot 1's two nearest are spots 0 and 2: 0.5·10 + 0.5·(0 + 20)/2 = 10
    mixed = spatial_mix(values, neighbours, 0.5)
    assert mixed[1, 0] == pytest.approx(10.0) and mixed[0, 0] == pytest.approx(0.5 * 0 + 0.5 * 15)
    assert spatial_mix(values, neighbours, 0.0)[0, 0] == pytest.approx(15.0)  # neighbours only
    np.testing.assert_array_equal(spatial_mix(values, neighbours, 1.0), values)
