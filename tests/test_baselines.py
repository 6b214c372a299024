"""Tuned baselines on synthetic data whose answer is known: the ridge path equals scikit-learn's
ridge, the kNN grid equals brute force, spatial mixing, inner folds, and tuning that never reads
the test slide's expression."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc.base.metrics import score
from napari_spahgc.evaluate import baselines
from napari_spahgc.evaluate.baselines import (
    BASELINES,
    SEEDED_BASELINES,
    choose,
    inner_folds,
    knn_grid,
    ridge_grid,
)
from napari_spahgc.model.slide_data import SlideData


def _slide(name, embeddings, expression, coords=None, patient=None):
    coords = coords if coords is not None else np.c_[np.arange(len(embeddings)), np.zeros(len(embeddings))]
    return SlideData(name, np.array([f"{name}{i}" for i in range(len(embeddings))]),
                     embeddings.astype(np.float32), coords.astype(float), expression.astype(np.float32),
                     patient)  # fmt: skip


def _cohort(n_slides=4, n=60, seed=0):
    """Slides whose expression is a noisy linear map of the embeddings, on a 2-d grid of spots."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(12, 6))
    coords = np.stack(np.meshgrid(np.arange(10), np.arange(6)), -1).reshape(-1, 2)[:n] * 100.0
    slides = []
    for i in range(n_slides):
        x = rng.normal(size=(n, 12))
        slides.append(_slide(f"S{i}", x, x @ weights + rng.normal(scale=2.0, size=(n, 6)), coords))
    return slides


def test_the_ridge_path_equals_scikit_learn_ridge():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    *train, test = _cohort()
    grid = ridge_grid(train, test)
    assert len(grid) == len(baselines.RIDGE_ALPHAS)
    x, y = np.concatenate([s.embeddings for s in train]), np.concatenate([s.expression for s in train])
    for alpha in (10.0, 1e4):
        probe = make_pipeline(StandardScaler(), PCA(12, random_state=0), Ridge(alpha=alpha)).fit(x, y)
        np.testing.assert_allclose(
            grid[(("alpha", alpha),)], probe.predict(test.embeddings), rtol=1e-4, atol=1e-4
        )


def _brute_force_knn(train, test, k, statistics=None):
    """Mean expression of the k cosine-nearest training spots, the embeddings first standardised with
    ``statistics`` (mean, sd) when given."""
    bank = np.concatenate([s.embeddings for s in train]).astype(np.float64)
    queries = test.embeddings.astype(np.float64)
    if statistics is not None:
        mean, sd = statistics
        bank, queries = (bank - mean) / sd, (queries - mean) / sd
    expression = np.concatenate([s.expression for s in train])
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    order = np.argsort(-(queries @ unit.T), axis=1, kind="stable")
    return expression[order[:, :k]].mean(1)


def test_the_knn_grid_equals_brute_force():
    *train, test = _cohort()
    grid = knn_grid(train, test)
    bank = np.concatenate([s.embeddings for s in train]).astype(np.float64)
    statistics = bank.mean(0), bank.std(0)
    for k in (5, 20, 100):
        np.testing.assert_allclose(
            grid[(("standardise", 0.0), ("k", float(k)))],
            _brute_force_knn(train, test, k),
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            grid[(("standardise", 1.0), ("k", float(k)))],
            _brute_force_knn(train, test, k, statistics),
            rtol=1e-5,
            atol=1e-5,
        )
    assert {standardise for ((_, standardise), _) in grid} == {0.0, 1.0}
    assert max(k for (_, (_, k)) in grid) <= len(bank)  # ks beyond the bank are left out


def test_standardised_retrieval_uses_the_training_slides_statistics_only(monkeypatch):
    *train, test = _cohort(seed=3)
    # a test slide from another distribution: shifted and rescaled, feature by feature
    scale, shift = np.linspace(0.2, 5.0, 12), np.linspace(-3.0, 3.0, 12)
    moved = _slide("T", test.embeddings * scale + shift, test.expression, test.coords)
    bank = np.concatenate([s.embeddings for s in train]).astype(np.float64)
    train_only = bank.mean(0), bank.std(0)
    both = np.concatenate([bank, moved.embeddings])
    with_test = both.mean(0), both.std(0)
    seen = []
    standardiser = baselines.standardiser
    monkeypatch.setattr(baselines, "standardiser", lambda x: seen.append(x.copy()) or standardiser(x))
    grid = knn_grid(train, moved)
    (fitted_on,) = seen  # the statistics are fitted once, on the pooled training embeddings exactly
    np.testing.assert_array_equal(fitted_on, bank.astype(np.float32))
    for k in (5, 50):
        prediction = grid[(("standardise", 1.0), ("k", float(k)))]
        np.testing.assert_allclose(
            prediction, _brute_force_knn(train, moved, k, train_only), rtol=1e-5, atol=1e-5
        )
        # statistics that had seen the test slide would retrieve other neighbours
        assert np.abs(prediction - _brute_force_knn(train, moved, k, with_test)).max() > 1e-3
    # a spot's prediction does not depend on the other test spots: replace half of them
    half = len(test.embeddings) // 2
    other = moved.embeddings.copy()
    other[half:] = 100.0 * np.random.default_rng(0).normal(size=other[half:].shape) + 50.0
    changed = knn_grid(train, _slide("T", other, test.expression, test.coords))
    for setting, prediction in grid.items():
        np.testing.assert_array_equal(changed[setting][:half], prediction[:half])


