"""Write spot × gene values as ``.h5ad`` that scanpy / squidpy can plot, atomically."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import write_elem

from napari_spahgc.base.files import atomic_path, safe_name
from napari_spahgc.io.expression import log_cpm
from napari_spahgc.io.slide import Slide

_THUMBNAIL_SIDE = 2000
#: From this many values (spots × genes), measured values of sparse counts are kept as a sparse CSR
#: layer: a Visium HD slide's 700k bins × 785 genes would be a second 2.2 GB dense array beside X.
SPARSE_MEASURED_MIN_VALUES = 1 << 24
#: Rows per block when per-gene correlations are computed over a large slide.
_BLOCK_ROWS = 1 << 13


def spot_anndata(
    slide: Slide,
    values: np.ndarray | None,
    genes: Sequence[str],
    layers: Mapping[str, np.ndarray] | None = None,
    provenance: Mapping | None = None,
) -> ad.AnnData:
    """AnnData with obs = the slide's spot ids, var = genes, X = values, full-resolution
    ``obsm['spatial']`` (x, y), ``uns['spatial'][library]`` (thumbnail + scalefactors; the library is the slide id's safe file-name
    form, the id itself is in its ``metadata``) and
    ``uns['napari_spahgc']`` provenance.

    Nothing is copied that is already float32 (X and dense layers); sparse layers stay sparse (CSR).
    ``values=None`` leaves X out (:func:`stream_h5ad` writes it block by block)."""
    if values is not None:
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
        adata.layers[name] = (
            sp.csr_matrix(layer, dtype=np.float32)
            if sp.issparse(layer)
            else np.asarray(layer, dtype=np.float32)
        )
    adata.uns["spatial"] = {safe_name(slide.slide_id): _spatial_entry(slide)}  # h5py reads "/" as a path
    adata.uns["napari_spahgc"] = provenance_record(provenance or {}, slide)
    return adata


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` atomically (temp file, then rename): never a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


@contextmanager
def stream_h5ad(adata: ad.AnnData, path: str | Path) -> Iterator[h5py.Dataset]:
    """Write ``adata`` (without X) to ``path`` and yield its X, an empty float32 (n_obs, n_vars) h5py
    dataset to fill by row blocks; what is added to ``adata``'s obs, var, obsm, varm and uns inside
    the block is written at the end. Atomic as :func:`write_h5ad`: the file appears, complete, only
    when the block succeeds."""
    if adata.X is not None:
        raise ValueError("stream_h5ad writes X itself: pass AnnData without X")
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "r+") as file:
            x = file.create_dataset("X", shape=adata.shape, dtype=np.float32)
            x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
            yield x
            for key in ("obs", "var"):
                write_elem(file, key, getattr(adata, key))
            for key in ("obsm", "varm", "uns"):
                write_elem(file, key, dict(getattr(adata, key)))


def copy_with_obs(
    source: str | Path, path: str | Path, obs: pd.DataFrame, uns: Mapping | None = None
) -> Path:
    """A copy of the h5ad ``source`` at ``path`` with ``obs`` replaced and ``uns`` entries added, made
    atomically; X and the layers are copied as bytes, never loaded (a Visium HD file stays cheap)."""
    import shutil

    path = Path(path)
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as file:
            write_elem(file, "obs", obs)
            for key, value in (uns or {}).items():
                write_elem(file["uns"], key, storable(value))
    return path


def measured_values(
    counts: ad.AnnData, genes: Sequence[str], sparse: bool | None = None
) -> np.ndarray | sp.csr_matrix:
    """log1p(counts / spot total × 1e6) of ``genes`` (totals over all genes of the spot; NaN for genes
    the counts lack), float32, in the spots' order. ``sparse=None``: a CSR matrix when the counts are
    sparse and the result would hold at least :data:`SPARSE_MEASURED_MIN_VALUES` values, else dense.
    A sparse result stores a lacking gene as explicit NaN entries. No dense copy of all genes is made."""
    matrix = counts.X
    if sparse is None:
        sparse = sp.issparse(matrix) and counts.n_obs * len(genes) >= SPARSE_MEASURED_MIN_VALUES
    columns = {g: i for i, g in enumerate(map(str, counts.var_names))}
    present = [j for j, g in enumerate(genes) if g in columns]
    if not sparse:
        dense = np.full((counts.n_obs, len(genes)), np.nan, dtype=np.float32)
        dense[:, present] = log_cpm(counts, [genes[j] for j in present]).X
        return dense
    totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    factor = np.divide(1e6, totals, out=np.zeros_like(totals), where=totals > 0)
    chosen = sp.csr_matrix(matrix[:, [columns[genes[j]] for j in present]], dtype=np.float64)
    scaled = sp.csr_matrix(sp.diags(factor) @ chosen)
    scaled.data = np.log1p(scaled.data)
    return _sparse_with_nan_columns(scaled.astype(np.float32), present, len(genes))


def _sparse_with_nan_columns(part: sp.csr_matrix, present: list[int], n_genes: int) -> sp.csr_matrix:
    """``part``'s columns placed at ``present`` of ``n_genes``; every other column explicit NaN."""
    lacking = np.setdiff1d(np.arange(n_genes), present)
    coo = part.tocoo()
    rows = [coo.row, np.repeat(np.arange(part.shape[0]), len(lacking))]
    cols = [np.asarray(present, dtype=np.int64)[coo.col], np.tile(lacking, part.shape[0])]
    data = [coo.data, np.full(part.shape[0] * len(lacking), np.nan, dtype=np.float32)]
    shape = (part.shape[0], n_genes)
    return sp.csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=shape)


def blockwise_pcc(truth, prediction: np.ndarray, block_rows: int = _BLOCK_ROWS) -> np.ndarray:
    """:func:`napari_spahgc.base.metrics.gene_pcc` (per-gene Pearson, NaN where the truth is constant or
    lacking, 0 where only the prediction is constant) over blocks of rows: ``truth`` dense or sparse,
    no full-size temporary (gene_pcc makes three of the slide's size)."""
    n = prediction.shape[0]
    blocks = [slice(start, min(start + block_rows, n)) for start in range(0, n, block_rows)]

    def rows(values, block):
        part = values[block]
        return (part.toarray() if sp.issparse(part) else np.asarray(part)).astype(np.float64)

    t_mean = sum(rows(truth, b).sum(0) for b in blocks) / n
    p_mean = sum(rows(prediction, b).sum(0) for b in blocks) / n
    tt = pp = tp = 0.0
    for block in blocks:
        t, p = rows(truth, block) - t_mean, rows(prediction, block) - p_mean
        tt, pp, tp = tt + (t * t).sum(0), pp + (p * p).sum(0), tp + (t * p).sum(0)
    t_norm, p_norm = np.sqrt(tt), np.sqrt(pp)
    with np.errstate(invalid="ignore", divide="ignore"):
        pcc = np.where(p_norm > 1e-6, tp / (t_norm * p_norm), 0.0)
    return np.where(t_norm > 1e-6, pcc, np.nan)


def provenance_record(details: Mapping, slide: Slide | None = None) -> dict:
    """Package version, inputs, parameters and time, in a form h5py can store (None → "")."""
    from napari_spahgc import __version__

    record = {
        "package": "napari-spahgc",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": dict(slide.sources) if slide is not None else {},
    }
    record.update(details)
    return storable(record)


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


def storable(value):
    """Recursively turn a record into types anndata writes (dicts, str, numbers, arrays)."""
    if isinstance(value, Mapping):
        return {str(k): storable(v) for k, v in value.items()}
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
