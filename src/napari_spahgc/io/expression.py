"""Expression preprocessing shared by display, export and training: counts → log1p(CPM)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import read_text

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
    return ad.AnnData(dense.astype(np.float32, copy=False), obs=normalized.obs[[]], var=normalized.var[[]])


def read_gene_panel(path: str | Path) -> list[str]:
    """Gene names, one per line (blank lines and ``#`` comments ignored), order kept, duplicates dropped."""
    names = [line.split("#", 1)[0].strip() for line in read_text(path, "gene panel file").splitlines()]
    genes = list(dict.fromkeys(name for name in names if name))
    if not genes:
        raise InputError("gene panel file lists no genes", path)
    return genes


@dataclass(frozen=True)
class GeneChoice:
    """Which genes to model: a ``panel`` (from the file ``source`` when read from one), or each
    training slide's top ``n_hvg`` highly variable genes, intersected — chosen on training slides only."""

    panel: tuple[str, ...] | None = None
    n_hvg: int | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if (self.panel is None) == (self.n_hvg is None):
            raise InputError(
                "give exactly one of a gene panel (--genes FILE) or a number of HVGs (--n-hvg N)"
            )

    @classmethod
    def from_file(cls, path: str | Path) -> GeneChoice:
        return cls(panel=tuple(read_gene_panel(path)), source=str(path))

    def select(self, training: Sequence[ad.AnnData]) -> list[str]:
        """The genes of :func:`select_genes` on the training slides' counts."""
        return select_genes(training, self.panel, self.n_hvg, self.source)

    def describe(self) -> str:
        return "panel" if self.panel is not None else f"top {self.n_hvg} HVGs per training slide, intersected"


def select_genes(
    training: Sequence[ad.AnnData],
    panel: Sequence[str] | None = None,
    n_hvg: int | None = None,
    source: str | Path | None = None,
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
    if not genes and panel is not None:
        raise InputError(
            f"no gene of the panel ({len(panel)} genes, e.g. {', '.join(list(panel)[:3])}) is measured on "
            "every training slide: is it the panel of these slides (same gene names, e.g. symbols not Ensembl ids)?",
            source,
        )
    if not genes:
        raise InputError("no genes are left after selection (no HVG is shared by every training slide)")
    return genes
