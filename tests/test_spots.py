"""Spot sources: Space Ranger outs/, tissue_positions variants, h5ad as scanpy writes Visium, plain CSV."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import write_ome_pyramid
from napari_spahgc import build_slide, read_spots


def test_spaceranger_folder(spaceranger_outs):
    slide = build_slide("visium", spaceranger_outs["folder"])
    assert list(slide.spot_ids) == spaceranger_outs["barcodes"]  # in-tissue spots, ids unchanged
    assert list(slide.expression.var_names) == spaceranger_outs["genes"]
    np.testing.assert_array_equal(slide.expression.X.toarray(), spaceranger_outs["counts"])
    assert slide.spot_diameter_px == spaceranger_outs["diameter"]
    assert slide.pixel_size_um == pytest.approx(55.0 / spaceranger_outs["diameter"])
    assert "spot_diameter_fullres" in slide.pixel_size_source
    # no full-resolution image given: the hires PNG stands in, at its scale
    assert slide.image.n_levels == 1
    assert slide.image.downsamples == [pytest.approx(1 / spaceranger_outs["hires_scalef"])]
    assert slide.image.shape == (1600, 1600)
    np.testing.assert_array_equal(slide.centers_px[0], [200.0, 200.0])


def test_spaceranger_positions_variants(spaceranger_outs):
    spatial = spaceranger_outs["folder"] / "spatial"
    headed = pd.read_csv(spatial / "tissue_positions.csv")
    expected = read_spots(spaceranger_outs["folder"])
    (spatial / "tissue_positions.csv").unlink()
    headed.to_csv(spatial / "tissue_positions_list.csv", header=False, index=False)
    legacy = read_spots(spaceranger_outs["folder"])
    assert legacy.spot_ids.equals(expected.spot_ids)
    np.testing.assert_array_equal(legacy.centers_px, expected.centers_px)
    (spatial / "tissue_positions_list.csv").unlink()
    headed.to_parquet(spatial / "tissue_positions.parquet")
    parquet = read_spots(spaceranger_outs["folder"])
    assert parquet.spot_ids.equals(expected.spot_ids)


def test_h5ad_as_scanpy_writes_visium(tmp_path, spaceranger_outs):
    counts = spaceranger_outs["counts"].astype(np.float32)
    adata = ad.AnnData(counts, obs=pd.DataFrame(index=spaceranger_outs["barcodes"]))
    adata.var_names = spaceranger_outs["genes"]
    adata.obsm["spatial"] = np.c_[np.arange(30) * 10 + 50, np.arange(30) * 5 + 60].astype(float)
    hires = np.full((300, 300, 3), 0.5, dtype=np.float32)  # scanpy stores images as float in [0, 1]
    adata.uns["spatial"] = {"lib1": {"images": {"hires": hires},
                                     "scalefactors": {"spot_diameter_fullres": 110.0, "tissue_hires_scalef": 0.5}}}  # fmt: skip
    path = tmp_path / "visium.h5ad"
    adata.write_h5ad(path)
    slide = build_slide("lib1", path)
    assert list(slide.spot_ids) == spaceranger_outs["barcodes"]
    np.testing.assert_array_equal(slide.expression.X.toarray(), counts)
    assert slide.pixel_size_um == pytest.approx(0.5) and slide.spot_diameter_px == 110.0
    assert slide.image.shape == (600, 600)
    assert slide.image.read_region(0, 0, 0, 2, 2).max() == 127


def test_plain_csv_with_full_resolution_image(tmp_path):
    image = write_ome_pyramid(
        tmp_path / "he.ome.tif", np.full((800, 900, 3), 200, np.uint8), pixel_size_um=0.4
    )
    spots = tmp_path / "spots.csv"
    spots.write_text("spot_id,x,y\nAAA-1,100.5,50\nAAA-2,850,790\nAAA-3,10,10\n")
    slide = build_slide("s1", spots, image=image)
    assert list(slide.spot_ids) == ["AAA-1", "AAA-2", "AAA-3"]
    np.testing.assert_array_equal(slide.centers_px[0], [100.5, 50.0])
    assert slide.pixel_size_um == pytest.approx(0.4) and slide.pixel_size_source == "OME metadata"
    assert slide.expression is None and slide.spot_diameter_px is None
    assert build_slide("s1", spots, image=image, pixel_size_um=0.3).pixel_size_um == 0.3  # the user wins
