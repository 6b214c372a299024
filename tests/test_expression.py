"""Expression preprocessing: log1p(CPM) per spot, gene panels from files, gene selection on the
training slides."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from napari_spahgc import InputError
from napari_spahgc.io.expression import GeneChoice, log_cpm, read_gene_panel, select_genes


def _counts(values, genes) -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(np.asarray(values, dtype=np.float32)))
    adata.var_names, adata.obs_names = list(genes), [f"spot{i}" for i in range(len(values))]
    return adata


def test_log_cpm_uses_each_spots_total_over_all_genes():
    counts = _counts([[1, 3, 6], [0, 5, 5]], ["A", "B", "C"])
    normalised = log_cpm(counts)
    expected = np.log1p(np.array([[1e5, 3e5, 6e5], [0, 5e5, 5e5]]))
    np.testing.assert_allclose(normalised.X, expected, rtol=1e-6)
    assert isinstance(normalised.X, np.ndarray) and normalised.X.dtype == np.float32
    restricted = log_cpm(counts, ["C", "A"])  # totals still over every gene, then the genes in order
    assert list(restricted.var_names) == ["C", "A"] and list(restricted.obs_names) == ["spot0", "spot1"]
    np.testing.assert_allclose(restricted.X, expected[:, [2, 0]], rtol=1e-6)
    assert counts.X[0, 0] == 1  # the counts themselves are left alone


def test_gene_panel_file(tmp_path):
    panel = tmp_path / "panel.txt"
    panel.write_text("# marker genes\nERBB2\n\n  GRB7  # amplicon\nERBB2\nESR1\n")
    assert read_gene_panel(panel) == ["ERBB2", "GRB7", "ESR1"]  # order kept, duplicate dropped
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(InputError, match=r"empty\.txt: gene panel file lists no genes"):
        read_gene_panel(empty)
    with pytest.raises(InputError, match=r"absent\.txt: gene panel file not found"):
        read_gene_panel(tmp_path / "absent.txt")


def test_genes_are_chosen_among_those_every_training_slide_measures():
    first = _counts([[1, 2, 3], [4, 5, 6]], ["A", "B", "C"])
    second = _counts([[1, 2, 3], [4, 5, 6]], ["B", "C", "D"])
    assert select_genes([first, second], panel=["D", "C", "A", "B", "NOPE"]) == ["C", "B"]
    with pytest.raises(InputError, match="no gene of the panel"):
        select_genes([first, second], panel=["A", "D"])
    with pytest.raises(ValueError, match="exactly one of panel or n_hvg"):
        select_genes([first], panel=["A"], n_hvg=10)
    with pytest.raises(ValueError, match="exactly one of panel or n_hvg"):
        select_genes([first])


def test_a_panel_sharing_no_gene_names_its_file(tmp_path):
    panel = tmp_path / "panel.txt"
    panel.write_text("ERBB2\nCD74\n")
    counts = _counts([[1, 2], [3, 4]], ["A", "B"])
    with pytest.raises(
        InputError, match=rf"^{re.escape(str(panel))}: no gene of the panel \(2 genes, e\.g\. ERBB2"
    ):
        GeneChoice.from_file(panel).select([counts])
    assert GeneChoice.from_file(panel).describe() == "panel"
    assert GeneChoice(n_hvg=2).select([counts]) == ["A", "B"]
    with pytest.raises(InputError, match="exactly one of a gene panel"):
        GeneChoice()
