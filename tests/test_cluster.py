"""Cohorts on a Dask cluster (a real LocalCluster of worker processes): the same embeddings and
predictions as the serial path, bit for bit; a killed worker loses only its slide, which is recomputed;
a rerun reads everything from the cache; a bad slide is reported while the others complete."""

from __future__ import annotations

import os
import signal
import time

import anndata as ad
import numpy as np
import pytest

from conftest import HER2ST, SECTIONS
from napari_spahgc.cluster import EmbedSettings, cluster_client, embed_task, run_per_slide
from napari_spahgc.embedding import cohort_embeddings
from napari_spahgc.encoders import LazyEncoder
from napari_spahgc.io.cohort import read_cohort
from napari_spahgc.pipeline import make_trainer, write_predictions

PANEL = ["ERBB2", "GRB7", "FASN", "ACTB", "KRT19", "CD74", "MUCL1", "SCGB2A2"]

IMAGES = {"C2": "5714_HE_BT_C2.jpg", "C3": "5714_HE_BT_D1.jpg", "C4": "5714_HE_BT_D2.jpg",
          "C5": "5714_HE_BT_E1.jpg", "C6": "5714_HE_BT_E2.jpg"}  # fmt: skip


@pytest.fixture
def sections(tmp_path):
    """The five real HER2ST sections (real images and counts), each with its first 20 spots."""
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    rows = ["slide_id,image,spots,counts,pixel_size_um,patient"]
    for section in SECTIONS:
        lines = (HER2ST / "ST-spotfiles" / f"{section}_selection.tsv").read_text().splitlines()
        (tmp_path / f"{section}_spots.tsv").write_text("\n".join(lines[:21]) + "\n")
        image = HER2ST / "ST-imgs" / section / IMAGES[section]
        rows.append(
            f"{section},{image},{section}_spots.tsv,{HER2ST / 'ST-cnts' / f'{section}.tsv.gz'},0.735,C"
        )
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    return [entry.load() for entry in read_cohort(tmp_path / "cohort.csv")]


@pytest.fixture(scope="module")
def serial_cache(tmp_path_factory):
    """One cache for the serial embeddings of every test here (the sections are the same in each)."""
    return tmp_path_factory.mktemp("serial-embeddings")


@pytest.fixture
def worker_threads(monkeypatch):
    """The serial path at the torch thread count of a worker of a 2-process LocalCluster here (one):
    oneDNN's results for some batch sizes depend on the thread count (measured ≤ 1e-5 apart)."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _settings(cache) -> EmbedSettings:
    return EmbedSettings("efficientnet-lite0", None, "cpu", 16, str(cache))


def _kill_a_busy_worker(client, futures: dict) -> tuple[str, int]:
    """SIGKILL the process of a worker while it embeds a slide; return that slide's id and the pid."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            busy = [slide_id for future, slide_id in futures.items() if future.key in keys]
            if busy:
                time.sleep(0.5)  # its first task: the encoder is being built, then the patches embedded
                os.kill(pids[worker], signal.SIGKILL)
                return busy[0], pids[worker]
        time.sleep(0.05)
    raise AssertionError("no worker started a slide")


def test_cluster_embeddings_equal_the_serial_ones_and_survive_a_killed_worker(
    sections, tmp_path, worker_threads, serial_cache
):
    serial = cohort_embeddings(sections, LazyEncoder("efficientnet-lite0", device="cpu"), serial_cache,
                               batch_size=16)  # fmt: skip
    settings = _settings(tmp_path / "cluster")
    with cluster_client(workers=2) as client:
        futures = {client.submit(embed_task, s, settings, pure=False): s.slide_id for s in sections}
        killed, dead = _kill_a_busy_worker(client, futures)
        results = {f.result().slide_id: f.result() for f in futures}
        assert sorted(results) == sorted(SECTIONS) and all(r.error is None for r in results.values())
        for slide_id, result in results.items():
            np.testing.assert_array_equal(np.load(result.path)["embeddings"], serial[slide_id])
        assert not results[killed].worker.endswith(f":{dead}")  # the dead worker's slide: computed elsewhere
        assert not list((tmp_path / "cluster").glob("*.part"))
        rerun = list(run_per_slide(client, embed_task, sections, settings))
    assert len(rerun) == 5 and all(r.cached and r.error is None for r in rerun)  # nothing recomputed


