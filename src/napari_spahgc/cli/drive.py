"""How the command line runs a stage's flow: the runner the options choose (here, or one slide per task
on a Dask cluster), a progress bar per stage on stderr, and a cluster's failed slides reported with
their reasons and an exit code that says whether one failed."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import typer

from napari_spahgc.base.progress import Progress
from napari_spahgc.io.cohort import read_cohort
from napari_spahgc.io.slide import Slide
from napari_spahgc.run.runners import DaskCluster, Flow, InProcess, R, Runner

#: each stage's progress-bar label
LABELS = {
    "embed": "embedding",
    "train": "training",
    "predict": "predicting",
    "domains": "domains",
    "markers": "markers",
}


def load_slides(cohort: Path, with_expression: bool = True) -> list[Slide]:
    """Every slide of a cohort table (``with_expression=False``: spots only, counts not read)."""
    return [entry.load(with_expression) for entry in read_cohort(cohort)]


def runner_for(scheduler: str | None = None, workers: int | None = None, retries: int = 0) -> Runner:
    """A Dask cluster (``--scheduler`` or ``--workers``), else this process."""
    if scheduler or workers:
        return DaskCluster(scheduler, workers, retries)
    return InProcess()


def drive(runner: Runner, flow: Flow[R], request: Any) -> R:
    """Run ``flow(request)`` with ``runner``, showing a progress bar per stage (an evaluation's lines as
    text) and the flow's warnings on stderr (before the bar of the stage that warns); return its
    result. A cluster's failed slides are named as they fail; at the end the slides written are listed
    and the exit code is 2 when every failure was bad input, else 1."""
    from napari_spahgc.run.dask import SlideFailures

    work, bar, shown, stack = runner.run(flow, request), None, None, contextlib.ExitStack()
    try:
        while True:
            try:
                progress: Progress = next(work)
            except StopIteration as finished:
                return finished.value
            if progress.values.get("error"):
                typer.echo(
                    f"\nfailed: slide {progress.values['slide_id']!r}: {progress.values['error']}", err=True
                )
            new_bar = progress.stage != "evaluate" and (progress.stage, progress.total) != shown
            if new_bar:
                stack.close()  # the last stage's bar: a warning is printed before the next one
            if progress.warning:
                below_bar = "\n" if shown is not None and not new_bar else ""  # a bar's line is open
                typer.echo(f"{below_bar}warning: {progress.warning}", err=True)
            if progress.stage == "evaluate":
                typer.echo(progress.text, err=True)
                continue
            if new_bar:
                shown = progress.stage, progress.total
                label = LABELS.get(progress.stage, progress.text)
                bar = stack.enter_context(
                    typer.progressbar(length=progress.total, label=label, file=sys.stderr)
                )
            bar.update(progress.done - bar.pos)
    except SlideFailures as failed:
        written(failed.partial.files, request.slides)
        typer.echo(
            f"{len(failed.failures)} of {len(request.slides)} slide(s) failed; the others are written",
            err=True,
        )
        raise typer.Exit(2 if failed.bad_input else 1) from None
    finally:
        stack.close()


def written(files: dict[str, str], slides: list[Slide]) -> None:
    """``SLIDE_ID: FILE`` for every slide written, in cohort order."""
    for slide in slides:
        if slide.slide_id in files:
            typer.echo(f"{slide.slide_id}: {files[slide.slide_id]}")
