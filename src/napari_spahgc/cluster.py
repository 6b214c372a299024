"""Cohorts on a Dask cluster (``dask.distributed``): one task per slide, for embedding and prediction.

Each task writes its result itself, through the same atomic cache and output writes as the serial path,
so a lost worker or a killed run loses only unfinished slides and a rerun recomputes nothing finished.
Tasks get paths and names (the slide pickles as its image path), never tensors; each worker process
builds the encoder and loads a model folder once and keeps them for its later tasks. A slide that fails
is reported with its id and reason while the others complete.

Works with any scheduler: a :class:`~distributed.LocalCluster` of processes on one machine, dask-jobqueue
on Slurm/PBS, dask-cuda's ``LocalCUDACluster`` (one worker per GPU) — see docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, describe
from .progress import Progress
from .slide import Slide

#: how long a client waits for a scheduler named by address
CONNECT_TIMEOUT_S = 30


@dataclass(frozen=True)
class EmbedSettings:
    """What a worker needs to embed a slide: the encoder by name and weights path, and the cache folder."""

    encoder: str
    weights: str | None
    device: str
    batch_size: int
    cache: str


@dataclass(frozen=True)
class SlideResult:
    """One slide's outcome: the file the task wrote, or why it failed (``bad_input``: an InputError,
    not worth a retry); ``cached`` when the embeddings were already in the cache; ``worker``: the
    host and process id that ran the task."""

    slide_id: str
    path: str | None = None
    error: str | None = None
    bad_input: bool = False
    cached: bool = False
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
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                env={"OMP_NUM_THREADS": str(threads)},
            ) as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_per_slide(
    client, task: Callable[..., SlideResult], slides: Sequence[Slide], *args, retries: int = 0
) -> Iterator[SlideResult]:
    """Submit ``task(slide, *args)`` for every slide; yield each outcome as it completes (a task that
    raised, after its retries, is a failed :class:`SlideResult`)."""
    from distributed import as_completed

    futures = {
        client.submit(task, slide, *args, retries=retries, pure=False): slide.slide_id for slide in slides
    }
    for future in as_completed(futures):
        yield _outcome(future, futures[future])


def _outcome(future, slide_id: str) -> SlideResult:
    """A finished task's result; a task that raised (after its retries) is a failed result."""
    try:
        return future.result()
    except Exception as err:  # the task's own error, or a worker lost too often
        return SlideResult(slide_id, error=describe(err))


def embed_task(slide: Slide, settings: EmbedSettings) -> SlideResult:
    """Embed one slide into the cache (read from it when already there), on a worker."""
    from .embedding import embed_cohort

    encoder = _encoder(settings.encoder, settings.weights, settings.device)
    try:
        with _local_reads():
            *_, last = embed_cohort([slide], encoder, settings.cache, batch_size=settings.batch_size)
    except InputError as err:
        return SlideResult(slide.slide_id, error=str(err), bad_input=True)
    return SlideResult(slide.slide_id, str(last.path), cached=last.cached)


def predict_task(slide: Slide, model_dir: str, settings: EmbedSettings, out: str) -> SlideResult:
    """Embed one slide through the cache, predict it with the model folder, write ``SLIDE_ID.h5ad``."""
    from .embedding import embed_slide
    from .pipeline import write_predictions

    try:
        with _local_reads():
            model = _model(model_dir, Path(model_dir, "config.json").stat().st_mtime_ns)
            encoder = _encoder(settings.encoder, settings.weights, settings.device)
            model.check_compatible(encoder.name, encoder.weights_checksum)
            embeddings, _ = embed_slide(slide, encoder, settings.cache, batch_size=settings.batch_size)
            (path,) = write_predictions(model, [slide], {slide.slide_id: embeddings}, out)
    except InputError as err:
        return SlideResult(slide.slide_id, error=str(err), bad_input=True)
    return SlideResult(slide.slide_id, str(path))


def _local_reads():
    """Inside a task, the slide's lazy image arrays are read right here, not sent back to the cluster
    (a worker's default dask scheduler is its cluster)."""
    import dask

    return dask.config.set(scheduler="synchronous")


@functools.cache
def _encoder(name: str, weights: str | None, device: str):
    """This worker's encoder (built on its first batch, then kept for every later task)."""
    from .encoders import LazyEncoder

    return LazyEncoder(name, weights, device)


@functools.cache
def _model(folder: str, _config_mtime_ns: int):
    """This worker's copy of a model folder (loaded again only when the folder is rewritten)."""
    from .predictor import SpaHGCPredictor

    return SpaHGCPredictor.load(folder)


def embed_flow_on_cluster(
    slides: Sequence[Slide], settings: EmbedSettings, scheduler: str, cancel=None
) -> Generator[Progress, None, tuple[dict, dict[str, str]]]:
    """The Embed widget's job on a cluster: one task per slide, yielding slides done / total; return
    (encoder info, {slide id: cache file}). ``cancel`` (an Event) cancels the unfinished tasks; a
    failed slide ends the job with its reason once the others are done."""
    from distributed import as_completed

    from .encoders import LazyEncoder

    info = LazyEncoder(settings.encoder, settings.weights, settings.device).info()  # checked here first
    yield Progress(0, len(slides), f"connecting to {scheduler}")
    paths, failures = {}, []
    with cluster_client(scheduler) as client:
        futures = {client.submit(embed_task, s, settings, pure=False): s.slide_id for s in slides}
        for done, future in enumerate(as_completed(futures), start=1):
            result = _outcome(future, futures[future])
            if result.error is None:
                paths[result.slide_id] = result.path
            else:
                failures.append(f"slide {result.slide_id!r}: {result.error}")
            yield Progress(done, len(slides), f"{done}/{len(slides)} slides on {scheduler}")
            if cancel is not None and cancel.is_set():
                client.cancel(list(futures))
                return info, paths
    if failures:
        raise InputError(f"{len(failures)} of {len(slides)} slide(s) failed: " + "; ".join(failures))
    return info, paths
