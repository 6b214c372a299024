"""Visium HD bins aggregated into coarser squares (``io.bins``): counts summed square by square, centres
averaged, Space Ranger-style ids, on grids whose pitch is not a round number of pixels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from napari_spahgc import InputError
from napari_spahgc.io.bins import aggregate_bins, squares
from napari_spahgc.io.slide import Slide
from synthetic_slides import count_table

PIXEL_UM = 0.3675
PITCH_PX = 8 / PIXEL_UM  # 21.768707… px: no bin centre lies on a round number


def bin_slide(rows: int, cols: int, genes: int = 6, seed: int = 0) -> Slide:
    """A ``rows`` × ``cols`` grid of 8 µm bins (row-major ids), Poisson counts, half the bins empty."""
    row, col = np.divmod(np.arange(rows * cols), cols)
    centers = np.column_stack([col, row]) * PITCH_PX + [1003.7, 517.2]
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, (rows * cols, genes)) * (rng.random((rows * cols, 1)) < 0.5)
    ids = pd.Index([f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(row, col, strict=True)])
    return Slide("HD", ids, centers, pixel_size_um=PIXEL_UM, expression=count_table(counts, ids), patient="P",
                 spot_diameter_px=PITCH_PX)  # fmt: skip


def test_bins_aggregate_two_by_two_into_16_um_squares():
    slide = bin_slide(rows=5, cols=7)
    coarse = aggregate_bins(slide, 2)
    assert coarse.n_spots == 3 * 4 and coarse.spot_diameter_px == pytest.approx(2 * PITCH_PX)
    assert coarse.spot_ids[0] == "s_016um_00000_00000" and coarse.spot_ids[-1] == "s_016um_00002_00003"
    assert (coarse.slide_id, coarse.patient, coarse.pixel_size_um) == ("HD", "P", PIXEL_UM)
    counts, summed = slide.expression.X.toarray(), coarse.expression.X.toarray()
    np.testing.assert_array_equal(summed.sum(axis=0), counts.sum(axis=0))  # no count lost or doubled
    assert list(coarse.expression.var_names) == list(slide.expression.var_names)
    for square, (row, col) in enumerate([(r, c) for r in range(3) for c in range(4)]):
        inside = [r * 7 + c for r in (2 * row, 2 * row + 1) if r < 5 for c in (2 * col, 2 * col + 1) if c < 7]
        np.testing.assert_array_equal(summed[square], counts[inside].sum(axis=0))
        np.testing.assert_allclose(coarse.centers_px[square], slide.centers_px[inside].mean(axis=0))
    assert coarse.expression.obs_names.equals(coarse.spot_ids)


@pytest.mark.parametrize("factor", [2, 4, 13])
def test_every_square_of_a_long_grid_holds_factor_squared_bins(factor):
    """Hundreds of bins along each axis: rounding never moves a bin into its neighbour's square."""
    _, square = squares(bin_slide(rows=26, cols=520, genes=1), factor)
    sizes = np.bincount(square)
    full = (26 // factor) * (520 // factor)  # squares away from the last row and column
    assert np.sum(sizes == factor**2) == full and sizes.max() == factor**2
    assert len(sizes) == -(-26 // factor) * -(-520 // factor)


def test_spots_that_are_not_bins_on_one_grid_are_refused_by_name():
    slide = bin_slide(rows=6, cols=6)
    rotated = replace(slide, centers_px=slide.centers_px @ np.array([[0.998, 0.0698], [-0.0698, 0.998]]))
    with pytest.raises(InputError, match="'HD' is not bins on one square grid"):
        aggregate_bins(rotated, 2)
    spots = replace(slide, spot_diameter_px=0.4 * PITCH_PX)  # spots apart, as Visium's on their grid
    with pytest.raises(InputError, match="Space Ranger's binned_outputs/square_016um"):
        aggregate_bins(spots, 2)
