"""SpaHGC training on synthetic slides: masking, losses, save/load round trip, determinism, leakage."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_spahgc import InputError
from napari_spahgc.batch import GraphBatch
from napari_spahgc.dataset import FeatureScale, SlideData
from napari_spahgc.graph import ReferenceBank, build_graph
from napari_spahgc.losses import contrastive, pearson_per_gene
from napari_spahgc.model import SpaHGC
from napari_spahgc.options import SpaHGCConfig
from napari_spahgc.predictor import SpaHGCPredictor
from napari_spahgc.trainer import Trainer, fit_predict_fold, validation_groups

GENES = [f"G{i}" for i in range(5)]


def _slides(n_slides: int = 4, n: int = 36, dim: int = 16, seed: int = 0) -> list[SlideData]:
    """Slides whose expression is a smooth function of the embeddings (learnable, honestly generated)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, len(GENES)))
    slides = []
    for s in range(n_slides):
        embeddings = rng.normal(size=(n, dim)).astype(np.float32)
        expression = np.log1p(np.exp(embeddings @ mixing / 2)).astype(np.float32)
        coords = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2) * 272.0
        ids = np.array([f"{s}x{i}" for i in range(n)])
        slides.append(SlideData(f"S{s}", ids, embeddings, coords.astype(float), expression))
    return slides


def _trainer(slides, **options) -> Trainer:
    config = SpaHGCConfig.from_options(
        {"epochs": 6, "eval_every": 2, "hidden": 32, "q": 3, "k": 4, **options}
    )
    return Trainer(slides, GENES, config)


def test_complementary_masks():
    trainer = _trainer(_slides())
    x_t, x_r = torch.ones(300, 40), torch.ones(500, 60)
    t1, r1, t2, r2 = trainer._views(x_t, x_r, np.random.default_rng(0))
    assert ((t1 > 0) ^ (t2 > 0)).all() and ((r1 > 0) ^ (r2 > 0)).all()  # exactly complementary
    assert (t1 > 0).float().mean() == pytest.approx(0.8, abs=0.02)  # alpha: kept in the supervised view
    assert (r1 > 0).float().mean() == pytest.approx(0.9, abs=0.02)  # beta
    assert t1.max() == pytest.approx(1 / 0.8) and t2.max() == pytest.approx(1 / 0.2)  # rescaled views
    x_t, x_r = torch.randn(300, 40), torch.randn(500, 60)
    t1, r1, t2, r2 = trainer._views(x_t, x_r, np.random.default_rng(1))
    assert torch.allclose(0.8 * t1 + 0.2 * t2, x_t) and torch.allclose(0.9 * r1 + 0.1 * r2, x_r)  # views of x
    random_views = _trainer(_slides(), masking="random")._views(x_t, x_r, np.random.default_rng(0))
    assert ((random_views[0] != 0) & (random_views[2] != 0)).any()  # the ablation is not complementary


def test_loss_terms_on_known_inputs():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert contrastive(a, a).item() == pytest.approx(0.0)
    assert contrastive(a, -a).item() == pytest.approx(4.0)
    assert contrastive(a, a.flip(1)).item() == pytest.approx(2.0)  # orthogonal
    online = a.clone().requires_grad_(True)
    target = a.flip(1).clone().requires_grad_(True)
    contrastive(online, target).backward()
    assert online.grad is not None and target.grad is None  # stop-gradient on the second view
    truth = torch.tensor([[1.0, 5.0, 2.0], [2.0, 5.0, 4.0], [3.0, 5.0, 6.0]])
    pred = torch.tensor([[3.0, 1.0, 1.0], [2.0, 2.0, 3.0], [1.0, 3.0, 2.0]])
    scores = pearson_per_gene(pred, truth)
    assert scores[0].item() == pytest.approx(-1.0) and torch.isnan(scores[1])
    # centred (-1, 1, 0) · (-2, 0, 2) = 2; norms √2 · √8 = 4
    assert scores[2].item() == pytest.approx(0.5, abs=1e-6)


def test_training_learns_and_selects_on_validation():
    slides = _slides()
    trainer = _trainer(slides, epochs=60, eval_every=5, lr=3e-3)
    progress = list(trainer.steps())
    assert [p.epoch for p in progress] == list(range(1, 61))
    assert progress[-1].loss < progress[0].loss
    validation = trainer.result.metadata.validation
    assert len(validation["members"]) == 4 and validation["pcc"] > 0.5
    assert all(m["best_epoch"] % 5 == 0 and m["pcc"] > 0.4 for m in validation["members"])
    test = _slides(n_slides=1, seed=0)[0]
    test.slide_id = "held-out"
    prediction = trainer.result.predict(test)
    assert prediction.shape == (36, len(GENES)) and np.isfinite(prediction).all()


