"""Read spot tables and measured expression in the formats the field uses.

Every reader returns a :class:`SpotTable`: spot ids exactly as the input spells them, full-resolution
pixel centres (x = column, y = row), raw counts as AnnData when the source has them, and what the
source says about scale (scalefactors) and any images it carries (h5ad and Space Ranger: low-resolution
ones; a SpatialData store: its full-resolution pyramid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spahgc.base.errors import InputError, describe
from napari_spahgc.base.files import read_text
from napari_spahgc.io.slide import LEGACY_ST_SPOT_DIAMETER_UM, VISIUM_SPOT_DIAMETER_UM, SlideImage
from napari_spahgc.io.validate import check_ids_and_centers, h5ad_centers, numbers, preview, validate_counts


@dataclass
class SpotTable:
    """Spots of one slide as read from disk, before they are joined with an image."""

    path: Path
    spot_ids: pd.Index
    centers_px: np.ndarray
    counts: ad.AnnData | None = None
    pixel_size_um: float | None = None
    pixel_size_source: str | None = None
    spot_diameter_px: float | None = None
    spot_diameter_um: float | None = None
    #: low-resolution images carried by the source: name -> (pixels, scale to full resolution)
    images: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)
    library_id: str | None = None
    #: the full-resolution image the source carries (a SpatialData store's), its centres in its pixels
    full_image: SlideImage | None = None


# ---------------------------------------------------------------------------------------------- dispatch


def read_spots(path: str | Path, with_counts: bool = True) -> SpotTable:
    """Read spots from a Space Ranger ``outs/`` folder, a SpatialData store (``STORE.zarr[::ELEMENT]``),
    an ``.h5ad``, a legacy-ST selection TSV, a Visium ``tissue_positions`` file, or a plain CSV/TSV of
    spot id, x, y. ``with_counts=False``: a store's counts are not read (the other sources carry them
    in the same file and are read whole)."""
    from napari_spahgc.io.spatialdata import is_store

    if is_store(path):
        return _store_spots(path, with_counts)
    path = Path(path)
    if not path.exists():
        raise InputError("spot file not found", path)
    if path.is_dir():
        return read_spaceranger(path)
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return read_h5ad_spots(path)
    if name.endswith(".parquet") or name.startswith("tissue_positions"):
        return _visium_table(path, _read_positions(path))
    table = _read_table(path)
    columns = {c.lower() for c in table.columns}
    if {"pixel_x", "pixel_y", "x", "y"} <= columns:
        return _legacy_st(path, table)
    if "pxl_row_in_fullres" in columns:
        return _visium_table(path, table)
    return _plain_table(path, table)


def read_counts(path: str | Path) -> ad.AnnData:
    """Raw counts (spots × genes) from a legacy-ST TSV(.gz), a 10x ``.h5``, an ``.h5ad``, a CSV, or the
    table of a Space Ranger folder or a SpatialData store."""
    from napari_spahgc.io.spatialdata import is_store

    if is_store(path):
        return _store_spots(path, True).counts
    path = Path(path)
    if not path.exists():
        raise InputError("counts file not found", path)
    name = path.name.lower()
    try:
        if path.is_dir():
            adata = read_spots(path).counts
        elif name.endswith(".h5ad"):
            adata = read_anndata(path, "counts file", spatial=False)
        elif name.endswith(".h5"):
            adata = _read_10x_h5(path)
        else:
            frame = _counts_table(path, name)
            adata = ad.AnnData(sp.csr_matrix(frame.to_numpy(dtype=np.float32)))
            adata.obs_names = frame.index.astype(str)
            adata.var_names = frame.columns.astype(str)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read counts ({describe(err)})", path) from err
    if adata is None:
        raise InputError("no counts matrix found", path)
    tenx = path.is_dir() or name.endswith(".h5")
    return validate_counts(adata, path, duplicate_genes="rename" if tenx else "refuse")


def read_count_ids(path: str | Path) -> pd.Index:
    """The spot ids of a counts file (what selects a slide's spots), without reading a text table's
    values: embedding needs the spots, not the counts."""
    from napari_spahgc.io.spatialdata import is_store

    if is_store(path):
        return _store_spots(path, False).spot_ids
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith((".h5ad", ".h5")) or not path.is_file():
        return read_counts(path).obs_names
    try:
        ids = pd.read_csv(path, sep=_separator(name), usecols=[0], index_col=0).index.astype(str)
    except Exception as err:
        raise InputError(f"cannot read counts ({describe(err)})", path) from err
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise InputError(f"duplicate spot ids in counts: {preview(duplicated)}", path)
    return ids


def _counts_table(path: Path, name: str) -> pd.DataFrame:
    """A text counts table (spots × genes); repeated gene columns are refused, not renamed by pandas."""
    frame = pd.read_csv(path, sep=_separator(name), index_col=0)
    header = pd.read_csv(path, sep=_separator(name), header=None, nrows=1, dtype=str)
    genes = pd.Index(header.iloc[0, 1:].astype(str))
    repeated = genes[genes.duplicated()].unique()
    if len(repeated):
        raise InputError(f"duplicate gene names in counts: {preview(repeated)}", path)
    return frame


def _separator(name: str) -> str:
    return "\t" if ".tsv" in name or ".txt" in name else ","


# ---------------------------------------------------------------------------------------------- formats


def read_spaceranger(folder: Path) -> SpotTable:
    """A 10x Space Ranger ``outs/`` folder: positions, scalefactors, counts and low-res images."""
    spatial = folder / "spatial"
    if not spatial.is_dir():
        raise InputError("not a Space Ranger outs/ folder (no spatial/ sub-folder)", folder)
    positions = next(
        (
            spatial / n
            for n in ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
            if (spatial / n).is_file()
        ),
        None,
    )
    if positions is None:
        raise InputError("no spatial/tissue_positions(.csv|.parquet|_list.csv) found", folder)
    table = _visium_table(positions, _read_positions(positions))
    table.path = folder
    scalefactors = spatial / "scalefactors_json.json"
    factors = _scalefactors(scalefactors) if scalefactors.is_file() else {}
    _apply_scalefactors(table, factors, scalefactors)
    for kind, factor in _image_scalefactors(factors).items():
        image = spatial / f"tissue_{kind}_image.png"
        if image.is_file():
            from PIL import Image

            with Image.open(image) as handle:
                table.images[kind] = (np.asarray(handle.convert("RGB")), factor)
    matrix = folder / "filtered_feature_bc_matrix.h5"
    if matrix.is_file():
        table.counts = validate_counts(_read_10x_h5(matrix), matrix, duplicate_genes="rename")
    return table


def _store_spots(path: str | Path, with_counts: bool) -> SpotTable:
    """A SpatialData store's spots (:func:`napari_spahgc.io.spatialdata.read_store`)."""
    from napari_spahgc.io.spatialdata import read_store

    spots = read_store(path, with_counts=with_counts)
    table = SpotTable(
        Path(path),
        spots.spot_ids,
        spots.centers_px,
        counts=spots.counts,
        pixel_size_um=spots.pixel_size_um,
        pixel_size_source=spots.pixel_size_source,
        spot_diameter_px=spots.spot_diameter_px,
        full_image=spots.image,
    )
    check_ids_and_centers(table.spot_ids, table.centers_px, table.path)
    return table


def read_anndata(path: str | Path, what: str = "file", spatial: bool = True) -> ad.AnnData:
    """An ``.h5ad`` file, or a message naming it (not a traceback) when it is missing, truncated or
    not AnnData; ``spatial``: it must carry spot coordinates (``obsm['spatial']``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:
        raise InputError(f"cannot read the {what} as .h5ad ({describe(err)})", path) from err
    if spatial and "spatial" not in adata.obsm:
        raise InputError(f"the {what} has no spot coordinates (obsm['spatial'] is missing)", path)
    return adata


def read_h5ad_spots(path: Path) -> SpotTable:
    """An AnnData file as scanpy writes Visium: ``obsm['spatial']`` and ``uns['spatial'][library]``."""
    adata = read_anndata(path, "spot file")
    centers = h5ad_centers(np.asarray(adata.obsm["spatial"]), path)
    table = SpotTable(path, pd.Index(adata.obs_names.astype(str)), centers)
    check_ids_and_centers(table.spot_ids, table.centers_px, table.path)
    libraries = adata.uns.get("spatial", {})
    if libraries:
        library_id = next(iter(libraries))
        library = libraries[library_id]
        table.library_id = library_id
        factors = dict(library.get("scalefactors", {}))
        _apply_scalefactors(table, factors, path)
        images = dict(library.get("images", {}))
        for kind, factor in _image_scalefactors(factors).items():
            if kind in images:
                table.images[kind] = (_to_uint8_rgb(np.asarray(images[kind])), factor)
    if adata.n_vars:
        counts = adata.layers.get("counts", adata.X)
        matrix = ad.AnnData(counts, obs=pd.DataFrame(index=table.spot_ids), var=adata.var[[]])
        table.counts = validate_counts(matrix, path)
    return table


def _legacy_st(path: Path, table: pd.DataFrame) -> SpotTable:
    """Legacy ST ``*_selection.tsv``: ids ``"{x}x{y}"`` from array coordinates, centres from pixel_x/y."""
    table = table.rename(columns=str.lower)
    if "selected" in table:
        table = table[numbers(table, ["selected"], path)[:, 0] == 1]
    array = numbers(table, ["x", "y"], path)
    if not np.array_equal(array, np.round(array)):
        raise InputError("array coordinates x and y must be whole numbers", path)
    whole = pd.DataFrame(array.astype(np.int64)).astype(str)
    ids = pd.Index(whole[0] + "x" + whole[1])
    centers = numbers(table, ["pixel_x", "pixel_y"], path)
    spots = SpotTable(path, ids, centers, spot_diameter_um=LEGACY_ST_SPOT_DIAMETER_UM)
    check_ids_and_centers(spots.spot_ids, spots.centers_px, spots.path)
    return spots


def _visium_table(path: Path, table: pd.DataFrame) -> SpotTable:
    table = table.rename(columns=str.lower)
    missing = {"barcode", "pxl_row_in_fullres", "pxl_col_in_fullres"} - set(table.columns)
    if missing:
        raise InputError(f"tissue positions lack column(s) {sorted(missing)}", path)
    if "in_tissue" in table:
        table = table[numbers(table, ["in_tissue"], path)[:, 0] == 1]
    centers = numbers(table, ["pxl_col_in_fullres", "pxl_row_in_fullres"], path)
    spots = SpotTable(
        path, pd.Index(table["barcode"].astype(str)), centers, spot_diameter_um=VISIUM_SPOT_DIAMETER_UM
    )
    check_ids_and_centers(spots.spot_ids, spots.centers_px, spots.path)
    return spots


_ID_COLUMNS = ("spot_id", "spot", "barcode", "id", "obs_names")
_X_COLUMNS = ("x", "pixel_x", "x_px", "pxl_col_in_fullres", "col")
_Y_COLUMNS = ("y", "pixel_y", "y_px", "pxl_row_in_fullres", "row")


def _plain_table(path: Path, table: pd.DataFrame) -> SpotTable:
    """A plain CSV/TSV with a spot id column and x (column) / y (row) pixel centres."""
    lower = {c.lower(): c for c in table.columns}
    x_col = next((lower[c] for c in _X_COLUMNS if c in lower), None)
    y_col = next((lower[c] for c in _Y_COLUMNS if c in lower), None)
    if x_col is None or y_col is None:
        raise InputError(
            f"spot table has no coordinates: expected columns x and y (full-resolution pixels), "
            f"found {list(table.columns)}",
            path,
        )
    id_col = next((lower[c] for c in _ID_COLUMNS if c in lower), table.columns[0])
    if id_col in (x_col, y_col):
        raise InputError("spot table has no spot id column (spot_id, barcode or id)", path)
    centers = numbers(table, [x_col, y_col], path)
    spots = SpotTable(path, pd.Index(table[id_col].astype(str)), centers)
    check_ids_and_centers(spots.spot_ids, spots.centers_px, spots.path)
    return spots


# ---------------------------------------------------------------------------------------------- helpers


def _read_table(path: Path) -> pd.DataFrame:
    sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz", ".txt")) else ","
    try:
        return pd.read_csv(path, sep=sep)
    except Exception as err:
        raise InputError(f"cannot read spot table ({describe(err)})", path) from err


def _read_positions(path: Path) -> pd.DataFrame:
    """Visium positions: headed CSV, parquet, or the headerless ``tissue_positions_list.csv``."""
    names = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    try:
        if path.name.lower().endswith(".parquet"):
            return pd.read_parquet(path)
        table = pd.read_csv(path, header=None)
        if str(table.iloc[0, 0]).lower() == "barcode":
            return pd.read_csv(path)
        return pd.read_csv(path, header=None, names=names)
    except Exception as err:
        raise InputError(f"cannot read tissue positions ({describe(err)})", path) from err


def _read_10x_h5(path: Path) -> ad.AnnData:
    import scanpy as sc

    try:
        adata = sc.read_10x_h5(path)
    except Exception as err:
        raise InputError(f"cannot read 10x matrix ({describe(err)})", path) from err
    return adata


def _apply_scalefactors(table: SpotTable, factors: dict, path: Path) -> None:
    """Spot diameter and pixel size from Space Ranger scalefactors (``spot_diameter_fullres`` ↔ 55 µm;
    Visium HD states ``microns_per_pixel`` directly)."""
    diameter = factors.get("spot_diameter_fullres")
    if diameter:
        table.spot_diameter_px = float(diameter)
    if factors.get("microns_per_pixel"):
        table.pixel_size_um = float(factors["microns_per_pixel"])
        table.pixel_size_source = f"scalefactors microns_per_pixel ({path.name})"
    elif diameter and not factors.get("bin_size_um"):
        um = table.spot_diameter_um or VISIUM_SPOT_DIAMETER_UM
        table.pixel_size_um = um / float(diameter)
        table.pixel_size_source = f"scalefactors spot_diameter_fullres = {um:g} µm ({path.name})"


def _scalefactors(path: Path) -> dict[str, float]:
    """``scalefactors_json.json``: a JSON object whose numeric fields are positive finite numbers."""
    try:
        factors = json.loads(read_text(path, "scalefactors file"))
    except json.JSONDecodeError as err:
        raise InputError(f"scalefactors file is not valid JSON ({err})", path) from None
    if not isinstance(factors, dict):
        raise InputError("scalefactors file must hold a JSON object", path)
    for name in (
        "spot_diameter_fullres",
        "microns_per_pixel",
        "bin_size_um",
        "tissue_hires_scalef",
        "tissue_lowres_scalef",
    ):
        value = factors.get(name)
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise InputError(f"scalefactor {name} must be a positive number, got {value!r}", path)
    return factors


def _image_scalefactors(factors: dict) -> dict[str, float]:
    """Scale of each low-resolution image relative to full resolution, finest first."""
    return {
        kind: float(factors[f"tissue_{kind}_scalef"])
        for kind in ("hires", "lowres")
        if factors.get(f"tissue_{kind}_scalef")
    }


def _to_uint8_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
        scale = 255.0 if pixels.max() <= 1.0 else 1.0
        pixels = np.clip(pixels * scale, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return pixels[..., :3]
