"""``spahgc domains`` and ``spahgc markers`` on the real HER2ST C6 predicted by a model trained on
C2–C5: the h5ad copy carries its domains and everything else unchanged, the PNG and tables are
written, scores against the shared labels are ARI/NMI of both layers; bad inputs exit 2 with their
message and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

import napari_spahgc as ns
from conftest import HER2ST, REPO
from napari_spahgc.downstream.domains import DomainOptions, find_domains
from napari_spahgc.downstream.flow import DomainsRequest, domains
from napari_spahgc.downstream.labels import labels_for, read_labels

LABELS = HER2ST / "labels" / "C6-cluster-annotation.tsv.gz"
GMT = REPO / "examples" / "marker_sets.gmt"


def _spahgc(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from napari_spahgc.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True)


def test_domains_of_predictions_from_the_command_line(her2st_c6_predictions, tmp_path):
    out = tmp_path / "domains"
    done = _spahgc("domains", str(her2st_c6_predictions), "--n-domains", "7", "--labels", str(LABELS),
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    original = ad.read_h5ad(her2st_c6_predictions)
    written = ad.read_h5ad(out / "C6.h5ad")
    np.testing.assert_array_equal(written.X, original.X)  # a copy: nothing else changed
    assert set(written.layers) == set(original.layers) and list(written.obs_names) == list(original.obs_names)
    assert written.obs["domain"].dtype == "category" and written.obs["domain"].nunique() == 7
    assert written.obs["domain_measured"].nunique() == 7
    # the same domains as the library gives for the same options
    again = find_domains(original.X, original.obsm["spatial"], DomainOptions(n_domains=7))
    assert adjusted_rand_score(again, written.obs["domain"]) == 1.0
    record = json.loads((out / "report.json").read_text())
    truth = labels_for(original.obs_names, read_labels(LABELS), LABELS)
    known = truth.notna().to_numpy()
    ari = adjusted_rand_score(truth[known], written.obs["domain"].to_numpy()[known])
    assert (
        np.isclose(record["scores"]["predicted"]["ari"], ari)
        and record["scores"]["predicted"]["n_spots"] == 176
    )
    assert f"predicted: ARI {ari:.3f}" in done.stdout and "measured: ARI" in done.stdout
    sizes = pd.read_csv(out / "domain_sizes.csv")
    assert sizes["spots"].sum() == original.n_obs and list(sizes["domain"].astype(str)) == [
        str(i) for i in range(7)
    ]
    with Image.open(out / "domains.png") as png:
        assert (
            png.size[0] > 800 and len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 50
        )
    assert written.uns["spahgc_domains"]["options"]["n_domains"] == 7

    markers = tmp_path / "markers"
    done = _spahgc("markers", str(out / "C6.h5ad"), "--domain", "0", "--gene-sets", str(GMT), "--min-pcc", "0.1",
                   "--out", str(markers))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    de = pd.read_csv(markers / "de_0_vs_rest.csv")
    assert (de["validation_pcc"] >= 0.1).all() and len(de) == (original.var["validation_pcc"] >= 0.1).sum()
    assert de["padj"].between(0, 1).all() and (de["score"].diff().dropna() <= 0).all()
    sets = pd.read_csv(markers / "enrichment_0_vs_rest.csv")
    assert set(sets["set"]) <= {"IMMUNE_CELLS", "FIBROBLAST_ECM", "LUMINAL_EPITHELIAL"}
    assert (markers / "enrichment_0_vs_rest.png").stat().st_size > 5000


def test_measured_domains_and_leiden_from_python(her2st_c6_predictions):
    result = ns.run_to_end(
        domains(DomainsRequest(her2st_c6_predictions, DomainOptions(resolution=1.0), "measured"))
    )
    assert len(result.domains) == 178 and len(result.domains.categories) >= 3 and result.scores == {}
    assert result.files == {} and result.measured_domains is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-domains", "500"], "500 domains asked for, but the slide has only 178 spots"),
        (["--labels", "WRONG"], "none of its 2 spots matches the slide's 178 spots"),
        (["--layer", "counts"], "no layer 'counts' (its layers: measured)"),
        (["--spatial-weight", "2"], "between 0 and 1"),
    ],
)
def test_bad_domain_inputs_exit_2_and_write_nothing(her2st_c6_predictions, tmp_path, args, message):
    if "WRONG" in args:
        wrong = tmp_path / "wrong.csv"
        pd.DataFrame({"spot_id": ["AAAC-1", "AAAG-1"], "label": ["tumour", "stroma"]}).to_csv(
            wrong, index=False
        )
        args = [a if a != "WRONG" else str(wrong) for a in args]
    out = tmp_path / "out"
    done = _spahgc("domains", str(her2st_c6_predictions), *args, "--out", str(out))
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not any(out.iterdir()) if out.exists() else True


def test_bad_marker_inputs_exit_2_and_write_nothing(her2st_c6_predictions, tmp_path):
    with_domains = tmp_path / "domains"
    assert (
        _spahgc(
            "domains", str(her2st_c6_predictions), "--n-domains", "4", "--out", str(with_domains)
        ).returncode
        == 0
    )
    mouse = tmp_path / "mouse.gmt"
    mouse.write_text("A\tx\tCd74\tPtprc\tLyz2\nB\tx\tCol1a1\tSparc\tFn1\n")
    cases = [
        (["--domain", "9"], "domain '9' has no spot; the domains are 0 ("),
        (["--domain", "0", "--gene-sets", str(mouse)], "none of its 2 gene sets has 3 or more"),
        (["--domain", "0", "--min-pcc", "0.99"], "no gene's validation PCC reaches 0.99"),
        (["--domain", "0", "--versus", "0"], "with another domain or the rest"),
    ]
    for args, message in cases:
        out = tmp_path / "markers"
        done = _spahgc("markers", str(with_domains / "C6.h5ad"), *args, "--out", str(out))
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr[-2000:])
        assert not list(out.glob("*")), args
    done = _spahgc("markers", str(her2st_c6_predictions), "--domain", "0", "--out", str(tmp_path / "m2"))
    assert done.returncode == 2 and "find domains first" in done.stderr
