"""Model data: per-feature standardisation fitted on training slides, a slide's arrays on the
model's genes, and a fold's genes chosen on its training slides only."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_spahgc import GeneChoice, Slide
from napari_spahgc.model.slide_data import FeatureScale, SlideData, fold_data, slide_data


def _data(slide_id: str, embeddings: np.ndarray) -> SlideData:
    n = len(embeddings)
    return SlideData(slide_id, np.arange(n).astype(str), embeddings.astype(np.float32), np.zeros((n, 2)))


def _slide(slide_id: str, counts: np.ndarray, genes: list[str]) -> Slide:
    ids = pd.Index([f"{slide_id}-{i}" for i in range(len(counts))])
    expression = ad.AnnData(
        counts.astype(np.float32), obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=genes)
    )
    return Slide(slide_id, ids, np.c_[np.arange(len(ids)), np.zeros(len(ids))] * 100.0, expression=expression,
                 patient="P1")  # fmt: skip


def test_feature_scale_fits_the_training_slides_and_keeps_constant_features():
    rng = np.random.default_rng(0)
    slides = [_data("A", rng.normal(3, 2, (50, 4))), _data("B", rng.normal(-1, 5, (70, 4)))]
    for s in slides:
        s.embeddings[:, 2] = 7.0  # a feature that never varies
    scale = FeatureScale.fit(slides, "embeddings")
    together = np.concatenate([s.embeddings for s in slides])
    z = scale.transform(together)
    np.testing.assert_allclose(z[:, [0, 1, 3]].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(0), 1, atol=1e-5)
    assert scale.sd[2] == 1.0 and (z[:, 2] == 0).all()  # centred, not divided by zero
    np.testing.assert_allclose(scale.inverse(z), together, atol=1e-5)
    standardised = slides[0].standardised(scale)
    np.testing.assert_array_equal(standardised.embeddings, z[:50])
    assert standardised.slide_id == "A" and slides[0].embeddings[0, 2] == 7.0  # a copy; the slide is kept
    identity = FeatureScale.identity(4)
    np.testing.assert_array_equal(identity.transform(together), together.astype(np.float32))


def test_slide_data_on_the_models_genes():
    slide = _slide("S", np.array([[1, 3, 6], [0, 5, 5]]), ["A", "B", "C"])
    data = slide_data(slide, np.ones((2, 8)), ["C", "A"])
    assert data.n_spots == 2 and list(data.spot_ids) == ["S-0", "S-1"] and data.patient == "P1"
    assert data.embeddings.dtype == np.float32 and data.coords.dtype == np.float64
    np.testing.assert_allclose(data.expression, np.log1p([[6e5, 1e5], [5e5, 0]]), rtol=1e-6)
    assert slide_data(slide, np.ones((2, 8)), None).expression is None  # a slide to predict
    with pytest.raises(ValueError, match="S: 3 embeddings for 2 spots"):
        slide_data(slide, np.ones((3, 8)), ["A"])


def test_a_folds_genes_come_from_its_training_slides_only():
    training = [
        _slide("T1", np.ones((3, 3)), ["A", "B", "C"]),
        _slide("T2", np.ones((2, 3)), ["B", "C", "D"]),
    ]
    held_out = _slide("H", np.ones((4, 3)), ["B", "C", "Z"])  # measures Z, which no training slide does
    embeddings = {s.slide_id: np.zeros((s.n_spots, 5)) for s in (*training, held_out)}
    genes, train, test = fold_data(
        training, embeddings, GeneChoice(panel=("Z", "A", "B", "C", "D")), [held_out]
    )
    assert genes == ["B", "C"] and [d.expression.shape for d in train] == [(3, 2), (2, 2)]
    (held,) = test
    assert held.slide_id == "H" and held.expression.shape == (4, 2)
    np.testing.assert_allclose(held.expression, np.log1p(1e6 / 3), rtol=1e-6)  # totals over all its genes
    assert fold_data(training, embeddings, GeneChoice(panel=("B",)))[2] == []  # no held-out slide


def test_scales_are_accumulated_block_by_block(monkeypatch):
    """No concatenated copy of the slides: the mean and sd merge 16-row blocks, and still match the
    whole array's (a large mean beside a small sd: where a naive sum of squares cancels)."""
    import napari_spahgc.model.slide_data as slide_data_module

    monkeypatch.setattr(slide_data_module, "_FIT_ROWS", 16)
    rng = np.random.default_rng(4)
    slides = [_data("A", rng.normal(1000, 0.5, (50, 3))), _data("B", rng.normal(1001, 2, (37, 3)))]
    scale = FeatureScale.fit(slides, "embeddings")
    together = np.concatenate([s.embeddings for s in slides], dtype=np.float64)
    np.testing.assert_allclose(scale.mean, together.mean(0), rtol=1e-7)
    np.testing.assert_allclose(scale.sd, together.std(0), rtol=1e-5)


def test_dense_slides_keep_their_expression_in_float16():
    slide = _slide("S", np.array([[1, 3, 6], [0, 5, 5]]), ["A", "B", "C"])
    half = slide_data(slide, np.ones((2, 8), np.float16), ["C", "A"])
    full = slide_data(slide, np.ones((2, 8)), ["C", "A"])
    assert half.embeddings.dtype == half.expression.dtype == np.float16
    assert full.embeddings.dtype == full.expression.dtype == np.float32
    np.testing.assert_allclose(half.expression, full.expression, rtol=1e-3)
