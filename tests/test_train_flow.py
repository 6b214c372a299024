"""The training flow on real HER2ST sections: a TrainRequest (embedded through the cache) → a model
folder → load_model → the prediction flow, with the Progress records each stage yields; cancelling
writes nothing, and a bad output folder is refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_spahgc as ns
from conftest import HER2ST, HER2ST_COHORT

PANEL = HER2ST / "her2st_785_genes.txt"


@pytest.fixture(scope="module")
def sections() -> list[ns.Slide]:
    """C2–C5 with their counts (C6 is not needed)."""
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    return [entry.load() for entry in ns.read_cohort(HER2ST_COHORT)[:4]]


def _config(**options) -> ns.SpaHGCConfig:
    return ns.SpaHGCConfig.from_options({"epochs": 4, "eval_every": 2, **options}, device="cpu")


def test_a_training_request_makes_a_model_folder_that_predicts(sections, tmp_path):
    training, target = sections[:3], sections[3]
    embedding = ns.EmbedRequest(sections, device="cpu", mode="spot")  # cached for the session (conftest)
    genes = ns.GeneChoice.from_file(PANEL)
    request = ns.TrainRequest(training, embedding.for_slides(training), genes, _config(), tmp_path / "model")
    records: list[ns.Progress] = []
    trained = ns.run_to_end(ns.train(request), records.append)

    assert isinstance(trained, ns.TrainResult) and trained.folder == str(tmp_path / "model")
    embedded = [p for p in records if p.stage == "embed"]
    epochs = [p for p in records if p.stage == "train"]
    assert records == embedded + epochs  # embedded first, then trained
    assert [p.values["slide_id"] for p in embedded if "slide_id" in p.values] == ["C2", "C3", "C4"]
    assert embedded[-1].done == embedded[-1].total == sum(s.n_spots for s in training)
    assert [(p.done, p.total) for p in epochs] == [(e, 4) for e in range(5)]
    assert epochs[0].text == "building graphs"
    for p in epochs[1:]:
        assert set(p.values) == {"loss", "validation_pcc", "member_pcc"} and p.values["loss"] > 0
        assert p.text.startswith(f"epoch {p.done}/4: loss {p.values['loss']:.3f}")
    validated = [p for p in epochs[1:] if p.values["validation_pcc"] is not None]
    assert [p.done for p in validated] == [2, 4]  # every eval_every epochs
    assert all(len(p.values["member_pcc"]) == 3 for p in validated)  # one member per held-out section

    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["genes"] == list(genes.panel) and config["training_slides"] == ["C2", "C3", "C4"]
    assert sorted(config["validation_slides"]) == [["C2"], ["C3"], ["C4"]]
    assert config["encoder"]["name"] == "efficientnet-lite0" and config["encoder"]["embedding_mode"] == "spot"
    assert config["patch"] == {"size": 224, "um_per_px": 0.5} and config["preprocessing"]["genes"] == "panel"

    model = ns.load_model(trained.folder)
    assert model is ns.load_model(trained.folder)  # loaded once per process
    assert (
        model.genes == trained.model.genes and model.metadata.validation == trained.model.metadata.validation
    )
    records = []
    target_embedding = ns.EmbedRequest([target], device="cpu")  # no mode: the model's own (spot)
    from_folder = ns.run_to_end(
        ns.predict(ns.PredictRequest(trained.folder, [target], target_embedding)), records.append
    )
    assert records[0].stage == "predict" and records[0].text == "loading model"
    assert {p.stage for p in records} == {"predict", "embed"}
    assert [p.values["mode"] for p in records if "mode" in p.values] == ["spot"]  # the model's mode
    assert records[-1].stage == "predict" and records[-1].done == records[-1].total
    in_memory = ns.run_to_end(ns.predict(ns.PredictRequest(trained.model, [target], target_embedding)))
    prediction = from_folder.predictions["C5"]
    np.testing.assert_array_equal(prediction.X, in_memory.predictions["C5"].X)  # saved and loaded intact
    assert prediction.shape == (target.n_spots, 785) and np.isfinite(prediction.X).all()
    assert "measured" in prediction.layers and np.nanmean(prediction.var["pcc"]) > 0  # real signal

    trained.model.save(trained.folder)  # rewritten: loaded again
    assert ns.load_model(trained.folder) is not model


@pytest.fixture(scope="module")
def embeddings(sections) -> ns.Embeddings:
    return ns.run_to_end(ns.embed(ns.EmbedRequest(sections[:3], device="cpu", mode="spot")))


def test_cancelling_training_writes_no_model(sections, embeddings, tmp_path):
    out = tmp_path / "model"
    request = ns.TrainRequest(sections[:3], embeddings, ns.GeneChoice(n_hvg=1000), _config(epochs=50), out)
    flow = ns.train(request)
    for progress in flow:
        if progress.stage == "train" and progress.done == 2:
            break
    flow.close()
    assert out.is_dir() and list(out.iterdir()) == []  # the folder was proven writable, nothing written


def test_a_bad_model_folder_is_refused_before_any_work(sections, embeddings, tmp_path):
    (tmp_path / "model").write_text("not a folder")
    request = ns.TrainRequest(
        sections[:3], embeddings, ns.GeneChoice(n_hvg=1000), _config(), tmp_path / "model"
    )
    flow = ns.train(request)
    with pytest.raises(ns.InputError, match="is a file, not a folder"):
        next(flow)  # before the first Progress
