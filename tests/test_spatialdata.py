"""SpatialData in and out, with the real scverse packages: stores that spatialdata-io makes from our
synthetic Space Ranger Visium and HD folders (over real HER2ST sections) read as the folders do, and
predict the same; our prediction stores round-trip through ``spatialdata.read_zarr``, open in
napari-spatialdata coloured by a predicted gene (a real viewer, in a subprocess: the user's order),
plot with ``squidpy.pl.spatial_scatter``; bad stores end with a message naming store and element."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import napari_spahgc as ns
from conftest import HER2ST, REPO
from napari_spahgc.io.spatialdata import (
    read_store,
    to_spatialdata,
    write_predictions_store,
    write_spatialdata,
)
from test_hd_pipeline import run_cli

sys.path.insert(0, str(REPO / "benchmarks"))
from scale_slides import make_hd, make_visium

sd = pytest.importorskip("spatialdata")
sio = pytest.importorskip("spatialdata_io")

pytestmark = pytest.mark.skipif(not HER2ST.is_dir(), reason="the HER2ST sections are not beside the checkout")


def _cohort_row(path: Path) -> dict:
    return pd.read_csv(path).iloc[0].to_dict()


def _converted(cohort: Path, reader, source: Path, dataset_id: str, **options) -> dict:
    """The folder's cohort row and the store spatialdata-io's ``reader`` makes of ``source``."""
    row = _cohort_row(cohort)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = reader(source, dataset_id=dataset_id, fullres_image_file=row["image"], **options)
    path = cohort.parent / f"{dataset_id}.zarr"
    store.write(path)
    return {"row": row, "store": path}


@pytest.fixture(scope="module")
def visium(tmp_path_factory) -> dict:
    """A Visium-like Space Ranger folder (60 spots over C2) and the store spatialdata-io makes of it."""
    cohort = make_visium("C2", tmp_path_factory.mktemp("visium"), n=60)
    return _converted(cohort, sio.visium, Path(_cohort_row(cohort)["spots"]), "C2")


@pytest.fixture(scope="module")
def visium_hd(tmp_path_factory) -> dict:
    """A Visium HD-like folder (144 bins of 8 µm over C3 at 2×) and spatialdata-io's store of it."""
    cohort = make_hd("C3", tmp_path_factory.mktemp("hd"), n=144)
    return _converted(cohort, sio.visium_hd, cohort.parent, "C3", load_segmentations_only=False)


def _same_slide(folder: ns.Slide, store: ns.Slide) -> None:
    assert list(store.spot_ids) == list(folder.spot_ids)
    np.testing.assert_allclose(store.centers_px, folder.centers_px, atol=1e-6)
    assert store.pixel_size_um == pytest.approx(folder.pixel_size_um, rel=1e-9)
    assert store.spot_diameter_px == pytest.approx(folder.spot_diameter_px, rel=1e-9)
    assert store.image.shape == folder.image.shape
    np.testing.assert_array_equal(
        store.image.read_region(0, 100, 200, 300, 300), folder.image.read_region(0, 100, 200, 300, 300)
    )
    assert list(store.expression.var_names) == list(folder.expression.var_names)
    assert (store.expression.X != folder.expression.X).nnz == 0


@pytest.mark.parametrize("kind", ["visium", "visium_hd"])
def test_a_spatialdata_io_store_reads_as_its_space_ranger_folder(kind, request):
    made = request.getfixturevalue(kind)
    row = made["row"]
    folder = ns.build_slide("folder", row["spots"], image=row["image"])  # pixel size from the folder
    store = ns.build_slide("store", made["store"])  # image, spots, counts and pixel size from the store
    _same_slide(folder, store)
    assert store.sources["image"].endswith("_full_image")  # the full-resolution image, not hires/lowres
    assert "px" in store.pixel_size_source


def test_a_store_predicts_what_its_folder_predicts(visium, her2st_model, tmp_path):
    """The same model on the folder and on spatialdata-io's store of it: the same predictions."""
    row = visium["row"]
    slides = [
        ns.build_slide("folder", row["spots"], image=row["image"]),
        ns.build_slide("store", visium["store"]),
    ]
    embeddings = ns.run_to_end(
        ns.embed(ns.EmbedRequest(slides, "efficientnet-lite0", device="cpu", mode="spot"))
    )
    predicted = ns.run_to_end(ns.predict(ns.PredictRequest(her2st_model, slides, embeddings, device="cpu")))
    folder, store = predicted.predictions["folder"], predicted.predictions["store"]
    assert list(store.obs_names) == list(folder.obs_names)
    np.testing.assert_allclose(store.X, folder.X, rtol=1e-5, atol=1e-6)


