"""view/figures.py: `render_gene` / `spahgc render` and `best_genes` on a predictions file built from a
real HER2ST section."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import HER2ST, HER2ST_COHORT
from napari_spahgc.base.errors import InputError
from napari_spahgc.view.figures import best_genes, render_gene

GENES = ["ERBB2", "FASN", "GNAS", "MUC1", "NOT_ON_SLIDE"]  # the last is absent from the counts: NaN


@pytest.fixture(scope="module")
def predictions(tmp_path_factory) -> Path:
    """C3 as the prediction flow writes it: X = measured log1p-CPM plus noise, measured layer, PCCs."""
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    from napari_spahgc.base.metrics import gene_pcc
    from napari_spahgc.io.cohort import read_cohort
    from napari_spahgc.io.export import measured_values, spot_anndata, write_h5ad

    slide = read_cohort(HER2ST_COHORT)[1].load()
    measured = measured_values(slide.expression, GENES)
    assert np.isnan(measured[:, -1]).all() and np.isfinite(measured[:, :-1]).all()
    noise = np.random.default_rng(0).normal(0.0, 1.0, measured.shape)
    predicted = np.where(np.isfinite(measured), measured, 2.0) + noise
    adata = spot_anndata(slide, predicted, GENES, layers={"measured": measured})
    adata.var["pcc"] = gene_pcc(measured, predicted).astype(np.float32)
    adata.var["validation_pcc"] = np.array([0.1, 0.4, np.nan, 0.3, 0.2], np.float32)
    return write_h5ad(adata, tmp_path_factory.mktemp("render") / "C3.h5ad")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _panels(png: Path) -> list[np.ndarray]:
    """The image panels of a figure: wide runs of mostly non-white columns, each cut to its longest
    run of mostly non-white rows (so neither the titles nor the colour bar count)."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(float)
    ink = (pixels < 235).any(axis=2)
    panels = []
    for left, right in _runs(ink.mean(axis=0) > 0.3):
        if right - left > 100:
            top, bottom = max(_runs(ink[:, left:right].mean(axis=1) > 0.5), key=lambda r: r[1] - r[0])
            panels.append(pixels[top:bottom, left:right])
    return panels


def _panel_difference(png: Path) -> float:
    """Mean difference of the two panels on 12-px blocks (blind to the H&E's sub-pixel resampling)."""
    left, right = _panels(png)
    h, w = (min(left.shape[i], right.shape[i]) // 12 * 12 for i in (0, 1))

    def blocks(panel: np.ndarray) -> np.ndarray:
        return panel[:h, :w].reshape(h // 12, 12, w // 12, 12, 3).mean(axis=(1, 3))

    return float(np.abs(blocks(left) - blocks(right)).mean())


def test_render_draws_predicted_beside_measured_on_one_scale(predictions, tmp_path):
    prediction = ad.read_h5ad(predictions)
    png = render_gene(prediction, "ERBB2", tmp_path / "figs" / "ERBB2.png")
    assert png == tmp_path / "figs" / "ERBB2.png" and png.stat().st_size > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["ERBB2.png"]  # no temporary file left behind
    panels = _panels(png)
    assert len(panels) == 2 and panels[0].shape == panels[1].shape
    assert all(p.std() > 10 for p in panels)  # H&E and coloured spots, not a blank canvas
    # Control: measured == predicted draws two identical panels; the real measured values differ.
    same = prediction.copy()
    same.layers["measured"] = np.asarray(same.X).copy()
    control = _panel_difference(render_gene(same, "ERBB2", tmp_path / "same.png"))
    assert control < 1.5
    assert _panel_difference(png) > 2 * control + 1
    # One colour scale: measured shifted up by 3 log units shows brighter, not the same picture again.
    same.layers["measured"] = np.asarray(same.X) + 3
    assert _panel_difference(render_gene(same, "ERBB2", tmp_path / "shifted.png")) > 2 * control + 1


def test_render_draws_one_panel_without_measured_values(predictions, tmp_path):
    prediction = ad.read_h5ad(predictions)
    lacking = render_gene(prediction, "NOT_ON_SLIDE", tmp_path / "lacking.png")  # NaN measured column
    assert len(_panels(lacking)) == 1
    del prediction.layers["measured"]
    unmeasured = render_gene(prediction, "ERBB2", tmp_path / "unmeasured.png")
    assert len(_panels(unmeasured)) == 1 and _panels(unmeasured)[0].std() > 10


def test_unknown_gene_names_close_matches(predictions, tmp_path):
    prediction = ad.read_h5ad(predictions)
    with pytest.raises(InputError, match="'ERBB3' is not among the 5 predicted genes; close matches: ERBB2"):
        render_gene(prediction, "ERBB3", tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_best_genes_by_validation_then_test_pcc(predictions):
    prediction = ad.read_h5ad(predictions)
    assert best_genes(prediction, 3) == ["FASN", "MUC1", "NOT_ON_SLIDE"]
    assert len(best_genes(prediction, 10)) == 4  # GNAS has no validation PCC
    del prediction.var["validation_pcc"]
    by_test = best_genes(prediction, 10)
    pcc = prediction.var["pcc"]
    assert by_test == list(pcc[np.isfinite(pcc)].sort_values(ascending=False).index)
    assert "NOT_ON_SLIDE" not in by_test and len(by_test) == 4


def test_render_command(predictions, tmp_path):
    from napari_spahgc.cli import app

    png = tmp_path / "cli.png"
    image = HER2ST / "ST-imgs" / "C3" / "5714_HE_BT_D1.jpg"
    args = ["render", str(predictions), "--gene", "FASN", "--out", str(png), "--image", str(image)]
    result = CliRunner().invoke(app, [*args, "--colormap", "magma"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(png)
    assert len(_panels(png)) == 2
    bad = CliRunner().invoke(
        app, ["render", str(predictions), "--gene", "FASM", "--out", str(tmp_path / "x.png")]
    )
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)
    assert "close matches: FASN" in str(bad.exception) and not (tmp_path / "x.png").exists()


def test_console_entry_point_reports_a_bad_gene(predictions, tmp_path, monkeypatch, capsys):
    from napari_spahgc.cli import main

    monkeypatch.setattr(sys, "argv", ["spahgc", "render", str(predictions), "--gene", "FASM",
                                      "--out", str(tmp_path / "x.png")])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert (
        "error: gene 'FASM' is not among the 5 predicted genes; close matches: FASN"
        in capsys.readouterr().err
    )
