"""The checks every reader runs at the boundary, so the core can trust its inputs: numeric, finite
coordinates; counts that are numbers, finite, non-negative and not all zero; unique ids and genes.
Each failure is an :class:`~napari_spahgc.base.errors.InputError` naming the file, the column or row, and the value."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spahgc.base.errors import InputError


def validate_counts(adata: ad.AnnData, path: str | Path, duplicate_genes: str = "refuse") -> ad.AnnData:
    """Check counts at the boundary: unique spot ids, numbers that are finite and non-negative, at least
    one spot with a count, unique gene names (``duplicate_genes="rename"``: made unique with a warning
    naming them, for 10x matrices whose gene symbols repeat). Returns it with sparse X."""
    adata.obs_names = adata.obs_names.astype(str)
    duplicated = adata.obs_names[adata.obs_names.duplicated()]
    if len(duplicated):
        raise InputError(f"duplicate spot ids in counts: {preview(duplicated)}", path)
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise InputError(f"counts are not numbers (the matrix holds {values.dtype} values)", path)
    if np.isnan(values).any():
        raise InputError("counts contain NaN values", path)
    if np.isinf(values).any():
        raise InputError("counts contain infinite values", path)
    if (values < 0).any():
        raise InputError("counts contain negative values (expected raw, non-negative counts)", path)
    if adata.n_obs and adata.n_vars and not (values > 0).any():
        raise InputError(f"every count is zero ({adata.n_obs} spots × {adata.n_vars} genes)", path)
    _check_gene_names(adata, path, duplicate_genes)
    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    return adata


def _check_gene_names(adata: ad.AnnData, path: str | Path, duplicate_genes: str) -> None:
    adata.var_names = adata.var_names.astype(str)
    duplicated = adata.var_names[adata.var_names.duplicated()].unique()
    if not len(duplicated):
        return
    if duplicate_genes == "refuse":
        raise InputError(f"duplicate gene names in counts: {preview(duplicated)}", path)
    warnings.warn(
        f"{path}: {len(duplicated)} gene name(s) occur more than once ({preview(duplicated)}); "
        "the repeats are renamed NAME-1, NAME-2, …",
        stacklevel=3,
    )
    adata.var_names_make_unique("-")


def check_ids_and_centers(spot_ids: pd.Index, centers_px: np.ndarray, path: Path) -> None:
    """At least one spot, unique ids, finite centres."""
    if len(spot_ids) == 0:
        raise InputError("spot table has no spots", path)
    duplicated = spot_ids[spot_ids.duplicated()]
    if len(duplicated):
        raise InputError(f"duplicate spot ids: {preview(duplicated)}", path)
    if not np.isfinite(centers_px).all():
        raise InputError("spot coordinates contain NaN or infinite values", path)


def numbers(table: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    """The columns as a float64 (n, len(columns)) array; an empty, non-numeric or infinite cell is an
    error naming the column, the data row (1-based, as in the file) and the value."""
    values = np.empty((len(table), len(columns)), dtype=np.float64)
    for index, column in enumerate(columns):
        raw = table[column]
        numeric = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numeric)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = raw.iloc[row]
            problem = (
                "is empty"
                if pd.isna(value) or str(value).strip() == ""
                else f"is not a finite number ({value!r})"
            )
            raise InputError(
                f"column {column!r}, data row {row + 1}: the value {problem} ({int(bad.sum())} such row(s))",
                path,
            )
        values[:, index] = numeric
    return values


def h5ad_centers(spatial: np.ndarray, path: Path) -> np.ndarray:
    """``obsm['spatial']`` as (n, 2) float64 pixel centres (x, y), or an error saying what is wrong."""
    if spatial.ndim != 2 or spatial.shape[1] < 2:
        raise InputError(f"obsm['spatial'] must have shape (n_spots, 2), not {spatial.shape}", path)
    if not np.issubdtype(spatial.dtype, np.number):
        raise InputError(f"obsm['spatial'] holds {spatial.dtype} values, not numbers", path)
    return spatial[:, :2].astype(np.float64)


def preview(values, n: int = 5) -> str:
    values = list(map(str, values))
    return ", ".join(values[:n]) + (f" … ({len(values)} in all)" if len(values) > n else "")