def test_an_hd_store_names_its_table_and_the_pixel_size_follows_the_bins(visium_hd, tmp_path):
    store = visium_hd["store"]
    by_table = read_store(f"{store}::square_008um", with_counts=False)
    by_shapes = read_store(f"{store}::C3_square_008um", with_counts=False)
    np.testing.assert_array_equal(by_table.centers_px, by_shapes.centers_px)
    assert by_table.pixel_size_um == pytest.approx(0.3675, rel=1e-9) and by_table.counts is None
    assert "8 µm bins" in by_table.pixel_size_source


def _predictions(slide: ns.Slide, n_genes: int = 6) -> ad.AnnData:
    """Predictions as ``spahgc predict`` writes them (values drawn at random; the measured layer real)."""
    from napari_spahgc.io.export import measured_values

    genes = list(slide.expression.var_names[:n_genes])
    values = np.random.default_rng(0).random((slide.n_spots, n_genes)).astype(np.float32)
    adata = ns.spot_anndata(
        slide, values, genes, layers={"measured": measured_values(slide.expression, genes)}
    )
    adata.var["validation_pcc"] = np.linspace(0.1, 0.6, n_genes).astype(np.float32)
    return adata


@pytest.mark.parametrize(
    ("kind", "bins", "element"),
    [
        ("visium", "auto", "shapes"),
        ("visium_hd", "auto", "labels"),
        ("visium_hd", "squares", "shapes"),
    ],
)
def test_predictions_round_trip_through_spatialdata(kind, bins, element, request, tmp_path):
    made = request.getfixturevalue(kind)
    slide = ns.build_slide("S1", made["store"])
    adata = _predictions(slide)
    h5ad = ns.write_h5ad(adata, tmp_path / "S1.h5ad")
    path = write_predictions_store(h5ad, tmp_path / "S1.zarr", image=slide.image, bins=bins)
    back = sd.read_zarr(path)
    table = back.tables["table"]
    region = table.uns["spatialdata_attrs"]["region"]
    assert region in getattr(back, element) and list(back.images) == ["S1_image"]
    np.testing.assert_allclose(np.asarray(table.X), adata.X)
    np.testing.assert_allclose(table.layers["measured"], adata.layers["measured"])
    assert list(table.obs_names) == list(slide.spot_ids)
    np.testing.assert_allclose(table.var["validation_pcc"], adata.var["validation_pcc"])
    assert json.dumps(str(table.uns["napari_spahgc"]["version"]))
    level0 = back.images["S1_image"]["scale0"]["image"]
    assert level0.shape == (3, *slide.image.shape)
    np.testing.assert_array_equal(
        np.moveaxis(np.asarray(level0[:, 50:250, 60:260]), 0, 2), slide.image.read_region(0, 50, 60, 200, 200)
    )
    again = ns.build_slide("S1", path)  # and our reader opens our own store: same spots, same scale
    np.testing.assert_allclose(again.centers_px, slide.centers_px, atol=1e-6)
    assert again.pixel_size_um == pytest.approx(slide.pixel_size_um, rel=1e-9)


def test_a_store_without_the_image_and_a_failed_write_leave_nothing_half(visium, tmp_path):
    slide = ns.build_slide("S1", visium["store"])
    adata = _predictions(slide)
    path = write_spatialdata(to_spatialdata(adata), tmp_path / "S1.zarr")
    assert list(sd.read_zarr(path).images) == []
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    broken = adata.copy()
    broken.uns["unwritable"] = object()
    with pytest.raises(Exception):  # noqa: B017 - anndata wraps the error in its own type
        write_spatialdata(to_spatialdata(broken), path)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before  # the old store, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["S1.zarr"]  # no temporary store left


