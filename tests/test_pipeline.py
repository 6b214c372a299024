"""Cohort-level training and prediction to h5ad (synthetic slides generated from a known model)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spahgc import InputError, Slide
from napari_spahgc.pipeline import make_trainer, predict_slide, write_prediction_steps, write_predictions
from napari_spahgc.predictor import SpaHGCPredictor

N_GENES, DIM = 30, 12


def _cohort(n_slides: int = 4, n: int = 49, seed: int = 0) -> tuple[list[Slide], dict[str, np.ndarray]]:
    """Counts drawn from Poisson rates that depend on the spot embedding (a learnable signal)."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(DIM, N_GENES)) / 2
    slides, embeddings = [], {}
    for s in range(n_slides):
        emb = rng.normal(size=(n, DIM)).astype(np.float32)
        counts = rng.poisson(np.exp(1.5 + emb @ loadings / 2)).astype(np.float32)
        ids = pd.Index([f"{x}x{y}" for x in range(7) for y in range(7)][:n])
        expression = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=ids))
        expression.var_names = [f"GENE{g}" for g in range(N_GENES)]
        coords = np.array([[x * 272.0, y * 272.0] for x in range(7) for y in range(7)][:n])
        slides.append(
            Slide(f"S{s}", ids, coords, expression=expression, pixel_size_um=0.735, spot_diameter_px=136)
        )
        embeddings[f"S{s}"] = emb
    return slides, embeddings


def test_train_then_predict_to_h5ad(tmp_path):
    slides, embeddings = _cohort(5)
    train, test = slides[:4], slides[4]
    trainer = make_trainer(
        train, embeddings, n_hvg=20, encoder={"name": "synthetic"}, epochs=8, hidden=32, seed=1
    )
    model = trainer.fit()
    assert sorted(model.metadata.training_slides) == ["S0", "S1", "S2", "S3"]
    held_out = sorted(s for group in model.metadata.validation_slides for s in group)
    assert held_out == ["S0", "S1", "S2", "S3"]  # every training slide validates one member
    assert 0 < len(model.genes) <= 20 and len(model.metadata.validation["gene_pcc"]) == len(model.genes)

    adata = predict_slide(model, test, embeddings["S4"])
    assert list(adata.obs_names) == list(test.spot_ids) and list(adata.var_names) == model.genes
    assert adata.layers["measured"].shape == adata.shape and np.isfinite(adata.layers["measured"]).all()
    assert {"pcc", "validation_pcc"} <= set(adata.var)
    np.testing.assert_allclose(adata.obsm["spatial"], test.centers_px)
    assert adata.uns["napari_spahgc"]["encoder"]["name"] == "synthetic"

    folder = model.save(tmp_path / "model")
    reloaded = SpaHGCPredictor.load(folder)
    (path,) = write_predictions(reloaded, [test], embeddings, tmp_path / "pred")
    assert path.name == "S4.h5ad"
    _assert_same_prediction(ad.read_h5ad(path), adata)  # streamed to disk, by the reloaded model
    backed = ad.read_h5ad(path, backed="r")
    np.testing.assert_array_equal(backed.X[3:9], adata.X[3:9])
    backed.file.close()


def _assert_same_prediction(written: ad.AnnData, in_memory: ad.AnnData) -> None:
    """The file :func:`write_predictions` streamed holds what :func:`predict_slide` returns."""
    assert written.X.dtype == np.float32
    np.testing.assert_array_equal(written.X, in_memory.X)
    np.testing.assert_array_equal(written.layers["measured"], in_memory.layers["measured"])
    pd.testing.assert_frame_equal(written.var, in_memory.var)
    assert list(written.obs_names) == list(in_memory.obs_names)
    np.testing.assert_array_equal(written.obsm["spatial"], in_memory.obsm["spatial"])
    assert written.uns["napari_spahgc"]["kind"] == "SpaHGC prediction"


def test_streamed_prediction_cancelled_leaves_no_file(tmp_path):
    slides, embeddings = _cohort(4)
    model = make_trainer(slides[:3], embeddings, n_hvg=10, epochs=1, hidden=16).fit()
    target = tmp_path / "S3.h5ad"
    steps = write_prediction_steps(model, slides[3], embeddings["S3"], target)
    next(steps)
    next(steps)  # part of the file is written
    assert list(tmp_path.glob(".S3.h5ad.*.part"))
    steps.close()  # cancel between blocks
    assert list(tmp_path.iterdir()) == []


def test_panel_genes_and_missing_genes(tmp_path):
    slides, embeddings = _cohort(4)
    panel = ["GENE3", "GENE1", "NOT_MEASURED"]
    model = make_trainer(slides[:3], embeddings, panel=panel, epochs=2, hidden=32).fit()
    assert model.genes == ["GENE3", "GENE1"]  # panel order, measured on every training slide
    target = slides[3]
    target.expression = target.expression[:, ["GENE1"]].copy()  # this slide lacks GENE3
    measured = predict_slide(model, target, embeddings["S3"]).layers["measured"]
    assert np.isnan(measured[:, 0]).all() and np.isfinite(measured[:, 1]).all()


def test_training_needs_counts():
    slides, embeddings = _cohort(3)
    slides[1].expression = None
    with pytest.raises(InputError, match="need measured counts; none for S1"):
        make_trainer(slides, embeddings, n_hvg=10)
