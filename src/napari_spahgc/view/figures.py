"""Figures over the H&E: one gene predicted beside measured (``spahgc render``, the demo), tissue
domains (``spahgc domains``), and a bar plot of gene-set enrichment (``spahgc markers``).

Qt-free and without pyplot state: a matplotlib ``Figure`` drawn by the Agg canvas.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import atomic_path
from napari_spahgc.io.slide import spot_grid, spot_pitch
from napari_spahgc.view.layers import RASTER_MIN_SPOTS, gene_values, shared_limits

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
    size, (x0, y0), (x1, y1) = _frame(xy, diameter, scale)

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


def domain_colours(n: int) -> np.ndarray:
    """(n, 4) RGBA colours of domains 0 … n − 1: matplotlib's tab20, its ten strong colours first,
    then their light twins (repeating after 20)."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    palette = np.array([*tab20[0::2], *tab20[1::2]], dtype=np.float32)
    return np.column_stack([palette[np.arange(n) % len(palette)], np.ones(n, np.float32)])


def render_domains(prediction: AnnData, domains, out_path: str | Path, title: str, dpi: int = 150) -> Path:
    """Write a PNG of each spot's domain (categorical colours, a legend with the domains' sizes) over
    the H&E thumbnail of the file's ``uns['spatial']``; binned slides (Visium HD) as one pixel per bin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    domains = pd.Categorical(domains)
    _, thumbnail, scale, diameter = _background(prediction, None)
    centres = np.asarray(prediction.obsm["spatial"], dtype=float)
    xy = centres * scale
    grid = spot_grid(centres) if len(xy) >= RASTER_MIN_SPOTS else None
    size, (x0, y0), (x1, y1) = _frame(xy, diameter, scale)
    colours = domain_colours(len(domains.categories))
    height = float(np.clip(5.5 * (y1 - y0) / max(x1 - x0, 1e-9), 2.5, 9.0)) + 0.6
    figure = Figure(figsize=(7.5, height), dpi=dpi)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0.02, 0.02, 0.7, 0.9))
    if thumbnail is not None:
        ax.imshow(thumbnail)
    if grid is not None:  # binned (Visium HD): one pixel per bin
        index, pitch, origin = grid
        raster = np.zeros((*(index.max(axis=0) + 1), 4), np.float32)
        raster[index[:, 0], index[:, 1]] = colours[domains.codes] * (1, 1, 1, 0.75)  # the H&E shows through
        (left, top), step = origin * scale, pitch * scale
        right, bottom = left + raster.shape[1] * step, top + raster.shape[0] * step
        ax.imshow(raster, extent=(left - step / 2, right - step / 2, bottom - step / 2, top - step / 2))
    else:
        points_per_unit = 72 * ax.get_position().width * figure.get_figwidth() / (x1 - x0)
        ax.scatter(
            xy[:, 0], xy[:, 1], s=(size * points_per_unit) ** 2, c=colours[domains.codes], linewidths=0
        )
    ax.set(xlim=(x0, x1), ylim=(y1, y0), aspect="equal")
    ax.set_axis_off()
    counts = pd.Series(domains).value_counts().reindex(domains.categories, fill_value=0)
    handles = [
        Patch(color=colours[i], label=f"{name} ({counts[name]:,})")
        for i, name in enumerate(domains.categories)
    ]
    figure.legend(handles=handles, title="domain (spots)", loc="center right", frameon=False)
    figure.suptitle(title, fontsize=10)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png")
    return out_path


def render_enrichment(
    table: pd.DataFrame, out_path: str | Path, title: str, top: int = 15, dpi: int = 150
) -> Path:
    """Write a PNG bar plot of the ``top`` gene sets by over-representation: −log10 adjusted p, with
    the hits / set size at each bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = table.head(top).iloc[::-1]
    figure = Figure(figsize=(7.5, 1.2 + 0.32 * max(len(shown), 1)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    bars = -np.log10(np.clip(shown["ora_padj"].to_numpy(dtype=float), 1e-300, 1))
    ax.barh(np.arange(len(shown)), bars, color=np.where(shown["ora_padj"] < 0.05, "#d62728", "#9e9e9e"))
    ax.set_yticks(np.arange(len(shown)), [str(s)[:50] for s in shown["set"]], fontsize=8)
    for row, (value, hits, size) in enumerate(zip(bars, shown["hits"], shown["set_size"], strict=True)):
        ax.text(value, row, f" {hits}/{size}", va="center", fontsize=7)
    ax.axvline(-np.log10(0.05), color="black", linewidth=0.8, linestyle="--")
    ax.set(xlabel="−log10 adjusted p (over-representation of up genes)", title=f"Gene sets — {title}")
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


def _frame(xy: np.ndarray, diameter: float | None, scale: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The spots' drawn size and the corners of the view around them (1.5 spots of margin), in the
    units of ``xy`` (thumbnail pixels; ``diameter`` is in full-resolution pixels)."""
    size = diameter * scale if diameter else spot_pitch(xy, max_queries=5000) * 0.8
    return size, xy.min(axis=0) - size * 1.5, xy.max(axis=0) + size * 1.5


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
