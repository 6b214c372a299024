"""Shared fixtures: the real HER2ST cohort, synthetic inputs written honestly, isolated caches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch_geometric  # noqa: F401
from napari.utils.notifications import notification_manager
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale_slides

# This process both draws viewers and trains in-process (demo and pipeline tests). Loading torch's
# stack (triton through torch_geometric) after a viewer has drawn segfaults with Mesa, so it is loaded
# here first, as `spahgc demo` does before it opens napari. The user's order, where the plugin must
# never load it, is tested in fresh processes (test_viewer_first.py).

REPO = Path(__file__).resolve().parents[1]
HER2ST = REPO.parent / "shared" / "data" / "her2st"
HER2ST_COHORT = REPO / "examples" / "her2st_cohort.csv"
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
PATH_COLUMNS = ("image", "spots", "counts", "labels")


def her2st_table(rows: list[str] | None = None) -> pd.DataFrame:
    """The example HER2ST cohort table with absolute paths (to be written anywhere), ``rows`` only."""
    table = pd.read_csv(HER2ST_COHORT)
    for column in PATH_COLUMNS:
        table[column] = [str((HER2ST_COHORT.parent / p).resolve()) for p in table[column]]
    return table if rows is None else table[table["slide_id"].isin(rows)]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """One cache folder for the whole run (JPEG pyramids are converted once), never the user's."""
    folder = tmp_path_factory.mktemp("spahgc-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("SPAHGC_CACHE_DIR", str(folder))
    patcher.setenv("NAPARI_CONFIG", str(folder / "napari-settings.yaml"))
    yield folder
    patcher.undo()


@pytest.fixture
def her2st_cohort() -> Path:
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    return HER2ST_COHORT


def write_ome_pyramid(path: Path, image: np.ndarray, pixel_size_um: float | None, n_levels: int = 3) -> Path:
    """A tiled OME-TIFF pyramid (SubIFDs) as scanners and bioformats2raw write them."""
    metadata = {"axes": "YXS"}
    if pixel_size_um is not None:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as writer:
        writer.write(image, subifds=n_levels - 1, tile=(256, 256), photometric="rgb", metadata=metadata)
        for level in range(1, n_levels):
            step = 2**level
            writer.write(image[::step, ::step], subfiletype=1, tile=(256, 256), photometric="rgb")
    return path


def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> Path:
    """A Cell Ranger v3 ``filtered_feature_bc_matrix.h5`` (CSC, genes × barcodes), written by the
    scale benchmark's writer from dense spots × genes counts."""
    return scale_slides.write_10x_h5(
        path, sparse.csr_matrix(np.asarray(counts)), np.asarray(barcodes), list(genes)
    )


@pytest.fixture
def spaceranger_outs(tmp_path) -> dict:
    """A small Visium Space Ranger ``outs/`` folder: 30 spots in tissue + 5 outside, 12 genes."""
    rng = np.random.default_rng(0)
    outs = tmp_path / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True)
    n_in, n_out, genes = 30, 5, [f"GENE{i}" for i in range(12)]
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(n_in + n_out)]
    rows, cols = np.divmod(np.arange(n_in + n_out), 7)
    diameter = 90.0  # full-resolution px, so 55 µm / 90 px = 0.6111 µm/px
    lines = ["barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres"]
    for i, barcode in enumerate(barcodes):
        in_tissue = int(i < n_in)
        lines.append(f"{barcode},{in_tissue},{rows[i]},{cols[i]},{200 + 150 * rows[i]},{200 + 150 * cols[i]}")
    (spatial / "tissue_positions.csv").write_text("\n".join(lines) + "\n")
    hires_scalef = 0.25
    (spatial / "scalefactors_json.json").write_text(
        json.dumps(
            {"spot_diameter_fullres": diameter, "tissue_hires_scalef": hires_scalef,
             "tissue_lowres_scalef": 0.05, "fiducial_diameter_fullres": 140.0}
        )
    )  # fmt: skip
    from PIL import Image

    hires = rng.integers(0, 255, size=(400, 400, 3), dtype=np.uint8)
    Image.fromarray(hires).save(spatial / "tissue_hires_image.png")
    counts = rng.poisson(3.0, size=(n_in, len(genes)))
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", counts, barcodes[:n_in], genes)
    return {
        "folder": outs, "barcodes": barcodes[:n_in], "genes": genes, "counts": counts,
        "diameter": diameter, "hires_scalef": hires_scalef,
    }  # fmt: skip


