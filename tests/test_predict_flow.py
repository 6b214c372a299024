"""The prediction flow on a cohort whose counts are drawn from a known model: a model in memory, a
model folder and a training request all predict through it, in memory or streamed to h5ad."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import napari_spahgc as ns
from napari_spahgc.model.slide_data import slide_data

N_GENES, DIM = 30, 12


def _cohort(n_slides: int = 4, n: int = 49, seed: int = 0) -> tuple[list[ns.Slide], ns.Embeddings]:
    """Counts drawn from Poisson rates that depend on the spot embedding (a learnable signal)."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(DIM, N_GENES)) / 2
    slides, arrays = [], {}
    for s in range(n_slides):
        emb = rng.normal(size=(n, DIM)).astype(np.float32)
        counts = rng.poisson(np.exp(1.5 + emb @ loadings / 2)).astype(np.float32)
        ids = pd.Index([f"{x}x{y}" for x in range(7) for y in range(7)][:n])
        expression = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=ids))
        expression.var_names = [f"GENE{g}" for g in range(N_GENES)]
        coords = np.array([[x * 272.0, y * 272.0] for x in range(7) for y in range(7)][:n])
        slides.append(
            ns.Slide(f"S{s}", ids, coords, expression=expression, pixel_size_um=0.735, spot_diameter_px=136)
        )
        arrays[f"S{s}"] = emb
    return slides, ns.Embeddings(encoder={"name": "synthetic", "dim": DIM}, arrays=arrays)


def _trained(slides, embeddings, genes: ns.GeneChoice, **options) -> ns.SpaHGCPredictor:
    config = ns.SpaHGCConfig.from_options({"hidden": 32, **options}, device="cpu")
    return ns.run_to_end(ns.train(ns.TrainRequest(slides, embeddings, genes, config))).model


def test_train_then_predict_to_h5ad(tmp_path):
    slides, embeddings = _cohort(5)
    train, test = slides[:4], slides[4]
    model = _trained(train, embeddings, ns.GeneChoice(n_hvg=20), epochs=8, seed=1)
    assert sorted(model.metadata.training_slides) == ["S0", "S1", "S2", "S3"]
    held_out = sorted(s for group in model.metadata.validation_slides for s in group)
    assert held_out == ["S0", "S1", "S2", "S3"]  # every training slide validates one member
    assert 0 < len(model.genes) <= 20 and len(model.metadata.validation["gene_pcc"]) == len(model.genes)

    in_memory = ns.run_to_end(ns.predict(ns.PredictRequest(model, [test], embeddings, device="cpu")))
    assert in_memory.files == {} and in_memory.model_folder is None and list(in_memory.predictions) == ["S4"]
    adata = in_memory.predictions["S4"]
    assert list(adata.obs_names) == list(test.spot_ids) and list(adata.var_names) == model.genes
    assert adata.layers["measured"].shape == adata.shape and np.isfinite(adata.layers["measured"]).all()
    assert {"pcc", "validation_pcc"} <= set(adata.var)
    np.testing.assert_allclose(adata.obsm["spatial"], test.centers_px)
    assert adata.uns["napari_spahgc"]["encoder"]["name"] == "synthetic"
    np.testing.assert_array_equal(adata.X, model.predict(slide_data(test, embeddings["S4"], None)))

    folder = model.save(tmp_path / "model")
    out = tmp_path / "pred"
    streamed = ns.run_to_end(ns.predict(ns.PredictRequest(folder, [test], embeddings, out, device="cpu")))
    path = out / "S4.h5ad"
    assert streamed.files == {"S4": str(path)} and streamed.predictions == {}
    assert streamed.model_folder == str(folder)
    _assert_same_prediction(ad.read_h5ad(path), adata)  # streamed to disk, by the reloaded model
    backed = ad.read_h5ad(path, backed="r")
    np.testing.assert_array_equal(backed.X[3:9], adata.X[3:9])
    backed.file.close()


