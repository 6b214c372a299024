"""A figure of one gene, predicted beside measured, over the H&E (``spahgc render``, the demo).

Qt-free and without pyplot state: a matplotlib ``Figure`` drawn by the Agg canvas.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
from anndata import AnnData

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import atomic_path
from napari_spahgc.io.slide import spot_pitch
from napari_spahgc.view.layers import gene_values, shared_limits

UNITS = "log1p CPM"


def best_genes(prediction: AnnData, n: int, by: str = "validation_pcc") -> list[str]:
    """The ``n`` genes with the highest finite ``var[by]`` (``pcc`` when that column is absent)."""
    column = by if by in prediction.var else "pcc"
    if column not in prediction.var:
        return [str(g) for g in prediction.var_names[:n]]
    scores = prediction.var[column].astype(float)
    return [str(g) for g in scores[np.isfinite(scores)].sort_values(ascending=False).index[:n]]


def render_gene(
    prediction: AnnData,
    gene: str,
    out_path: str | Path,
    image: str | Path | None = None,
    colormap: str = "viridis",
    percentiles: tuple[float, float] = (1, 99),
    dpi: int = 150,
) -> Path:
    """Write a PNG: predicted | measured spots of ``gene`` (one colour scale) over the H&E thumbnail.

    The thumbnail comes from ``image`` (any image this package opens; only a small level is read) or
    the file's ``uns['spatial']``. Only the predicted panel is drawn when nothing was measured.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import EllipseCollection
    from matplotlib.figure import Figure

    _require_gene(prediction, gene)
    predicted, measured = gene_values(prediction, gene)
    panels = [("predicted", predicted)]
    if measured is not None and np.isfinite(measured).any():
        panels.append(("measured", measured))
    low, high = shared_limits(*(values for _, values in panels), percentiles=percentiles)
    slide_id, thumbnail, scale, diameter = _background(prediction, image)
    xy = np.asarray(prediction.obsm["spatial"], dtype=float) * scale
    size = diameter * scale if diameter else spot_pitch(xy) * 0.8
    margin = size * 1.5
    (x0, y0), (x1, y1) = xy.min(axis=0) - margin, xy.max(axis=0) + margin

    height = float(np.clip(5.2 * (y1 - y0) / max(x1 - x0, 1e-9), 2.5, 9.0)) + 0.9  # panel + titles
    figure = Figure(figsize=(5.2 * len(panels) + 0.8, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, values) in zip(axes, panels, strict=True):
        if thumbnail is not None:
            ax.imshow(thumbnail)
        spots = EllipseCollection(
            size, size, 0, units="xy", offsets=xy, offset_transform=ax.transData, cmap=colormap, array=values
        )
        spots.set_clim(low, high)
        ax.add_collection(spots)
        ax.set(xlim=(x0, x1), ylim=(y1, y0), aspect="equal", title=label)
        ax.set_axis_off()
    figure.colorbar(spots, ax=list(axes), shrink=0.8, label=f"{gene} {UNITS}")
    figure.suptitle(f"{slide_id} — {gene}{_scores(prediction, gene)}")
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png")
    return out_path


def _require_gene(prediction: AnnData, gene: str) -> None:
    """A clear error, with close matches, for a gene the file does not predict."""
    if gene not in prediction.var_names:
        names = {str(g).upper(): str(g) for g in prediction.var_names}
        close = [names[g] for g in difflib.get_close_matches(gene.upper(), list(names), n=5, cutoff=0.5)]
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise InputError(f"gene {gene!r} is not among the {prediction.n_vars} predicted genes{hint}")


def _background(prediction: AnnData, image: str | Path | None):
    """``(slide_id, thumbnail or None, full-res → thumbnail scale, spot diameter in full-res px)``."""
    spatial = prediction.uns.get("spatial", {})
    slide_id = next(iter(spatial), "slide")
    entry = spatial.get(slide_id, {})
    factors = entry.get("scalefactors", {})
    diameter = factors.get("spot_diameter_fullres")
    if image is not None:
        from napari_spahgc.io.images import open_image

        thumbnail, scale = open_image(image).thumbnail(2000)
        return slide_id, thumbnail, scale, diameter
    if "hires" in entry.get("images", {}):
        return slide_id, np.asarray(entry["images"]["hires"]), float(factors["tissue_hires_scalef"]), diameter
    return slide_id, None, 1.0, diameter


def _scores(prediction: AnnData, gene: str) -> str:
    parts = []
    for column, label in (("pcc", "PCC {:.2f} on this slide"), ("validation_pcc", "validation PCC {:.2f}")):
        if column in prediction.var and np.isfinite(value := float(prediction.var.loc[gene, column])):
            parts.append(label.format(value))
    return f" ({', '.join(parts)})" if parts else ""
