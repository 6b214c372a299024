"""SpaHGCConfig: flat options sorted into their parts, and --set values typed by the fields' types."""

from __future__ import annotations

import pytest

from napari_spahgc import InputError
from napari_spahgc.model.config import GraphOptions, ModelOptions, SpaHGCConfig, TrainOptions, parse_settings


def test_flat_options_go_to_their_part_and_defaults_stay():
    config = SpaHGCConfig.from_options({"hidden": 32, "q": 3, "lr": 3e-4}, seed=7)
    assert config.model == ModelOptions(hidden=32)
    assert config.graph == GraphOptions(q=3)
    assert config.train == TrainOptions(lr=3e-4, seed=7)
    assert SpaHGCConfig.from_options() == SpaHGCConfig()
    assert set(config.to_dict()) == {"graph", "model", "train"}


def test_unknown_options_are_refused_with_the_known_ones_named():
    with pytest.raises(InputError, match=r"unknown SpaHGC option.*hiden.*known:.*hidden"):
        SpaHGCConfig.from_options({"hiden": 32})


def test_settings_are_typed_by_the_field_types():
    settings = parse_settings(
        ["use_ts=false", "patience=none", "lr=1e-3", "hidden=64", "pcc_weight=3", "masking=random", "k = 9"]
    )
    assert settings == {"use_ts": False, "patience": None, "lr": 1e-3, "hidden": 64, "pcc_weight": 3.0,
                        "masking": "random", "k": 9}  # fmt: skip
    assert type(settings["hidden"]) is int and type(settings["pcc_weight"]) is float
    assert parse_settings(["patience=20"]) == {"patience": 20}


@pytest.mark.parametrize(
    ("pair", "message"),
    [("hidden=wide", "hidden='wide': expected int"), ("use_ts=maybe", "expected bool"),
     ("lr", "expected NAME=VALUE"), ("nonsense=1", "unknown SpaHGC option 'nonsense'"),
     ("hidden=none", "expected int")],
)  # fmt: skip
def test_bad_settings_say_what_is_wrong(pair, message):
    with pytest.raises(InputError, match=message):
        parse_settings([pair])


def test_the_paper_preset_is_exactly_the_papers_configuration():
    config = SpaHGCConfig.from_options(preset="paper")
    assert (config.graph.q, config.graph.k) == (5, 7)
    assert config.model.members == 1
    train = config.train
    assert (train.epochs, train.lr, train.weight_decay, train.alpha, train.beta) == (
        200,
        1e-4,
        1e-4,
        0.8,
        0.9,
    )
    assert (train.mse_weight, train.pcc_weight, train.con_target_weight, train.con_reference_weight) == (
        1,
        1,
        1,
        1,
    )
    assert train.hold_out is False and train.patience is None and train.masking == "complementary"
    assert SpaHGCConfig.from_options({"epochs": 3}, preset="paper").train.epochs == 3  # options on top
    assert SpaHGCConfig.from_options(preset="default") == SpaHGCConfig()
    with pytest.raises(InputError, match="unknown preset 'papr'; known: default, paper"):
        SpaHGCConfig.from_options(preset="papr")


@pytest.mark.parametrize(
    ("pair", "message"),
    [("masking=foo", "masking must be one of"), ("training_bank=test", "training_bank must be one of"),
     ("reference_nodes=all", "reference_nodes must be one of"), ("alpha=1.5", "strictly between 0 and 1")],
)  # fmt: skip
def test_values_out_of_range_are_input_errors(pair, message):
    with pytest.raises(InputError, match=message):
        SpaHGCConfig.from_options(parse_settings([pair]))
