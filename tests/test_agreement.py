"""The 8 µm bin grid and the bins-to-spot averaging of benchmarks/bench_agreement.py (no image, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from bench_agreement import assignment_matrix, average_bins, bin_grid, bin_slide

from napari_spahgc.io.slide import Slide

PX = 0.735  # µm per pixel, as HER2ST


def _legacy_slide() -> Slide:
    """A 4 × 3 legacy-ST array: 100 µm spots on a 200 µm pitch."""
    x, y = np.meshgrid(np.arange(4), np.arange(3))
    centres = np.stack([x.ravel(), y.ravel()], axis=1) * 200 / PX + 500.3
    ids = pd.Index([f"{i}x{j}" for i, j in zip(x.ravel(), y.ravel(), strict=True)])
    return Slide("S", ids, centres, pixel_size_um=PX, spot_diameter_px=100 / PX)


def test_bins_tile_each_spot_disk() -> None:
    slide = _legacy_slide()
    bins, assignment = bin_slide(slide)
    xy, _, owner = bin_grid(slide.centers_px, PX)
    distance_um = np.linalg.norm(xy - slide.centers_px[owner], axis=1) * PX
    assert distance_um.max() <= 50
    per_spot = np.bincount(owner, minlength=slide.n_spots)
    assert per_spot.min() >= 115 and per_spot.max() <= 130  # π · 50² / 8² ≈ 123
    assert bins.n_spots == len(xy) and bins.spot_ids.is_unique
    assert bins.spot_diameter_px == pytest.approx(8 / PX)
    np.testing.assert_allclose(np.asarray(assignment.sum(axis=1)).ravel(), 1.0)
    steps = xy / (8 / PX)  # one global grid: every centre a whole number of 8 µm steps from pixel 0
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)


def test_averaging_returns_each_spots_value() -> None:
    owner = np.array([0, 0, 1, 1, 1, 2])
    assignment = assignment_matrix(owner, 3)
    values = np.array([[1.0], [3.0], [2.0], [2.0], [5.0], [7.0]], dtype=np.float32)
    averaged = average_bins(assignment, values)
    np.testing.assert_allclose(averaged["log"].ravel(), [2.0, 3.0, 7.0])
    expected = np.log1p([np.expm1([1.0, 3.0]).mean(), np.expm1([2.0, 2.0, 5.0]).mean(), np.expm1(7.0)])
    np.testing.assert_allclose(averaged["expm1"].ravel(), expected, rtol=1e-6)


def test_overlapping_disks_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        bin_grid(np.array([[0.0, 0.0], [50.0 / PX, 0.0]]), PX)
