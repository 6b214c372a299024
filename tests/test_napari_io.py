"""The plugin in a real napari viewer (Xvfb, show=True): discovery, reader, writer, bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from napari.layers import Image, Points
from napari.utils.notifications import NotificationSeverity

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


def _h5ad(path: Path, x: np.ndarray, spatial: np.ndarray | None) -> Path:
    adata = ad.AnnData(x)
    if spatial is not None:
        adata.obsm["spatial"] = spatial
    adata.write_h5ad(path)
    return path


def _garbage_outs(folder: Path) -> Path:
    (folder / "outs" / "spatial").mkdir(parents=True)
    (folder / "outs" / "spatial" / "tissue_positions.csv").write_text("~~ not a table ~~\n\x00\x01;;\n,,,\n")
    return folder / "outs"


def _cohort_missing_spots(folder: Path) -> Path:
    path = folder / "missing_spots_cohort.csv"
    path.write_text("slide_id,image,spots,counts,pixel_size_um,patient\nA,missing.jpg,missing.tsv,,0.5,P1\n")
    return path


def _random_bytes(folder: Path) -> Path:
    path = folder / "random_bytes.h5ad"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


BAD_FILES = {  # fault → writes a file the reader claims but cannot open, returns its path
    "coordinates of shape (n, 1)": lambda d: _h5ad(d / "one_column.h5ad", np.ones((4, 2)), np.ones((4, 1))),
    "random bytes": _random_bytes,
    "no obsm['spatial']": lambda d: _h5ad(d / "no_spatial.h5ad", np.ones((3, 2), np.float32), None),
    "garbage tissue_positions.csv": _garbage_outs,
    "cohort naming a missing spots file": _cohort_missing_spots,
    "X of strings": lambda d: _h5ad(
        d / "strings.h5ad", np.array([["a", "b"]] * 3, dtype=object), np.ones((3, 2))
    ),
}


@pytest.mark.parametrize("fault", list(BAD_FILES))
def test_each_bad_file_is_an_error_notification_naming_it_and_adds_no_layer(
    make_napari_viewer, tmp_path, notifications, fault
):
    path = BAD_FILES[fault](tmp_path)
    viewer = make_napari_viewer(show=True)
    assert viewer.open(str(path), plugin=PLUGIN) == []  # nothing escaped
    assert len(viewer.layers) == 0
    errors = [str(n.message) for n in notifications if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"napari-spahgc could not open {path}"), errors
    assert "Traceback" not in errors[0]


def test_reading_warnings_are_warning_notifications(make_napari_viewer, tmp_path, notifications):
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((400, 400, 3), np.uint8)).save(tmp_path / "he.png")
    (tmp_path / "spots.csv").write_text("spot_id,x,y\nA,100,100\nB,5000,100\nC,300,300\n")
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("slide_id,image,spots,counts,pixel_size_um,patient\nA,he.png,spots.csv,,0.5,P1\n")
    viewer = make_napari_viewer(show=True)
    assert len(viewer.open(str(cohort), plugin=PLUGIN)) == 2  # H&E and spots
    warned = [str(n.message) for n in notifications if n.severity == NotificationSeverity.WARNING]
    assert any("spots.csv: dropped 1 of 3 spots outside the image" in message for message in warned), warned


def test_get_reader_does_not_raise_on_odd_paths(tmp_path, monkeypatch, notifications):
    from napari_spahgc._reader import NULL_LAYER, napari_get_reader

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert napari_get_reader(str(tmp_path / "dangling")) is None
    link = tmp_path / "broken_link.h5ad"  # claimed by its name; reading it is a notification
    link.symlink_to(tmp_path / "gone.h5ad")
    assert napari_get_reader(str(link))(str(link)) == NULL_LAYER
    assert any(str(n.message).startswith(f"napari-spahgc could not open {link}") for n in notifications)
    assert napari_get_reader(str(tmp_path / "a\0b.csv")) is None
    assert napari_get_reader([str(tmp_path), str(tmp_path)]) is None

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", denied)  # root ignores file modes, so deny like the OS would
    assert napari_get_reader(str(tmp_path / "outs")) is None


def test_an_unexpected_error_is_named_by_its_type_and_first_line(
    make_napari_viewer, tmp_path, notifications, monkeypatch
):
    import napari_spahgc._reader as reader

    def fails(path):
        raise ValueError("a reader bug\n  second line")

    monkeypatch.setattr(reader, "open_slides", fails)  # whatever a reader may still raise
    path = _h5ad(tmp_path / "fine.h5ad", np.ones((3, 2), np.float32), np.ones((3, 2)))
    viewer = make_napari_viewer(show=True)
    assert viewer.open(str(path), plugin=PLUGIN) == [] and len(viewer.layers) == 0
    errors = [str(n.message) for n in notifications if n.severity == NotificationSeverity.ERROR]
    assert errors == [f"napari-spahgc could not open {path}: ValueError: a reader bug"]
