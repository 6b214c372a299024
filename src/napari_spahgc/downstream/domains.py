"""Tissue domains from expression (predicted or measured): scanpy's PCA of the z-scored genes, each
spot's components mixed with its spatial neighbours' (the spatial weight), then KMeans with a number of
domains or Leiden on the spots' k-nearest-neighbour graph at a resolution.

With w the spatial weight, Z a spot's principal components and N(s) its ``spatial_neighbours``
nearest spots, the spot is clustered on ``(1 − w) · Z_s + w · mean(Z_n for n in N(s))``: w = 0 is
expression only, w = 1 its neighbourhood only. At Visium HD size the PCA, KMeans' centroids and the
Leiden graph are fitted on a random subsample of ``max_fit_spots`` spots; every spot is then projected
and assigned (nearest centroid, or the majority of its nearest subsampled spots), so memory stays
at a few components per spot besides one block of genes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.spatial import spatial_mix, spatial_neighbours

#: The spatial weight a user gets unless they set one: the median of the weights the benchmark's five
#: HER2ST folds chose for SpaHGC's predictions by inner validation (0.25, 0.75, 0.25, 0.5, 0.5;
#: docs/performance.md, "Tissue domains").
DEFAULT_SPATIAL_WEIGHT = 0.5
#: The spatial weights the benchmark's inner validation chooses from.
SPATIAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
_BLOCK_VALUES = 1 << 24  # spot × gene values read at once


@dataclass(frozen=True)
class DomainOptions:
    """How domains are found: ``n_domains`` (KMeans) or, when None, Leiden at ``resolution``;
    ``spatial_weight`` w in [0, 1]; ``n_pcs`` principal components; ``spatial_neighbours`` per spot;
    ``expression_neighbours`` of the Leiden graph and of the assignment of unfitted spots;
    ``max_fit_spots``: the fit's subsample; ``seed``."""

    n_domains: int | None = None
    resolution: float = 1.0
    spatial_weight: float = DEFAULT_SPATIAL_WEIGHT
    n_pcs: int = 20
    spatial_neighbours: int = 6
    expression_neighbours: int = 15
    max_fit_spots: int = 50_000
    seed: int = 0

    def check(self, n_spots: int) -> None:
        """Bad settings as :class:`InputError`, before any work."""
        if self.n_domains is not None:
            if self.n_domains < 2:
                raise InputError(f"the number of domains must be at least 2, not {self.n_domains}")
            if self.n_domains > n_spots:
                raise InputError(
                    f"{self.n_domains} domains asked for, but the slide has only {n_spots} spots"
                )
        if not self.resolution > 0:
            raise InputError(f"the Leiden resolution must be positive, not {self.resolution}")
        if not 0 <= self.spatial_weight <= 1:
            raise InputError(f"the spatial weight must be between 0 and 1, not {self.spatial_weight}")
        if n_spots < 3:
            raise InputError(f"domains need at least 3 spots; the slide has {n_spots}")

    def describe(self) -> dict:
        method = {"method": "kmeans", "n_domains": self.n_domains}
        if self.n_domains is None:
            method = {"method": "leiden", "resolution": self.resolution}
        return {
            **method,
            "spatial_weight": self.spatial_weight,
            "n_pcs": self.n_pcs,
            "spatial_neighbours": self.spatial_neighbours,
            "expression_neighbours": self.expression_neighbours,
            "max_fit_spots": self.max_fit_spots,
            "seed": self.seed,
        }


def find_domains(values, coords: np.ndarray, options: DomainOptions) -> pd.Categorical:
    """Each spot's domain ("0" the largest, then by size) from ``values`` (spots × genes: a numpy or
    scipy sparse array, or an h5py / backed-AnnData ``X`` read block by block) and ``coords`` (spots × 2)."""
    n_spots = values.shape[0]
    options.check(n_spots)
    rng = np.random.default_rng(options.seed)
    fit = np.arange(n_spots)
    if n_spots > options.max_fit_spots:
        fit = np.sort(rng.choice(n_spots, options.max_fit_spots, replace=False))
    components = _principal_components(values, fit, options)
    neighbours = spatial_neighbours(np.asarray(coords, dtype=np.float64), options.spatial_neighbours)
    mixed = spatial_mix(components, neighbours, 1 - options.spatial_weight)
    cluster = _leiden if options.n_domains is None else _kmeans
    return _by_size(cluster(mixed, fit, options))


def domain_sizes(domains: pd.Categorical) -> pd.DataFrame:
    """One row per domain: its spots and their share of the slide."""
    counts = pd.Series(domains).value_counts(sort=False).reindex(domains.categories, fill_value=0)
    return pd.DataFrame(
        {
            "domain": counts.index.astype(str),
            "spots": counts.to_numpy(),
            "share": counts.to_numpy() / len(domains),
        }
    )


