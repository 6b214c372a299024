"""Neighbour searches that graphs and baselines share: spatially compact blocks of a slide, top-k cosine
similarity searched block by block, and an index that keeps large searches (Visium HD banks of
hundreds of thousands of bins) approximate and fast (nearest spots and their mixing:
:mod:`napari_spahgc.base.spatial`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK = 2048  # rows (and key columns) per block of the similarity search
_DISTINCT_ROWS = 1 << 16  # rows searched for repeats at a time


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
    c = torch.nn.functional.normalize(torch.as_tensor(np.asarray(keys, dtype=np.float32)), dim=1)
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


class DistinctRows:
    """A 2-d array held as its distinct rows and, for each row, which of them it is: dense embeddings
    repeat (Visium HD bins that share a feature cell share the embedding; a 200,000-bin slide has
    about 43,000 distinct rows), so a bank or a training table of them holds each once. Reading rows
    (``rows[i]``, ``rows[a:b]``, ``rows[index_array]``) gives float32 copies of just those rows;
    :meth:`take` and :meth:`concatenate` share the distinct rows instead of copying them."""

    def __init__(self, distinct: np.ndarray, row_of: np.ndarray) -> None:
        self.distinct, self.row_of = distinct, row_of

    @classmethod
    def of(
        cls,
        values: np.ndarray | DistinctRows,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> DistinctRows:
        """``values`` by its distinct rows, in the order they first occur, found ``_DISTINCT_ROWS`` rows
        at a time (no copy of the whole array) and kept in its float type (float16 dense embeddings stay
        float16) after ``transform`` (e.g. a standardisation; applied to the distinct rows only)."""
        if isinstance(values, DistinctRows):
            if transform is None:
                return values
            values, row_of = values.distinct, values.row_of
        else:
            row_of = None
        found, local = [], []
        for start in range(0, len(values), _DISTINCT_ROWS):
            block = np.ascontiguousarray(values[start : start + _DISTINCT_ROWS])
            first, inverse = _first_occurrences(block)
            local.append(inverse + sum(map(len, found)))
            found.append(block if len(first) == len(block) else block[first])  # no repeats: the block
        if len(found) == 1:  # one block: its rows are the distinct ones
            distinct, rows = found[0], local[0]
        else:
            candidates = np.concatenate(found) if found else np.empty((0, values.shape[1]), values.dtype)
            first, inverse = _first_occurrences(candidates)
            distinct, rows = (
                candidates[first],
                inverse[np.concatenate(local)] if local else np.empty(0, np.int64),
            )
        if row_of is None and len(distinct) == len(values) and isinstance(values, np.ndarray):
            distinct = values  # no copy of rows that never repeat
        if transform is not None:
            distinct = np.asarray(transform(distinct), dtype=distinct.dtype)
        rows = rows.astype(np.int32 if len(distinct) < 2**31 else np.int64)
        return cls(distinct, rows if row_of is None else rows[row_of])

    @classmethod
    def concatenate(cls, parts: Sequence[DistinctRows]) -> DistinctRows:
        """The rows of ``parts`` one after another (a row repeated across parts is held once per part)."""
        offsets = np.cumsum([0, *(len(p.distinct) for p in parts[:-1])])
        return cls(
            np.concatenate([p.distinct for p in parts]),
            np.concatenate([p.row_of.astype(np.int64) + o for p, o in zip(parts, offsets, strict=True)]),
        )

    def take(self, rows) -> DistinctRows:
        """Rows ``rows`` (indices, a mask or a slice) as a DistinctRows sharing these distinct rows."""
        return DistinctRows(self.distinct, self.row_of[rows])

    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_of), self.distinct.shape[1]

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self.distinct[self.row_of[rows]], dtype=np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


def _first_occurrences(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the row index of each distinct row, in the order they first occur; each row's distinct row)."""
    _, first, inverse = np.unique(row_bytes(rows), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.ravel()]


