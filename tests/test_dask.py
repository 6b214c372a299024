"""Cohorts on a Dask cluster (run/dask.py and the DaskCluster runner, on a real LocalCluster of worker
processes): the same embeddings and predictions as the in-process flows, bit for bit; a killed worker
loses only its slide, which is recomputed; a rerun reads everything from the cache and sends no task;
a bad slide is reported while the others complete; a transient failure is retried."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from conftest import HER2ST, SECTIONS
from napari_spahgc import (
    DaskCluster,
    Embeddings,
    EmbedRequest,
    GeneChoice,
    PredictRequest,
    Progress,
    SpaHGCConfig,
    TrainRequest,
    embed,
    load_cohort,
    predict,
    read_cohort,
    run_to_end,
    train,
)
from napari_spahgc.run.dask import SlideFailures, cluster_client, run_per_slide, slide_task

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


def _request(slides, cache) -> EmbedRequest:
    """What ``spahgc embed --device cpu --batch-size 16 --cache CACHE --mode spot`` asks for (per spot:
    quick on legacy ST's few spots)."""
    return EmbedRequest(
        slides, "efficientnet-lite0", device="cpu", batch_size=16, cache=str(cache), mode="spot"
    )


def _serial(sections, serial_cache) -> Embeddings:
    """The in-process embeddings of the sections (computed once, then read from the module's cache)."""
    return run_to_end(embed(_request(sections, serial_cache)))


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
    serial = _serial(sections, serial_cache)
    request = _request(sections, tmp_path / "cluster")
    with cluster_client(workers=2) as client:
        futures = {
            client.submit(slide_task, embed, request.for_slides([s]), pure=False): s.slide_id
            for s in sections
        }
        killed, dead = _kill_a_busy_worker(client, futures)
        results = {f.result().slide_id: f.result() for f in futures}
        assert sorted(results) == sorted(SECTIONS) and all(r.error is None for r in results.values())
        for slide_id, result in results.items():
            assert list(result.result.files) == [slide_id] and result.result.modes == {slide_id: "spot"}
            np.testing.assert_array_equal(
                np.load(result.result.files[slide_id])["embeddings"], serial[slide_id]
            )
        assert not results[killed].worker.endswith(f":{dead}")  # the dead worker's slide: computed elsewhere
        entries = {p: p.stat().st_mtime_ns for p in (tmp_path / "cluster").iterdir()}
        assert sorted(p.suffix for p in entries) == [".npz"] * 5  # no partial file left
        rerun = list(run_per_slide(client, embed, [request.for_slides([s]) for s in sections]))
    assert len(rerun) == 5 and all(r.error is None for r in rerun)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cluster").iterdir()} == entries  # nothing rewritten
    steps = []
    result = run_to_end(_recording(DaskCluster(workers=2).run(embed, request), steps))
    assert [(p.done, p.total, p.stage) for p in steps] == [(5, 5, "embed")]  # all cached: no task, no cluster
    assert result.files == Embeddings.merge([r.result for r in rerun]).files == request.finished().files


def _recording(flow, steps: list):
    """``flow``, appending what it yields to ``steps``."""
    while True:
        try:
            item = next(flow)
        except StopIteration as finished:
            return finished.value
        steps.append(item)
        yield item


def test_predictions_on_a_scheduler_equal_the_in_process_ones(
    sections, tmp_path, capsys, worker_threads, serial_cache
):
    """``spahgc predict --scheduler ADDRESS`` (each task embeds its slide through the cache and predicts it)
    and ``DaskCluster(ADDRESS).run(predict, …)`` with the embeddings given: every slide's h5ad, identical
    to the in-process flow's."""
    from test_cli_bad_input import run_cli

    embedded = _serial(sections, serial_cache)
    config = SpaHGCConfig.from_options({"epochs": 2, "members": 2})
    trained = run_to_end(train(TrainRequest(sections[:3], embedded, GeneChoice(panel=tuple(PANEL)), config,
                                            out=tmp_path / "model")))  # fmt: skip
    folder = trained.folder
    serial = run_to_end(predict(PredictRequest(folder, sections, embedded, out=tmp_path / "serial")))
    assert list(serial.files) == list(SECTIONS) and serial.model_folder == folder
    with cluster_client(workers=2) as client:
        args = ["predict", str(folder), str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "cluster"),
                "--cache", str(serial_cache), "--batch-size", "16", "--scheduler", client.scheduler.address]  # fmt: skip
        code, stderr = run_cli(args, capsys)
        given = PredictRequest(folder, sections, embedded, out=tmp_path / "api", device="cpu")
        api = run_to_end(DaskCluster(client.scheduler.address).run(predict, given))
    assert code == 0, stderr
    assert sorted(api.files) == sorted(SECTIONS) and api.model_folder == folder
    for slide_id, path in serial.files.items():
        expected = ad.read_h5ad(path)
        for got in (ad.read_h5ad(tmp_path / "cluster" / Path(path).name), ad.read_h5ad(api.files[slide_id])):
            np.testing.assert_array_equal(got.X, expected.X)
            assert list(got.obs_names) == list(expected.obs_names) and list(got.var_names) == list(
                expected.var_names
            )