@pytest.fixture
def scratch(tmp_path) -> Iterator[Path]:
    """``tmp_path``, removed when the test ends whatever its outcome: for encoder checkpoints of 1–3 GB
    that no later test or failure report needs."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def notifications():
    """Collect the notifications napari shows while a test runs."""
    seen = []

    def _record(event):
        seen.append(event)  # the event is the Notification itself

    notification_manager.notification_ready.connect(_record)
    yield seen
    notification_manager.notification_ready.disconnect(_record)


@pytest.fixture(scope="session")
def her2st_model(tmp_path_factory, _isolated_cache) -> Path:
    """A model trained by ``spahgc train`` on HER2ST C2–C5 (per-spot embeddings, 12 epochs: four
    members, each holding one section out, so it is calibrated), in another process (torch stays out
    of this one for the napari tests); C6 is never seen. Its embeddings are in the run's cache."""
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    root = tmp_path_factory.mktemp("her2st-model")
    cohort = root / "c2-c5.csv"
    her2st_table(["C2", "C3", "C4", "C5"]).to_csv(cohort, index=False)
    command = [sys.executable, "-c", "from napari_spahgc.cli import main; main()", "train", str(cohort),
               "--genes", str(HER2ST / "her2st_785_genes.txt"), "--out", str(root / "model"), "--epochs", "12",
               "--set", "eval_every=3", "--mode", "spot", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "model"


@pytest.fixture(scope="session")
def her2st_c6_predictions(her2st_model, tmp_path_factory) -> Path:
    """C6 predicted by ``her2st_model`` (never trained on it), with intervals and its measured layer:
    the ``spahgc predict`` file, written once, read-only for the tests."""
    import napari_spahgc as ns

    root = tmp_path_factory.mktemp("c6-predicted")
    slides = ns.load_cohort(HER2ST_COHORT)
    embeddings = ns.run_to_end(
        ns.embed(ns.EmbedRequest(slides, "efficientnet-lite0", device="cpu", mode="spot"))
    )
    request = ns.PredictRequest(her2st_model, slides[4:], embeddings, root / "predictions", "cpu")
    return Path(ns.run_to_end(ns.predict(request)).files["C6"])


def predicted_c6_viewer(make_napari_viewer, qtbot, model: Path, folder: Path, timeout_ms: int = 300_000):
    """A shown viewer with every widget docked, in which C6 was opened, embedded per spot and predicted
    by ``model`` through the widgets, as a user does: (viewer, widgets by name)."""
    from napari_spahgc._qt.viewer import WIDGETS

    viewer = make_napari_viewer(show=True)
    widgets = {name: cls(viewer) for name, cls in WIDGETS.items()}
    for name, widget in widgets.items():
        viewer.window.add_dock_widget(widget, name=name)
    cohort = folder / "c6.csv"
    her2st_table(["C6"]).drop(columns="labels").to_csv(cohort, index=False)

    def finish(panel) -> None:
        qtbot.waitUntil(lambda: not panel.running, timeout=timeout_ms)

    widgets["Slide"].open(str(cohort))
    finish(widgets["Slide"].panel)
    widgets["Embed"].mode.setCurrentText("per-spot")
    widgets["Embed"].run()
    finish(widgets["Embed"].panel)
    widgets["Predict"].load_mode.setChecked(True)
    widgets["Predict"].model_dir.set_text(str(model))
    widgets["Predict"].run()
    finish(widgets["Predict"].panel)
    return viewer, widgets