class CosineIndex:
    """Top-k cosine search over fixed ``keys``, built once and searched many times (:class:`SearchOptions`).

    The search runs over the distinct key rows and gives each found row back as its key rows, lowest
    first: exact search finds the same keys as :func:`topk_cosine` (up to the order of equal keys) at
    the cost of the distinct ones. Approximate above ``options.min_keys`` distinct keys."""

    def __init__(
        self,
        keys: np.ndarray | DistinctRows,
        options: SearchOptions = SearchOptions(),
        graph: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``graph``: the HNSW graph of these keys and options as :meth:`graph` gave it (a model
        folder's), used instead of building one."""
        keys = DistinctRows.of(keys)
        self.options, self.n_keys = options, len(keys)
        used, group = np.unique(keys.row_of, return_inverse=True)  # a view's keys may use a few of them
        self.members = np.argsort(group, kind="stable")  # key rows grouped by distinct row, ascending
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(used)))])
        distinct = keys.distinct if len(used) == len(keys.distinct) else keys.distinct[used]
        self.approximate = len(distinct) >= options.min_keys
        if not self.approximate:
            self.distinct = np.asarray(distinct, dtype=np.float32)  # float32 rows are not copied
            return
        import faiss

        self.index = faiss.IndexHNSWFlat(distinct.shape[1], options.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = options.ef_construction
        if graph is None:
            for start in range(0, len(distinct), _ADD_ROWS):  # unit rows made a block at a time
                self.index.add(unit_rows(distinct[start : start + _ADD_ROWS]))
        else:
            _restore(self.index, distinct, graph)
        storage = faiss.downcast_index(self.index.storage)  # the unit rows, re-ranked against
        self.distinct = faiss.rev_swig_ptr(storage.get_xb(), distinct.size).reshape(distinct.shape)

    def graph(self) -> dict[str, np.ndarray] | None:
        """The HNSW graph as plain arrays (None for an exact index): each distinct key's ``levels``,
        the ``neighbours`` lists of every level and the ``entry`` node; a model folder saves them so
        prediction does not rebuild the graph."""
        if not self.approximate:
            return None
        import faiss

        hnsw = self.index.hnsw
        return {
            "levels": faiss.vector_to_array(hnsw.levels),
            "neighbours": faiss.vector_to_array(hnsw.neighbors),
            "entry": np.array([hnsw.entry_point], dtype=np.int64),
        }

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


def _restore(index, rows: np.ndarray, graph: dict[str, np.ndarray]) -> None:
    """Fill an empty HNSW ``index`` with ``rows`` as unit vectors and a saved ``graph``
    (:meth:`CosineIndex.graph`) after checking that it is one of these rows: every level count,
    neighbour and the entry node in range, and the neighbour lists exactly as long as the levels ask
    (faiss reads them unchecked)."""
    import faiss

    hnsw, n = index.hnsw, len(rows)
    levels, neighbours = graph["levels"], graph["neighbours"]
    per_level = faiss.vector_to_array(hnsw.cum_nneighbor_per_level)  # slots below each level count
    entry = int(graph["entry"][0]) if graph["entry"].shape == (1,) else -1
    if not (
        levels.dtype == np.int32
        and neighbours.dtype == np.int32
        and levels.shape == (n,)
        and n
        and levels.min() >= 1
        and levels.max() < len(per_level)
        and 0 <= entry < n
        and levels[entry] == levels.max()
    ):
        raise ValueError("the saved search graph does not fit the bank's embeddings")
    offsets = np.zeros(n + 1, np.uint64)
    offsets[1:] = np.cumsum(per_level[levels], dtype=np.uint64)
    if (
        neighbours.shape != (int(offsets[-1]),)
        or neighbours.min(initial=-1) < -1
        or neighbours.max(initial=-1) >= n
    ):
        raise ValueError("the saved search graph's neighbour lists do not fit the bank's embeddings")
    for start in range(0, n, _ADD_ROWS):
        index.storage.add(unit_rows(rows[start : start + _ADD_ROWS]))
    faiss.copy_array_to_vector(levels, hnsw.levels)
    faiss.copy_array_to_vector(offsets, hnsw.offsets)
    faiss.copy_array_to_vector(neighbours, hnsw.neighbors)
    hnsw.entry_point, hnsw.max_level, index.ntotal = entry, int(levels.max()) - 1, n


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` scaled to unit L2 norm (all-zero rows stay zero), float32. Norms are taken in float32:
    a float16 row's squares overflow above 256 (a standardised rare gene reaches that)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.where(norms > 0, norms, 1.0))


def row_bytes(rows: np.ndarray) -> np.ndarray:
    """One opaque value per row (its bytes), for finding identical rows."""
    return np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()


_ADD_ROWS = 1 << 16  # rows made unit vectors and added to an HNSW index at a time
_RERANK_ROWS = 1024  # queries re-ranked at a time: 1,024 × 28 candidates × 1,280 floats ≈ 150 MB
