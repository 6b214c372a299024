"""Labels, differential expression and enrichment: the real HER2ST annotation files join to the real
sections by array position, ARI/NMI are scikit-learn's; DE finds the genes a domain was drawn to raise
and tests only validated genes; over-representation matches Fisher's exact test; bad inputs are
refused with messages that say what to do."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact
from sklearn.metrics import adjusted_rand_score

from conftest import HER2ST, HER2ST_COHORT
from napari_spahgc.base.errors import InputError
from napari_spahgc.downstream.enrichment import enrich, read_gene_sets
from napari_spahgc.downstream.labels import agreement, labels_for, read_labels
from napari_spahgc.downstream.markers import Comparison, differential_expression, genes_to_test
from napari_spahgc.io.cohort import read_cohort

LABELS = HER2ST / "labels"


def test_her2st_labels_join_the_sections_by_array_position():
    c6 = next(e for e in read_cohort(HER2ST_COHORT) if e.slide_id == "C6").load(with_expression=False)
    assert c6.labels and c6.labels.endswith("C6-cluster-annotation.tsv.gz")
    table = read_labels(c6.labels)
    joined = labels_for(c6.spot_ids, table, c6.labels)
    assert joined.notna().sum() == 176 and joined.nunique() == 7  # the annotated spots of C6
    raw = pd.read_csv(LABELS / "C6-cluster-annotation.tsv.gz", sep="\t")
    first = raw.iloc[0]
    assert joined[f"{first['x']}x{first['y']}"] == str(first["label"])


def test_labels_join_by_id_from_a_csv_and_score_like_scikit_learn(tmp_path):
    ids = [f"spot{i}" for i in range(60)]
    truth = np.repeat(["tumour", "stroma", "immune"], 20)
    path = tmp_path / "labels.csv"
    pd.DataFrame({"barcode": ids[::-1], "annotation": truth[::-1]}).to_csv(path, index=False)
    joined = labels_for(ids, read_labels(path), path)
    assert list(joined) == list(truth)
    found = np.repeat([0, 1, 2], 20)
    found[:5] = 1
    score = agreement(found, joined)
    assert np.isclose(score["ari"], adjusted_rand_score(truth, found)) and score["n_labels"] == 3


def test_labels_matching_no_spot_say_the_join_rule(tmp_path):
    path = tmp_path / "labels.tsv"
    pd.DataFrame({"spot_id": ["a", "b"], "label": ["1", "2"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"none of its 2 spots matches the slide's 3 spots.*join by id"):
        labels_for(["10x12", "11x12", "12x12"], read_labels(path), path)


def domain_slide(seed: int = 0) -> ad.AnnData:
    """Predictions with three domains; domain "0" raises genes G0–G4 by 1.5; G10–G19 did not validate."""
    rng = np.random.default_rng(seed)
    n, genes = 300, [f"G{i}" for i in range(30)]
    domain = np.repeat(["0", "1", "2"], 100)
    values = rng.normal(2, 0.5, (n, len(genes))).astype(np.float32)
    values[domain == "0", :5] += 1.5
    adata = ad.AnnData(
        values, obs=pd.DataFrame({"domain": pd.Categorical(domain)}, index=[f"s{i}" for i in range(n)])
    )
    adata.var_names = genes
    adata.var["validation_pcc"] = np.where(np.arange(30) // 10 == 1, 0.05, 0.6).astype(np.float32)
    return adata


def test_de_finds_the_raised_genes_among_the_validated_ones():
    adata = domain_slide()
    de = differential_expression(adata, Comparison("0"), min_pcc=0.3)
    assert set(de["gene"]) == {f"G{i}" for i in (*range(10), *range(20, 30))}  # G10–G19 not tested
    up = de[(de["padj"] < 0.05) & (de["log2_fold_change"] > 0)]
    assert set(de["gene"][:5]) == {f"G{i}" for i in range(5)} <= set(up["gene"])  # the raised rank first
    assert len(up) <= 6  # BH at 5 %: a false discovery or so among 15 null genes, not more
    assert (de["score"].diff().dropna() <= 0).all() and de["validation_pcc"].min() >= 0.3
    pairwise = differential_expression(adata, Comparison("1", "2"), min_pcc=None)
    assert len(pairwise) == 30 and (pairwise["padj"] > 0.05).all()  # drawn alike


@pytest.mark.parametrize(
    ("comparison", "min_pcc", "message"),
    [
        (Comparison("7"), 0.3, r"domain '7' has no spot; the domains are 0 \(100\), 1 \(100\), 2 \(100\)"),
        (Comparison("0", "0"), 0.3, "with another domain or the rest"),
        (Comparison("0"), 0.9, "no gene's validation PCC reaches 0.9"),
        (Comparison("0", groupby="leiden"), 0.3, "find domains first"),
    ],
)
def test_bad_comparisons_are_refused(comparison, min_pcc, message):
    with pytest.raises(InputError, match=message):
        differential_expression(domain_slide(), comparison, min_pcc=min_pcc)


def test_measured_values_test_every_gene():
    adata = domain_slide()
    assert len(genes_to_test(adata, "measured", 0.3)) == 30 and len(genes_to_test(adata, None, 0.3)) == 20


def write_gmt(path, sets: dict[str, list[str]]):
    path.write_text(
        "".join(f"{name}\thttp://example/{name}\t" + "\t".join(genes) + "\n" for name, genes in sets.items())
    )
    return path


def test_over_representation_is_fishers_exact_test_and_ranks_agree(tmp_path):
    de = differential_expression(domain_slide(), Comparison("0"), min_pcc=0.3)
    gmt = write_gmt(tmp_path / "sets.gmt", {"RAISED": ["G0", "G1", "G2", "G3", "G20"], "OTHER": ["G21", "G22", "G23", "G24"],
                                            "UNTESTED": ["G10", "G11", "G12", "NOPE"]})  # fmt: skip
    table = enrich(de, read_gene_sets(gmt)).set_index("set")
    assert list(table.index) == ["RAISED", "OTHER"]  # UNTESTED has no tested gene
    raised = table.loc["RAISED"]
    assert raised["hits"] == 4 and raised["set_size"] == 5 and raised["genes"] == "G0,G1,G2,G3"
    up = int(((de["padj"] < 0.05) & (de["log2_fold_change"] > 0)).sum())
    # 20 tested genes: the one-sided Fisher test of the set's 4 up of 5 against the others' up of 15
    expected = fisher_exact([[4, 1], [up - 4, 15 - (up - 4)]], alternative="greater").pvalue
    assert np.isclose(raised["ora_pvalue"], expected)
    assert raised["ora_padj"] < 0.05 and table.loc["OTHER", "ora_pvalue"] == 1.0
    assert raised["ulm_score"] > 0 > table.loc["OTHER", "ulm_score"]


def test_gene_sets_sharing_no_gene_or_not_gmt_are_refused(tmp_path):
    de = differential_expression(domain_slide(), Comparison("0"), min_pcc=0.3)
    mouse = write_gmt(
        tmp_path / "mouse.gmt", {"A": ["Cd74", "Ptprc", "Lyz2"], "B": ["Col1a1", "Sparc", "Fn1"]}
    )
    with pytest.raises(InputError, match="none of its 2 gene sets has 3 or more of the 20 tested genes"):
        enrich(de, read_gene_sets(mouse), source=mouse)
    empty = tmp_path / "empty.gmt"
    empty.write_text("")
    with pytest.raises(InputError, match=r"no gene set in it|not a GMT"):
        read_gene_sets(empty)
