"""SpaHGC training on synthetic slides: masked views, validation groups, early stopping, cancel,
determinism, leakage guards, standardisation, ablations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_spahgc.model.graph import build_graph
from napari_spahgc.model.slide_data import FeatureScale
from napari_spahgc.train.batch import GraphBatch
from synthetic_slides import GENES, fit, make_slides, make_trainer


def test_complementary_masks():
    trainer = make_trainer(make_slides())
    x_t, x_r = torch.ones(300, 40), torch.ones(500, 60)
    t1, r1, t2, r2 = trainer._views(x_t, x_r, np.random.default_rng(0))
    assert ((t1 > 0) ^ (t2 > 0)).all() and ((r1 > 0) ^ (r2 > 0)).all()  # exactly complementary
    assert (t1 > 0).float().mean() == pytest.approx(0.8, abs=0.02)  # alpha: kept in the supervised view
    assert (r1 > 0).float().mean() == pytest.approx(0.9, abs=0.02)  # beta
    assert t1.max() == pytest.approx(1 / 0.8) and t2.max() == pytest.approx(1 / 0.2)  # rescaled views
    x_t, x_r = torch.randn(300, 40), torch.randn(500, 60)
    t1, r1, t2, r2 = trainer._views(x_t, x_r, np.random.default_rng(1))
    assert torch.allclose(0.8 * t1 + 0.2 * t2, x_t) and torch.allclose(0.9 * r1 + 0.1 * r2, x_r)  # views of x
    random_views = make_trainer(make_slides(), masking="random")._views(x_t, x_r, np.random.default_rng(0))
    assert ((random_views[0] != 0) & (random_views[2] != 0)).any()  # the ablation is not complementary


def test_training_learns_and_selects_on_validation():
    slides = make_slides()
    trainer = make_trainer(slides, epochs=60, eval_every=5, lr=3e-3)
    progress = list(trainer.steps())
    assert [(p.done, p.total, p.stage) for p in progress] == [(e, 60, "train") for e in range(1, 61)]
    assert progress[-1].values["loss"] < progress[0].values["loss"]
    evaluated = [p for p in progress if p.values["validation_pcc"] is not None]
    assert [p.done for p in evaluated] == list(range(5, 61, 5))  # every eval_every epochs
    assert evaluated[-1].text == (
        f"epoch 60/60: loss {progress[-1].values['loss']:.3f}, "
        f"validation PCC {evaluated[-1].values['validation_pcc']:.3f}"
    )
    validation = trainer.result.metadata.validation
    assert len(validation["members"]) == 4 and validation["pcc"] > 0.5
    assert all(m["best_epoch"] % 5 == 0 and m["pcc"] > 0.4 for m in validation["members"])
    test = make_slides(n_slides=1, seed=0)[0]
    test.slide_id = "held-out"
    prediction = trainer.result.predict(test)
    assert prediction.shape == (36, len(GENES)) and np.isfinite(prediction).all()


def test_uneven_groups_and_two_slides():
    """Five slides, four members: one member holds two slides out (and trains on three, repeating one
    per epoch); two slides: a single member trained on both without validation."""
    trainer = make_trainer(make_slides(n_slides=5), epochs=4)
    model = fit(trainer)
    members = model.metadata.validation["members"]
    assert sorted(len(m["validation_slides"]) for m in members) == [1, 1, 1, 2]
    assert all(np.isfinite(m["pcc"]) and m["best_epoch"] in (2, 4) for m in members)
    assert np.isfinite(model.predict(make_slides(n_slides=1, seed=3)[0])).all()
    pair = fit(make_trainer(make_slides(n_slides=2), epochs=3))
    assert pair.network.options.members == 1 and pair.metadata.validation == {"epochs_run": 3}
    assert "no validation slide" in pair.metadata.validation_summary()


def test_members_stop_early_one_by_one():
    """Each member stops once its own validation PCC has not improved for ``patience`` epochs and
    keeps its best epoch's weights; the others train on."""
    trainer = make_trainer(make_slides(), epochs=80, eval_every=1, patience=4, lr=3e-3)
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
    assert progress[first_stop].values["member_pcc"].count(None) >= 1  # stopped members are not evaluated
    for m, record in enumerate(members):  # the best score a member reported is what it keeps
        history = [p.values["member_pcc"][m] for p in progress if p.values["member_pcc"][m] is not None]
        assert len(history) == record["epochs_trained"] and max(history) == pytest.approx(record["pcc"])


