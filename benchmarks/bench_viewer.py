"""Viewer costs: switching the shown gene (5k spots as Points, 700k binned spots as a raster) and opening
a whole-slide pyramid.

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/bench_viewer.py

The gene switch goes through the Genes widget (``Session.set_gene`` → recolour predicted and measured
layers); "switch" is that call, "+ draw" adds a forced render of the canvas (``viewer.screenshot``, so it
includes reading the frame back; "draw alone" is that render with nothing changed). Median of 7 switches
over different genes.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import anndata as ad
import napari
import numpy as np
import pandas as pd
from qtpy.QtWidgets import QApplication

import napari_spahgc as ns
from napari_spahgc._qt._common import session_for
from napari_spahgc._qt.genes import GenesWidget

ROOT = Path(__file__).resolve().parents[1]


def grid_prediction(n_spots: int, n_genes: int, pitch_px: float, seed: int = 0):
    """Spots on a square grid with smooth random gene fields (predicted) and noisy copies (measured)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_spots)))
    rows, cols = np.divmod(np.arange(n_spots), side)
    centers = np.stack([cols, rows], axis=1) * pitch_px + 100.0
    slide = ns.Slide("bench", pd.Index([f"s{i}" for i in range(n_spots)]), centers, pixel_size_um=0.5,
                  spot_diameter_px=pitch_px)  # fmt: skip
    phase = rng.uniform(0, 2 * np.pi, size=(n_genes, 2))
    fields = [np.sin(cols / side * 6 + p[0]) + np.cos(rows / side * 4 + p[1]) for p in phase]
    predicted = np.stack(fields, axis=1).astype(np.float32) + 3
    measured = predicted + rng.normal(0, 0.5, predicted.shape).astype(np.float32)
    genes = [f"GENE{i}" for i in range(n_genes)]
    prediction = ad.AnnData(predicted, obs=pd.DataFrame(index=slide.spot_ids), var=pd.DataFrame(index=genes))
    prediction.layers["measured"] = measured
    return slide, prediction


def time_gene_switch(n_spots: int, n_genes: int = 20, pitch_px: float = 16.0) -> dict:
    viewer = napari.Viewer(show=True)
    genes_widget = GenesWidget(viewer)
    viewer.window.add_dock_widget(genes_widget)
    session = session_for(viewer)
    slide, prediction = grid_prediction(n_spots, n_genes, pitch_px)
    started = time.perf_counter()
    session.add_slides([slide])
    session.set_prediction(slide.slide_id, prediction)
    viewer.screenshot(canvas_only=True, flash=False)
    first = time.perf_counter() - started
    kinds = sorted({type(layer).__name__ for layer in genes_widget.gene_layers()})
    switch, total = [], []
    for gene in prediction.var_names[1:8]:
        started = time.perf_counter()
        session.set_gene(gene)
        switch.append(time.perf_counter() - started)
        viewer.screenshot(canvas_only=True, flash=False)
        total.append(time.perf_counter() - started)
    idle = []
    for _ in range(5):
        started = time.perf_counter()
        viewer.screenshot(canvas_only=True, flash=False)
        idle.append(time.perf_counter() - started)
    viewer.close()
    return {
        "spots": n_spots, "layers": "+".join(kinds), "first display s": round(first, 2),
        "switch ms": round(1000 * statistics.median(switch), 1),
        "switch + draw ms": round(1000 * statistics.median(total), 1),
        "draw alone ms": round(1000 * statistics.median(idle), 1),
    }  # fmt: skip


def time_pyramid_open() -> dict:
    """Open a HER2ST section (cached pyramid) and draw its first frame."""
    from napari_spahgc.view.layers import image_layer

    entry = ns.read_cohort(ROOT / "examples" / "her2st_cohort.csv")[0]
    entry.load()  # converts the JPEG once into the cached pyramid
    viewer = napari.Viewer(show=True)
    started = time.perf_counter()
    slide = entry.load()
    data, meta, _ = image_layer(slide)
    viewer.add_image(data, **meta)
    viewer.screenshot(canvas_only=True, flash=False)
    seconds = time.perf_counter() - started
    viewer.close()
    return {"slide": slide.slide_id, "shape": slide.image.shape, "levels": slide.image.n_levels,
            "open + first frame s": round(seconds, 2)}  # fmt: skip


def main() -> None:
    napari.utils.resize_dask_cache(0.05)
    for n_spots in (5_000, 100_000, 700_000):
        print(time_gene_switch(n_spots), flush=True)
        QApplication.processEvents()
    print(time_pyramid_open(), flush=True)


if __name__ == "__main__":
    main()
