"""Metrics on known inputs: per-gene PCC (constant genes excluded and counted), RMSE, ARI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc.evaluate import ari, cluster_expression, gene_pcc, rmse, score


def test_metrics_on_known_values():
    truth = np.array([[1.0, 2.0, 7.0], [2.0, 2.0, 8.0], [3.0, 2.0, 9.0]])
    prediction = np.array([[2.0, 1.0, 0.0], [4.0, 2.0, 0.0], [6.0, 3.0, 0.0]])
    per_gene = gene_pcc(truth, prediction)
    assert per_gene[0] == pytest.approx(1.0) and np.isnan(per_gene[1]) and np.isnan(per_gene[2])
    summary, scored = score(truth, prediction)
    assert (
        summary["pcc"] == pytest.approx(1.0) and summary["n_genes_excluded"] == 2
    )  # two constant genes excluded, counted
    np.testing.assert_array_equal(scored, per_gene)
    assert summary["rmse"] == pytest.approx(rmse(truth, prediction))
    assert np.isnan(score(truth[:, 1:], prediction[:, 1:])[0]["pcc"])  # no gene has a PCC
    assert rmse(np.zeros((2, 2)), np.array([[1.0, 1.0], [3.0, 3.0]])) == pytest.approx(np.sqrt(5.0))
    assert ari([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    groups = np.r_[rng.normal(0, 0.1, (20, 5)), rng.normal(5, 0.1, (20, 5))]
    assert ari(np.repeat([0, 1], 20), cluster_expression(groups, 2)) == pytest.approx(1.0)
