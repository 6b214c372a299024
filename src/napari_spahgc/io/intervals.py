"""Prediction intervals in a predictions AnnData: what the prediction flow stores, and
:func:`prediction_interval`, the one reader every view uses (napari, the CLI, a notebook).

Stored, compact at any slide size (no spots × genes array besides X):

- ``obs['uncertainty']``: each spot's mean deviation of its retrieved reference spots' measured
  values from its prediction, over genes (log1p-CPM units; :mod:`napari_spahgc.base.conformal`);
- ``obsm['spahgc_references']``: (spots, K) int32, each spot's K references as rows of
- ``uns['spahgc_references']``: ``expression`` (references × genes, log1p CPM), ``slide_id``,
  ``spot_id``, ``centers_px`` (full-resolution x, y), ``bank_row`` (the row of the model's reference
  bank) and ``images`` (columns: each reference slide's id, image file and pixel size);
- ``obsm['spahgc_reference_similarity']`` and ``obsm['spahgc_reference_attention']``: (spots, K)
  the cosine similarity of each spot to its references and CNAP's attention over them;
- ``varm['interval_quantile']``: (genes, levels) conformal quantiles q_g at
  ``uns['napari_spahgc']['intervals']['levels']``, with the ``level`` asked for at prediction and
  the weight ``mix`` (γ) of the calibration;
- ``var['interval_width']`` and, where the slide has measured values, ``var['coverage']``: per gene,
  at that level, the mean interval width and the share of measured values inside.

The interval of spot s and gene g is recomputed from them: [max(ŷ − σ·q, 0), max(ŷ + σ·q, 0)],
σ from the deviation of the spot's references for g and its uncertainty.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import anndata as ad
import numpy as np

from napari_spahgc.base.conformal import check_level, deviation_blocks, interval, scale
from napari_spahgc.base.errors import InputError

UNCERTAINTY = "uncertainty"
REFERENCES = "spahgc_references"
SIMILARITY = "spahgc_reference_similarity"
ATTENTION = "spahgc_reference_attention"
QUANTILES = "interval_quantile"
_PROVENANCE = "napari_spahgc"


def store_references(adata: ad.AnnData, references, uncertainty: np.ndarray, images: dict) -> None:
    """Record each spot's references (a ``SlideReferences``: rows, similarity, attention, and the
    references' bank rows, slide and spot ids, centres and expression), its uncertainty, and where
    the reference slides' images are (``images``: slide id → {"image", "pixel_size_um"})."""
    adata.obs[UNCERTAINTY] = np.asarray(uncertainty, dtype=np.float32)
    adata.obsm[REFERENCES] = np.asarray(references.rows, dtype=np.int32)
    adata.obsm[SIMILARITY] = np.asarray(references.similarity, dtype=np.float32)
    if references.attention is not None:
        adata.obsm[ATTENTION] = np.asarray(references.attention, dtype=np.float32)
    used = [slide for slide in dict.fromkeys(map(str, references.slide_ids)) if slide in images]
    table = {
        "expression": np.asarray(references.expression, dtype=np.float32),
        "slide_id": np.asarray(references.slide_ids, dtype=str),
        "bank_row": np.asarray(references.bank_rows, dtype=np.int64),
        # columns, not slide-keyed groups: h5py would read a "/" in a slide id as a path
        "images": {
            "slide_id": np.asarray(used, dtype=str),
            "image": np.asarray([str(images[s].get("image") or "") for s in used], dtype=str),
            "pixel_size_um": np.asarray([float(images[s].get("pixel_size_um") or 0.0) for s in used]),
        },
    }
    if references.spot_ids is not None:
        table["spot_id"] = np.asarray(references.spot_ids, dtype=str)
    if references.centers_px is not None:
        table["centers_px"] = np.asarray(references.centers_px, dtype=np.float64)
    adata.uns[REFERENCES] = table


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
    lower = np.empty((adata.n_obs, adata.n_vars if genes is None else len(genes)), dtype=np.float32)
    upper = np.empty_like(lower)
    for start, stop, low, high in interval_blocks(adata, level, genes):
        lower[start:stop], upper[start:stop] = low, high
    return lower, upper


def interval_blocks(
    adata: ad.AnnData, level: float | None = None, genes: Sequence[str] | None = None, values=None
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """:func:`prediction_interval` block by block of spots: ``(start, stop, lower, upper)``.
    ``values``: the predictions when not in ``adata.X`` (an h5py dataset being written)."""
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
    values = _Columns(adata.X if values is None else values, columns)
    for start, stop, deviation in deviation_blocks(values, np.asarray(adata.obsm[REFERENCES]), table):
        sigma = scale(deviation, uncertainty[start:stop], mix)
        yield start, stop, *interval(values[start:stop], sigma, quantile)


def summarise_intervals(adata: ad.AnnData, values=None) -> None:
    """Per gene, at the level asked for: ``var['interval_width']`` (the mean width over spots) and,
    where the slide has measured values, ``var['coverage']`` (the share inside their interval)."""
    width = np.zeros(adata.n_vars)
    inside = np.zeros(adata.n_vars)
    known = np.zeros(adata.n_vars)
    measured = adata.layers.get("measured")
    for start, stop, lower, upper in interval_blocks(adata, values=values):
        width += (upper - lower).sum(axis=0, dtype=np.float64)
        if measured is not None:
            truth = measured[start:stop]
            truth = np.asarray(truth.toarray() if hasattr(truth, "toarray") else truth, dtype=np.float32)
            present = ~np.isnan(truth)
            inside += ((truth >= lower) & (truth <= upper) & present).sum(axis=0)
            known += present.sum(axis=0)
    adata.var["interval_width"] = (width / max(adata.n_obs, 1)).astype(np.float32)
    if measured is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            adata.var["coverage"] = np.where(known > 0, inside / known, np.nan).astype(np.float32)


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
