"""Worker processes (run/worker.py and the WorkerProcess runner): progress streamed back, results,
errors, crashes, cancel, no orphans, and a stage's real flow run there as in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import child_tasks
import napari_spahgc as ns
from conftest import write_ome_pyramid
from napari_spahgc.base.errors import InputError
from napari_spahgc.base.progress import Progress
from napari_spahgc.embed.encoders import LazyEncoder
from napari_spahgc.io.images import open_image
from napari_spahgc.run.worker import WorkerProcessError, importable_name, run_in_child


def _drain(generator):
    items = []
    while True:
        try:
            items.append(next(generator))
        except StopIteration as stop:
            return items, stop.value


def test_progress_streams_back_and_the_result_is_returned():
    items, result = _drain(run_in_child(child_tasks.count, 4))
    assert items == [Progress(i, 4, f"step {i}") for i in range(1, 5)]
    assert result["steps"] == 4 and result["pid"] != os.getpid()  # it ran elsewhere


def test_input_errors_keep_their_type_and_message_other_errors_name_their_type():
    with pytest.raises(InputError, match=r"^/data/table.csv: cannot read this table$"):
        _drain(run_in_child(child_tasks.bad_input, "/data/table.csv"))
    with pytest.raises(WorkerProcessError, match="ZeroDivisionError: division by zero in a task"):
        _drain(run_in_child(child_tasks.broken))


def test_a_crash_of_the_worker_process_is_an_exception_here():
    before = _socket_folders()
    with pytest.raises(WorkerProcessError, match="killed by SIGSEGV"):
        _drain(run_in_child(child_tasks.crash))
    assert _socket_folders() <= before  # the killed worker's socket folder is cleaned up too


def _socket_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("pymp-*"))


def test_cancel_stops_between_steps_and_the_task_cleans_up(tmp_path):
    marker, cancel = tmp_path / "marker", threading.Event()
    generator = run_in_child(child_tasks.count, 1000, 0.02, str(marker), cancel=cancel)
    seen = []
    for item in generator:
        seen.append(item.done)
        if item.done == 3:
            cancel.set()
    assert seen[:3] == [1, 2, 3] and len(seen) < 100  # stopped soon after
    assert seen[-1] == seen[-2]  # the last step once more, so a napari worker sees its abort flag
    assert marker.read_text() == "finished"  # the task's finally ran in the worker process


def test_abandoning_the_generator_stops_the_worker_process(tmp_path):
    marker = tmp_path / "marker"
    generator = run_in_child(child_tasks.count, 1000, 0.02, str(marker))
    next(generator)
    generator.close()
    assert marker.read_text() == "finished"


def test_the_worker_process_exits_when_its_parent_dies(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path[:0] = {[str(Path(__file__).parent)]!r}
        import child_tasks
        from napari_spahgc.run.worker import run_in_child
        for _ in run_in_child(child_tasks.write_pid_then_wait, {str(pid_file)!r}):
            pass
    """)])  # fmt: skip
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the worker process outlived its parent"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")  # a zombie has exited


def test_a_slide_image_reaches_the_worker_as_its_file_not_its_open_handles(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (700, 900, 3), dtype=np.uint8)
    image = open_image(write_ome_pyramid(tmp_path / "slide.ome.tif", pixels, 0.5))
    _, region = _drain(run_in_child(child_tasks.read_region, image, 100, 200, 64))
    np.testing.assert_array_equal(region, pixels[100:164, 200:264])


class _Holder:
    @staticmethod
    def method():
        yield Progress(0, 1)


def test_only_a_module_level_function_can_run_in_a_worker_process():
    def local():
        yield Progress(0, 1)

    for flow in (local, lambda: (yield Progress(0, 1)), _Holder.method):
        with pytest.raises(ValueError, match="is not a module-level function a worker process can import"):
            next(run_in_child(flow))  # refused here, before a process starts
    assert importable_name(child_tasks.count) == "child_tasks:count"
    assert importable_name(ns.embed) == "napari_spahgc.embed.flow:embed"


def test_the_worker_process_runner_streams_returns_and_cancels(tmp_path):
    items, result = _drain(ns.WorkerProcess().run(child_tasks.count, 3))
    assert items == [Progress(i, 3, f"step {i}") for i in range(1, 4)] and result["pid"] != os.getpid()
    cancel = threading.Event()
    seen = []
    for item in ns.WorkerProcess(cancel).run(child_tasks.ticks, 1000):
        seen.append(item.done)
        cancel.set()
    assert seen[0] == 1 and len(seen) < 100 and seen[-1] == seen[-2]  # stopped soon after, last one again


def test_the_embed_flow_in_a_worker_process_is_the_one_in_this_process(her2st_cohort, tmp_path):
    """The Embed widget's path: ``WorkerProcess().run(embed, request)`` on a real section writes the cache
    entry that the in-process flow then reads (same key, nothing recomputed) and returns the same result."""
    slide = ns.read_cohort(her2st_cohort)[0].load(with_expression=False)
    slide = ns.Slide(slide.slide_id, slide.spot_ids[:12], slide.centers_px[:12], image=slide.image,
                     pixel_size_um=slide.pixel_size_um, sources=slide.sources)  # fmt: skip
    request = ns.EmbedRequest([slide], device="cpu", batch_size=8, cache=tmp_path / "cache", mode="spot")
    items, there = _drain(ns.WorkerProcess().run(ns.embed, request))
    assert items[-1].values == {"slide_id": "C2", "path": there.files["C2"], "mode": "spot", "cached": False}
    assert [p.stage for p in items] == ["embed"] * len(items) and items[-1].done == items[-1].total == 12
    items, here = _drain(ns.InProcess().run(ns.embed, request))
    assert items[-1].values["cached"] and len(items) == 2  # loading, then C2 read from the worker's entry
    assert here.files == there.files and here.modes == there.modes == {"C2": "spot"}
    assert here.info == there.info == {**LazyEncoder("efficientnet-lite0").info(), "embedding_mode": "spot"}
    assert there["C2"].shape == (12, 1280) and np.isfinite(there["C2"]).all()
    fresh = ns.run_to_end(ns.embed(replace(request, cache=tmp_path / "fresh")))  # computed here
    np.testing.assert_allclose(fresh["C2"], there["C2"], rtol=1e-4, atol=1e-5)
