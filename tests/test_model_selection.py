"""Model selection on held-out training slides: the members' validation groups and the prediction
smoothing their held-out slides choose."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from napari_spahgc.base.spatial import spatial_mix, spatial_neighbours
from napari_spahgc.train.model_selection import nanmean_columns, validation_groups
from synthetic_slides import fit, make_slides, make_trainer


def test_validation_groups_cover_the_slides_once():
    groups = validation_groups(5, members=4, seed=3)
    assert len(groups) == 4 and sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    assert sorted(validation_groups(3, members=4, seed=0)) == [[0], [1], [2]]  # one member per slide
    assert validation_groups(2, members=4, seed=0) == [[]]  # two slides: one member, no validation
    for n_slides, members in ((3, 2), (4, 3), (5, 2)):  # every member keeps two training slides or more
        groups = validation_groups(n_slides, members=members, seed=1)
        assert len(groups) == members and all(n_slides - len(g) >= 2 for g in groups), groups
    single = validation_groups(4, members=1, seed=5)
    assert len(single) == 1 and len(single[0]) == 1
    assert validation_groups(4, members=1, seed=5, hold_out=False) == [
        []
    ]  # the paper: all slides, no validation
    assert validation_groups(4, members=3, seed=5, hold_out=False) == [[], [], []]


def test_smoothing_is_chosen_on_held_out_training_slides_and_applied_at_prediction():
    slides = make_slides(n_slides=4)
    model = fit(make_trainer(slides))
    candidates = model.metadata.validation["smoothing_pcc"]
    assert list(candidates) == ["0", "0.25", "0.5", "0.75", "1"]
    assert model.config.graph.smoothing == float(max(candidates, key=candidates.get))
    test = make_slides(n_slides=1, seed=9)[0]
    chosen = model.config.graph
    model.config = replace(model.config, graph=replace(chosen, smoothing=0.5))
    smoothed = model.predict(test)
    model.config = replace(model.config, graph=replace(chosen, smoothing=0.0))
    plain = model.predict(test)
    expected = spatial_mix(plain, spatial_neighbours(test.coords, chosen.q), 0.5)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(smoothed, plain)
    paper = fit(make_trainer(slides, hold_out=False, members=1, epochs=2))  # no held-out slide: none chosen
    assert paper.config.graph.smoothing == 0.0 and "smoothing_pcc" not in paper.metadata.validation


def test_nanmean_columns_ignores_missing_values():
    values = np.array([[1.0, np.nan, np.nan], [3.0, 2.0, np.nan]])
    np.testing.assert_array_equal(nanmean_columns(values)[:2], [2.0, 2.0])
    assert np.isnan(nanmean_columns(values)[2])
