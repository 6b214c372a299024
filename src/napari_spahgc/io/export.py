"""Write spot × gene values as ``.h5ad`` that scanpy / squidpy can plot, atomically."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .._files import atomic_path, safe_name
from ..slide import Slide

_THUMBNAIL_SIDE = 2000


def spot_anndata(
    slide: Slide,
    values: np.ndarray,
    genes: Sequence[str],
    layers: Mapping[str, np.ndarray] | None = None,
    provenance: Mapping | None = None,
) -> ad.AnnData:
    """AnnData with obs = the slide's spot ids, var = genes, X = values, full-resolution
    ``obsm['spatial']`` (x, y), ``uns['spatial'][library]`` (thumbnail + scalefactors; the library is the slide id's safe file-name
    form, the id itself is in its ``metadata``) and
    ``uns['napari_spahgc']`` provenance."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (slide.n_spots, len(genes)):
        raise ValueError(f"values have shape {values.shape}, expected {(slide.n_spots, len(genes))}")
    adata = ad.AnnData(
        X=values,
        obs=pd.DataFrame(index=pd.Index(slide.spot_ids, name=None)),
        var=pd.DataFrame(index=pd.Index(list(map(str, genes)), name=None)),
    )
    adata.obsm["spatial"] = slide.centers_px.astype(np.float64)
    for name, layer in (layers or {}).items():
        adata.layers[name] = np.asarray(layer, dtype=np.float32)
    adata.uns["spatial"] = {safe_name(slide.slide_id): _spatial_entry(slide)}  # h5py reads "/" as a path
    adata.uns["napari_spahgc"] = provenance_record(provenance or {}, slide)
    return adata


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` atomically (temp file, then rename): never a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


def provenance_record(details: Mapping, slide: Slide | None = None) -> dict:
    """Package version, inputs, parameters and time, in a form h5py can store (None → "")."""
    from .. import __version__

    record = {
        "package": "napari-spahgc",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": dict(slide.sources) if slide is not None else {},
    }
    record.update(details)
    return _storable(record)


def _spatial_entry(slide: Slide) -> dict:
    factors: dict[str, float] = {}
    entry: dict = {"scalefactors": factors, "metadata": {"slide_id": slide.slide_id}}
    if slide.spot_diameter_px:
        factors["spot_diameter_fullres"] = float(slide.spot_diameter_px)
    if slide.pixel_size_um:
        factors["microns_per_pixel"] = float(slide.pixel_size_um)
        entry["metadata"]["pixel_size_source"] = slide.pixel_size_source or ""
    if slide.image is not None:
        thumbnail, scale = slide.image.thumbnail(_THUMBNAIL_SIDE)
        entry["images"] = {"hires": thumbnail}
        factors["tissue_hires_scalef"] = float(scale)
    return entry


def _storable(value):
    """Recursively turn a record into types anndata writes (dicts, str, numbers, arrays)."""
    if isinstance(value, Mapping):
        return {str(k): _storable(v) for k, v in value.items()}
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value) and value:
            return np.asarray(value)
        if all(isinstance(v, str) for v in value):
            return np.asarray(value, dtype=object) if value else np.asarray([], dtype=str)
        return json.dumps(value, default=str)
    if isinstance(value, (str, int, float, bool, np.number, np.ndarray)):
        return value
    return str(value)
