"""The metrics of base/metrics.py on known inputs: per-gene PCC (constant genes excluded and counted),
top-gene PCC on the training slides' most variable genes, RMSE."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc.base.metrics import TOP_GENES, gene_pcc, most_variable, rmse, score


def test_metrics_on_known_values():
    truth = np.array([[1.0, 2.0, 7.0], [2.0, 2.0, 8.0], [3.0, 2.0, 9.0]])
    prediction = np.array([[2.0, 1.0, 0.0], [4.0, 2.0, 0.0], [6.0, 3.0, 0.0]])
    per_gene = gene_pcc(truth, prediction)
    # gene 1: constant truth → excluded (NaN); gene 2: constant prediction of a varying truth → 0
    assert per_gene[0] == pytest.approx(1.0) and np.isnan(per_gene[1]) and per_gene[2] == 0.0
    summary, scored = score(truth, prediction)
    assert summary["pcc"] == pytest.approx(0.5) and summary["n_genes_excluded"] == 1
    assert summary["n_genes_constant_prediction"] == 1
    np.testing.assert_array_equal(scored, per_gene)
    assert summary["rmse"] == pytest.approx(rmse(truth, prediction))
    assert np.isnan(score(truth[:, 1:2], prediction[:, 1:2])[0]["pcc"])  # no gene has a PCC


def test_a_constant_predictor_gains_nothing():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(50, 20))
    honest = truth + rng.normal(scale=3.0, size=truth.shape)  # weak but real signal
    degenerate = honest.copy()
    degenerate[:, 10:] = 0.0  # gives up on half the genes
    assert score(truth, degenerate)[0]["pcc"] < score(truth, honest)[0]["pcc"]


def test_top_genes_are_the_most_variable_on_the_training_slides():
    rng = np.random.default_rng(5)
    training = [rng.normal(size=(30, 8)) * np.arange(1, 9), rng.normal(size=(40, 8)) * np.arange(1, 9)]
    top = most_variable(training, 3)
    assert top.tolist() == [5, 6, 7]
    truth = rng.normal(size=(25, 8))
    prediction = truth.copy()
    prediction[:, :5] = rng.normal(size=(25, 5))  # right only on the top genes
    record, per_gene = score(truth, prediction, top)
    # the headline key keeps its name when fewer genes than TOP_GENES are the top genes
    assert record[f"pcc_top{TOP_GENES}"] == pytest.approx(1.0) and record["pcc"] == pytest.approx(
        np.mean(per_gene)
    )
    assert rmse(np.zeros((2, 2)), np.array([[1.0, 1.0], [3.0, 3.0]])) == pytest.approx(np.sqrt(5.0))
