"""A Visium HD-style folder (8 µm bins over a 2× crop of a real HER2ST section, written by the test)
through the real ``spahgc`` entry point — info, embed, train, predict — into an h5ad that keeps every
bin and opens in a real napari viewer as a raster Image layer."""

from __future__ import annotations

import json
import signal
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata
from napari.layers import Image

import napari_spahgc as ns
from conftest import HER2ST, REPO
from napari_spahgc import cli
from napari_spahgc._qt._common import session_for
from napari_spahgc._qt.genes import GenesWidget
from napari_spahgc._qt.slide import SlideWidget
from napari_spahgc.view import layers

sys.path.insert(0, str(REPO / "benchmarks"))
from scale_slides import make_hd

N_BINS = 900  # per slide: a 30 × 30 block of 8 µm bins, ≈ 1,450 × 1,450 px with its margin


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``spahgc ARGS`` through the console entry point, in this process; (exit code, stdout, stderr)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    patcher = pytest.MonkeyPatch()
    patcher.setattr("sys.argv", ["spahgc", *map(str, args)])
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main()
    finally:
        patcher.undo()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_hd_folder_through_the_cli_into_napari(make_napari_viewer, qtbot, tmp_path, capsys, monkeypatch):
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    tables = [make_hd(section, tmp_path / section, N_BINS) for section in ("C2", "C3")]
    cohort = tmp_path / "cohort.csv"
    pd.concat([pd.read_csv(t) for t in tables]).to_csv(cohort, index=False)
    code, out, err = run_cli(["info", cohort, "--json"], capsys)
    assert code == 0, err
    info = {record["slide_id"]: record for record in json.loads(out)}
    assert [info[s]["n_spots"] for s in ("C2_hd900", "C3_hd900")] == [N_BINS, N_BINS]
    assert info["C2_hd900"]["pixel_size_um"] == pytest.approx(0.3675) and info["C2_hd900"]["n_levels"] >= 2

    cache = tmp_path / "cache"
    code, out, err = run_cli(["embed", cohort, "--cache", cache], capsys)
    assert code == 0, err
    slides = ns.load_cohort(cohort)
    embedded = ns.EmbedRequest(slides, cache=cache).finished()  # 8 µm bins: dense (the default), and cached
    assert embedded.modes == {"C2_hd900": "dense", "C3_hd900": "dense"}
    assert all(f"{slide_id}: {path}" in out for slide_id, path in embedded.files.items())
    assert [embedded[s].shape for s in ("C2_hd900", "C3_hd900")] == [(N_BINS, 1280)] * 2
    train = [
        "train",
        cohort,
        "--out",
        tmp_path / "model",
        "--genes",
        HER2ST / "her2st_785_genes.txt",
        "--preset",
        "paper",
    ]
    code, out, err = run_cli([*train, "--epochs", 2, "--set", "hidden=16", "--cache", cache], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["encoder"] == embedded.info  # the model records the dense embeddings it was trained on
    target = tmp_path / "target.csv"
    pd.read_csv(tables[0]).to_csv(target, index=False)
    code, out, err = run_cli(
        ["predict", tmp_path / "model", target, "--out", tmp_path / "pred", "--cache", cache], capsys
    )
    assert code == 0, err
    (path,) = (tmp_path / "pred").glob("*.h5ad")

    bins = pd.read_parquet(tmp_path / "C2/binned_outputs/square_008um/spatial/tissue_positions.parquet")
    back = ad.read_h5ad(path, backed="r")
    assert list(back.obs_names) == list(bins["barcode"]) and back.n_vars > 0  # every bin kept, in order
    np.testing.assert_allclose(back.obsm["spatial"], bins[["pxl_col_in_fullres", "pxl_row_in_fullres"]])
    assert "measured" in back.layers and np.isfinite(back.X[:]).all()
    predicted = back.X[:]
    back.file.close()

    stores = tmp_path / "stores"  # the same predictions as a SpatialData store: bins as a labels raster
    code, out, err = run_cli(
        ["predict", tmp_path / "model", target, "--out", stores, "--cache", cache, "--format", "zarr"], capsys
    )
    assert code == 0, err
    assert [p.name for p in stores.iterdir()] == ["C2_hd900.zarr"]  # no temporary h5ad left beside it
    stored = spatialdata.read_zarr(stores / "C2_hd900.zarr")
    assert [labels.shape for labels in stored.labels.values()] == [(30, 30)]  # one pixel per bin
    np.testing.assert_allclose(np.asarray(stored.tables["table"].X), predicted)

    coarse = [*train[:3], tmp_path / "model16", *train[4:], "--aggregate-bins", 2]  # 16 µm bins to train
    code, out, err = run_cli([*coarse, "--epochs", 1, "--set", "hidden=16", "--cache", cache], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "model16" / "config.json").read_text())
    assert len(config["bank_spot_ids"]) == 2 * 15 * 15 and config["bank_spot_ids"][0] == "s_016um_00000_00000"
    code, out, err = run_cli(
        ["predict", tmp_path / "model16", target, "--out", tmp_path / "pred16", "--cache", cache], capsys
    )
    assert code == 0, err  # it predicts the 8 µm bins
    assert ad.read_h5ad(tmp_path / "pred16" / "C2_hd900.h5ad").shape == predicted.shape

    monkeypatch.setattr(layers, "RASTER_MIN_SPOTS", 500)  # real HD slides pass 50,000; this one has 900
    viewer = make_napari_viewer(show=True)
    viewer.window.add_dock_widget(GenesWidget(viewer))
    slide = ns.read_cohort(target)[0].load()
    session = session_for(viewer)
    session.add_slides([slide])
    session.set_prediction(slide.slide_id, ad.read_h5ad(path))
    rasters = [
        layer for layer in viewer.layers if isinstance(layer, Image) and layer.name.endswith("predicted")
    ]
    assert len(rasters) == 1 and rasters[0].data.shape == (30, 30)  # one image pixel per bin
    assert np.isfinite(rasters[0].data).sum() == N_BINS
    np.testing.assert_allclose(rasters[0].scale, [8.0, 8.0], rtol=1e-3)  # µm per bin
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 5

    opened = SlideWidget(viewer)  # the shown slide's bins as a new 16 µm slide, e.g. a reference to train on
    viewer.window.add_dock_widget(opened)
    opened.bins_per_side.setValue(2)
    opened.aggregate.click()
    qtbot.waitUntil(lambda: not opened.panel.running, timeout=60_000)
    coarse = session.slides["C2_hd900_016um"]
    assert coarse.n_spots == 15 * 15 and opened.slides.findText("C2_hd900_016um") >= 0
    np.testing.assert_array_equal(coarse.expression.X.sum(axis=0), slide.expression.X.sum(axis=0))
