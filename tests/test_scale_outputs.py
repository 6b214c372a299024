"""Predictions at Visium HD-like sizes: written without a second dense copy, read back ``backed='r'``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spahgc.base.metrics import gene_pcc
from napari_spahgc.io.export import (
    blockwise_pcc,
    measured_values,
    spot_anndata,
    write_h5ad,
)
from napari_spahgc.io.slide import Slide

N_SPOTS, N_GENES = 20_000, 50


def _binned_slide(n: int, counts: sp.csr_matrix | None = None) -> Slide:
    side = int(np.ceil(np.sqrt(n)))
    rows, cols = np.divmod(np.arange(n), side)
    centers = np.stack([cols, rows], axis=1) * 21.77 + 50.0  # 8 µm bins at 0.3675 µm/px
    ids = pd.Index([f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)])
    expression = None
    if counts is not None:
        expression = ad.AnnData(counts, obs=pd.DataFrame(index=ids))
        expression.var_names = [f"GENE{g}" for g in range(counts.shape[1])]
    return Slide(
        "HD slide", ids, centers, expression=expression, pixel_size_um=0.3675, spot_diameter_px=21.77
    )


def _sparse_counts(n: int, n_genes: int, seed: int = 0) -> sp.csr_matrix:
    """Tens of UMIs per bin over many genes: mostly zeros, as 8 µm bins are."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.3, 0.2, size=n_genes)
    return sp.csr_matrix(rng.poisson(rates, size=(n, n_genes)).astype(np.float32))


def test_large_prediction_with_sparse_measured_reads_back_backed(tmp_path):
    counts = _sparse_counts(N_SPOTS, 400)
    slide = _binned_slide(N_SPOTS, counts)
    genes = [f"GENE{g}" for g in range(N_GENES - 1)] + ["NOT_MEASURED"]
    measured = measured_values(slide.expression, genes, sparse=True)
    assert sp.isspmatrix_csr(measured) and measured.nnz < 0.5 * N_SPOTS * N_GENES
    values = np.random.default_rng(1).normal(3, 1, (N_SPOTS, N_GENES)).astype(np.float32)
    adata = spot_anndata(slide, values, genes, layers={"measured": measured})
    assert np.shares_memory(adata.X, values)  # float32 X is not copied
    path = write_h5ad(adata, tmp_path / "hd.h5ad")

    back = ad.read_h5ad(path, backed="r")
    try:
        assert list(back.obs_names) == list(slide.spot_ids) and list(back.var_names) == genes
        np.testing.assert_array_equal(back.X[:], values)
        np.testing.assert_array_equal(back.obsm["spatial"], slide.centers_px)
        layer = back.layers["measured"]
        layer = layer[:] if not sp.issparse(layer) else layer
        layer = sp.csr_matrix(layer)
        assert (layer != measured).nnz == int(np.isnan(measured.data).sum())  # NaN != NaN only
        np.testing.assert_array_equal(layer.indices, measured.indices)
        np.testing.assert_array_equal(layer.data, measured.data)
    finally:
        back.file.close()


def test_sparse_measured_equals_the_dense_log_cpm():
    counts = _sparse_counts(3_000, 120, seed=2)
    counts[5] = 0  # a bin without counts
    slide = _binned_slide(3_000, sp.csr_matrix(counts))
    genes = ["GENE7", "MISSING", "GENE0", "GENE119"]
    dense = measured_values(slide.expression, genes, sparse=False)
    sparse = measured_values(slide.expression, genes, sparse=True)
    assert np.isnan(dense[:, 1]).all() and np.isnan(sparse[:, [1]].toarray()).all()
    np.testing.assert_allclose(sparse.toarray(), dense, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert measured_values(slide.expression, genes) is not None  # the automatic choice runs


@pytest.mark.parametrize("sparse_truth", [False, True])
def test_blockwise_pcc_matches_gene_pcc(sparse_truth):
    rng = np.random.default_rng(3)
    truth = rng.poisson(0.4, (5_000, 12)).astype(np.float32)
    truth[:, 3] = 1.0  # constant truth: NaN
    prediction = (truth + rng.normal(0, 1, truth.shape)).astype(np.float32)
    prediction[:, 5] = 2.0  # constant prediction: 0
    given = sp.csr_matrix(truth) if sparse_truth else truth
    np.testing.assert_allclose(
        blockwise_pcc(given, prediction, block_rows=777),
        gene_pcc(truth, prediction),
        atol=1e-4,  # gene_pcc sums in float32, this in float64
        equal_nan=True,
    )