def test_cancel_between_epochs_leaves_no_model():
    trainer = make_trainer(make_slides(), epochs=50)
    steps = trainer.steps()
    for progress in steps:
        if progress.done == 3:
            break
    steps.close()
    assert trainer.result is None


def test_seeded_training_reproduces_exactly():
    slides = make_slides()
    first = fit(make_trainer(slides, seed=7)).predict(slides[0])
    second = fit(make_trainer(slides, seed=7)).predict(slides[0])
    np.testing.assert_array_equal(first, second)
    other = fit(make_trainer(slides, seed=8)).predict(slides[0])
    assert not np.array_equal(first, other)


def test_a_slide_never_retrieves_its_own_spots():
    """A slide in the bank never retrieves its own spots; a slide trained without is absent from the
    bank."""
    slides = make_slides(n_slides=5)
    model = fit(make_trainer(slides[:4]))
    # predicting a slide that is in the bank retrieves only other slides' spots
    assert "S0" in set(model.bank.slide_ids)
    assert "S0" not in set(model._bank_without("S0").slide_ids)
    assert len(model._bank_without("S0")) == len(model.bank) - slides[0].n_spots
    prediction = model.predict(slides[0])
    assert np.isfinite(prediction).all()
    model = fit(make_trainer(slides[1:], device="cpu", epochs=2, hidden=32))
    prediction = model.predict(slides[0], device="cpu")
    assert prediction.shape == slides[0].expression.shape and "S0" not in set(model.bank.slide_ids)
    assert model.metadata.training_slides == ["S1", "S2", "S3", "S4"]


def test_the_paper_preset_trains_one_model_on_every_slide_to_its_final_epoch():
    slides = make_slides(n_slides=4)
    model = fit(make_trainer(slides[1:], preset="paper", device="cpu", epochs=3, hidden=32, q=3, k=4))
    prediction = model.predict(slides[0], device="cpu")
    assert model.config.model.members == 1 and model.metadata.validation == {"epochs_run": 3}
    assert model.metadata.validation_slides == [[]] and model.metadata.training_slides == ["S1", "S2", "S3"]
    assert np.isfinite(prediction).all()


def test_embeddings_are_standardised_on_the_training_slides_only():
    slides = make_slides(n_slides=4) + make_slides(n_slides=1, seed=9)
    for slide in slides:  # features on other scales than N(0, 1), as real embeddings are
        slide.embeddings = slide.embeddings * np.linspace(0.1, 3, 16, dtype=np.float32) + 2
    *slides, held_out = slides
    held_out.slide_id = "new"
    model = fit(make_trainer(slides, epochs=1, tune_smoothing=False))  # the network's output alone
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
    unscaled = fit(make_trainer(slides, epochs=1, standardize_embeddings=False))
    np.testing.assert_array_equal(unscaled.bank.embeddings, raw)
    assert unscaled.metadata.preprocessing["embeddings"] == "as encoded"


@pytest.mark.parametrize(
    "ablation",
    [{"use_ts": False}, {"use_rs": False}, {"use_cs": False}, {"use_cnda": False}, {"use_cnap": False},
     {"masking": "none"}, {"masking": "random"}, {"q": 2, "k": 3, "alpha": 0.5, "beta": 0.6}],
)  # fmt: skip
def test_every_ablation_trains_and_predicts(ablation):
    slides = make_slides()
    model = fit(make_trainer(slides, epochs=2, **ablation))
    assert np.isfinite(model.predict(slides[0])).all()


def test_no_cs_edges_means_references_are_unused():
    slides = make_slides()
    model = fit(make_trainer(slides, epochs=2, use_cs=False))
    before = model.predict(slides[0])
    model.bank.expression[:] = 0.0  # other reference expression changes nothing without CS edges
    np.testing.assert_array_equal(model.predict(slides[0]), before)


