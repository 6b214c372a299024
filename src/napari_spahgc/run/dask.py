"""Cohorts on a Dask cluster (``dask.distributed``): one task per slide, for embedding and prediction.

A task runs a stage's flow on a one-slide request (:class:`~napari_spahgc.run.runners.DaskCluster`
splits the request): it writes its result itself, through the same atomic cache and output writes as
the in-process path, so a lost worker or a killed run loses only unfinished slides and a rerun
recomputes nothing finished. Tasks get paths and names (the slide pickles as its image path), never
tensors; the flows keep a worker's encoder and model folder for its later tasks. A slide that fails is
reported with its id and reason while the others complete.

Works with any scheduler: a :class:`~distributed.LocalCluster` of processes on one machine, dask-jobqueue
on Slurm/PBS, dask-cuda's ``LocalCUDACluster`` (one worker per GPU) — see docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from napari_spahgc.base.errors import InputError, describe
from napari_spahgc.base.progress import run_to_end

#: how long a client waits for a scheduler named by address
CONNECT_TIMEOUT_S = 30


@dataclass(frozen=True)
class SlideResult:
    """One slide's outcome: the flow's result, or why it failed (``bad_input``: an InputError, not
    worth a retry); ``worker``: the host and process id that ran the task."""

    slide_id: str
    result: Any = None
    error: str | None = None
    bad_input: bool = False
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


@contextlib.contextmanager
def cluster_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A ``distributed.Client`` of the scheduler at ``scheduler``, or of a new LocalCluster of
    ``workers`` single-threaded processes (torch gets the machine's cores shared among them)."""
    from distributed import Client, LocalCluster

    if (scheduler is None) == (workers is None):
        raise InputError("give exactly one of --scheduler ADDRESS or --workers N")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as err:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({describe(err)})") from None
        with client:
            yield client
        return
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    threads = max(1, len(os.sched_getaffinity(0)) // workers)  # (not _device: no torch in a viewer)
    saved = dict(os.environ)  # distributed sets its workers' variables (OMP_NUM_THREADS=1, …) here too
    try:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"OMP_NUM_THREADS": str(threads)},
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)


class SlideFailures(Exception):
    """Some slides failed (each named with its reason) while the others completed; ``partial``: the
    merged result of those that did; ``bad_input``: every failure was bad input."""

    def __init__(self, failures: Sequence[SlideResult], total: int, partial: Any) -> None:
        self.failures, self.partial = list(failures), partial
        self.bad_input = all(f.bad_input for f in self.failures)
        reasons = "; ".join(f"slide {f.slide_id!r}: {f.error}" for f in self.failures)
        super().__init__(f"{len(self.failures)} of {total} slide(s) failed: {reasons}")


def run_per_slide(client, flow: Callable, requests: Sequence, retries: int = 0) -> Iterator[SlideResult]:
    """Submit ``flow(request)`` for every (one-slide) request; yield each outcome as it completes (a
    task that raised, after its retries, is a failed :class:`SlideResult`)."""
    from distributed import as_completed

    futures = {
        client.submit(slide_task, flow, request, retries=retries, pure=False): request.slides[0].slide_id
        for request in requests
    }
    for future in as_completed(futures):
        yield _outcome(future, futures[future])


def _outcome(future, slide_id: str) -> SlideResult:
    """A finished task's result; a task that raised (after its retries) is a failed result."""
    try:
        return future.result()
    except Exception as err:  # the task's own error, or a worker lost too often
        return SlideResult(slide_id, error=describe(err))


def slide_task(flow: Callable, request) -> SlideResult:
    """Run a flow on a one-slide request to its end, on a worker (bad input is a result, not a retry)."""
    slide_id = request.slides[0].slide_id
    try:
        with _local_reads():
            return SlideResult(slide_id, run_to_end(flow(request)))
    except InputError as err:
        return SlideResult(slide_id, error=str(err), bad_input=True)


def _local_reads():
    """Inside a task, the slide's lazy image arrays are read right here, not sent back to the cluster
    (a worker's default dask scheduler is its cluster)."""
    import dask

    return dask.config.set(scheduler="synchronous")
