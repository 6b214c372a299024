"""The held-out section's counts reach only the benchmark's scorer: every method gets the section
without them, poisoning them changes nothing SpaHGC learns or predicts, only its score, and a model
that did train on them is refused. (The baselines have their own poisoning test in test_baselines.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from safetensors.numpy import load_file

import napari_spahgc as ns
from napari_spahgc.evaluate import benchmark
from napari_spahgc.evaluate.benchmark import METHODS, LeakageError, Method, Outcome
from synthetic_slides import count_table, poisson_cohort


def _benchmark(slides, embeddings, out) -> dict:
    config = ns.SpaHGCConfig.from_options({"epochs": 30, "eval_every": 5, "hidden": 32}, device="cpu")
    request = ns.EvaluateRequest(
        slides, embeddings, ns.GeneChoice(n_hvg=20), out / "report", methods=["spahgc"], config=config,
        held_out=[["S3"]], models=out / "models",
    )  # fmt: skip
    return ns.run_to_end(ns.evaluate(request))


def test_poisoned_held_out_counts_change_the_score_only(tmp_path):
    slides, embeddings = poisson_cohort()
    clean = _benchmark(slides, embeddings, tmp_path / "clean")
    held_out = slides[3]
    poison = held_out.expression.X.toarray()[::-1] * 1000 + 7  # other rows, scale and genes' order
    poisoned_slides = [
        *slides[:3],
        dataclasses.replace(held_out, expression=count_table(poison, held_out.spot_ids)),
    ]
    poisoned = _benchmark(poisoned_slides, embeddings, tmp_path / "poisoned")

    before, after = clean["methods"]["spahgc"]["folds"]["S3"], poisoned["methods"]["spahgc"]["folds"]["S3"]
    for choice in ("epochs_run", "members", "validation_pcc", "smoothing", "interval_mix"):
        assert before[choice] == after[choice], choice
    clean_weights, poisoned_weights = (
        load_file(tmp_path / run / "models" / "S3" / "default" / "model.safetensors")
        for run in ("clean", "poisoned")
    )
    assert clean_weights.keys() == poisoned_weights.keys()
    for name, tensor in clean_weights.items():  # the same model, bit for bit
        np.testing.assert_array_equal(tensor, poisoned_weights[name], err_msg=name)
    model = ns.load_model(tmp_path / "poisoned" / "models" / "S3" / "default")
    assert "S3" not in model.metadata.training_slides
    assert before["pcc"] != after["pcc"]  # the scorer did read the (poisoned) truth
    assert before["pcc"] > 0.3  # and the clean model predicts the learnable signal


def test_every_method_gets_the_held_out_section_without_its_counts(tmp_path, monkeypatch):
    seen = []

    def spy(train, test, fold):
        seen.append((test.expression, fold.test_slide.expression, [s.slide_id for s in train]))
        return Outcome(np.zeros((test.n_spots, len(fold.genes)), np.float32), {"chosen": {}})

    monkeypatch.setitem(METHODS, "spy", Method("baseline", spy))
    slides, embeddings = poisson_cohort()
    request = ns.EvaluateRequest(slides, embeddings, ns.GeneChoice(n_hvg=20), tmp_path, methods=["spy"])
    report = ns.run_to_end(ns.evaluate(request))
    assert len(seen) == 4  # leave one slide out: every slide held out once
    assert all(counts is None and slide_counts is None for counts, slide_counts, _ in seen)
    assert [sorted(train) for *_, train in seen] == [
        sorted({"S0", "S1", "S2", "S3"} - {held}) for held in ("S0", "S1", "S2", "S3")
    ]
    assert report["methods"]["spy"]["folds"]["S0"]["pcc"] == 0.0  # a constant prediction scores 0


def test_a_model_trained_on_the_held_out_section_is_refused(tmp_path, monkeypatch):
    """A planted leak — the fold's training slides gain the held-out section, counts and all — is
    caught from what the trained model records, not from the lists the benchmark built."""
    slides, embeddings = poisson_cohort()
    by_id, fold = {s.slide_id: s for s in slides}, benchmark.Fold

    def leaky_fold(genes, config, train_slides, test_slide, *rest):
        return fold(genes, config, [*train_slides, by_id[test_slide.slide_id]], test_slide, *rest)

    monkeypatch.setattr(benchmark, "Fold", leaky_fold)
    with pytest.raises(LeakageError, match=r"the model for held-out slide S3 trained on \['S3'\]"):
        _benchmark(slides, embeddings, tmp_path)
