"""Neighbour searches: nearest spots in a slide and the blockwise top-k cosine search."""

from __future__ import annotations

import numpy as np
import pytest

import napari_spahgc.model.neighbours as neighbours_module
from napari_spahgc.base.spatial import spatial_mix, spatial_neighbours
from napari_spahgc.model.neighbours import CosineIndex, DistinctRows, SearchOptions, topk_cosine
from napari_spahgc.model.relations import joint_features


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


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Points around 200 centres in a 24-dimensional subspace of ``dim``: the low intrinsic dimension
    of image embeddings, where an approximate search is meant to work."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((dim, 24)))[0].T
    centres = np.random.default_rng(98).standard_normal((200, 24))
    points = centres[rng.integers(0, 200, n)] + 0.3 * rng.standard_normal((n, 24))
    return (points @ basis + 0.01 * rng.standard_normal((n, dim))).astype(np.float32)


def _repeated(keys: np.ndarray, seed: int) -> np.ndarray:
    """``keys`` with every row repeated 1–5 times, shuffled: dense embeddings of HD bins repeat."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(keys)), rng.integers(1, 6, len(keys)))
    return keys[rng.permutation(rows)]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_below_its_threshold_the_index_is_the_exact_search_over_distinct_keys(exclude_self):
    keys = _repeated(_clustered(800, 64, 0), 1)
    queries = keys[:300] if exclude_self else _clustered(300, 64, 2)
    index = CosineIndex(keys, SearchOptions(min_keys=len(keys) + 1))
    assert not index.approximate and len(index.distinct) == 800 and len(index) == len(keys)
    rows, scores = index.search(queries, 7, exclude_self=exclude_self)
    exact_rows, exact_scores = topk_cosine(queries, keys, 7, exclude_self=exclude_self, with_scores=True)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)  # the same similarities, in order
    np.testing.assert_array_equal(keys[rows], keys[exact_rows])  # the same keys (equal rows may swap)
    if exclude_self:
        assert not (rows == np.arange(300)[:, None]).any()
        repeated = (keys[:300, None] == keys[None]).all(axis=2).sum(axis=1) > 1
        np.testing.assert_allclose(scores[repeated, 0], 1.0, atol=1e-5)  # its repeats are its peers
    plain = _clustered(500, 32, 3)  # no repeats: exactly topk_cosine, and no copy of the keys
    index = CosineIndex(plain, SearchOptions(min_keys=10_000))
    assert index.distinct is plain
    np.testing.assert_array_equal(index.search(queries[:, :32], 5)[0], topk_cosine(queries[:, :32], plain, 5))


def test_above_its_threshold_the_index_finds_what_exact_search_finds():
    keys, queries = _repeated(_clustered(12_000, 96, 2), 4), _clustered(2000, 96, 3)
    index = CosineIndex(keys, SearchOptions(min_keys=10_000))
    assert index.approximate
    rows, scores = index.search(queries, 7)
    _, exact_scores = topk_cosine(queries, keys, 7, with_scores=True)
    recall = np.mean(scores >= exact_scores[:, 6:7] - 1e-5)  # ann-benchmarks' recall: ties count
    assert recall >= 0.95
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = np.einsum("nd,nkd->nk", unit(queries), unit(keys)[rows])
    np.testing.assert_allclose(scores, cosine, atol=1e-5)  # each score is the exact cosine of its row
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # most similar first
    assert (scores[:, -1] <= exact_scores[:, -1] + 1e-5).all()  # never better than exact
    peers, _ = index.search(keys[:500], 7, exclude_self=True)
    assert not (peers == np.arange(500)[:, None]).any()


@pytest.mark.parametrize("block_rows", [7, 1 << 16])  # repeats found across blocks too, or in one
def test_distinct_rows_hold_each_repeated_row_once(monkeypatch, block_rows):
    monkeypatch.setattr(neighbours_module, "_DISTINCT_ROWS", block_rows)
    values = _repeated(_clustered(40, 32, 5)[:, :6], 6).astype(np.float16)  # dense embeddings: float16
    rows = DistinctRows.of(values)
    assert len(rows.distinct) == 40 and rows.distinct.dtype == np.float16 and len(rows) == len(values)
    np.testing.assert_array_equal(rows[:], values.astype(np.float32))  # every row read back
    first = np.unique(values, axis=0, return_index=True)[1]
    np.testing.assert_array_equal(rows.distinct, values[np.sort(first)])  # in the order they first occur
    assert rows[3:9].dtype == np.float32 and rows[[[0, 1], [2, 3]]].shape == (2, 2, 6)
    part = rows.take(slice(10, 30))
    assert part.distinct is rows.distinct  # a view: the distinct rows are shared, not copied
    np.testing.assert_array_equal(part[:], values[10:30].astype(np.float32))
    both = DistinctRows.concatenate([part, rows.take([0, 5])])
    np.testing.assert_array_equal(both[:], values[[*range(10, 30), 0, 5]].astype(np.float32))
    doubled = DistinctRows.of(values, lambda x: 2 * x)  # a transform: of the distinct rows, kept float16
    assert doubled.distinct.dtype == np.float16
    np.testing.assert_array_equal(doubled[:], 2 * values.astype(np.float32))
    np.testing.assert_array_equal(
        CosineIndex(rows).search(values[:5], 3)[0], CosineIndex(values).search(values[:5], 3)[0]
    )
    assert DistinctRows.of(rows.distinct).distinct is rows.distinct  # no repeats: not copied


def test_a_saved_search_graph_searches_as_the_one_built():
    keys, queries = _repeated(_clustered(3000, 32, 6), 7), _clustered(200, 32, 8)
    options = SearchOptions(min_keys=1000)
    built = CosineIndex(keys, options)
    graph = built.graph()
    assert set(graph) == {"levels", "neighbours", "entry"} and CosineIndex(keys[:50], options).graph() is None
    restored = CosineIndex(keys, options, graph)
    for found, again in zip(built.search(queries, 7), restored.search(queries, 7), strict=True):
        np.testing.assert_array_equal(found, again)
    broken = {
        "a neighbour past the last key": {
            **graph,
            "neighbours": np.where(graph["neighbours"] == 0, 3000, graph["neighbours"]),
        },
        "a level too many": {**graph, "levels": graph["levels"] + 1},
        "another bank's graph": graph,
        "no entry": {**graph, "entry": np.array([-1])},
    }
    for name, saved in broken.items():
        bank = keys[: len(keys) // 2] if name == "another bank's graph" else keys
        with pytest.raises(ValueError, match="search graph"):
            CosineIndex(bank, SearchOptions(min_keys=100), saved)


def test_a_view_of_distinct_rows_searches_its_own_keys_only():
    """A member's bank is a view of the training table: the other slides' distinct rows — here the
    queries' own rows, the nearest of all — must never be found."""
    values = _repeated(_clustered(300, 32, 9), 10)
    half = len(values) // 2
    view = DistinctRows.of(values).take(slice(half, None))
    queries = values[:50]
    found, scores = CosineIndex(view).search(queries, 7)
    expected_rows, expected_scores = CosineIndex(values[half:]).search(queries, 7)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    np.testing.assert_array_equal(values[half:][found], values[half:][expected_rows])
    assert len(np.unique(found)) > 50  # not one row for every query


def test_joint_features_of_float16_rows_with_large_values_stay_unit():
    """A standardised rare gene reaches hundreds: its float16 square overflows, the norm must not."""
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 16)).astype(np.float16)
    expression = rng.normal(size=(50, 8)).astype(np.float16)
    expression[:5, 0] = 900.0  # 900² > float16's largest value, 65,504
    joint = joint_features(embeddings, expression)
    assert joint.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(joint[:, 16:], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(joint[:5, 16], 1.0, atol=1e-4)  # the large value dominates its row