def test_squidpy_plots_a_prediction_store(visium, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import squidpy as sq

    slide = ns.build_slide("S1", visium["store"])
    path = write_spatialdata(to_spatialdata(_predictions(slide), image=slide.image), tmp_path / "S1.zarr")
    table = sd.read_zarr(path).tables["table"]
    gene = table.var_names[0]
    sq.pl.spatial_scatter(table, color=gene, library_id="S1", save=tmp_path / "scatter.png")
    from PIL import Image

    pixels = np.asarray(Image.open(next(tmp_path.rglob("scatter.png"))).convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.std() > 20  # the H&E thumbnail with coloured spots, not blank


@pytest.mark.parametrize(("kind", "layer"), [("visium", "Points"), ("visium_hd", "Labels")])
def test_napari_spatialdata_shows_a_predicted_gene_of_our_store(kind, layer, request, tmp_path):
    made = request.getfixturevalue(kind)
    slide = ns.build_slide("S1", made["store"])
    adata = _predictions(slide)
    path = write_spatialdata(to_spatialdata(adata, image=slide.image), tmp_path / "S1.zarr")
    script = REPO / "tests" / "napari_spatialdata_view.py"
    run = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["layer"] == layer and seen["coloured_by"] == seen["gene"] == adata.var_names[0]
    if layer == "Points":  # each spot coloured by its value: many colours, not one
        assert seen["colours"] > 20
    else:
        assert seen["labels_colormap"] == "DirectLabelColormap"
    assert seen["canvas_std"] > 10 and not seen["torch"]


def _store_with(tmp_path: Path, visium: dict, change) -> Path:
    """A copy of the Visium store, changed by ``change(sdata)``."""
    sdata = sd.read_zarr(visium["store"])
    change(sdata)
    path = tmp_path / "bad.zarr"
    sdata.write(path)
    return path


def _no_image(sdata):
    for name in list(sdata.images):
        del sdata.images[name]


def _no_table(sdata):
    del sdata.tables["table"]


def _annotates_an_image(sdata):
    table = sdata.tables["table"]
    del sdata.tables["table"]
    table.obs["region"] = pd.Categorical(["C2_full_image"] * table.n_obs)
    table.uns["spatialdata_attrs"]["region"] = "C2_full_image"
    sdata.tables["table"] = table


def _flat_transformation(sdata):
    from spatialdata.transformations import Scale, set_transformation

    set_transformation(sdata.shapes["C2"], Scale([1.0, 0.0], axes=("x", "y")), "C2")


@pytest.mark.parametrize(
    ("change", "element", "message"),
    [
        (_no_image, "", r"has no image in the spots' coordinate system"),
        (_no_table, "", r"has no table"),
        (
            _annotates_an_image,
            "",
            r"no table annotates shapes or labels \(tables annotate: table → C2_full_image",
        ),
        (_annotates_an_image, "::table", r"table 'table' annotates C2_full_image, not shapes or labels"),
        (None, "::square_999um", r"has no element 'square_999um' \(it holds images: C2_full_image"),
        (_flat_transformation, "", r"transformation of 'C2' to coordinate system 'C2' is not invertible"),
    ],
)
def test_a_bad_store_ends_with_a_message(change, element, message, visium, tmp_path, capsys):
    path = _store_with(tmp_path, visium, change or (lambda sdata: None))
    cohort = tmp_path / "cohort.csv"
    pd.DataFrame(
        [
            {
                "slide_id": "S1",
                "image": "",
                "spots": f"{path}{element}",
                "counts": "",
                "pixel_size_um": "",
                "patient": "",
            }
        ]
    ).to_csv(cohort, index=False)
    code, _, err = run_cli(["info", cohort], capsys)
    assert code == 2
    assert str(path) in err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_file_open_reads_a_store_into_layers(make_napari_viewer, visium):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(visium["store"]), plugin="napari-spahgc")
    image, spots = layers
    assert image.multiscale and image.data[0].shape[:2] == (9911, 9274)  # the store's full-resolution pyramid
    assert len(spots.data) == 60
    np.testing.assert_allclose(image.scale, [0.735, 0.735], rtol=1e-9)  # µm, from the spots' size


def test_a_store_assembled_in_microns_maps_its_spots_into_the_image(tmp_path):
    """A store a user assembled in µm: the image placed by a scale (µm per pixel) and a translation,
    the circles in µm. Centres come back in the image's pixels, the pixel size from the circles."""
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    um_per_px, offset = 0.8, np.array([120.0, -40.0])  # image pixel (0, 0) sits at (120, -40) µm
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 255, size=(3, 600, 800), dtype=np.uint8)
    to_microns = Sequence(
        [Scale([um_per_px, um_per_px], axes=("x", "y")), Translation(offset, axes=("x", "y"))]
    )
    image = Image2DModel.parse(pixels, dims=("c", "y", "x"), transformations={"microns": to_microns})
    centres_px = rng.uniform(50, 550, size=(25, 2))
    circles = ShapesModel.parse(
        centres_px * um_per_px + offset,
        geometry=0,
        radius=np.full(25, 27.5),
        index=np.arange(25),
        transformations={"microns": Identity()},
    )
    counts = ad.AnnData(rng.poisson(2.0, size=(25, 5)).astype(np.float32))
    counts.obs_names = [f"spot{i}" for i in range(25)]
    counts.var_names = [f"G{i}" for i in range(5)]
    counts.obs["region"] = pd.Categorical(["spots"] * 25)
    counts.obs["instance"] = np.arange(25)
    table = TableModel.parse(counts, region="spots", region_key="region", instance_key="instance")
    path = tmp_path / "assembled.zarr"
    sd.SpatialData(images={"he": image}, shapes={"spots": circles}, tables={"table": table}).write(path)

    slide = ns.build_slide("S", path)
    np.testing.assert_allclose(slide.centers_px, centres_px, atol=1e-9)
    assert slide.pixel_size_um == pytest.approx(um_per_px, rel=1e-9)  # 55 µm over 68.75 px
    assert slide.spot_diameter_px == pytest.approx(55 / um_per_px)
    assert slide.image.shape == (600, 800) and list(slide.spot_ids) == list(counts.obs_names)
    np.testing.assert_array_equal(
        slide.image.read_region(0, 10, 20, 5, 5), np.moveaxis(pixels, 0, 2)[10:15, 20:25]
    )
    np.testing.assert_array_equal(slide.expression.X.toarray(), counts.X)
