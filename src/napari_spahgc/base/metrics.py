"""Metrics as the field defines them.

- PCC: Pearson per gene across a slide's spots, averaged over genes. A gene constant in the truth has
  no correlation for any method: it is excluded (NaN) and counted. A gene the *prediction* holds
  constant (truth varying) scores **0**, so a degenerate predictor cannot gain by being constant.
- Top-50 PCC (HEST-Benchmark's headline): the same mean over the 50 most variable genes, chosen on
  the training slides (:func:`most_variable`), never on the slide scored.
- RMSE: over all spot × gene values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TOP_GENES = 50
_CONSTANT = 1e-6  # a column whose centred norm is below this is constant


def gene_pcc(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Pearson correlation per gene (column) across spots; NaN where the truth is constant, 0 where
    only the prediction is."""
    t, p = _centred(truth), _centred(prediction)
    t_norm, p_norm = np.linalg.norm(t, axis=0), np.linalg.norm(p, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pcc = np.where(p_norm > _CONSTANT, (t * p).sum(0) / (t_norm * p_norm), 0.0)
    return np.where(t_norm > _CONSTANT, pcc, np.nan)


def _centred(values: np.ndarray) -> np.ndarray:
    return values - values.mean(0)


def most_variable(training_expression: Sequence[np.ndarray], n: int = TOP_GENES) -> np.ndarray:
    """Column indices of the ``n`` genes with the largest variance over the pooled training spots."""
    variance = np.concatenate(list(training_expression)).var(axis=0)
    return np.sort(np.argsort(-variance, kind="stable")[:n])


def score(
    truth: np.ndarray, prediction: np.ndarray, top: np.ndarray | None = None
) -> tuple[dict, np.ndarray]:
    """One slide's prediction scored and its per-gene PCC: ``pcc`` (mean over genes with a varying
    truth; NaN if none), ``pcc_top50`` (the same over the ``top`` genes, when given), ``rmse``,
    ``n_genes_excluded`` (constant truth) and ``n_genes_constant_prediction`` (scored 0). A slide of
    fewer than 50 genes has them all as its ``top`` genes; the key keeps its name."""
    per_gene = gene_pcc(truth, prediction)
    record = {"pcc": _mean(per_gene)}
    if top is not None:
        record[f"pcc_top{TOP_GENES}"] = _mean(per_gene[top])
    record.update(
        rmse=rmse(truth, prediction),
        n_genes_excluded=int(np.isnan(per_gene).sum()),
        n_genes_constant_prediction=int(
            np.sum((np.linalg.norm(_centred(prediction), axis=0) <= _CONSTANT) & ~np.isnan(per_gene))
        ),
    )
    return record, per_gene


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def rmse(truth: np.ndarray, prediction: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(truth) - np.asarray(prediction)) ** 2)))
