"""Turn slides into napari layer data tuples (Qt-free: plain data, no napari import).

World coordinates are µm when the pixel size is known (layers carry ``scale`` = µm/px), so the
scale bar reads true; point and image data stay in full-resolution pixels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .expression import log_cpm
from .slide import Slide

#: Gene columns put into a Points layer's ``features`` at most (napari copies features; 15k columns
#: take seconds to build). The most expressed genes — those with the best-measured maps — are kept;
#: the full counts stay with the slide.
MAX_FEATURE_GENES = 2000
METADATA_KEY = "napari_spahgc"


def slide_layers(slide: Slide, visible: bool = True) -> list[tuple]:
    """Layer data for one slide: its H&E as a (multiscale) Image layer and its spots as Points."""
    layers = []
    if slide.image is not None:
        layers.append(image_layer(slide, visible))
    layers.append(spots_layer(slide, visible))
    return layers


def image_layer(slide: Slide, visible: bool = True) -> tuple:
    image = slide.image
    assert image is not None
    pixel = slide.pixel_size_um or 1.0
    step = pixel * image.downsamples[0]
    data = image.levels if image.n_levels > 1 else image.levels[0]
    meta = {
        "name": f"{slide.slide_id} H&E",
        "rgb": True,
        "multiscale": image.n_levels > 1,
        "scale": (step, step),
        "units": _units(slide),
        "visible": visible,
        "metadata": {METADATA_KEY: _slide_metadata(slide, "image")},
    }
    return data, meta, "image"


def spots_layer(slide: Slide, visible: bool = True) -> tuple:
    """Spots at the spot diameter; features hold ``spot_id`` (and measured log1p-CPM genes)."""
    features = pd.DataFrame({"spot_id": slide.spot_ids.to_numpy(dtype=object)})
    meta: dict = {
        "name": f"{slide.slide_id} spots" + (" (measured)" if slide.has_expression else ""),
        "scale": (slide.pixel_size_um or 1.0,) * 2,
        "units": _units(slide),
        "size": slide.spot_diameter_px or _default_spot_size(slide.centers_px),
        "border_width": 0.05,
        "border_color": "white",
        "face_color": "transparent",
        "opacity": 0.8,
        "visible": visible,
    }
    metadata = _slide_metadata(slide, "measured" if slide.has_expression else "spots")
    if slide.has_expression:
        genes = measured_features(slide)
        metadata["feature_genes"] = f"{genes.shape[1]} of {slide.n_genes} measured genes (log1p CPM)"
        features = pd.concat([features, genes.reset_index(drop=True)], axis=1)
        features["total_counts"] = np.asarray(slide.expression.X.sum(axis=1)).ravel()
        meta.update(face_color="total_counts", face_colormap="viridis", border_width=0)
    meta["features"] = features
    meta["metadata"] = {METADATA_KEY: metadata}
    return slide.centers_px[:, ::-1].copy(), meta, "points"


def measured_features(slide: Slide, max_genes: int = MAX_FEATURE_GENES) -> pd.DataFrame:
    """log1p-CPM of the measured genes as columns; the ``max_genes`` most expressed when there are more."""
    normalized = log_cpm(slide.expression)
    values = normalized.X
    names = normalized.var_names
    if values.shape[1] > max_genes:
        keep = np.sort(np.argsort(values.mean(axis=0))[::-1][:max_genes])
        values, names = values[:, keep], names[keep]
    return pd.DataFrame(values, columns=list(names))


def _slide_metadata(slide: Slide, kind: str) -> dict:
    return {
        "slide_id": slide.slide_id,
        "kind": kind,
        "pixel_size_um": slide.pixel_size_um,
        "pixel_size_source": slide.pixel_size_source,
        "spot_diameter_px": slide.spot_diameter_px,
        "sources": dict(slide.sources),
    }


def _units(slide: Slide) -> tuple[str, str]:
    return ("micrometer",) * 2 if slide.pixel_size_um else ("pixel",) * 2


def _default_spot_size(centers: np.ndarray) -> float:
    """Without a known diameter, draw spots at half the median nearest-neighbour distance."""
    if len(centers) < 2:
        return 10.0
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(centers).query(centers, k=2)
    return float(np.median(distances[:, 1]) / 2)