def test_cli_predict_on_a_scheduler_equals_the_serial_predictions(
    sections, tmp_path, capsys, worker_threads, serial_cache
):
    """``spahgc predict --scheduler ADDRESS``: every slide's h5ad, identical to the serial path's."""
    from napari_spahgc.predictor import SpaHGCPredictor
    from test_cli_bad_input import run_cli

    encoder = LazyEncoder("efficientnet-lite0", device="cpu")
    embeddings = cohort_embeddings(sections, encoder, serial_cache, batch_size=16)
    trainer = make_trainer(sections[:3], embeddings, panel=PANEL, encoder=encoder.info(), epochs=2, members=2)
    folder = trainer.fit().save(tmp_path / "model")
    serial = write_predictions(SpaHGCPredictor.load(folder), sections, embeddings, tmp_path / "serial")
    with cluster_client(workers=2) as client:
        args = ["predict", str(folder), str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "cluster"),
                "--cache", str(serial_cache), "--batch-size", "16", "--scheduler", client.scheduler.address]  # fmt: skip
        code, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    for path in serial:
        expected, got = ad.read_h5ad(path), ad.read_h5ad(tmp_path / "cluster" / path.name)
        np.testing.assert_array_equal(got.X, expected.X)
        assert list(got.obs_names) == list(expected.obs_names) and list(got.var_names) == list(
            expected.var_names
        )


def test_scheduler_errors_are_messages(sections, tmp_path, capsys, monkeypatch):
    from napari_spahgc import cluster
    from test_cli_bad_input import run_cli

    embed = ["embed", str(tmp_path / "cohort.csv"), "--cache", str(tmp_path / "c")]
    code, stderr = run_cli([*embed, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], capsys)
    assert code == 2 and "give exactly one of --scheduler ADDRESS or --workers N" in stderr
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    code, stderr = run_cli([*embed, "--scheduler", "tcp://127.0.0.1:1"], capsys)
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in stderr, stderr
    assert "Traceback" not in stderr


def test_a_bad_slide_is_reported_and_the_others_complete(sections, tmp_path, capsys):
    """Through the CLI: one section's image has damaged tile data; the four others are embedded, the
    failure names the slide and the image, the exit code says a slide failed."""
    import tifffile

    from test_cli_bad_input import run_cli

    cohort = (tmp_path / "cohort.csv").read_text().splitlines()
    damaged = tmp_path / "damaged.ome.tif"
    pixels = np.full((3000, 3000, 3), 200, dtype=np.uint8)
    tifffile.imwrite(damaged, pixels, tile=(512, 512), photometric="rgb", compression="zlib",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.735, "PhysicalSizeY": 0.735})  # fmt: skip
    with tifffile.TiffFile(damaged) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    data = bytearray(damaged.read_bytes())
    for offset, count in zip(offsets, counts, strict=True):
        data[offset + 10 : offset + count] = b"\x00" * (count - 10)
    damaged.write_bytes(bytes(data))
    (tmp_path / "inside.csv").write_text(
        "spot_id,x,y\n" + "".join(f"s{i},{300 * i + 200},1500\n" for i in range(9))
    )
    fields = cohort[-1].split(",")
    fields[1:4] = [str(damaged), "inside.csv", ""]
    (tmp_path / "cohort.csv").write_text("\n".join([*cohort[:-1], ",".join(fields)]) + "\n")
    code, stderr = run_cli(["embed", str(tmp_path / "cohort.csv"), "--workers", "2", "--cache", str(tmp_path / "c")],
                           capsys)  # fmt: skip
    assert code == 2, stderr
    assert f"failed: slide 'C6': {damaged}: cannot decode the image data" in stderr
    assert "1 of 5 slide(s) failed" in stderr and "Traceback" not in stderr
    assert len(list((tmp_path / "c").glob("C[2-5]-*.npz"))) == 4 and not list((tmp_path / "c").glob("C6*"))