def _noisy_scale_cohort(n_slides=4, n=60, seed=0):
    """Slides whose embeddings have 4 pure-noise features on a scale of 100 and 4 informative ones on
    a scale of 1 (expression a noisy linear map of those): retrieval on the raw embeddings finds
    neighbours by noise, on standardised embeddings by signal too."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(4, 6))
    coords = np.stack(np.meshgrid(np.arange(10), np.arange(6)), -1).reshape(-1, 2)[:n] * 100.0
    slides = []
    for i in range(n_slides):
        signal, noise = rng.normal(size=(n, 4)), 100.0 * rng.normal(size=(n, 4))
        expression = signal @ weights + rng.normal(scale=0.5, size=(n, 6))
        slides.append(_slide(f"S{i}", np.c_[noise, signal], expression, coords))
    return slides


def test_knn_chooses_standardised_retrieval_when_a_noise_feature_dominates_the_scale():
    slides = _noisy_scale_cohort()
    _, means = choose(knn_grid, slides)
    best = {s: max(v for ((_, standardise), _), v in means.items() if standardise == s) for s in (0.0, 1.0)}
    assert best[1.0] > best[0.0] + 0.2 and best[0.0] < 0.3  # raw retrieval finds noise
    *train, test = slides
    for name in ("knn", "knn_spatial", "blend_spatial"):
        assert BASELINES[name](train, test).chosen["standardise"] == 1.0, name
    grid = knn_grid(train, test)
    pcc = {setting: score(test.expression, prediction)[0]["pcc"] for setting, prediction in grid.items()}
    assert min(pcc[(("standardise", 1.0), ("k", k))] for k in (5.0, 10.0, 20.0)) > max(
        pcc[(("standardise", 0.0), ("k", k))] for k in (5.0, 10.0, 20.0)
    )


def test_inner_folds_leave_out_a_patient_when_there_are_two():
    slides = _cohort()
    assert [[s.slide_id for s in v] for _, v in inner_folds(slides)] == [["S0"], ["S1"], ["S2"], ["S3"]]
    for slide, patient in zip(slides, ["p1", "p2", "p1", "p2"], strict=True):
        slide.patient = patient
    folds = inner_folds(slides)
    assert [[s.slide_id for s in v] for _, v in folds] == [["S0", "S2"], ["S1", "S3"]]
    assert all(not {s.slide_id for s in t} & {s.slide_id for s in v} for t, v in folds)


def test_choose_picks_the_setting_that_validates_best():
    slides = _cohort()

    def grid(train, test):  # "good" predicts the truth; "bad" predicts noise
        noise = np.random.default_rng(len(test.spot_ids)).normal(size=test.expression.shape)
        return {(("good", 1.0),): test.expression + 0.1 * noise, (("good", 0.0),): noise}

    setting, means = choose(grid, slides)
    assert setting == (("good", 1.0),) and means[setting] > 0.9 > means[(("good", 0.0),)]


@pytest.mark.parametrize("name", list(BASELINES))
def test_tuning_never_reads_the_test_slide(name):
    *train, test = _cohort(seed=1)
    tuned = BASELINES[name](train, test)
    poisoned = _slide(test.slide_id, test.embeddings, -1000 * test.expression[::-1], test.coords)
    again = BASELINES[name](train, poisoned)
    assert again.chosen == tuned.chosen and again.inner_pcc == tuned.inner_pcc
    np.testing.assert_array_equal(again.prediction, tuned.prediction)
    assert tuned.chosen and set(tuned.inner_pcc)  # it did choose among candidates
    truth_pcc = np.corrcoef(tuned.prediction.ravel(), test.expression.ravel())[0, 1]
    assert truth_pcc > 0.5  # and predicts the learnable signal


def test_shared_candidates_give_the_same_results_computed_once(monkeypatch):
    *train, test = _cohort(seed=2)
    sharing = [name for name in BASELINES if name != "mlp"]  # the MLP probe shares nothing
    alone = {name: BASELINES[name](train, test) for name in sharing}
    calls = []
    svd = np.linalg.svd
    monkeypatch.setattr(np.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    with baselines.shared_candidates():
        shared = {name: BASELINES[name](train, test) for name in sharing}
        assert ridge_grid(train, test) is ridge_grid(train, test)
        svds = len(calls)
    assert ridge_grid(train, test) is not ridge_grid(train, test)  # nothing kept outside the block
    for name in sharing:
        assert shared[name].chosen == alone[name].chosen and shared[name].inner_pcc == alone[name].inner_pcc
        np.testing.assert_array_equal(shared[name].prediction, alone[name].prediction)
    # ridge's path: one SVD per (inner training, validation slide) and one for the test slide, for
    # ridge, ridge_spatial and blend_spatial together
    assert svds == len(inner_folds(train)) + 1


def test_only_the_mlp_depends_on_its_seed():
    *train, test = _cohort(seed=4)
    assert SEEDED_BASELINES == ("mlp",) and set(SEEDED_BASELINES) <= set(BASELINES)
    first, again, other = (BASELINES["mlp"](train, test, seed=seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(again.prediction, first.prediction)
    assert again.chosen == first.chosen and again.inner_pcc == first.inner_pcc
    assert np.abs(other.prediction - first.prediction).max() > 1e-4  # another seed, another network
    assert other.inner_pcc != first.inner_pcc
    np.testing.assert_array_equal(BASELINES["mlp"](train, test).prediction, first.prediction)  # default 0
    for name in set(BASELINES) - set(SEEDED_BASELINES):
        zero, one = BASELINES[name](train, test, seed=0), BASELINES[name](train, test, seed=1)
        assert one.chosen == zero.chosen and one.inner_pcc == zero.inner_pcc, name
        np.testing.assert_array_equal(one.prediction, zero.prediction)
