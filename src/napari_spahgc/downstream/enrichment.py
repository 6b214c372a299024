"""Enrichment of a differential-expression table against the user's gene sets (a GMT file: MSigDB, GO,
KEGG or their own; read by decoupler, nothing fetched at run time).

Two scores per set, over the universe of the genes the comparison tested:
- **over-representation** of the significantly up genes (``padj`` < ``alpha``, positive fold change):
  the hypergeometric test P(X ≥ hits), X ~ Hypergeom(universe, set ∩ universe, up genes), with
  Benjamini–Hochberg over the sets. (Computed with scipy: decoupler 2.2's ``mt.ora``, the newest for
  Python 3.11, selects every feature but the top ones, scverse/decoupler#346.)
- a **rank-based** score: decoupler's univariate linear model (``mt.ulm``) of the genes' Wilcoxon scores
  on set membership (t-value; positive: the set's genes rank up), BH-adjusted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import require_file
from napari_spahgc.downstream.markers import ALPHA, up_genes

#: sets with fewer genes than this in the tested universe are left out (the field's usual floor)
MIN_SET_SIZE = 3


def read_gene_sets(path: str | Path) -> pd.DataFrame:
    """The GMT file as decoupler's long table (``source``: set, ``target``: gene), checked."""
    import decoupler as dc

    path = require_file(path, "gene-set file")
    try:
        table = dc.pp.read_gmt(str(path))
    except (UnicodeDecodeError, ValueError, IndexError, OSError) as error:
        raise InputError(
            f"{path}: not a GMT file (a set per line: name, description, genes; {error})"
        ) from None
    if table.empty:
        raise InputError(
            f"{path}: no gene set in it (a set per line: name, description, genes, tab-separated)"
        )
    return table[["source", "target"]].astype(str).drop_duplicates()


def enrich(
    de: pd.DataFrame,
    gene_sets: pd.DataFrame,
    alpha: float = ALPHA,
    min_size: int = MIN_SET_SIZE,
    source: str | Path = "gene-set file",
) -> pd.DataFrame:
    """One row per set with at least ``min_size`` tested genes, most over-represented first: ``set``,
    ``set_size`` (in the universe), ``hits`` (up genes in it), ``expected``, ``ora_pvalue``, ``ora_padj``,
    ``ulm_score``, ``ulm_pvalue``, ``ulm_padj``, ``genes`` (the hits)."""
    import decoupler as dc
    from scipy.stats import false_discovery_control, hypergeom

    universe = pd.Index(de["gene"].astype(str))
    inside = gene_sets[gene_sets["target"].isin(universe)].drop_duplicates()
    sizes = inside.groupby("source")["target"].nunique()
    sizes = sizes[sizes >= min_size]
    if sizes.empty:
        n_sets = gene_sets["source"].nunique()
        raise InputError(
            f"{source}: none of its {n_sets} gene sets has {min_size} or more of the {len(universe)} tested "
            f"genes (e.g. {', '.join(universe[:5])}); gene names must match the predictions' (symbols, case)"
        )
    inside = inside[inside["source"].isin(sizes.index)]
    up = set(up_genes(de, alpha))
    hit_genes = inside[inside["target"].isin(up)].groupby("source")["target"].agg(sorted)
    hits = hit_genes.str.len().reindex(sizes.index, fill_value=0)
    ora = hypergeom.sf(hits.to_numpy() - 1, len(universe), sizes.to_numpy(), len(up))
    scores = pd.DataFrame([de["score"].to_numpy(dtype=float)], index=["de"], columns=universe)
    ulm_score, ulm_p = dc.mt.ulm(scores, inside, tmin=min_size)
    table = pd.DataFrame(
        {
            "set": sizes.index.astype(str),
            "set_size": sizes.to_numpy(),
            "hits": hits.to_numpy(),
            "expected": sizes.to_numpy() * len(up) / len(universe),
            "ora_pvalue": ora,
            "ora_padj": false_discovery_control(ora),
            "ulm_score": ulm_score.iloc[0].reindex(sizes.index).to_numpy(dtype=float),
            "ulm_pvalue": ulm_p.iloc[0].reindex(sizes.index).to_numpy(dtype=float),
        }
    )
    table["ulm_padj"] = false_discovery_control(np.nan_to_num(table["ulm_pvalue"].to_numpy(), nan=1.0))
    table["genes"] = hit_genes.str.join(",").reindex(sizes.index).fillna("").to_numpy()
    return table.sort_values(["ora_pvalue", "ulm_pvalue"]).reset_index(drop=True)
