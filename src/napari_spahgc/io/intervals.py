"""Prediction intervals in a predictions AnnData: what the prediction flow stores, and
:func:`prediction_interval`, the one reader every view uses (napari, the CLI, a notebook).

Stored, compact at any slide size (no spots × genes array besides X):

- ``obs['uncertainty']``: each spot's mean deviation of its retrieved reference spots' measured
  values from its prediction, over genes (log1p-CPM units; :mod:`napari_spahgc.base.conformal`);
- ``obsm['spahgc_references']``: (spots, K) int32, each spot's K references as rows of
- ``uns['spahgc_references']``: ``expression`` (references × genes, log1p CPM), ``slide_id`` and
  ``bank_row`` (the row of the model's reference bank);
- ``varm['interval_quantile']``: (genes, levels) conformal quantiles q_g at
  ``uns['napari_spahgc']['intervals']['levels']``, with the ``level`` asked for at prediction and
  the weight ``mix`` (γ) of the calibration.

The interval of spot s and gene g is recomputed from them: [max(ŷ − σ·q, 0), max(ŷ + σ·q, 0)],
σ from the deviation of the spot's references for g and its uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np

from napari_spahgc.base.conformal import check_level, deviation_blocks, interval, scale
from napari_spahgc.base.errors import InputError

UNCERTAINTY = "uncertainty"
REFERENCES = "spahgc_references"
QUANTILES = "interval_quantile"
_PROVENANCE = "napari_spahgc"


def store_references(
    adata: ad.AnnData,
    rows: np.ndarray,
    expression: np.ndarray,
    slide_ids: np.ndarray,
    bank_rows: np.ndarray,
    uncertainty: np.ndarray,
) -> None:
    """Record each spot's references and its uncertainty in ``adata``."""
    adata.obs[UNCERTAINTY] = np.asarray(uncertainty, dtype=np.float32)
    adata.obsm[REFERENCES] = np.asarray(rows, dtype=np.int32)
    adata.uns[REFERENCES] = {
        "expression": np.asarray(expression, dtype=np.float32),
        "slide_id": np.asarray(slide_ids, dtype=str),
        "bank_row": np.asarray(bank_rows, dtype=np.int64),
    }


def store_intervals(
    adata: ad.AnnData, quantiles: np.ndarray, levels: Sequence[float], level: float, mix: float, record: dict
) -> None:
    """Record the calibration's per-gene quantiles at ``levels`` (``level`` the one asked for)."""
    adata.varm[QUANTILES] = np.asarray(quantiles, dtype=np.float32)
    adata.uns.setdefault(_PROVENANCE, {})["intervals"] = {
        "level": float(level),
        "levels": np.asarray(levels, dtype=np.float64),
        "mix": float(mix),
        "method": "split conformal on the ensemble members' predictions of their held-out training "
        "slides, residuals normalised by the retrieved references' deviation",
        "calibration": {k: v for k, v in record.items() if k != "inner"},
    }


def has_intervals(adata: ad.AnnData) -> bool:
    """Whether ``adata`` holds what :func:`prediction_interval` needs."""
    return (
        QUANTILES in adata.varm and REFERENCES in adata.obsm and "intervals" in adata.uns.get(_PROVENANCE, {})
    )


def interval_levels(adata: ad.AnnData) -> tuple[float, tuple[float, ...]]:
    """(the level asked for at prediction, every level stored)."""
    _require(adata)
    info = adata.uns[_PROVENANCE]["intervals"]
    return float(info["level"]), tuple(round(float(v), 6) for v in info["levels"])


def prediction_interval(
    adata: ad.AnnData, level: float | None = None, genes: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper), float32 spots × genes (``genes``: only those columns, in that order), of the
    prediction intervals at ``level`` (None: the level asked for at prediction). Computed block by
    block from the stored references and quantiles; X may be an array or a backed dataset."""
    default, levels = interval_levels(adata)
    level = default if level is None else check_level(level)
    matches = [i for i, v in enumerate(levels) if abs(v - level) < 1e-9]
    if not matches:
        raise InputError(
            f"no intervals at level {level:g} were stored; stored: {levels[0]:g}–{levels[-1]:g} in "
            f"steps of 0.01 and {default:g} (predict again with that level for another)"
        )
    columns = _columns(adata, genes)
    quantile = np.asarray(adata.varm[QUANTILES])[columns, matches[0]]
    mix = float(adata.uns[_PROVENANCE]["intervals"]["mix"])
    table = np.asarray(adata.uns[REFERENCES]["expression"])[:, columns]
    uncertainty = adata.obs[UNCERTAINTY].to_numpy(dtype=np.float32)
    values = _Columns(adata.X, columns)
    lower = np.empty((adata.n_obs, len(columns)), dtype=np.float32)
    upper = np.empty_like(lower)
    for start, stop, deviation in deviation_blocks(values, np.asarray(adata.obsm[REFERENCES]), table):
        sigma = scale(deviation, uncertainty[start:stop], mix)
        lower[start:stop], upper[start:stop] = interval(values[start:stop], sigma, quantile)
    return lower, upper


class _Columns:
    """Row slices of ``matrix`` restricted to ``columns`` (read a block of rows, then select)."""

    def __init__(self, matrix, columns: np.ndarray) -> None:
        self.matrix, self.columns = matrix, columns

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.matrix[rows], dtype=np.float32)[:, self.columns]


def _columns(adata: ad.AnnData, genes: Sequence[str] | None) -> np.ndarray:
    if genes is None:
        return np.arange(adata.n_vars)
    index = {g: i for i, g in enumerate(adata.var_names)}
    unknown = [g for g in genes if g not in index]
    if unknown:
        raise InputError(f"gene(s) not predicted: {', '.join(map(str, unknown[:5]))}")
    return np.array([index[g] for g in genes], dtype=np.int64)


def _require(adata: ad.AnnData) -> None:
    if not has_intervals(adata):
        raise InputError(
            "these predictions have no intervals: their model was saved before intervals existed, or "
            "trained without held-out slides to calibrate them (train it again with this version)"
        )
