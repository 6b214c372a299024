"""The saved-model folder: config.json and model.safetensors written and read back, deterministic
inference, refusal of other encoders, other formats and other embedding sizes; the folder is verified
as a whole (manifest, config digest, options, shapes), so any edit is refused by name."""

from __future__ import annotations

import json
import mmap
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from napari_spahgc import InputError
from napari_spahgc.embed.weights import sha256
from napari_spahgc.model.folder import CONFIG_DIGEST_KEY, config_digest
from napari_spahgc.model.predictor import SpaHGCPredictor
from synthetic_slides import GENES, fit, make_slides, make_trainer


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    """Two small models, saved once; tests edit copies."""
    root = tmp_path_factory.mktemp("saved")
    first = fit(make_trainer(make_slides(), epochs=1)).save(root / "first")
    other = fit(make_trainer(make_slides(seed=3), epochs=1)).save(root / "other")
    return first, other


@pytest.fixture
def folder(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved[0], tmp_path / "model"))


def reseal(folder: Path, config: dict, tensors: dict | None = None) -> None:
    """Rewrite both files consistently (digest and manifest recomputed), as a careful forger could:
    only the checks after the integrity checks can then refuse the folder."""
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights)) if tensors is None else tensors
    config.pop("manifest", None)
    save_file(tensors, str(weights), metadata={"format": "pt", CONFIG_DIGEST_KEY: config_digest(config)})
    config["manifest"] = {"model.safetensors": {"sha256": sha256(weights)}}
    (folder / "config.json").write_text(json.dumps(config))


def test_save_load_predict_round_trip(tmp_path):
    slides = make_slides()
    model = fit(make_trainer(slides))
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
    assert loaded.folder == folder and model.folder is None
    np.testing.assert_array_equal(loaded.predict(test), expected)
    np.testing.assert_array_equal(loaded.predict(test), expected)  # deterministic inference
    loaded.check_compatible("efficientnet-lite0", "abc123")
    with pytest.raises(InputError, match="trained on 'efficientnet-lite0' embeddings, not 'uni'") as error:
        loaded.check_compatible("uni")
    assert str(error.value).startswith(str(folder))  # the model folder is named
    with pytest.raises(InputError, match="not a napari-spahgc model folder"):
        SpaHGCPredictor.load(tmp_path)
    del config["model_options"]["members"]  # a folder from the single-model format
    reseal(folder, config)
    with pytest.raises(InputError, match=r"earlier model format.*train it again"):
        SpaHGCPredictor.load(folder)
    wrong_dim = make_slides(n_slides=1, dim=8)[0]
    with pytest.raises(InputError, match="8-d embeddings"):
        loaded.predict(wrong_dim)


def test_other_weights_and_other_folders_are_refused(tmp_path):
    model = fit(make_trainer(make_slides(), epochs=1))
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
    folder = fit(make_trainer(make_slides(), epochs=1)).save(tmp_path / "model")
    tensors = load_file(str(folder / "model.safetensors"))
    old = {k.replace("operators.cs_reverse", "cnda_to_reference"): v for k, v in tensors.items()}
    reseal(folder, json.loads((folder / "config.json").read_text()), old)  # names before the relations table
    with pytest.raises(InputError, match=r"do not fit the network.*train it again") as error:
        SpaHGCPredictor.load(folder)
    assert "model.safetensors" in str(error.value)


