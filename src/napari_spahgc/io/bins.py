"""Visium HD bins aggregated into coarser squares, as Space Ranger bins 2 µm into 8 and 16 µm: the
counts of the bins in each square summed, the square centred at its bins' mean centre."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from napari_spahgc.base.errors import InputError
from napari_spahgc.io.slide import Slide


def squares(centers_px: np.ndarray, side_px: float, bin_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The squares of side ``side_px`` that hold bins (of side ``bin_px``, centred at ``centers_px``), on a
    grid from the bins' outer corner: each square's (row, column) on that grid, in row-major order, and
    each bin's square."""
    corner = centers_px.min(axis=0) - bin_px / 2
    cells = np.floor((centers_px - corner) / side_px).astype(np.int64)[:, ::-1]  # (x, y) → (row, column)
    grid, square = np.unique(cells, axis=0, return_inverse=True)
    return grid, square.reshape(-1)


def membership(square: np.ndarray) -> sparse.csr_matrix:
    """The (squares × bins) 0/1 matrix of which bins each square holds."""
    n = len(square)
    return sparse.csr_matrix((np.ones(n, np.float32), (square, np.arange(n))), shape=(square.max() + 1, n))


def summed_counts(counts: ad.AnnData, members: sparse.csr_matrix, spot_ids: pd.Index) -> ad.AnnData:
    """The counts of each square's bins summed (``members``: :func:`membership`), rows ``spot_ids``."""
    summed = sparse.csr_matrix(members @ sparse.csr_matrix(counts.X, dtype=np.float32))
    return ad.AnnData(summed, obs=pd.DataFrame(index=spot_ids.copy()), var=counts.var.copy())


def aggregate_bins(slide: Slide, factor: int) -> Slide:
    """``slide``'s bins in squares of ``factor`` × their side (8 µm bins, factor 2: 16 µm), counts
    summed. The grid follows the image's axes: on a rotated bin grid a square holds about
    ``factor``² bins, not exactly. The image, pixel size and patient stay the slide's."""
    if slide.spot_diameter_px is None:
        raise InputError(f"slide {slide.slide_id!r} has no bin size: its bins cannot be aggregated")
    side = factor * slide.spot_diameter_px
    grid, square = squares(slide.centers_px, side, slide.spot_diameter_px)
    members = membership(square)
    centers = (members @ slide.centers_px) / np.asarray(members.sum(axis=1))
    size_um = round(side * slide.require_pixel_size())
    rows, cols = (pd.Series(grid[:, axis]).astype(str).str.zfill(5) for axis in (0, 1))
    spot_ids = pd.Index(f"s_{size_um:03d}um_" + rows + "_" + cols)
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
