"""The plugin in a real napari viewer (Xvfb, show=True): discovery, reader, writer, bad files."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from napari.layers import Image, Points

PLUGIN = "napari-spahgc"


def test_napari_discovers_the_plugin_and_manifest_validates():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest(PLUGIN)
    assert manifest.contributions.readers and manifest.contributions.writers
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", PLUGIN], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_reader_opens_the_her2st_cohort(make_napari_viewer, her2st_cohort, tmp_path):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(her2st_cohort), plugin=PLUGIN)
    assert [layer.name for layer in layers[:2]] == ["C2 H&E", "C2 spots (measured)"]
    assert len(layers) == 10 and sum(layer.visible for layer in layers) == 2  # first slide shown
    image, spots = layers[0], layers[1]
    assert isinstance(image, Image) and image.multiscale and image.rgb and len(image.data) >= 4
    np.testing.assert_allclose(image.scale, [0.735, 0.735])
    assert isinstance(spots, Points) and len(spots.data) == 187
    np.testing.assert_allclose(spots.scale, [0.735, 0.735])
    np.testing.assert_allclose(spots.size, 100 / 0.735)
    assert spots.features["spot_id"].str.fullmatch(r"\d+x\d+").all()
    assert "ERBB2" in spots.features and spots.features.shape[1] <= 2002
    # spot centres in world µm land on the image's tissue extent
    world = spots.data * 0.735
    assert (world.min(0) >= 0).all() and (world.max(0) <= np.array(image.data[0].shape[:2]) * 0.735).all()

    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 10 and shot[..., :3].mean() > 20  # a real picture, not black, not flat

    out = tmp_path / "C2_spots.h5ad"
    written = spots.save(str(out), plugin=PLUGIN)
    assert written == [str(out)]
    back = ad.read_h5ad(out)
    assert list(back.obs_names) == list(spots.features["spot_id"])
    assert "ERBB2" in back.var_names and "spot_id" not in back.var_names
    np.testing.assert_allclose(back[:, "ERBB2"].X.ravel(), spots.features["ERBB2"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(back.obsm["spatial"], spots.data[:, ::-1])
    assert back.uns["spatial"]["C2"]["scalefactors"]["microns_per_pixel"] == pytest.approx(0.735)


def test_reader_opens_spaceranger_folder_and_h5ad(make_napari_viewer, spaceranger_outs, tmp_path):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(spaceranger_outs["folder"]), plugin=PLUGIN)
    image, spots = layers
    assert not image.multiscale
    np.testing.assert_allclose(image.scale, [55 / 90 * 4] * 2)  # hires image: 4 full-res px per pixel
    assert len(spots.data) == 30 and set(spaceranger_outs["genes"]) <= set(spots.features)

    spots.save(str(tmp_path / "visium.h5ad"), plugin=PLUGIN)
    layers = viewer.open(str(tmp_path / "visium.h5ad"), plugin=PLUGIN)
    assert len(layers) == 1 and len(layers[0].data) == 30  # exported spots read back as a slide


def test_bad_file_gives_a_notification_and_the_viewer_survives(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer(show=True)
    bad = tmp_path / "broken_cohort.csv"
    bad.write_text("slide_id,image,spots\nA,missing.jpg,missing.csv\n")
    assert viewer.open(str(bad), plugin=PLUGIN) == []
    assert any(
        "broken_cohort.csv" in str(n.message) and "lacks column" in str(n.message) for n in notifications
    )
    no_coordinates = tmp_path / "no_xy.h5ad"
    ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(no_coordinates)
    assert viewer.open(str(no_coordinates), plugin=PLUGIN) == []
    assert any("no_xy.h5ad" in str(n.message) and "obsm['spatial']" in str(n.message) for n in notifications)
    viewer.add_points(np.array([[1.0, 2.0]]))  # still alive and usable
    assert len(viewer.layers) == 1
