"""How the command line runs a cohort's slides: loaded from the cohort table; embedded here with a
progress bar by spots; or on a Dask cluster, one task per slide, showing slides done / total as they
complete, each failure with its slide id and reason, and an exit code that says whether one failed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ._files import cache_dir, prepare_output_folder

if TYPE_CHECKING:
    from .slide import Slide


def load_slides(cohort: Path, with_expression: bool = True) -> list[Slide]:
    """Every slide of a cohort table (``with_expression=False``: spots only, counts not read)."""
    from .io.cohort import read_cohort

    return [entry.load(with_expression) for entry in read_cohort(cohort)]


def embed_with_progress(
    slides, encoder_name, weights, device, batch_size, cache, load: bool = False, mode: str = "auto"
):
    """Embed with a progress bar; return the encoder's info (with its ``embedding_mode``) and either the
    arrays or the cache paths. ``mode``: auto | spot | dense (:func:`~napari_spahgc.embedding.resolve_mode`)."""
    from .embedding import embed_flow, load_embeddings

    folder = prepare_output_folder(cache, "cache folder") if cache else cache_dir("embeddings")
    flow = embed_flow(slides, encoder_name, weights, device, batch_size, folder, mode)
    total = sum(s.n_spots for s in slides)
    with typer.progressbar(length=total, label=f"embedding ({encoder_name})", file=sys.stderr) as bar:
        while True:
            try:
                bar.update(next(flow).done - bar.pos)
            except StopIteration as finished:
                encoder, paths = finished.value
                break
    if load:
        return encoder, {slide_id: load_embeddings(path)[0] for slide_id, path in paths.items()}
    return encoder, paths


def model_mode(mode: str, encoder_info: dict) -> str:
    """``predict``'s embedding mode: the one given, else (auto) the mode the model was trained with."""
    recorded = encoder_info.get("embedding_mode")
    return recorded if mode == "auto" and recorded in ("spot", "dense") else mode


def cluster_mode(mode: str) -> None:
    """Cluster tasks resolve the mode per slide (auto); an explicit one is refused, not ignored."""
    if mode != "auto":
        raise typer.BadParameter("--mode spot|dense is not supported with --scheduler/--workers (auto only)")


def embed_on_cluster(
    slides, encoder, weights, device, batch_size, cache, scheduler, workers, retries, mode="auto"
) -> None:
    """``spahgc embed`` with one task per slide: each writes its slide's cache file."""
    from .cluster import embed_task

    cluster_mode(mode)
    from .embedding import cached_embeddings

    settings, lazy = _settings(encoder, weights, device, batch_size, cache)
    cached = {s.slide_id: cached_embeddings(s, lazy, settings.cache) for s in slides}
    done = {slide_id: str(path) for slide_id, path in cached.items() if path is not None}
    run_on_cluster(embed_task, slides, (settings,), scheduler, workers, retries, done)


def predict_on_cluster(
    model_dir: Path,
    slides,
    out: Path,
    encoder,
    weights,
    device,
    batch_size,
    cache,
    scheduler,
    workers,
    retries,
    mode="auto",
) -> None:
    """``spahgc predict`` with one task per slide: each embeds its slide through the cache, predicts it
    with the model folder (loaded once per worker) and writes ``SLIDE_ID.h5ad``."""
    from .cluster import predict_task

    cluster_mode(mode)
    settings, _ = _settings(encoder, weights, device, batch_size, cache)
    args = (str(model_dir.resolve()), settings, str(out.resolve()))
    run_on_cluster(predict_task, slides, args, scheduler, workers, retries)


def _settings(encoder_name, weights, device, batch_size, cache):
    """The workers' settings, checked here first (encoder name, weights file, cache folder), and the
    (lazy, unbuilt) encoder they describe."""
    from .cluster import EmbedSettings
    from .encoders import LazyEncoder

    encoder = LazyEncoder(
        encoder_name, weights, device
    )  # an unknown name or a missing weights file fails now
    folder = prepare_output_folder(cache, "cache folder") if cache else cache_dir("embeddings")
    weights = str(Path(weights).resolve()) if weights else None
    return EmbedSettings(encoder_name, weights, device, batch_size, str(folder.resolve())), encoder


def run_on_cluster(
    task: Callable,
    slides: Sequence[Slide],
    args: tuple,
    scheduler: str | None,
    workers: int | None,
    retries: int,
    done: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run ``task(slide, *args)`` on the cluster for every slide not already ``done`` (no cluster is
    started when none is left); return {slide id: written file}. Exits with code 2 when every failure
    was bad input, 1 when another failure happened."""
    from .cluster import cluster_client, run_per_slide

    done, failed = dict(done or {}), []
    pending = [slide for slide in slides if slide.slide_id not in done]
    if pending:
        with cluster_client(scheduler, workers) as client:
            label = f"slides on {scheduler or f'{workers} local worker(s)'}"
            with typer.progressbar(length=len(slides), label=label, file=sys.stderr) as bar:
                bar.update(len(slides) - len(pending))
                for result in run_per_slide(client, task, pending, *args, retries=retries):
                    bar.update(1)
                    if result.error is None:
                        done[result.slide_id] = result.path
                    else:
                        failed.append(result)
                        typer.echo(f"\nfailed: slide {result.slide_id!r}: {result.error}", err=True)
    for slide in slides:  # in cohort order
        if slide.slide_id in done:
            typer.echo(f"{slide.slide_id}: {done[slide.slide_id]}")
    if failed:
        typer.echo(f"{len(failed)} of {len(slides)} slide(s) failed; the others are written", err=True)
        raise typer.Exit(2 if all(result.bad_input for result in failed) else 1)
    return done
