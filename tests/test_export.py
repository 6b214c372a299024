"""h5ad export: what scanpy reads back, and atomic writes."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import scanpy as sc

from napari_spahgc import build_slide, spot_anndata, write_h5ad


def test_h5ad_round_trip_with_scanpy(tmp_path, her2st_cohort):
    from napari_spahgc import read_cohort

    slide = read_cohort(her2st_cohort)[1].load()
    values = np.random.default_rng(1).random((slide.n_spots, 4)).astype(np.float32)
    genes = ["ERBB2", "GNAS", "FASN", "MUC1"]
    adata = spot_anndata(slide, values, genes, layers={"measured": values * 2},
                         provenance={"parameters": {"k": 7, "unset": None}, "genes": genes})  # fmt: skip
    path = write_h5ad(adata, tmp_path / "C3.h5ad")
    back = sc.read_h5ad(path)
    assert list(back.obs_names) == list(slide.spot_ids)
    assert list(back.var_names) == genes
    np.testing.assert_allclose(back.X, values)
    np.testing.assert_allclose(back.layers["measured"], values * 2)
    np.testing.assert_allclose(back.obsm["spatial"], slide.centers_px)
    library = back.uns["spatial"]["C3"]
    assert library["scalefactors"]["spot_diameter_fullres"] == pytest.approx(slide.spot_diameter_px)
    assert library["scalefactors"]["microns_per_pixel"] == pytest.approx(0.735)
    thumbnail = library["images"]["hires"]
    assert max(thumbnail.shape[:2]) <= 2000
    assert thumbnail.shape[0] == pytest.approx(
        slide.image.shape[0] * library["scalefactors"]["tissue_hires_scalef"], abs=2
    )
    provenance = back.uns["napari_spahgc"]
    assert provenance["package"] == "napari-spahgc" and provenance["version"]
    assert provenance["parameters"]["k"] == 7 and provenance["parameters"]["unset"] == ""
    assert provenance["inputs"]["image"].endswith(".jpg") and provenance["created"]
    matplotlib.use("Agg")
    sc.pl.spatial(back, color="ERBB2", library_id="C3", show=False)  # scanpy can plot it as is


def test_write_is_atomic(tmp_path, spaceranger_outs):
    slide = build_slide("visium", spaceranger_outs["folder"])
    good = spot_anndata(slide, np.ones((slide.n_spots, 1)), ["A"])
    folder = tmp_path / "export"
    path = write_h5ad(good, folder / "out.h5ad")
    before = path.read_bytes()
    broken = spot_anndata(slide, np.zeros((slide.n_spots, 1)), ["A"])
    broken.uns["unwritable"] = object()  # h5py cannot store it: the write fails half-way
    with pytest.raises(Exception):  # noqa: B017 - anndata wraps the error in its own type
        write_h5ad(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["out.h5ad"]  # no temp file left behind
    with pytest.raises(Exception):  # noqa: B017
        write_h5ad(broken, folder / "new.h5ad")
    assert [p.name for p in folder.iterdir()] == ["out.h5ad"]


def test_values_must_match_spots(spaceranger_outs):
    slide = build_slide("visium", spaceranger_outs["folder"])
    with pytest.raises(ValueError, match="expected"):
        spot_anndata(slide, np.ones((3, 1)), ["A"])
