"""Expression preprocessing shared by display, export and training: counts → log1p(CPM)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc

COUNTS_PER_SPOT = 1e6


def log_cpm(counts: ad.AnnData, genes: list[str] | None = None) -> ad.AnnData:
    """Counts ÷ spot total × 1e6, then log1p; per slide (totals over all genes of the spot), then
    restricted to ``genes`` when given. Returns a new dense float32 AnnData."""
    normalized = counts.copy()
    sc.pp.normalize_total(normalized, target_sum=COUNTS_PER_SPOT)
    sc.pp.log1p(normalized)
    if genes is not None:
        normalized = normalized[:, list(genes)]
    dense = normalized.X.toarray() if hasattr(normalized.X, "toarray") else np.asarray(normalized.X)
    return ad.AnnData(dense.astype(np.float32), obs=normalized.obs[[]], var=normalized.var[[]])