def _assert_same_prediction(written: ad.AnnData, in_memory: ad.AnnData) -> None:
    """The file the flow streamed holds what it returns in memory."""
    assert written.X.dtype == np.float32
    np.testing.assert_array_equal(written.X, in_memory.X)
    np.testing.assert_array_equal(written.layers["measured"], in_memory.layers["measured"])
    pd.testing.assert_frame_equal(written.var, in_memory.var)
    assert list(written.obs_names) == list(in_memory.obs_names)
    np.testing.assert_array_equal(written.obsm["spatial"], in_memory.obsm["spatial"])
    assert written.uns["napari_spahgc"]["kind"] == "SpaHGC prediction"


def test_streamed_prediction_cancelled_leaves_no_file(tmp_path):
    slides, embeddings = _cohort(4)
    model = _trained(slides[:3], embeddings, ns.GeneChoice(n_hvg=10), epochs=1, hidden=16)
    out = tmp_path / "pred"
    steps = ns.predict(ns.PredictRequest(model, [slides[3]], embeddings, out, device="cpu"))
    first, second = next(steps), next(steps)  # part of the file is written
    assert (first.stage, second.stage) == ("predict", "predict") and 0 < second.done < second.total
    assert list(out.glob(".S3.h5ad.*.part"))
    steps.close()  # cancel between blocks
    assert list(out.iterdir()) == []


def test_panel_genes_and_missing_genes():
    slides, embeddings = _cohort(4)
    panel = ns.GeneChoice(panel=("GENE3", "GENE1", "NOT_MEASURED"))
    model = _trained(slides[:3], embeddings, panel, epochs=2)
    assert model.genes == ["GENE3", "GENE1"]  # panel order, measured on every training slide
    target = slides[3]
    target.expression = target.expression[:, ["GENE1"]].copy()  # this slide lacks GENE3
    result = ns.run_to_end(ns.predict(ns.PredictRequest(model, [target], embeddings, device="cpu")))
    measured = result.predictions["S3"].layers["measured"]
    assert np.isnan(measured[:, 0]).all() and np.isfinite(measured[:, 1]).all()


def test_a_training_request_is_trained_then_predicted(tmp_path):
    """The Predict widget's "train on reference slides": the flow trains, saves, then predicts."""
    slides, embeddings = _cohort(4)
    config = ns.SpaHGCConfig.from_options({"epochs": 2, "hidden": 16}, device="cpu")
    request = ns.TrainRequest(slides[:3], embeddings, ns.GeneChoice(n_hvg=10), config, tmp_path / "model")
    progress = []
    result = ns.run_to_end(
        ns.predict(ns.PredictRequest(request, [slides[3]], embeddings, device="cpu")), progress.append
    )
    stages = [p.stage for p in progress]
    assert stages == sorted(stages, key=["train", "predict"].index)  # trained first, then predicted
    assert [p.done for p in progress if p.stage == "train"] == [0, 1, 2]
    assert result.model_folder == str(tmp_path / "model") and (tmp_path / "model" / "config.json").is_file()
    loaded = ns.load_model(result.model_folder)
    again = ns.run_to_end(ns.predict(ns.PredictRequest(loaded, [slides[3]], embeddings, device="cpu")))
    np.testing.assert_array_equal(again.predictions["S3"].X, result.predictions["S3"].X)


def test_embeddings_of_another_encoder_are_refused():
    slides, embeddings = _cohort(4)
    model = _trained(slides[:3], embeddings, ns.GeneChoice(n_hvg=10), epochs=1)
    other = ns.Embeddings(encoder={"name": "other", "dim": DIM}, arrays=dict(embeddings.arrays))
    with pytest.raises(ns.InputError, match="trained on 'synthetic' embeddings, not 'other'"):
        ns.run_to_end(ns.predict(ns.PredictRequest(model, [slides[3]], other, device="cpu")))


def test_training_needs_counts(tmp_path):
    slides, embeddings = _cohort(3)
    slides[1].expression = None
    request = ns.TrainRequest(slides, embeddings, ns.GeneChoice(n_hvg=10), out=tmp_path / "model")
    with pytest.raises(ns.InputError, match="need measured counts; none for S1"):
        ns.run_to_end(ns.train(request))
    assert not (tmp_path / "model").exists()  # refused before anything was written
    with pytest.raises(ns.InputError, match="need measured counts; none for S1"):
        ns.run_to_end(ns.predict(ns.PredictRequest(request, slides[2:], embeddings)))
