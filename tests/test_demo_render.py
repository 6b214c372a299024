"""`spahgc demo` end to end on the real HER2ST sections (short training), and `spahgc render`."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from PIL import Image

from conftest import HER2ST
from napari_spahgc import InputError
from napari_spahgc.render import best_genes, render_gene


def _spahgc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_spahgc.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    out = tmp_path_factory.mktemp("demo")
    result = _spahgc("demo", "--no-viewer", "--epochs", "3", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_demo_completes_without_a_viewer(demo_out):
    out, stdout = demo_out
    report = json.loads((out / "report.json").read_text())
    assert report["test_slide"] == "C6" and set(report["metrics"]) == {"spahgc", "ridge", "ridge_spatial"}
    assert all(np.isfinite(m["pcc"]) and m["rmse"] > 0 for m in report["metrics"].values())
    prediction = ad.read_h5ad(out / "C6.h5ad")
    assert prediction.n_vars == 785 and "measured" in prediction.layers and "validation_pcc" in prediction.var
    assert report["figure_genes"] == best_genes(prediction, 3)  # chosen by validation, not by the test slide
    for gene in report["figure_genes"]:
        assert (out / f"C6_{gene}.png").stat().st_size > 10_000
    assert (out / "model" / "model.safetensors").is_file() and "spahgc" in stdout


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
    with pytest.raises(InputError, match=rf"close matches: (.*, )?{gene}(,|$)"):  # the gene is offered
        render_gene(prediction, gene.lower() + "x", tmp_path / "bad.png")


def test_render_command_line(demo_out, tmp_path):
    out, _ = demo_out
    gene = json.loads((out / "report.json").read_text())["figure_genes"][0]
    png = tmp_path / "cli.png"
    result = _spahgc("render", str(out / "C6.h5ad"), "--gene", gene, "--out", str(png),
                     "--image", str(HER2ST / "ST-imgs" / "C6" / "5714_HE_BT_E2.jpg"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert png.stat().st_size > 10_000 and Image.open(png).size[0] > 500
    bad = _spahgc("render", str(out / "C6.h5ad"), "--gene", "NOT_A_GENE", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "not among the 785 predicted genes" in bad.stderr


def test_demo_result_opens_in_napari_with_everything_loaded(her2st_cohort, tmp_path, make_napari_viewer):
    from napari_spahgc._qt._common import session_for
    from napari_spahgc._qt.viewer import open_in_viewer
    from napari_spahgc.demo import run_demo
    from napari_spahgc.io.cohort import read_cohort

    rows = ["slide_id,image,spots,counts,pixel_size_um,patient"] + [
        f"{e.slide_id},{e.image},{e.spots},{e.counts},{e.pixel_size_um},{e.patient}"
        for e in read_cohort(her2st_cohort)[:3]
    ]
    cohort = tmp_path / "three.csv"
    cohort.write_text("\n".join(rows) + "\n")
    result = run_demo(tmp_path / "out", cohort, epochs=2, device="cpu", n_figures=1, log=lambda _: None)
    assert result.test_slide == "C4" and "C4" not in result.model.metadata.training_slides
    viewer = make_napari_viewer(show=True)
    open_in_viewer(result, viewer)
    session = session_for(viewer)
    assert session.current == "C4" and set(session.embeddings) == {"C2", "C3", "C4"}
    names = [layer.name for layer in viewer.layers if layer.visible]
    assert f"C4 {session.gene} predicted" in names and f"C4 {session.gene} measured" in names
    assert len(viewer.window.dock_widgets) == 5
