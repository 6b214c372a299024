"""napari writer: a Points layer of spots (with its features) → ``.h5ad``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from napari_spahgc.io.export import spot_anndata, write_h5ad
from napari_spahgc.io.images import open_image
from napari_spahgc.io.slide import Slide
from napari_spahgc.view.layers import METADATA_KEY


def write_points_h5ad(path: str, data: np.ndarray, meta: dict) -> list[str]:
    """Write spots as h5ad: obs = ``spot_id`` feature (or row numbers), X = the numeric feature
    columns, ``obsm['spatial']`` = full-resolution (x, y), plus scalefactors and provenance."""
    features = pd.DataFrame(meta.get("features", {}))
    info = dict(meta.get("metadata", {}).get(METADATA_KEY, {}))
    if "spot_id" in features:
        spot_ids = pd.Index(features["spot_id"].astype(str))
    else:
        spot_ids = pd.Index([str(i) for i in range(len(data))])
    values = features.drop(columns=["spot_id"], errors="ignore").select_dtypes(include="number")
    scale = np.asarray(meta.get("scale", (1.0, 1.0)), dtype=float)
    pixel_size = info.get("pixel_size_um") or (float(scale[-1]) if scale[-1] != 1.0 else None)
    sizes = np.atleast_1d(meta.get("size", 0.0))
    image_path = info.get("sources", {}).get("image")
    image = open_image(image_path) if image_path and Path(image_path).is_file() else None
    slide = Slide(
        slide_id=str(info.get("slide_id") or meta.get("name") or Path(path).stem),
        spot_ids=spot_ids,
        centers_px=np.asarray(data, dtype=float)[:, -2:][:, ::-1],
        image=image,
        pixel_size_um=pixel_size,
        pixel_size_source=info.get("pixel_size_source"),
        spot_diameter_px=info.get("spot_diameter_px") or (float(np.mean(sizes)) if sizes.size else None),
        sources={k: str(v) for k, v in info.get("sources", {}).items()},
    )
    adata = spot_anndata(
        slide,
        values.to_numpy(dtype=np.float32),
        list(values.columns),
        provenance={"written_by": "napari writer", "layer": meta.get("name", "")},
    )
    return [str(write_h5ad(adata, path))]