def _edit_config(change):
    def edit(folder: Path, other: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    return edit


def _edit_weights(change):
    def edit(folder: Path, other: Path) -> None:
        weights = folder / "model.safetensors"
        weights.write_bytes(change(bytearray(weights.read_bytes())))

    return edit


def _flip_one_byte(data: bytearray) -> bytearray:
    data[len(data) // 2] ^= 0x01
    return data


def _other_weights(folder: Path, other: Path) -> None:
    shutil.copyfile(other / "model.safetensors", folder / "model.safetensors")


def _other_weights_and_manifest(folder: Path, other: Path) -> None:
    _other_weights(folder, other)
    manifest = json.loads((other / "config.json").read_text())["manifest"]
    _edit_config(lambda config: config.update(manifest=manifest))(folder, other)


def _unreadable_weights_with_their_manifest(folder: Path, other: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    manifest = {"model.safetensors": {"sha256": sha256(weights)}}
    _edit_config(lambda config: config.update(manifest=manifest))(folder, other)


EDITED = "config.json was edited after the model was saved"
NOT_MANIFEST = r"model\.safetensors does not match its manifest \(edited, truncated or replaced\)"
EDITS = {
    "gene renamed": (_edit_config(lambda c: c["genes"].__setitem__(0, "ERBB2")), EDITED),
    "gene dropped": (_edit_config(lambda c: c["genes"].pop()), EDITED),
    "option edited": (_edit_config(lambda c: c["graph_options"].update(k=9)), EDITED),
    "invalid JSON": (lambda f, o: (f / "config.json").write_text('{"format": '), r"config\.json: not valid"),
    "not UTF-8": (lambda f, o: (f / "config.json").write_bytes(b'{"genes": "\xff"}'), "not valid UTF-8"),
    "weights truncated": (_edit_weights(lambda data: data[: len(data) // 2]), NOT_MANIFEST),
    "one byte flipped": (_edit_weights(_flip_one_byte), NOT_MANIFEST),
    "manifest removed": (_edit_config(lambda c: c.pop("manifest")), "no integrity manifest.*train"),
    "another model's weights": (_other_weights, NOT_MANIFEST),
    "another model's weights and manifest": (_other_weights_and_manifest, EDITED),
    "unreadable weights, manifest updated": (
        _unreadable_weights_with_their_manifest,
        r"cannot read model\.safetensors",
    ),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_any_edit_of_a_saved_model_is_refused(saved, folder, edit):
    change, message = EDITS[edit]
    change(folder, saved[1])
    with pytest.raises(InputError, match=message) as error:  # never another exception type
        SpaHGCPredictor.load(folder)
    assert str(error.value).startswith(str(folder))


def _set(part: str, **values):
    return lambda config: config[part].update(values)


FORGED = {
    "gene dropped": (lambda c: c["genes"].pop(), r"does not fit config\.json \(4 genes.*head\.3\.weight"),
    "embedding size": (lambda c: c.update(embedding_dim=15), r"15-d embeddings.*bank\.embeddings is \("),
    "bank slides": (lambda c: c["bank_slide_ids"].pop(), r"143 reference spots.*bank\.expression"),
    "unknown option": (_set("graph_options", kk=3), r"config\.json graph_options: unknown 'kk'"),
    "option of the wrong type": (_set("model_options", hidden="32"), r"hidden='32' is not int"),
    "option out of range": (_set("train_options", alpha=2.0), "alpha and beta must lie strictly"),
    "options not an object": (
        lambda c: c.update(graph_options=[]),
        r"config\.json graph_options is not a JSON object",
    ),
    "genes not names": (lambda c: c.update(genes=[1, 2, 3, 4, 5]), r"genes=\[1, 2.*is not list\[str\]"),
    "genes missing": (lambda c: c.pop("genes"), "missing 'genes'"),
    "bank slide ids": (lambda c: c.update(bank_slide_ids="S0"), "bank_slide_ids is not a list"),
}


@pytest.mark.parametrize("forgery", FORGED, ids=list(FORGED))
def test_a_consistent_folder_is_still_checked_against_its_tensors(folder, forgery):
    change, message = FORGED[forgery]
    config = json.loads((folder / "config.json").read_text())
    change(config)
    reseal(folder, config)
    with pytest.raises(InputError, match=message) as error:
        SpaHGCPredictor.load(folder)
    assert str(error.value).startswith(str(folder))


def test_an_untouched_copy_loads_and_predicts_as_the_original(saved, folder):
    test = make_slides(n_slides=1, seed=9)[0]
    original, copy = SpaHGCPredictor.load(saved[0]), SpaHGCPredictor.load(folder)
    np.testing.assert_array_equal(copy.predict(test), original.predict(test))
    assert copy.folder == folder and copy.genes == original.genes == GENES


def test_the_banks_expression_is_read_from_the_file_where_it_is_used(folder, tmp_path):
    """A loaded bank's expression is a read-only map of the verified file (a prediction reads only the
    retrieved rows); it predicts a bank slide (without its own rows) as the same bank in memory does,
    saves again unchanged, and one of another dtype is refused by name."""
    mapped, in_memory = SpaHGCPredictor.load(folder), SpaHGCPredictor.load(folder)
    expression = mapped.bank.expression
    assert isinstance(expression.base.base.obj, mmap.mmap) and not expression.flags.writeable
    in_memory.bank.expression = np.array(expression)
    bank_slide = make_slides()[0]
    assert bank_slide.slide_id in set(mapped.bank.slide_ids)
    np.testing.assert_array_equal(mapped.predict(bank_slide), in_memory.predict(bank_slide))
    tensors = load_file(str(folder / "model.safetensors"))
    saved_again = load_file(str(mapped.save(tmp_path / "again") / "model.safetensors"))
    assert saved_again.keys() == tensors.keys()
    for name, values in tensors.items():
        np.testing.assert_array_equal(saved_again[name].numpy(), values.numpy())
    tensors["bank.expression"] = tensors["bank.expression"].double()
    reseal(folder, json.loads((folder / "config.json").read_text()), tensors)
    with pytest.raises(InputError, match=r"bank\.expression is F64, not one of F16, F32"):
        SpaHGCPredictor.load(folder)


def test_what_is_not_a_model_folder_is_named(tmp_path, folder):
    with pytest.raises(InputError, match="model folder not found"):
        SpaHGCPredictor.load(tmp_path / "missing")
    with pytest.raises(InputError, match="is a file, not a model folder"):
        SpaHGCPredictor.load(folder / "config.json")
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"needs config\.json and model\.safetensors") as error:
        SpaHGCPredictor.load(folder)
    assert str(error.value).startswith(str(folder))


def test_both_files_get_the_same_permissions(saved, tmp_path):
    model = SpaHGCPredictor.load(saved[0])
    previous = os.umask(0o002)  # group-writable: neither mkstemp's 0600 nor the usual 0644
    try:
        folder = model.save(tmp_path / "model")
    finally:
        os.umask(previous)
    modes = {name: (folder / name).stat().st_mode & 0o777 for name in ("model.safetensors", "config.json")}
    assert modes == {"model.safetensors": 0o664, "config.json": 0o664}


def test_an_approximate_search_index_is_saved_with_the_model_and_checked(tmp_path):
    """A bank searched approximately (here: above 50 distinct keys) keeps its HNSW graph in the model
    folder: loading reads it instead of building one, and predicts as the model in memory; a graph
    that does not fit the bank is refused by name."""
    model = fit(make_trainer(make_slides(), epochs=1, ann_min_keys=50))
    test = replace(make_slides(n_slides=1, seed=9)[0], slide_id="T")  # not a bank slide: the whole bank
    expected = model.predict(test)
    folder = model.save(tmp_path / "model")
    tensors = load_file(str(folder / "model.safetensors"))
    assert {"bank.search_graph.levels", "bank.search_graph.neighbours", "bank.search_graph.entry"} <= set(
        tensors
    )
    loaded = SpaHGCPredictor.load(folder)
    (index,) = loaded.bank._indexes.values()  # read with the folder, under the options it predicts with
    assert index is loaded.bank.search_index(loaded.config.graph.search()) and index.approximate
    for name, values in index.graph().items():
        np.testing.assert_array_equal(values, tensors[f"bank.search_graph.{name}"].numpy())
    np.testing.assert_array_equal(loaded.predict(test), expected)
    config = json.loads((folder / "config.json").read_text())
    tensors["bank.search_graph.neighbours"][0] = 10_000  # a neighbour the bank does not have
    reseal(folder, config, tensors)
    with pytest.raises(InputError, match="search graph"):
        SpaHGCPredictor.load(folder)
