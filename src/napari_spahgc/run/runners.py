"""Runners: where a stage's flow runs — here, in a worker process, or one slide per task on a Dask
cluster — chosen by an object, not by separate code paths.

A flow is a module-level generator function ``flow(request)`` that yields
:class:`~napari_spahgc.base.progress.Progress` and returns its result (:func:`napari_spahgc.embed.flow.embed`,
:func:`~napari_spahgc.train.flow.train`, :func:`~napari_spahgc.predict.flow.predict`,
:func:`~napari_spahgc.evaluate.benchmark.evaluate`). Every runner's :meth:`run` is a generator of the
same kind, so a front end drives any runner the same way: the CLI with a progress bar, a widget in
napari's thread worker with Cancel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from napari_spahgc.base.progress import Progress

R = TypeVar("R")
Flow = Callable[[Any], Generator[Progress, None, R]]


class Runner(Protocol):
    def run(self, flow: Flow[R], request: Any) -> Generator[Progress, None, R]: ...


class PerSlideRequest(Protocol):
    """A request a cluster can split: one task per slide, the slides already done skipped."""

    slides: Sequence

    def for_slides(self, slides: Sequence) -> PerSlideRequest: ...

    def finished(self) -> Any: ...


@dataclass(frozen=True)
class InProcess:
    """The flow in this process (the CLI, the Python API, the demo)."""

    def run(self, flow: Flow[R], request: Any) -> Generator[Progress, None, R]:
        return (yield from flow(request))


@dataclass(frozen=True)
class WorkerProcess:
    """The flow in a new Python process (the napari widgets: torch never enters napari's process);
    setting ``cancel`` stops it between two progress items (:func:`~napari_spahgc.run.worker.run_in_child`)."""

    cancel: threading.Event | None = None

    def run(self, flow: Flow[R], request: Any) -> Generator[Progress, None, R]:
        from napari_spahgc.run.worker import run_in_child

        return (yield from run_in_child(flow, request, cancel=self.cancel))


@dataclass(frozen=True)
class DaskCluster:
    """One task per slide on the Dask scheduler at ``scheduler``, or on a local cluster of ``workers``
    processes; yields slides done / total as they complete. Slides the request finds already done
    (cached embeddings) are not sent, and when none is left no cluster is started. A failed slide is
    retried ``retries`` times, then reported with its reason while the others complete:
    :class:`~napari_spahgc.run.dask.SlideFailures` at the end, carrying the merged result of the rest.
    ``cancel`` cancels the unfinished tasks."""

    scheduler: str | None = None
    workers: int | None = None
    retries: int = 0
    cancel: threading.Event | None = None

    @property
    def where(self) -> str:
        return self.scheduler or f"{self.workers} local worker(s)"

    def run(self, flow: Flow[R], request: PerSlideRequest) -> Generator[Progress, None, R]:
        from napari_spahgc.run.dask import SlideFailures, cluster_client, run_per_slide

        finished = request.finished()
        done_ids = set(getattr(finished, "files", {}))
        pending = [s for s in request.slides if s.slide_id not in done_ids]
        total, results, failures = len(request.slides), [finished], []
        # the stage's package (napari_spahgc.embed.flow: embed); none for a flow of a top-level module
        stage = {"stage": (getattr(flow, "__module__", None) or "").rpartition(".")[0].rpartition(".")[2]}
        yield Progress(total - len(pending), total, f"slides on {self.where}", **stage)
        if pending:
            with cluster_client(self.scheduler, self.workers) as client:
                requests = [request.for_slides([slide]) for slide in pending]
                for outcome in run_per_slide(client, flow, requests, self.retries):
                    if outcome.error is None:
                        results.append(outcome.result)
                    else:
                        failures.append(outcome)
                    done = total - len(pending) + len(results) - 1 + len(failures)
                    text = f"{done}/{total} slides on {self.where}"
                    values = {"slide_id": outcome.slide_id, "error": outcome.error}
                    yield Progress(done, total, text, values=values, **stage)
                    if self.cancel is not None and self.cancel.is_set():
                        client.cancel(list(client.futures))
                        break
        merged = type(finished).merge(results)
        if failures:
            raise SlideFailures(failures, total, merged)
        return merged