def test_the_embed_widget_runs_on_a_scheduler(
    make_napari_viewer, qtbot, sections, tmp_path, worker_threads, serial_cache
):
    """The Embed widget with a scheduler address: one task per slide on that cluster, progress by slides,
    and the session gets the same embeddings as the serial path."""
    from napari_spahgc._qt._common import session_for
    from test_widgets import _finish, _widgets

    serial = cohort_embeddings(sections, LazyEncoder("efficientnet-lite0", device="cpu"), serial_cache,
                               batch_size=16)  # fmt: skip
    viewer = make_napari_viewer(show=True)
    w = _widgets(viewer)
    session = session_for(viewer)
    w["Slide"].open(str(tmp_path / "cohort.csv"))
    _finish(qtbot, w["Slide"].panel)
    steps = []
    with cluster_client(workers=2) as client:
        w["Embed"].cache.set_text(str(tmp_path / "cluster"))
        w["Embed"].batch_size.setValue(16)
        w["Embed"].scheduler.setText(client.scheduler.address)
        w["Embed"].run().yielded.connect(steps.append)
        _finish(qtbot, w["Embed"].panel)
    assert "done" in w["Embed"].panel.status.text(), w["Embed"].panel.status.text()
    assert [s.done for s in steps[-5:]] == [1, 2, 3, 4, 5] and steps[-1].total == 5
    for slide_id, embeddings in serial.items():
        np.testing.assert_array_equal(session.embeddings[slide_id], embeddings)


CLIENT_WITHOUT_TORCH = """
import sys
from distributed import LocalCluster
from napari_spahgc.cluster import EmbedSettings, embed_flow_on_cluster
from napari_spahgc.io.cohort import load_cohort

if __name__ == "__main__":
    slides = load_cohort(sys.argv[1])[:2]
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        flow = embed_flow_on_cluster(slides, EmbedSettings("efficientnet-lite0", None, "cpu", 16, sys.argv[2]),
                                     cluster.scheduler_address)
        for _ in flow:
            pass
    print("torch" in sys.modules)
"""


def test_the_widget_side_of_a_cluster_run_never_loads_torch(sections, tmp_path):
    """The Embed widget's cluster job runs in the viewer's process, where torch must never load (it
    crashes Mesa after the viewer drew): the client side stays torch-free."""
    import subprocess
    import sys

    script = tmp_path / "client.py"
    script.write_text(CLIENT_WITHOUT_TORCH)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "cohort.csv"), str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def flaky_once(slide, marker: str):
    """A task that fails its first attempt (a transient failure) and succeeds on the retry."""
    from pathlib import Path

    from napari_spahgc.cluster import SlideResult

    if not Path(marker).exists():
        Path(marker).touch()
        raise ConnectionError("the shared file system blinked")
    return SlideResult(slide.slide_id, path=marker)


def test_retries_absorb_a_transient_failure(sections, tmp_path):
    with cluster_client(workers=1) as client:
        (once,) = run_per_slide(client, flaky_once, sections[:1], str(tmp_path / "a"), retries=1)
        (never,) = run_per_slide(client, flaky_once, sections[:1], str(tmp_path / "b"), retries=0)
    assert once.error is None and once.slide_id == "C2"
    assert never.error == "ConnectionError: the shared file system blinked"


def test_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    with cluster_client(workers=1) as client:
        assert client.run(lambda: os.environ["OMP_NUM_THREADS"]) == {
            w: str(len(os.sched_getaffinity(0))) for w in client.scheduler_info()["workers"]
        }
    assert dict(os.environ) == before
