"""Neighbour searches that graphs and baselines share: spatially compact blocks of a slide and top-k
cosine similarity searched block by block (nearest spots and their mixing: :mod:`napari_spahgc.base.spatial`)."""

from __future__ import annotations

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
