"""Metrics as the field defines them.

- PCC: Pearson per gene across a slide's spots, averaged over genes. Genes constant in the truth or in
  the prediction have no correlation: they are excluded (NaN) and counted.
- RMSE: over all spot × gene values.
"""

from __future__ import annotations

import numpy as np


def gene_pcc(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Pearson correlation per gene (column) across spots; NaN where either side is constant."""
    t = truth - truth.mean(0)
    p = prediction - prediction.mean(0)
    denominator = np.linalg.norm(t, axis=0) * np.linalg.norm(p, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 1e-12, (t * p).sum(0) / denominator, np.nan)


def score(truth: np.ndarray, prediction: np.ndarray) -> tuple[dict, np.ndarray]:
    """One slide's prediction scored: ``{"pcc": mean over the genes that have one (NaN if none),
    "rmse", "n_genes_excluded": genes constant in truth or prediction}`` and the per-gene PCC."""
    per_gene = gene_pcc(truth, prediction)
    excluded = int(np.isnan(per_gene).sum())
    pcc = float(np.nanmean(per_gene)) if excluded < len(per_gene) else float("nan")
    return {"pcc": pcc, "rmse": rmse(truth, prediction), "n_genes_excluded": excluded}, per_gene


def rmse(truth: np.ndarray, prediction: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(truth) - np.asarray(prediction)) ** 2)))


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index between two labelings of the same spots."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(labels_true, labels_pred))


def cluster_expression(
    values: np.ndarray, n_clusters: int, n_components: int = 20, seed: int = 0
) -> np.ndarray:
    """KMeans labels of (predicted or measured) expression after PCA, to compare with :func:`ari`."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    components = min(n_components, *values.shape)
    reduced = PCA(components, random_state=seed).fit_transform(values)
    return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(reduced)
