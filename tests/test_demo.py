"""`spahgc demo` end to end on the real HER2ST sections (short training), and `spahgc render`."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from PIL import Image

import napari_spahgc as ns
from conftest import HER2ST
from napari_spahgc.base.metrics import score
from napari_spahgc.view.figures import best_genes, render_gene

DEMO_METHODS = ["spahgc", "ridge", "ridge_spatial", "knn_spatial", "blend_spatial"]


def _spahgc(*args: str) -> subprocess.CompletedProcess:
    """The ``spahgc`` console script (``napari_spahgc.cli:main``) in a new process."""
    command = [sys.executable, "-c", "from napari_spahgc.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    out = tmp_path_factory.mktemp("demo")
    result = _spahgc(
        "demo", "--no-viewer", "--epochs", "3", "--device", "cpu", "--out", str(out), "--mode", "spot"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_demo_completes_without_a_viewer(demo_out):
    out, stdout = demo_out
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["held_out"] == [["C6"]] and list(report["methods"]) == DEMO_METHODS
    for method in report["methods"].values():
        assert list(method["folds"]) == ["C6"]
        assert np.isfinite(method["folds"]["C6"]["pcc"]) and method["folds"]["C6"]["rmse"] > 0
    prediction = ad.read_h5ad(out / "C6.h5ad")
    assert prediction.n_vars == 785 and "measured" in prediction.layers and "validation_pcc" in prediction.var
    # the file holds the predictions the report scored, by the model the demo kept
    record = score(prediction.layers["measured"], prediction.X)[0]
    assert record["pcc"] == pytest.approx(report["methods"]["spahgc"]["folds"]["C6"]["pcc"], abs=1e-4)
    model = ns.load_model(out / "models" / "C6" / "default")
    assert model.metadata.training_slides == ["C2", "C3", "C4", "C5"]
    assert model.genes == list(prediction.var_names)
    # the figures show the genes that validated best on the training sections, not on the test slide
    validation = [np.nan if v is None else v for v in model.metadata.validation["gene_pcc"]]
    np.testing.assert_allclose(prediction.var["validation_pcc"], validation, rtol=1e-6)
    shown = best_genes(prediction, 3, by="validation_pcc")
    assert sorted(p.name for p in out.glob("C6_*.png")) == sorted(f"C6_{gene}.png" for gene in shown)
    for gene in shown:
        assert (out / f"C6_{gene}.png").stat().st_size > 10_000 and f"figure {gene}: " in stdout
    assert (out / "models" / "C6" / "default" / "model.safetensors").is_file() and "spahgc" in stdout
    # the user is told plainly whether SpaHGC is ahead of the best tuned baseline on this section
    comparison = report["comparisons"]["spahgc"]
    best = max(DEMO_METHODS[1:], key=lambda m: report["methods"][m]["pcc_mean"])
    ahead = report["methods"]["spahgc"]["folds"]["C6"]["pcc"] > report["methods"][best]["folds"]["C6"]["pcc"]
    assert comparison["against"] == best and (comparison["wins"] == 1) == ahead
    assert ("ahead here" if ahead else "NOT ahead on this section") in stdout
    assert ("not ahead on C6" in (out / "report.md").read_text()) == (not ahead)
    assert f"model: {out / 'models' / 'C6' / 'default'}" in stdout


def test_render_draws_predicted_beside_measured(demo_out, tmp_path):
    out, _ = demo_out
    prediction = ad.read_h5ad(out / "C6.h5ad")
    gene = best_genes(prediction, 1)[0]
    both = np.asarray(Image.open(render_gene(prediction, gene, tmp_path / "both.png")).convert("RGB"))
    assert both.std() > 10
    left, right = np.array_split(both[:, : both.shape[1] * 9 // 10], 2, axis=1)  # the two panels
    assert np.abs(left.astype(int)[:, : right.shape[1]] - right[:, : left.shape[1]]).mean() > 1
    del prediction.layers["measured"]
    one = Image.open(render_gene(prediction, gene, tmp_path / "one.png"))
    assert one.width < both.shape[1] * 0.75  # one panel only
    with pytest.raises(ns.InputError, match=rf"close matches: (.*, )?{gene}(,|$)"):  # the gene is offered
        render_gene(prediction, gene.lower() + "x", tmp_path / "bad.png")


def test_render_command_line(demo_out, tmp_path):
    out, _ = demo_out
    gene = best_genes(ad.read_h5ad(out / "C6.h5ad"), 1)[0]
    png = tmp_path / "cli.png"
    result = _spahgc("render", str(out / "C6.h5ad"), "--gene", gene, "--out", str(png),
                     "--image", str(HER2ST / "ST-imgs" / "C6" / "5714_HE_BT_E2.jpg"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert png.stat().st_size > 10_000 and Image.open(png).size[0] > 500
    bad = _spahgc("render", str(out / "C6.h5ad"), "--gene", "NOT_A_GENE", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "not among the 785 predicted genes" in bad.stderr


def test_demo_result_opens_in_napari_with_everything_loaded(her2st_cohort, tmp_path, make_napari_viewer):
    from napari_spahgc._qt._common import session_for
    from napari_spahgc._qt.viewer import WIDGETS, open_in_viewer
    from napari_spahgc.demo import run_demo
    from napari_spahgc.io.cohort import read_cohort

    rows = ["slide_id,image,spots,counts,pixel_size_um,patient"] + [
        f"{e.slide_id},{e.image},{e.spots},{e.counts},{e.pixel_size_um},{e.patient}"
        for e in read_cohort(her2st_cohort)[:3]
    ]
    cohort = tmp_path / "three.csv"
    cohort.write_text("\n".join(rows) + "\n")
    config = ns.SpaHGCConfig.from_options({"epochs": 2}, device="cpu")
    result = run_demo(tmp_path / "out", cohort, config=config, n_figures=1, log=lambda _: None, mode="spot")
    assert result.test_slide == "C4" and set(result.metrics) == set(DEMO_METHODS)
    assert ns.load_model(result.files["model"]).metadata.training_slides == ["C2", "C3"]
    assert list(result.prediction.obs_names) == list(result.slides[2].spot_ids)
    # no panel beside this table: the top 300 HVGs of C2 and C3 share fewer genes than the top-50
    # PCC names, which then scores them all under that name
    assert result.prediction.n_vars < 50 and all("pcc_top50" in m for m in result.metrics.values())
    viewer = make_napari_viewer(show=True)
    open_in_viewer(result, viewer)
    session = session_for(viewer)
    assert session.current == "C4" and set(session.embeddings) == {"C2", "C3", "C4"}
    names = [layer.name for layer in viewer.layers if layer.visible]
    assert f"C4 {session.gene} predicted" in names and f"C4 {session.gene} measured" in names
    assert (
        len(viewer.window.dock_widgets) == len(WIDGETS) == 7
    )  # Slide, Embed, Predict, Genes, Why, Domains, Export
