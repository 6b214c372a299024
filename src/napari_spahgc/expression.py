"""Expression preprocessing shared by display, export and training: counts → log1p(CPM)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np

from ._files import read_text
from .errors import InputError

COUNTS_PER_SPOT = 1e6


def log_cpm(counts: ad.AnnData, genes: list[str] | None = None) -> ad.AnnData:
    """Counts ÷ spot total × 1e6, then log1p; per slide (totals over all genes of the spot), then
    restricted to ``genes`` when given. Returns a new dense float32 AnnData."""
    import scanpy as sc  # here, not at import: docking a widget should not pay for scanpy

    normalized = counts.copy()
    sc.pp.normalize_total(normalized, target_sum=COUNTS_PER_SPOT)
    sc.pp.log1p(normalized)
    if genes is not None:
        normalized = normalized[:, list(genes)]
    dense = normalized.X.toarray() if hasattr(normalized.X, "toarray") else np.asarray(normalized.X)
    return ad.AnnData(dense.astype(np.float32), obs=normalized.obs[[]], var=normalized.var[[]])


def read_gene_panel(path: str | Path) -> list[str]:
    """Gene names, one per line (blank lines and ``#`` comments ignored), order kept, duplicates dropped."""
    names = [line.split("#", 1)[0].strip() for line in read_text(path, "gene panel file").splitlines()]
    genes = list(dict.fromkeys(name for name in names if name))
    if not genes:
        raise InputError("gene panel file lists no genes", path)
    return genes


def select_genes(
    training: Sequence[ad.AnnData], panel: Sequence[str] | None = None, n_hvg: int | None = None
) -> list[str]:
    """The genes to model, chosen from the *training* slides' counts only.

    - ``panel``: the given genes that every training slide measures (order of the panel kept);
    - ``n_hvg``: per training slide, the top-``n_hvg`` highly variable genes (scanpy, Seurat flavour, on
      log1p-CPM), intersected across training slides (sorted by name).
    """
    if (panel is None) == (n_hvg is None):
        raise ValueError("give exactly one of panel or n_hvg")
    measured = set.intersection(*(set(counts.var_names) for counts in training))
    if panel is not None:
        genes = [gene for gene in panel if gene in measured]
    else:
        import scanpy as sc

        chosen = []
        for counts in training:
            normalized = log_cpm(counts[:, sorted(measured)])
            sc.pp.highly_variable_genes(normalized, n_top_genes=n_hvg, flavor="seurat")
            chosen.append(set(normalized.var_names[normalized.var["highly_variable"]]))
        genes = sorted(set.intersection(*chosen))
    if not genes:
        raise InputError("no genes are left after selection (none measured on every training slide)")
    return genes
