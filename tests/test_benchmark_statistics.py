"""Seeds and paired statistics in the benchmark: seeded methods run once per seed, each fold reports
its mean ± sd over seeds, and every SpaHGC method is compared with the best tuned baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_spahgc as ns
from napari_spahgc.evaluate.benchmark import METHODS, Method, Outcome
from napari_spahgc.evaluate.statistics import paired_comparison
from synthetic_slides import poisson_cohort


def test_paired_comparison_of_known_differences():
    theirs = np.array([0.20, 0.21, 0.19, 0.22, 0.20])
    ours = theirs + np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    c = paired_comparison(ours, theirs)
    # t = mean / (sd / √n) = 0.03 / (0.0158 / √5) = 4.243 on 4 degrees of freedom
    assert c["t_test_p"] == pytest.approx(0.01324, abs=1e-4)
    assert c["wilcoxon_p"] == pytest.approx(0.0625)  # five positive differences: the exact minimum
    assert c["wins"] == 5 and c["folds"] == 5 and c["mean_difference"] == pytest.approx(0.03)
    assert c["ratio"] == pytest.approx(ours.mean() / theirs.mean())
    low, high = c["ratio_ci"]
    assert 1.0 < low < c["ratio"] < high < max(ours / theirs)  # every resample favours ours here
    mixed = paired_comparison(theirs + np.array([0.01, -0.01, 0.02, -0.02, 0.0]), theirs)
    assert mixed["t_test_p"] == pytest.approx(1.0) and mixed["ratio_ci"][0] < 1 < mixed["ratio_ci"][1]
    assert paired_comparison(theirs, theirs)["t_test_p"] is None  # nothing to test


def test_seeded_methods_run_once_per_seed_and_folds_report_mean_and_sd(tmp_path, monkeypatch):
    calls = []

    def method(seeded: bool) -> Method:
        def run(train, test, fold):
            seed = fold.config.train.seed
            calls.append((seeded, test.slide_id, seed))
            rng = np.random.default_rng(seed if seeded else 0)
            x = fold.embeddings[test.slide_id] @ rng.normal(size=(12, len(fold.genes)))
            return Outcome(x.astype(np.float32), {"chosen": {"seed": float(seed)}})

        return Method("spahgc" if seeded else "baseline", run, seeded=seeded)

    monkeypatch.setitem(METHODS, "ours", method(True))
    monkeypatch.setitem(METHODS, "fixed", method(False))
    slides, embeddings = poisson_cohort()
    config = ns.SpaHGCConfig.from_options(seed=5, device="cpu")
    request = ns.EvaluateRequest(
        slides, embeddings, ns.GeneChoice(n_hvg=20), tmp_path, ["ours", "fixed"], config, seeds=3
    )
    report = ns.run_to_end(ns.evaluate(request))

    assert sorted(c[2] for c in calls if c[0]) == sorted([5, 6, 7] * 4)  # 4 folds × seeds 5, 6, 7
    assert sorted(c[2] for c in calls if not c[0]) == [5] * 4  # once per fold, with the first seed
    fold = report["methods"]["ours"]["folds"]["S1"]
    seeds = [fold["seeds"][s]["pcc"] for s in ("5", "6", "7")]
    assert fold["pcc"] == pytest.approx(np.mean(seeds)) and fold["pcc_seed_sd"] == pytest.approx(
        np.std(seeds, ddof=1)
    )
    assert "seeds" not in report["methods"]["fixed"]["folds"]["S1"]
    comparison = report["comparisons"]["ours"]
    assert comparison["against"] == "fixed" and comparison["folds"] == 4
    ours = [report["methods"]["ours"]["folds"][s]["pcc"] for s in ("S0", "S1", "S2", "S3")]
    fixed = [report["methods"]["fixed"]["folds"][s]["pcc"] for s in ("S0", "S1", "S2", "S3")]
    assert comparison["differences"] == pytest.approx(np.subtract(ours, fixed), abs=1e-5)
    assert report["protocol"]["seeds"] == [5, 6, 7]
    markdown = (tmp_path / "report.md").read_text()
    assert f"{fold['pcc']:.3f} ± {fold['pcc_seed_sd']:.3f}" in markdown
    assert "ours / best tuned baseline (fixed) PCC" in markdown and "paired t p = " in markdown
    assert "seed=5 | seed=6 | seed=7" in markdown  # what each seed chose
    assert json.loads((tmp_path / "report.json").read_text())["comparisons"] == report["comparisons"]


def test_seeds_must_be_positive(tmp_path):
    slides, embeddings = poisson_cohort()
    request = ns.EvaluateRequest(slides, embeddings, ns.GeneChoice(n_hvg=20), tmp_path, ["ridge"], seeds=0)
    with pytest.raises(ns.InputError, match="seeds must be at least 1"):
        ns.run_to_end(ns.evaluate(request))
