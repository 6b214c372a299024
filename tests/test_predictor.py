"""The saved-model folder: config.json and model.safetensors written and read back, deterministic
inference, refusal of other encoders, other formats and other embedding sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_spahgc import InputError
from napari_spahgc.predictor import SpaHGCPredictor
from synthetic_slides import GENES, make_slides, make_trainer


def test_save_load_predict_round_trip(tmp_path):
    slides = make_slides()
    model = make_trainer(slides).fit()
    model.metadata.encoder = {"name": "efficientnet-lite0", "weights_checksum": "abc123"}
    test = make_slides(n_slides=1, seed=9)[0]
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
    wrong_dim = make_slides(n_slides=1, dim=8)[0]
    with pytest.raises(InputError, match="8-d embeddings"):
        loaded.predict(wrong_dim)


def test_other_weights_and_other_folders_are_refused(tmp_path):
    model = make_trainer(make_slides(), epochs=1).fit()
    model.metadata.encoder = {"name": "uni", "weights_checksum": "a" * 64}
    model.check_compatible("uni")  # no checksum given: the name decides
    model.check_compatible("uni", "a" * 64)
    with pytest.raises(
        InputError, match=r"other 'uni' weights \(checksum aaaaaaaaaaaa…, given bbbbbbbbbbbb…\)"
    ):
        model.check_compatible("uni", "b" * 64)
    folder = model.save(tmp_path / "model")
    assert not list(folder.glob("*.part"))  # written atomically
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "napari-spahgc model" and config["bank_slide_ids"][0] == "S0"
    config["format"] = "something else"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config\.json is not a napari-spahgc model description"):
        SpaHGCPredictor.load(folder)


def test_weights_of_an_earlier_layout_are_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = make_trainer(make_slides(), epochs=1).fit().save(tmp_path / "model")
    tensors = load_file(str(folder / "model.safetensors"))
    old = {k.replace("operators.cs_reverse", "cnda_to_reference"): v for k, v in tensors.items()}
    save_file(old, str(folder / "model.safetensors"))  # the names before the relations table
    with pytest.raises(InputError, match=r"do not fit the network.*train it again") as error:
        SpaHGCPredictor.load(folder)
    assert "model.safetensors" in str(error.value)