def test_validation_groups_cover_the_slides_once():
    groups = validation_groups(5, members=4, seed=3)
    assert len(groups) == 4 and sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    assert sorted(validation_groups(3, members=4, seed=0)) == [[0], [1], [2]]  # one member per slide
    assert validation_groups(2, members=4, seed=0) == [[]]  # two slides: one member, no validation
    single = validation_groups(4, members=1, seed=5)
    assert len(single) == 1 and len(single[0]) == 1


def test_uneven_groups_and_two_slides():
    """Five slides, four members: one member holds two slides out (and trains on three, repeating one
    per epoch); two slides: a single member trained on both without validation."""
    trainer = _trainer(_slides(n_slides=5), epochs=4)
    model = trainer.fit()
    members = model.metadata.validation["members"]
    assert sorted(len(m["validation_slides"]) for m in members) == [1, 1, 1, 2]
    assert all(np.isfinite(m["pcc"]) and m["best_epoch"] in (2, 4) for m in members)
    assert np.isfinite(model.predict(_slides(n_slides=1, seed=3)[0])).all()
    pair = _trainer(_slides(n_slides=2), epochs=3).fit()
    assert pair.network.options.members == 1 and pair.metadata.validation == {"epochs_run": 3}
    assert "no validation slide" in pair.metadata.validation_summary()


def test_members_are_independent_and_padding_is_inert():
    """Member 0's output and gradients do not depend on what member 1 is given (or how much padding
    its larger graph adds)."""
    slides = _slides(n_slides=4)
    small = _slides(n_slides=1, n=20, seed=4)[0]
    small.coords = small.coords[:20]
    config = SpaHGCConfig.from_options({"hidden": 32, "q": 3, "k": 4, "members": 2})
    graph_options, model_options = config.graph, config.model
    torch.manual_seed(0)
    network = SpaHGC(16, len(GENES), model_options).eval()
    scale = FeatureScale.fit(slides)
    bank = ReferenceBank.from_slides(slides[1:], scale)
    graph_small = build_graph(small, bank, graph_options)
    outputs = []
    for other in (slides[0], _slides(n_slides=1, n=36, seed=8)[0]):
        other.slide_id = "other"
        batch = GraphBatch.from_graphs([graph_small, build_graph(other, bank, graph_options)])
        assert batch.target_x.shape[1] == 36 and batch.n_targets == [20, 36]
        outputs.append(network(*batch.inputs)[0, :20])
    torch.testing.assert_close(outputs[0], outputs[1])
    alone = network(*GraphBatch.from_graphs([graph_small, graph_small]).inputs)[0]
    torch.testing.assert_close(alone, outputs[0])
    outputs[1].sum().backward()
    gradients = [p.grad for p in network.parameters() if p.grad is not None]
    assert all(g[1].abs().max() == 0 for g in gradients) and any(g[0].abs().max() > 0 for g in gradients)
    network.zero_grad()
    with network.members_only([1]):  # member 1 alone, with its own weights
        only = network(*GraphBatch.from_graphs([graph_small]).inputs)[0]
        only.sum().backward()
    torch.testing.assert_close(only, network(*GraphBatch.from_graphs([graph_small] * 2).inputs)[1])
    assert not torch.allclose(only, alone)  # member 0's weights give another output
    gradients = [p.grad for p in network.parameters() if p.grad is not None]
    assert all(g[0].abs().max() == 0 for g in gradients) and any(g[1].abs().max() > 0 for g in gradients)


def test_members_stop_early_one_by_one():
    """Each member stops once its own validation PCC has not improved for ``patience`` epochs and
    keeps its best epoch's weights; the others train on."""
    trainer = _trainer(_slides(), epochs=80, eval_every=1, patience=4, lr=3e-3)
    progress = list(trainer.steps())
    members = trainer.result.metadata.validation["members"]
    epochs_run = trainer.result.metadata.validation["epochs_run"]
    for m in members:
        assert m["epochs_trained"] in (m["best_epoch"] + 4, epochs_run)
    assert max(m["epochs_trained"] for m in members) == epochs_run == len(progress)
    assert len({m["epochs_trained"] for m in members}) > 1  # members stopped at different epochs
    summary = trainer.result.metadata.validation_summary()
    assert f"at epoch {members[0]['best_epoch']} of {members[0]['epochs_trained']}" in summary
    first_stop = min(m["epochs_trained"] for m in members)
    assert progress[first_stop].member_pcc.count(None) >= 1  # stopped members are not evaluated
    for m, record in enumerate(members):  # the best score a member reported is what it keeps
        history = [p.member_pcc[m] for p in progress if p.member_pcc[m] is not None]
        assert len(history) == record["epochs_trained"] and max(history) == pytest.approx(record["pcc"])


def test_cancel_between_epochs_leaves_no_model():
    trainer = _trainer(_slides(), epochs=50)
    steps = trainer.steps()
    for progress in steps:
        if progress.epoch == 3:
            break
    steps.close()
    assert trainer.result is None