def dense_rows(values, rows: slice) -> np.ndarray:
    """A block of rows of ``values`` (numpy, scipy sparse, h5py dataset) as a dense float32 array."""
    part = values[rows]
    return np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float32)


def sampled_rows(values, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted) of ``values`` as a dense float32 array, read block by block (an h5py
    dataset is never indexed spot by spot)."""
    if isinstance(values, np.ndarray):
        return np.asarray(values[rows], dtype=np.float32)
    parts = []
    for block in row_blocks(values):
        inside = rows[(rows >= block.start) & (rows < block.stop)]
        if len(inside):
            parts.append(dense_rows(values, block)[inside - block.start])
    return np.concatenate(parts)


def row_blocks(values) -> list[slice]:
    """Slices of rows covering ``values`` with at most about 16 M values each."""
    n_spots, n_genes = values.shape
    step = max(1, _BLOCK_VALUES // max(n_genes, 1))
    return [slice(start, min(start + step, n_spots)) for start in range(0, n_spots, step)]


def _principal_components(values, fit: np.ndarray, options: DomainOptions) -> np.ndarray:
    """Every spot's first principal components of the z-scored genes (scanpy's PCA fitted on the
    ``fit`` spots; genes constant or missing there left out)."""
    import anndata as ad
    import scanpy as sc

    sample = sampled_rows(values, fit)
    with np.errstate(invalid="ignore"):
        mean, sd = np.nanmean(sample, axis=0), np.nanstd(sample, axis=0)
    kept = np.isfinite(sd) & (sd > 0)
    if kept.sum() < 2:
        raise InputError("domains need at least two genes that vary across the slide's spots")
    n_pcs = int(min(options.n_pcs, kept.sum() - 1, len(fit) - 1))
    scaled = ad.AnnData(_zscore(sample, mean, sd, kept))
    sc.pp.pca(scaled, n_comps=n_pcs, random_state=options.seed, svd_solver="arpack")
    loadings = scaled.varm["PCs"].astype(np.float32)
    components = np.empty((values.shape[0], n_pcs), dtype=np.float32)
    for block in row_blocks(values):
        components[block] = _zscore(dense_rows(values, block), mean, sd, kept) @ loadings
    return components


def _zscore(block: np.ndarray, mean: np.ndarray, sd: np.ndarray, kept: np.ndarray) -> np.ndarray:
    z = (block[:, kept] - mean[kept]) / sd[kept]
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _kmeans(features: np.ndarray, fit: np.ndarray, options: DomainOptions) -> np.ndarray:
    from sklearn.cluster import KMeans

    model = KMeans(options.n_domains, n_init=10, random_state=options.seed).fit(features[fit])
    return model.predict(features)


def _leiden(features: np.ndarray, fit: np.ndarray, options: DomainOptions) -> np.ndarray:
    """Leiden (scanpy, igraph) on the symmetric k-nearest-neighbour graph of the fitted spots; the rest
    take the majority domain of their nearest fitted spots (an approximate search: each neighbour found
    within twice its true distance, 30 × faster in 20 dimensions). (The graph is built here: scanpy 1.11's
    ``pp.neighbors`` fails on scipy ≥ 1.17's sparse arrays above 4,096 spots, ``getnnz`` is gone.)"""
    import anndata as ad
    import scanpy as sc
    from scipy.spatial import cKDTree

    k = min(options.expression_neighbours, len(fit) - 1)
    tree = cKDTree(features[fit])
    _, nearest = tree.query(features[fit], k=k + 1, workers=-1)
    rows = np.repeat(np.arange(len(fit)), k)
    graph = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, nearest[:, 1:].ravel())), shape=(len(fit),) * 2
    )
    graph = graph.maximum(graph.T)
    fitted_spots = ad.AnnData(obs=pd.DataFrame(index=np.arange(len(fit)).astype(str)))
    sc.tl.leiden(
        fitted_spots,
        resolution=options.resolution,
        adjacency=graph,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=options.seed,
    )
    fitted = fitted_spots.obs["leiden"].astype(int).to_numpy()
    labels = np.empty(len(features), dtype=np.int64)
    labels[fit] = fitted
    rest = np.setdiff1d(np.arange(len(features)), fit)
    if len(rest):
        _, nearest = tree.query(features[rest], k=k, eps=1.0, workers=-1)  # approximate: each within 2×
        votes = np.zeros((len(rest), fitted.max() + 1), dtype=np.int32)
        np.add.at(votes, (np.repeat(np.arange(len(rest)), k), fitted[nearest].ravel()), 1)
        labels[rest] = votes.argmax(axis=1)
    return labels


def _by_size(labels: np.ndarray) -> pd.Categorical:
    """Domains renamed "0", "1", … from the largest (ties: the lower original label)."""
    found, counts = np.unique(labels, return_counts=True)
    order = found[np.lexsort((found, -counts))]
    rank = np.empty(labels.max() + 1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    names = [str(i) for i in range(len(order))]
    return pd.Categorical.from_codes(rank[labels], categories=names)
