"""The slide model's helpers: the spot pitch (median nearest-neighbour distance)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc.io.slide import DEFAULT_SPOT_PITCH, spot_pitch


def test_spot_pitch_is_the_median_nearest_neighbour_distance():
    rows, cols = np.mgrid[0:6, 0:8]
    grid = np.column_stack([cols.ravel(), rows.ravel()]) * 100.0 + 7.0
    assert spot_pitch(grid) == pytest.approx(100.0)
    # one far-off spot does not move the median; two close spots are each other's nearest
    uneven = np.array([[0.0, 0.0], [3.0, 4.0], [20.0, 0.0], [20.0, 10.0], [500.0, 500.0]])
    assert spot_pitch(uneven) == pytest.approx(10.0)  # nearest: 5, 5, 10, 10, far → median 10


def test_spot_pitch_with_fewer_than_two_spots_is_the_default():
    assert spot_pitch(np.zeros((0, 2))) == DEFAULT_SPOT_PITCH == 10.0
    assert spot_pitch(np.array([[3.0, 4.0]])) == DEFAULT_SPOT_PITCH
    assert spot_pitch(np.array([[0.0, 0.0], [0.0, 0.0]])) == 0.0  # duplicates: no special case


def test_spot_pitch_may_query_an_even_sample_of_the_spots():
    xy = np.column_stack([np.arange(10_000.0) * 2.5, np.zeros(10_000)])
    assert spot_pitch(xy, max_queries=50) == pytest.approx(2.5)
    few = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    assert spot_pitch(few, max_queries=5000) == spot_pitch(few) == pytest.approx(1.0)