def test_members_in_groups_train_as_one_batch():
    """A step whose members run in groups of one (``step_nodes`` 1) sums the same gradients as all
    members at once: without masking and dropout (no random draws) the trained weights agree; the
    groups respect the node budget."""
    from napari_spahgc.train.trainer import member_groups

    slides = make_slides()
    deterministic = {"epochs": 4, "masking": "none", "dropout": 0.0}
    together = fit(make_trainer(slides, **deterministic))
    alone = fit(make_trainer(slides, **deterministic, step_nodes=1))
    grouped = alone.network.state_dict()
    for name, weights in together.network.state_dict().items():
        torch.testing.assert_close(weights, grouped[name], atol=1e-5, rtol=1e-4, msg=name)
    trainer = make_trainer(slides)
    graphs = {m: trainer._graph(s, slides) for m, s in enumerate(slides)}
    size = max(g["target"].num_nodes for g in graphs.values()) + max(
        g["reference"].num_nodes for g in graphs.values()
    )
    assert member_groups(graphs, 4 * size) == [[0, 1, 2, 3]]
    assert member_groups(graphs, 1) == [[0], [1], [2], [3]]
    assert all(len(group) <= 2 for group in member_groups(graphs, 2 * size))


@pytest.mark.parametrize("training_bank", ["member", "all"])
def test_training_bank_holds_the_members_slides_or_every_other_training_slide(training_bank):
    trainer = make_trainer(make_slides(n_slides=4), training_bank=training_bank)
    owner = np.concatenate([np.full(s.n_spots, s.slide_id) for s in trainer.slides])  # shared table rows
    every = {s.slide_id for s in trainer.slides}
    member_slides = trainer.member_slides()
    member_graphs = trainer._training_graphs(member_slides)
    for group, train, graphs in zip(trainer.held_out, member_slides, member_graphs, strict=True):
        held_out = {trainer.slides[i].slide_id for i in group}
        bank = every if training_bank == "all" else {s.slide_id for s in train}
        for graph in graphs:
            (target,) = set(owner[graph["target"].bank_index.numpy()])
            assert target not in held_out
            # references: 3 other slides with "all" (the held-out one too), 2 with "member"
            assert set(owner[graph["reference"].bank_index.numpy()]) == bank - {target}


def test_training_features_are_held_once_in_the_embeddings_float_type():
    """Dense (float16, repeating) embeddings: one table of every training spot — the distinct
    standardised embeddings and the standardised expression, float16 — that the slides, the member
    banks and the graphs index into; training on it learns as on float32."""
    slides = make_slides(n_slides=2)
    dense = [
        replace(s, embeddings=np.repeat(s.embeddings[::2], 2, axis=0).astype(np.float16)) for s in slides
    ]
    trainer = make_trainer(dense, epochs=40, lr=3e-3)
    table = trainer.bank
    assert len(table.embeddings.distinct) == 36 and table.embeddings.distinct.dtype == np.float16
    assert table.expression.dtype == np.float16 and len(table) == 72
    assert all(
        s.embeddings.distinct is table.embeddings.distinct and s.expression is None for s in trainer.slides
    )
    (graphs,) = trainer._training_graphs(trainer.member_slides())
    member_bank = trainer._bank[1]
    assert np.shares_memory(member_bank.expression, table.expression)  # the other slide: a view
    for graph in graphs:
        assert "x" not in graph["target"] and "x" not in graph["reference"]  # rows of the table, no copies
    expected = FeatureScale.fit(dense, "embeddings").transform(np.concatenate([s.embeddings for s in dense]))
    np.testing.assert_allclose(np.asarray(table.embeddings), expected, atol=2e-3)  # float16 rounding
    model = fit(trainer)
    prediction = model.predict(replace(dense[0], expression=None))
    assert np.isfinite(prediction).all()
    assert np.mean([np.corrcoef(prediction[:, g], dense[0].expression[:, g])[0, 1] for g in range(5)]) > 0.5