def test_scheduler_errors_are_messages(sections, tmp_path, capsys, monkeypatch):
    from napari_spahgc.run import dask as cluster
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
    code, stderr = run_cli(["embed", str(tmp_path / "cohort.csv"), "--workers", "2", "--cache", str(tmp_path / "c"),
                            "--mode", "spot"], capsys)  # fmt: skip
    assert code == 2, stderr
    assert f"failed: slide 'C6': {damaged}: cannot decode the image data" in stderr
    assert "1 of 5 slide(s) failed" in stderr and "Traceback" not in stderr
    assert len(list((tmp_path / "c").glob("C[2-5]-*.npz"))) == 4 and not list((tmp_path / "c").glob("C6*"))

    request = _request(load_cohort(tmp_path / "cohort.csv"), tmp_path / "c")  # the four are cached now
    steps = []
    with pytest.raises(SlideFailures) as failed:
        run_to_end(_recording(DaskCluster(workers=1).run(embed, request), steps))
    assert [(p.done, p.total) for p in steps] == [(4, 5), (5, 5)]  # only C6 was sent
    assert steps[-1].values == {"slide_id": "C6", "error": failed.value.failures[0].error}
    assert [f.slide_id for f in failed.value.failures] == ["C6"] and failed.value.bad_input
    assert str(failed.value).startswith(f"1 of 5 slide(s) failed: slide 'C6': {damaged}: cannot decode")
    assert sorted(failed.value.partial.files) == ["C2", "C3", "C4", "C5"]  # the others' result


def test_the_embed_widget_runs_on_a_scheduler(
    make_napari_viewer, qtbot, sections, tmp_path, worker_threads, serial_cache
):
    """The Embed widget with a scheduler address: one task per slide on that cluster, progress by slides,
    and the session gets the same embeddings as the serial path."""
    from napari_spahgc._qt._common import session_for
    from test_widgets import _finish, _widgets

    serial = _serial(sections, serial_cache)
    viewer = make_napari_viewer(show=True)
    w = _widgets(viewer)
    session = session_for(viewer)
    w["Slide"].open(str(tmp_path / "cohort.csv"))
    _finish(qtbot, w["Slide"].panel)
    steps = []
    with cluster_client(workers=2) as client:
        w["Embed"].cache.set_text(str(tmp_path / "cluster"))
        w["Embed"].batch_size.setValue(16)
        w["Embed"].mode.setCurrentText("per-spot")
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
import napari_spahgc as ns

if __name__ == "__main__":
    slides = ns.load_cohort(sys.argv[1])[:2]
    request = ns.EmbedRequest(slides, device="cpu", batch_size=16, cache=sys.argv[2], mode="spot")
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        result = ns.run_to_end(ns.DaskCluster(cluster.scheduler_address).run(ns.embed, request))
    print(sorted(result.files), "torch" in sys.modules)
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
    assert result.stdout.strip().splitlines()[-1] == "['C2', 'C3'] False"
    assert len(list((tmp_path / "c").glob("C[23]-*.npz"))) == 2  # the workers embedded them


@dataclass(frozen=True)
class Marked:
    """What :func:`flaky_once` returns: each slide's marker file; merged as a cluster's results are."""

    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def merge(cls, parts) -> Marked:
        return cls({k: v for part in parts for k, v in part.files.items()})


@dataclass(frozen=True)
class MarkedRequest:
    """A request a cluster can split (slides, ``for_slides``, ``finished``), for :func:`flaky_once`."""

    slides: list
    marker: str

    def for_slides(self, slides) -> MarkedRequest:
        return replace(self, slides=list(slides))

    def finished(self) -> Marked:
        return Marked()


def flaky_once(request: MarkedRequest):
    """A flow (in a top-level module) whose first attempt per slide fails (a transient failure) and whose
    retry succeeds."""
    yield Progress(0, 1, "flaky")
    slide_id = request.slides[0].slide_id
    marker = Path(f"{request.marker}.{slide_id}")
    if not marker.exists():
        marker.touch()
        raise ConnectionError("the shared file system blinked")
    return Marked({slide_id: str(marker)})


def test_retries_absorb_a_transient_failure(sections, tmp_path):
    with cluster_client(workers=1) as client:
        (once,) = run_per_slide(
            client, flaky_once, [MarkedRequest(sections[:1], str(tmp_path / "a"))], retries=1
        )
        (never,) = run_per_slide(client, flaky_once, [MarkedRequest(sections[:1], str(tmp_path / "b"))])
        address = client.scheduler.address
        retried = run_to_end(
            DaskCluster(address, retries=1).run(flaky_once, MarkedRequest(sections[:2], str(tmp_path / "c")))
        )
        with pytest.raises(SlideFailures) as failed:
            run_to_end(DaskCluster(address).run(flaky_once, MarkedRequest(sections[:2], str(tmp_path / "d"))))
    assert (
        once.error is None and once.slide_id == "C2" and once.result == Marked({"C2": f"{tmp_path / 'a'}.C2"})
    )
    assert never.error == "ConnectionError: the shared file system blinked" and not never.bad_input
    assert retried == Marked({"C2": f"{tmp_path / 'c'}.C2", "C3": f"{tmp_path / 'c'}.C3"})
    assert sorted(f.slide_id for f in failed.value.failures) == ["C2", "C3"] and not failed.value.bad_input
    assert failed.value.partial == Marked() and "2 of 2 slide(s) failed" in str(failed.value)


def test_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    with cluster_client(workers=1) as client:
        assert client.run(lambda: os.environ["OMP_NUM_THREADS"]) == {
            w: str(len(os.sched_getaffinity(0))) for w in client.scheduler_info()["workers"]
        }
    assert dict(os.environ) == before
