"""The embedding stage's one flow: an :class:`EmbedRequest` in, :class:`Embeddings` out.

Every front end embeds through :func:`embed` — the CLI in-process, the Embed widget in a worker process,
a Dask cluster one slide per task (:mod:`napari_spahgc.run`) — and the training, prediction and
evaluation flows embed through it too when they are handed a request instead of embeddings
(:func:`embeddings_for`). Slides are read from the cache when their entry is there (the encoder is then
never built), else embedded per spot or densely (:func:`~napari_spahgc.embed.cache.resolve_mode`) and
written to it once complete, so a cancelled or crashed run leaves no partial entry.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_spahgc.base.files import cache_dir, prepare_output_folder
from napari_spahgc.base.progress import Progress
from napari_spahgc.embed.cache import (
    cache_key,
    cache_path,
    cached_file,
    is_valid,
    load_embeddings,
    resolve_mode,
    write_embeddings,
)
from napari_spahgc.embed.encoders import DEFAULT_ENCODER, Encoder, LazyEncoder
from napari_spahgc.embed.patches import PatchSpec, patch_batches, prefetch
from napari_spahgc.io.slide import Slide


@dataclass(frozen=True)
class EmbedRequest:
    """Embed ``slides``' spots with ``encoder`` (a registry name, or an encoder object) into the cache
    folder ``cache`` (None: the user cache folder), in ``mode`` auto | spot | dense."""

    slides: Sequence[Slide]
    encoder: str | Encoder | LazyEncoder = DEFAULT_ENCODER
    weights: str | Path | None = None
    device: str = "auto"
    batch_size: int = 64
    cache: str | Path | None = None
    mode: str = "auto"
    patch: PatchSpec = field(default_factory=PatchSpec)
    prefetch_depth: int = 2

    def for_slides(self, slides: Sequence[Slide]) -> EmbedRequest:
        """The same request for other slides (one task a slide on a cluster)."""
        return replace(self, slides=list(slides))

    def folder(self) -> Path:
        """The cache folder, made (and proven writable) now."""
        if self.cache is None:
            return cache_dir("embeddings")
        return prepare_output_folder(self.cache, "cache folder")

    def lazy_encoder(self) -> Encoder | LazyEncoder:
        """The encoder, unbuilt when named (an unknown name or a missing weights file fails here); one
        per name, weights file and device in a process, so a worker builds it once for all its tasks."""
        if not isinstance(self.encoder, str):
            return self.encoder
        weights = str(self.weights) if self.weights else None
        stamp = Path(weights).stat().st_mtime_ns if weights and Path(weights).is_file() else 0
        return _shared_encoder(self.encoder, weights, stamp, self.device)

    def finished(self) -> Embeddings:
        """The slides already in the cache, found without building the encoder."""
        encoder, folder = self.lazy_encoder(), self.folder()
        files, modes = {}, {}
        for slide in self.slides:
            mode = resolve_mode(slide, self.mode)
            path = cached_file(slide, encoder, folder, self.patch, mode)
            if path is not None:
                files[slide.slide_id], modes[slide.slide_id] = str(path), mode
        return Embeddings(encoder_info(encoder), files=files, modes=modes, patch=self.patch.to_dict())


@dataclass(frozen=True, eq=False)
class Embeddings(Mapping[str, np.ndarray]):
    """A cohort's embeddings by slide id, with the encoder that made them: cache files read on first use
    (they travel to worker processes as paths) or arrays held in memory; ``modes``: each slide's
    embedding mode (spot | dense); ``patch``: the patch size and pixel size they were cut at."""

    encoder: Mapping = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    patch: Mapping = field(default_factory=lambda: PatchSpec().to_dict())

    __eq__ = object.__eq__  # arrays have no truth value: two results are equal when they are one
    __hash__ = object.__hash__

    def __getitem__(self, slide_id: str) -> np.ndarray:
        if slide_id not in self.arrays:
            self.arrays[slide_id] = load_embeddings(self.files[slide_id])[0]
        return self.arrays[slide_id]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self.files, *self.arrays]))

    def __len__(self) -> int:
        return len(set(self.files) | set(self.arrays))

    @property
    def info(self) -> dict:
        """The encoder's name, dimension and weights checksum, with the ``embedding_mode``: the one mode
        of every slide, or {slide id: mode} when they differ (what a model folder records)."""
        distinct = set(self.modes.values())
        mode = distinct.pop() if len(distinct) == 1 else dict(self.modes)
        return {**self.encoder, "embedding_mode": mode} if self.modes else dict(self.encoder)

    def only(self, slide_ids: Sequence[str]) -> Embeddings:
        """These slides' embeddings alone (arrays already read stay read)."""
        keep = set(slide_ids)
        return Embeddings(
            self.encoder,
            {k: v for k, v in self.files.items() if k in keep},
            {k: v for k, v in self.arrays.items() if k in keep},
            {k: v for k, v in self.modes.items() if k in keep},
            self.patch,
        )

    @classmethod
    def merge(cls, parts: Sequence[Embeddings]) -> Embeddings:
        """One result of per-slide results (a cluster's tasks)."""
        merged = cls(next((p.encoder for p in parts if p.encoder), {}))
        if parts:
            merged = replace(merged, patch=parts[0].patch)
        for part in parts:
            merged.files.update(part.files)
            merged.arrays.update(part.arrays)
            merged.modes.update(part.modes)
        return merged