def test_save_load_predict_round_trip(tmp_path):
    slides = _slides()
    model = _trainer(slides).fit()
    model.metadata.encoder = {"name": "efficientnet-lite0", "weights_checksum": "abc123"}
    test = _slides(n_slides=1, seed=9)[0]
    expected = model.predict(test)
    folder = model.save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["genes"] == GENES and config["training_slides"] == ["S0", "S1", "S2", "S3"]
    assert (
        sorted(config["validation_slides"]) == [["S0"], ["S1"], ["S2"], ["S3"]]
        and "pcc" in config["validation"]
    )
    assert config["model_options"]["members"] == 4 and len(config["validation"]["members"]) == 4
    assert config["train_options"]["alpha"] == 0.8 and config["graph_options"]["k"] == 4
    loaded = SpaHGCPredictor.load(folder)
    np.testing.assert_array_equal(loaded.predict(test), expected)
    np.testing.assert_array_equal(loaded.predict(test), expected)  # deterministic inference
    loaded.check_compatible("efficientnet-lite0", "abc123")
    with pytest.raises(InputError, match="trained on 'efficientnet-lite0' embeddings, not 'uni'"):
        loaded.check_compatible("uni")
    with pytest.raises(InputError, match="not a napari-spahgc model folder"):
        SpaHGCPredictor.load(tmp_path)
    del config["model_options"]["members"]  # a folder from the single-model format
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="train it again"):
        SpaHGCPredictor.load(folder)
    wrong_dim = _slides(n_slides=1, dim=8)[0]
    with pytest.raises(InputError, match="8-d embeddings"):
        loaded.predict(wrong_dim)


def test_seeded_training_reproduces_exactly():
    slides = _slides()
    first = _trainer(slides, seed=7).fit().predict(slides[0])
    second = _trainer(slides, seed=7).fit().predict(slides[0])
    np.testing.assert_array_equal(first, second)
    other = _trainer(slides, seed=8).fit().predict(slides[0])
    assert not np.array_equal(first, other)


def test_leakage_guards():
    slides = _slides(n_slides=5)
    with pytest.raises(ValueError, match="is among the training slides"):
        fit_predict_fold(slides, slides[0], epochs=1)
    model = _trainer(slides[:4]).fit()
    # predicting a slide that is in the bank retrieves only other slides' spots
    bank_spots = set(model.bank.slide_ids)
    assert "S0" in bank_spots
    prediction = model.predict(slides[0])
    assert np.isfinite(prediction).all()
    prediction = fit_predict_fold(slides[1:], slides[0], seed=0, device="cpu", epochs=2, hidden=32)
    assert prediction.shape == slides[0].expression.shape


def test_embeddings_are_standardised_on_the_training_slides_only():
    slides = _slides(n_slides=4) + _slides(n_slides=1, seed=9)
    for slide in slides:  # features on other scales than N(0, 1), as real embeddings are
        slide.embeddings = slide.embeddings * np.linspace(0.1, 3, 16, dtype=np.float32) + 2
    *slides, held_out = slides
    held_out.slide_id = "new"
    model = _trainer(slides, epochs=1).fit()
    expected = FeatureScale.fit(slides, "embeddings")
    np.testing.assert_allclose(model.embedding_scale.mean, expected.mean)
    np.testing.assert_allclose(model.embedding_scale.sd, expected.sd)
    raw = np.concatenate([s.embeddings for s in slides])
    np.testing.assert_allclose(model.bank.embeddings, expected.transform(raw), atol=1e-6)
    # the slide to predict is standardised with the training slides' scale before its graph is built
    graph = build_graph(
        replace(held_out, embeddings=expected.transform(held_out.embeddings)), model.bank, model.config.graph
    )
    batch = GraphBatch.from_graphs([graph] * model.network.options.members)
    with torch.no_grad():
        direct = model.scale.inverse(model.network(*batch.inputs).mean(0).numpy())
    np.testing.assert_allclose(model.predict(held_out), direct, rtol=1e-5, atol=1e-5)
    unscaled = _trainer(slides, epochs=1, standardize_embeddings=False).fit()
    np.testing.assert_array_equal(unscaled.bank.embeddings, raw)
    assert unscaled.metadata.preprocessing["embeddings"] == "as encoded"


@pytest.mark.parametrize(
    "ablation",
    [{"use_ts": False}, {"use_rs": False}, {"use_cs": False}, {"use_cnda": False}, {"use_cnap": False},
     {"masking": "none"}, {"masking": "random"}, {"q": 2, "k": 3, "alpha": 0.5, "beta": 0.6}],
)  # fmt: skip
def test_every_ablation_trains_and_predicts(ablation):
    slides = _slides()
    model = _trainer(slides, epochs=2, **ablation).fit()
    assert np.isfinite(model.predict(slides[0])).all()


def test_no_cs_edges_means_references_are_unused():
    slides = _slides()
    model = _trainer(slides, epochs=2, use_cs=False).fit()
    before = model.predict(slides[0])
    model.bank.expression[:] = 0.0  # other reference expression changes nothing without CS edges
    np.testing.assert_array_equal(model.predict(slides[0]), before)
