"""Differential expression between a domain and the rest (or another domain): scanpy's
``rank_genes_groups`` (Wilcoxon rank-sum, Benjamini–Hochberg) on log1p-CPM values.

On predicted expression only the genes that validated are tested: those whose ``var['validation_pcc']``
(the model's held-out PCC per gene) reaches ``min_pcc``; a predicted gene that does not validate should
not drive biology. Measured values test every gene. At Visium HD size each side is a random subsample of
at most ``max_spots`` spots (the test's p-values shrink with the spots, its ranking does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError
from napari_spahgc.downstream.domains import sampled_rows

#: the validation PCC a predicted gene needs to be tested unless the user sets another (a convention:
#: 0.3 is where the field starts to call a predicted gene "well predicted"; nothing was tuned on it)
DEFAULT_MIN_PCC = 0.3
PCC_COLUMN = "validation_pcc"
#: the adjusted p-value under which a gene counts as differentially expressed
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """``group`` against ``reference`` ("rest": every other spot) of the categorical ``obs[groupby]``."""

    group: str
    reference: str = "rest"
    groupby: str = "domain"

    @property
    def name(self) -> str:
        return f"{self.group}_vs_{self.reference}"


def genes_to_test(adata, layer: str | None, min_pcc: float | None) -> np.ndarray:
    """The genes the comparison tests: every gene for measured values (or ``min_pcc`` None), else those
    whose validation PCC reaches ``min_pcc``."""
    genes = np.asarray(adata.var_names.astype(str))
    if layer is not None or min_pcc is None:
        return genes
    if PCC_COLUMN not in adata.var:
        raise InputError(
            f"the predictions have no var[{PCC_COLUMN!r}] (the model's held-out PCC per gene) to keep the "
            "genes that validated; set no minimum PCC to test every gene"
        )
    pcc = adata.var[PCC_COLUMN].to_numpy(dtype=float)
    passing = genes[np.nan_to_num(pcc, nan=-np.inf) >= min_pcc]
    if len(passing) == 0:
        raise InputError(
            f"no gene's validation PCC reaches {min_pcc:g} (best {np.nanmax(pcc):.3f}); lower the minimum PCC"
        )
    return passing


def differential_expression(
    adata,
    comparison: Comparison,
    layer: str | None = None,
    min_pcc: float | None = DEFAULT_MIN_PCC,
    max_spots: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per tested gene, highest Wilcoxon score first: ``gene``, ``score``, ``log2_fold_change``,
    ``pvalue``, ``padj`` (BH), the mean in the group and in the reference, and ``validation_pcc`` where
    the file has it."""
    import anndata as ad
    import scanpy as sc

    groups = _groups(adata, comparison)
    genes = genes_to_test(adata, layer, min_pcc)
    rng = np.random.default_rng(seed)
    rows = []
    for members in groups.values():
        rows.append(members if len(members) <= max_spots else rng.choice(members, max_spots, replace=False))
    rows = np.sort(np.concatenate(rows))
    columns = adata.var_names.get_indexer(genes)
    values = adata.X if layer is None else adata.layers[layer]
    sample = sampled_rows(values, rows)[:, columns]
    side = np.full(adata.n_obs, "", dtype=object)
    for name, members in groups.items():
        side[members] = name
    obs = pd.DataFrame({"side": pd.Categorical(side[rows])}, index=adata.obs_names[rows].astype(str))
    test = ad.AnnData(sample, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    reference = "rest" if comparison.reference == "rest" else "reference"
    sc.tl.rank_genes_groups(
        test,
        "side",
        groups=["group"],
        reference=reference,
        method="wilcoxon",
        corr_method="benjamini-hochberg",
        use_raw=False,
        pts=False,
    )
    result = sc.get.rank_genes_groups_df(test, "group")
    in_group = test.obs["side"].to_numpy() == "group"
    means = pd.DataFrame(
        {"mean_group": sample[in_group].mean(axis=0), "mean_reference": sample[~in_group].mean(axis=0)},
        index=genes,
    )
    table = pd.DataFrame(
        {
            "gene": result["names"].astype(str),
            "score": result["scores"].astype(float),
            "log2_fold_change": result["logfoldchanges"].astype(float),
            "pvalue": result["pvals"].astype(float),
            "padj": result["pvals_adj"].astype(float),
        }
    )
    table = table.join(means, on="gene")
    if PCC_COLUMN in adata.var:
        table[PCC_COLUMN] = adata.var[PCC_COLUMN].reindex(table["gene"]).to_numpy(dtype=float)
    return table.reset_index(drop=True)


def up_genes(de: pd.DataFrame, alpha: float = ALPHA) -> pd.Series:
    """The genes of a DE table significantly up in the group (``padj`` < ``alpha``, positive fold change)."""
    return de.loc[(de["padj"] < alpha) & (de["log2_fold_change"] > 0), "gene"].astype(str)


def _groups(adata, comparison: Comparison) -> dict[str, np.ndarray]:
    """Row indices of the group and of the reference; unknown or empty sides are errors naming the
    domains there are."""
    if comparison.groupby not in adata.obs:
        raise InputError(f"the file has no obs[{comparison.groupby!r}]: find domains first (spahgc domains)")
    labels = adata.obs[comparison.groupby].astype(str).to_numpy()
    present = sorted(set(labels), key=_natural)
    counts = {name: int((labels == name).sum()) for name in present}
    sizes = ", ".join(f"{name} ({n})" for name, n in counts.items())
    for side in (comparison.group, comparison.reference):
        if side != "rest" and side not in counts:
            raise InputError(f"domain {side!r} has no spot; the domains are {sizes}")
    if comparison.group == comparison.reference:
        raise InputError(f"compare domain {comparison.group!r} with another domain or the rest")
    group = np.flatnonzero(labels == comparison.group)
    if comparison.reference == "rest":
        reference = np.flatnonzero(labels != comparison.group)
    else:
        reference = np.flatnonzero(labels == comparison.reference)
    for name, members in (("the group", group), ("the reference", reference)):
        if len(members) < 2:
            raise InputError(f"{name} of {comparison.name} has {len(members)} spot(s); the test needs two")
    return {"group": group, ("rest" if comparison.reference == "rest" else "reference"): reference}


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
