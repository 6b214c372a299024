"""Visium HD bins aggregated into coarser squares, as Space Ranger bins 2 µm into 8 and 16 µm: the
counts of the bins in each square summed, the square centred at its bins' mean centre."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from napari_spahgc.base.errors import InputError
from napari_spahgc.io.slide import Slide, spot_grid


def squares(slide: Slide, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The squares of ``factor`` × ``factor`` bins that hold ``slide``'s bins: each square's (row,
    column) on the grid of squares, in row-major order, and each bin's square. The bins must sit on one
    square grid along the image's axes (:func:`~napari_spahgc.io.slide.spot_grid`)."""
    found = spot_grid(slide.centers_px)
    if found is None or (slide.spot_diameter_px or 0) < 0.9 * found[1]:
        raise InputError(
            f"slide {slide.slide_id!r} is not bins on one square grid along the image's axes: its spots "
            "cannot be aggregated (for Visium HD, Space Ranger's binned_outputs/square_016um is the "
            "16 µm aggregation)"
        )
    grid, square = np.unique(found[0] // factor, axis=0, return_inverse=True)
    return grid, square.reshape(-1)


def membership(square: np.ndarray) -> sparse.csr_matrix:
    """The (squares × bins) 0/1 matrix of which bins each square holds."""
    n = len(square)
    return sparse.csr_matrix((np.ones(n, np.float32), (square, np.arange(n))), shape=(square.max() + 1, n))


def summed_counts(counts: ad.AnnData, members: sparse.csr_matrix, spot_ids: pd.Index) -> ad.AnnData:
    """The counts of each square's bins summed (``members``: :func:`membership`), rows ``spot_ids``."""
    summed = sparse.csr_matrix(members @ sparse.csr_matrix(counts.X, dtype=np.float32))
    return ad.AnnData(summed, obs=pd.DataFrame(index=spot_ids.copy()), var=counts.var.copy())


def side_name(slide: Slide, factor: int) -> str:
    """The side of ``factor`` × ``factor`` squares of ``slide``'s bins as Space Ranger names it: 8 µm
    bins, factor 2: ``"016um"``."""
    return f"{round(factor * slide.spot_diameter_px * slide.require_pixel_size()):03d}um"


def aggregate_bins(slide: Slide, factor: int) -> Slide:
    """``slide``'s bins in squares of ``factor`` × their side (8 µm bins, factor 2: 16 µm), counts
    summed, each square centred at its bins' mean centre (:func:`squares`). The image, pixel size and
    patient stay the slide's."""
    grid, square = squares(slide, factor)
    side = factor * slide.spot_diameter_px
    members = membership(square)
    centers = (members @ slide.centers_px) / np.asarray(members.sum(axis=1))
    rows, cols = (pd.Series(grid[:, axis]).astype(str).str.zfill(5) for axis in (0, 1))
    spot_ids = pd.Index(f"s_{side_name(slide, factor)}_" + rows + "_" + cols)
    return Slide(
        slide.slide_id,
        spot_ids,
        centers,
        image=slide.image,
        pixel_size_um=slide.pixel_size_um,
        pixel_size_source=slide.pixel_size_source,
        expression=None if slide.expression is None else summed_counts(slide.expression, members, spot_ids),
        patient=slide.patient,
        spot_diameter_px=side,
        sources=dict(slide.sources),
    )
