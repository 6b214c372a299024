"""The embedding stage's one flow: an :class:`EmbedRequest` in, :class:`Embeddings` out.

Every front end embeds through :func:`embed` — the CLI in-process, the Embed widget in a worker process,
a Dask cluster one slide per task (:mod:`napari_spahgc.run`) — and the training, prediction and
evaluation flows embed through it too when they are handed a request instead of embeddings
(:func:`embeddings_for`). Slides are read from the cache when their entry is there (the encoder is then
never built), else embedded densely (the default) or per spot (:func:`~napari_spahgc.embed.cache.resolve_mode`)
and written to it once complete, so a cancelled or crashed run leaves no partial entry. A run that would
embed more than :data:`LARGE_SPOT_RUN` spots per spot says so, with its estimated time, before it starts.
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

#: A run that would embed more spots than this per spot (not cached) is announced before it starts,
#: with its estimated time and the faster choice, dense (:func:`large_spot_run_warning`).
LARGE_SPOT_RUN = 100_000
#: Per-spot embedding throughput in patches/s, end to end (patch reading and encoding), by (encoder,
#: device type): measured on 2 CPU cores (docs/performance.md, Embedding); nothing is known for CUDA,
#: so no time is estimated there.
SPOT_PATCHES_PER_S = {("efficientnet-lite0", "cpu"): 25.0, ("uni", "cpu"): 1.0, ("uni2-h", "cpu"): 0.4}


@dataclass(frozen=True)
class EmbedRequest:
    """Embed ``slides``' spots with ``encoder`` (a registry name, or an encoder object) into the cache
    folder ``cache`` (None: the user cache folder), in ``mode`` dense | spot (None: dense; where a
    prediction embeds, the model's own mode)."""

    slides: Sequence[Slide]
    encoder: str | Encoder | LazyEncoder = DEFAULT_ENCODER
    weights: str | Path | None = None
    device: str = "auto"
    batch_size: int = 64
    cache: str | Path | None = None
    mode: str | None = None
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
        encoder, folder, mode = self.lazy_encoder(), self.folder(), resolve_mode(self.mode)
        files, modes = {}, {}
        for slide in self.slides:
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
    (``values``: the slide, and once it is written its ``path``, ``mode`` and whether it was ``cached``;
    the first record's ``warning``: a large per-spot run's, before any work); return its
    :class:`Embeddings` (cache files). Stop iterating to cancel: the slide in progress is not written."""
    slides, spec, mode = request.slides, request.patch, resolve_mode(request.mode)
    total = sum(s.n_spots for s in slides)
    encoder, folder = request.lazy_encoder(), request.folder()
    plan = []  # (slide, its cache key and file, whether that file is there): known without the encoder
    for slide in slides:
        slide.require_pixel_size()
        key = cache_key(slide, encoder, spec, mode)
        path = cache_path(folder, slide, key)
        plan.append((slide, key, path, is_valid(path, key)))
    to_embed = sum(slide.n_spots for slide, _, _, cached in plan if not cached) if mode == "spot" else 0
    warning = large_spot_run_warning(to_embed, encoder, request.device)
    yield Progress(0, total, f"loading {encoder.name}", "embed", warning=warning)
    result, before = Embeddings(encoder_info(encoder), patch=spec.to_dict()), 0
    for slide, key, path, cached in plan:
        n = slide.n_spots
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


def large_spot_run_warning(n_spots: int, encoder: Encoder | LazyEncoder, device: str) -> str:
    """What to say before embedding ``n_spots`` spots per spot: nothing up to :data:`LARGE_SPOT_RUN`;
    above it, the count, the estimated time where :data:`SPOT_PATCHES_PER_S` knows the encoder on this
    device type, and the faster choice (dense)."""
    if n_spots <= LARGE_SPOT_RUN:
        return ""
    rate = SPOT_PATCHES_PER_S.get((encoder.name, _device_type(encoder, device)))
    estimate = ""
    if rate is not None:
        took = _duration(n_spots / rate)
        estimate = f": about {took} at the {rate:g} patches/s {encoder.name} embeds on 2 CPU cores"
    return (
        f"embedding {n_spots:,} spots per spot{estimate}. Dense mode (--mode dense; Mode 'dense' in the "
        "Embed widget) encodes each tissue tile once and is much faster; a model reads only embeddings "
        "of the mode it was trained on."
    )


def _device_type(encoder: Encoder | LazyEncoder, device: str) -> str:
    """cpu | cuda: where the encoder runs (a built one's device, else the request's; torch decides auto)."""
    where = getattr(encoder, "device", device)
    if where == "auto":
        from napari_spahgc.embed.device import resolve_device

        where = resolve_device("auto")
    return str(getattr(where, "type", where)).partition(":")[0]


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


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
