"""Tuned baselines on synthetic data whose answer is known: the ridge path equals scikit-learn's
ridge, the kNN grid equals brute force, spatial mixing, inner folds, and tuning that never reads
the test slide's expression."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc.evaluate import baselines
from napari_spahgc.evaluate.baselines import BASELINES, choose, inner_folds, knn_grid, ridge_grid
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


def test_the_knn_grid_equals_brute_force():
    *train, test = _cohort()
    grid = knn_grid(train, test)
    bank = np.concatenate([s.embeddings for s in train])
    expression = np.concatenate([s.expression for s in train])
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = test.embeddings / np.linalg.norm(test.embeddings, axis=1, keepdims=True)
    order = np.argsort(-(queries @ unit.T), axis=1, kind="stable")
    for k in (5, 20, 100):
        np.testing.assert_allclose(
            grid[(("k", float(k)),)], expression[order[:, :k]].mean(1), rtol=1e-5, atol=1e-5
        )
    assert max(k for ((_, k),) in grid) <= len(bank)  # ks beyond the bank are left out


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
