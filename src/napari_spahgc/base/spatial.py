"""Nearest spots in a slide (k-d tree) and mixing a spot's values with its neighbours': what the
graphs, the baselines, prediction smoothing and tissue domains share (numpy and scipy only)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

_MIX_VALUES = 1 << 24  # gathered neighbour values per block of spatial_mix
#: Weights of a spot's own value against its neighbours' mean that tuning chooses from (1: no mixing).
SELF_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def spatial_neighbours(coords: np.ndarray, q: int) -> np.ndarray:
    """(n, q') indices of each spot's q nearest other spots (Euclidean, nearest first, no self);
    q' = min(q, n − 1)."""
    q = min(q, len(coords) - 1)
    if q <= 0:
        return np.empty((len(coords), 0), dtype=np.int64)
    _, index = cKDTree(coords).query(coords, k=q + 1)
    index = np.asarray(index).reshape(len(coords), q + 1)
    own = np.arange(len(coords))[:, None]
    # drop self (ties at distance 0 may put another spot first): keep the first q that are not self
    order = np.argsort(index == own, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1)[:, :q].astype(np.int64)


def spatial_mix(values: np.ndarray, neighbours: np.ndarray, self_weight: float) -> np.ndarray:
    """w · each spot's values + (1 − w) · the mean of its neighbours' (an ``(n, q)`` index table),
    computed in blocks of rows (no (n, q, genes) temporary)."""
    if neighbours.shape[1] == 0 or self_weight == 1.0:
        return values
    mixed = np.empty(values.shape, dtype=np.float32)
    rows = max(1, _MIX_VALUES // max(neighbours.shape[1] * values.shape[1], 1))
    for start in range(0, len(values), rows):
        block = slice(start, start + rows)
        mean = values[neighbours[block]].mean(axis=1)
        mixed[block] = self_weight * values[block] + (1 - self_weight) * mean
    return mixed
