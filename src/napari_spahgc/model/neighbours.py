"""Neighbour searches that graphs and baselines share: spatially compact blocks of a slide, top-k cosine
similarity searched block by block, and an index that keeps large searches (Visium HD banks of
hundreds of thousands of bins) approximate and fast (nearest spots and their mixing:
:mod:`napari_spahgc.base.spatial`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK = 2048  # rows (and key columns) per block of the similarity search


def spatial_blocks(coords: np.ndarray, max_spots: int) -> list[np.ndarray]:
    """Spot indices of spatially compact blocks of at most ``max_spots`` spots, each in spot order:
    the slide split in halves at the median of its longer side, recursively (one block if small)."""
    pending, blocks = [np.arange(len(coords))], []
    while pending:
        rows = pending.pop()
        if len(rows) <= max_spots:
            blocks.append(np.sort(rows))
            continue
        xy = coords[rows]
        order = np.argsort(xy[:, int(np.argmax(np.ptp(xy, axis=0)))], kind="stable")
        pending += [rows[order[len(rows) // 2 :]], rows[order[: len(rows) // 2]]]
    return blocks


def topk_cosine(
    queries: np.ndarray, keys: np.ndarray, k: int, exclude_self: bool = False, with_scores: bool = False
):
    """(n_queries, k) indices of the k keys most cosine-similar to each query, most similar first
    (``with_scores``: and their cosine similarities, float32, as a second array).

    Searched block by block (never the full similarity matrix); ``exclude_self`` skips key i for
    query i (queries and keys are the same set).
    """
    k = min(k, len(keys) - int(exclude_self))
    import torch  # here: the command line's option lists read the baselines, which import this module

    q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    c = torch.nn.functional.normalize(torch.as_tensor(keys, dtype=torch.float32), dim=1)
    result = np.empty((len(q), k), dtype=np.int64)
    similarity = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), _CHUNK):
        block = q[start : start + _CHUNK]
        best_scores = torch.full((len(block), 0), -np.inf)
        best_index = torch.empty((len(block), 0), dtype=torch.long)
        for key_start in range(0, len(c), _CHUNK):
            scores = block @ c[key_start : key_start + _CHUNK].T
            if exclude_self:
                rows = torch.arange(len(block))
                cols = rows + start - key_start
                inside = (cols >= 0) & (cols < scores.shape[1])
                scores[rows[inside], cols[inside]] = -np.inf
            take = min(k, scores.shape[1])
            top_scores, top_index = scores.topk(take, dim=1)
            best_scores = torch.cat([best_scores, top_scores], dim=1)
            best_index = torch.cat([best_index, top_index + key_start], dim=1)
            best_scores, order = best_scores.topk(min(k, best_scores.shape[1]), dim=1)
            best_index = best_index.gather(1, order)
        result[start : start + len(block)] = best_index.numpy()
        similarity[start : start + len(block)] = best_scores.numpy()
    return (result, similarity) if with_scores else result


@dataclass(frozen=True)
class SearchOptions:
    """How top-k cosine searches over many keys run. Keys are searched as their distinct rows (dense
    embeddings repeat: Visium HD bins that share a feature cell share the embedding), exactly
    (:func:`topk_cosine`) below ``min_keys`` distinct keys; above, through a faiss HNSW graph on their
    unit vectors (``m`` links a node, ``ef_construction`` / ``ef_search`` candidates while building /
    searching) whose ``candidates`` × k best are re-ranked by their exact cosine."""

    min_keys: int = 50_000
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    candidates: int = 4


class CosineIndex:
    """Top-k cosine search over fixed ``keys``, built once and searched many times (:class:`SearchOptions`).

    The search runs over the distinct key rows and gives each found row back as its key rows, lowest
    first: exact search finds the same keys as :func:`topk_cosine` (up to the order of equal keys) at
    the cost of the distinct ones. Approximate above ``options.min_keys`` distinct keys."""

    def __init__(self, keys: np.ndarray, options: SearchOptions = SearchOptions()) -> None:
        self.options, self.n_keys = options, len(keys)
        keys = np.ascontiguousarray(keys, dtype=np.float32)  # float32 keys are not copied
        _, first, inverse = np.unique(row_bytes(keys), return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # distinct rows in the order they first occur
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        group = rank[inverse.ravel()]  # each key's distinct row
        self.members = np.argsort(group, kind="stable")  # key rows grouped by distinct row, ascending
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(order)))])
        self.distinct = keys if len(order) == len(keys) else keys[first[order]]  # no copy when none repeats
        self.approximate = len(self.distinct) >= options.min_keys
        if self.approximate:
            import faiss

            self.distinct = unit_rows(self.distinct)
            self.index = faiss.IndexHNSWFlat(self.distinct.shape[1], options.m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = options.ef_construction
            self.index.add(self.distinct)

    def __len__(self) -> int:
        return self.n_keys

    def search(
        self, queries: np.ndarray, k: int, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) key rows most cosine-similar to each query, most similar first, and their cosine
        similarities; ``exclude_self``: the queries are the keys, and key i is not returned for query i."""
        k = min(k, self.n_keys - int(exclude_self))
        wanted = min(len(self.distinct), k + int(exclude_self))  # distinct rows that fill k key rows
        if not self.approximate:
            found, scores = topk_cosine(queries, self.distinct, wanted, with_scores=True)
        else:
            found, scores = self._approximate(np.asarray(queries, dtype=np.float32), wanted)
        own = np.arange(len(queries)) if exclude_self else None
        return self._key_rows(found, scores, k, own)

    def _approximate(self, queries: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        """The HNSW graph's ``candidates`` × ``wanted`` best distinct rows, re-ranked exactly."""
        candidates = min(len(self.distinct), self.options.candidates * wanted)
        self.index.hnsw.efSearch = max(self.options.ef_search, candidates)
        found = np.empty((len(queries), wanted), np.int64)
        scores = np.empty((len(queries), wanted), np.float32)
        for start in range(0, len(queries), _RERANK_ROWS):
            unit = unit_rows(queries[start : start + _RERANK_ROWS])
            _, near = self.index.search(unit, candidates)
            near = np.where(near < 0, 0, near)  # fewer candidates than asked: padded by faiss
            exact = np.einsum("nd,ncd->nc", unit, self.distinct[near])
            order = np.argsort(-exact, axis=1, kind="stable")[:, :wanted]
            found[start : start + len(unit)] = np.take_along_axis(near, order, axis=1)
            scores[start : start + len(unit)] = np.take_along_axis(exact, order, axis=1)
        return found, scores

    def _key_rows(
        self, found: np.ndarray, scores: np.ndarray, k: int, own: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first k key rows of each query's distinct rows, most similar first (a distinct row's
        keys in ascending order), skipping the query's own row ``own`` when given."""
        rows = np.zeros((len(found), k), np.int64)
        similarity = np.zeros((len(found), k), np.float32)
        filled = np.zeros(len(found), np.int64)
        for column in range(found.shape[1]):
            group = found[:, column]
            for member in range(k + 1):
                position = self.starts[group] + member
                take = (filled < k) & (position < self.starts[group + 1])
                key = self.members[np.minimum(position, self.n_keys - 1)]
                if own is not None:
                    take &= key != own
                if not take.any():
                    continue
                where = np.flatnonzero(take)
                rows[where, filled[where]] = key[where]
                similarity[where, filled[where]] = scores[where, column]
                filled[where] += 1
            if (filled == k).all():
                break
        return rows, similarity


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` scaled to unit L2 norm (all-zero rows stay zero), float32."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def row_bytes(rows: np.ndarray) -> np.ndarray:
    """One opaque value per row (its bytes), for finding identical rows."""
    return np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()


_RERANK_ROWS = 1024  # queries re-ranked at a time: 1,024 × 28 candidates × 1,280 floats ≈ 150 MB