@functools.lru_cache(maxsize=2)
def _shared_encoder(name: str, weights: str | None, _weights_mtime_ns: int, device: str) -> LazyEncoder:
    return LazyEncoder(name, weights, device)


def encoder_info(encoder: Encoder | LazyEncoder) -> dict:
    """What a cache key and a model folder record of an encoder: name, dimension, weights checksum."""
    return {"name": encoder.name, "dim": encoder.dim, "weights_checksum": encoder.weights_checksum}


def embed(request: EmbedRequest) -> Generator[Progress, None, Embeddings]:
    """Embed every slide of ``request`` through the cache, yielding the spots done of the whole cohort
    (``values``: the slide, and once it is written its ``path``, ``mode`` and whether it was ``cached``);
    return its :class:`Embeddings` (cache files). Stop iterating to cancel: the slide in progress is
    not written."""
    slides, spec = request.slides, request.patch
    total = sum(s.n_spots for s in slides)
    name = request.encoder if isinstance(request.encoder, str) else request.encoder.name
    yield Progress(0, total, f"loading {name}", "embed")
    encoder, folder = request.lazy_encoder(), request.folder()
    result, before = Embeddings(encoder_info(encoder), patch=spec.to_dict()), 0
    for slide in slides:
        slide.require_pixel_size()
        mode = resolve_mode(slide, request.mode)
        key = cache_key(slide, encoder, spec, mode)
        path, n = cache_path(folder, slide, key), slide.n_spots
        cached = is_valid(path, key)
        if not cached:
            compute = _dense if mode == "dense" else _per_spot
            flow = compute(slide, encoder, spec, request.batch_size, request.prefetch_depth)
            embeddings = yield from _spots_done(
                flow, before, total, f"{slide.slide_id} ({encoder.name}, {mode})"
            )
            write_embeddings(path, slide, embeddings, key)
        result.files[slide.slide_id], result.modes[slide.slide_id] = str(path), mode
        before += n
        values = {"slide_id": slide.slide_id, "path": str(path), "mode": mode, "cached": cached}
        yield Progress(
            before, total, f"{slide.slide_id}: {n}/{n} spots ({encoder.name}, {mode})", "embed", values
        )
    return result


def embeddings_for(source: Embeddings | EmbedRequest) -> Generator[Progress, None, Embeddings]:
    """The embeddings a training, prediction or evaluation request names: given, or embedded now."""
    if isinstance(source, EmbedRequest):
        return (yield from embed(source))
    return source


def _spots_done(flow: Generator[int, None, np.ndarray], before: int, total: int, label: str):
    """Progress of one slide's computation (spots done, cohort-wide), returning its embeddings."""
    while True:
        try:
            done = next(flow)
        except StopIteration as finished:
            return finished.value
        yield Progress(before + done, total, f"{label}: {done} spots", "embed")


def _per_spot(slide, encoder, spec, batch_size, prefetch_depth) -> Generator[int, None, np.ndarray]:
    """One patch per spot: yields the spots done after each batch, returns the embeddings."""
    parts, done = [], 0
    batches = patch_batches(slide, spec, batch_size)
    for batch in prefetch(batches, prefetch_depth) if prefetch_depth else batches:
        parts.append(encoder(batch))
        done += len(batch)
        yield done
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, encoder.dim), np.float32)


def _dense(slide, encoder, spec, batch_size, prefetch_depth) -> Generator[int, None, np.ndarray]:
    """One pass per tile: yields the spots done (in proportion to the tiles done), returns the embeddings.
    A tile batch holds about as many pixels as ``batch_size`` patches."""
    from napari_spahgc.embed.dense import DenseGrid, dense_embeddings

    grid = DenseGrid.of(slide, encoder, spec)
    per_batch = max(1, round(batch_size * spec.size**2 / grid.input_px**2))
    flow = dense_embeddings(slide, encoder, spec, per_batch, min(prefetch_depth, 1))
    while True:
        try:
            tiles = next(flow)
        except StopIteration as finished:
            return finished.value
        yield min(slide.n_spots * tiles.done // max(tiles.total, 1), slide.n_spots - 1)
