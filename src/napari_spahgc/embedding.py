"""Spot embeddings with an on-disk cache, as a generator that yields progress and can be cancelled.

Cache format: one ``<slide_id>-<key>.npz`` (the id's safe file-name form, :func:`~napari_spahgc._files.safe_name`) per slide and setting in the cache folder, holding
``embeddings`` (n_spots, dim) float32 (float16 dense), ``spot_ids`` (str), ``centers_px`` (n, 2) and ``key`` (the JSON of
what the embeddings depend on: image content fingerprint, spot ids and centres, encoder name and
weights checksum, patch size and scale, and the embedding ``mode``: ``spot`` or ``dense`` with its grid).
A file is written once, atomically, after its slide is
complete, so a cancelled or crashed run never leaves a partial entry and a rerun skips finished slides.
Load one with ``numpy.load(path)`` or :func:`load_embeddings`.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._files import atomic_path, file_fingerprint, slide_file
from .encoders import Encoder, LazyEncoder
from .errors import InputError
from .patches import PatchSpec, patch_batches, prefetch
from .progress import Progress
from .slide import Slide, spot_pitch

#: ``spot``: one 224 px patch per spot through the encoder; ``dense``: one encoder pass per tissue tile,
#: each spot's field averaged from the feature map (:mod:`~napari_spahgc.dense`); ``auto``: dense when
#: the spot pitch is below :data:`DENSE_BELOW_PITCH_UM` (Visium and Visium HD), else per spot.
MODES = ("auto", "spot", "dense")
#: the patch field (224 px at 0.5 µm/px): below it neighbouring spots' fields overlap, so per-spot
#: patches would encode the same tissue more than once
DENSE_BELOW_PITCH_UM = PatchSpec().field_um


@dataclass
class EmbeddingProgress:
    """After each batch: spots done of total for ``slide_id``; ``cached`` when read from the cache."""

    slide_id: str
    done: int
    total: int
    slide_index: int
    n_slides: int
    cached: bool = False
    path: Path | None = None
    mode: str = "spot"


def resolve_mode(slide: Slide, mode: str = "auto") -> str:
    """``spot`` or ``dense`` for ``slide``: ``auto`` is dense when the median nearest-spot distance is
    below :data:`DENSE_BELOW_PITCH_UM` µm (Visium's 100 µm, Visium HD's 2–16 µm bins), per spot
    otherwise (legacy ST's 200 µm)."""
    if mode not in MODES:
        raise InputError(f"unknown embedding mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if slide.n_spots < 2:
        return "spot"
    pitch_um = spot_pitch(slide.centers_px, max_queries=2000) * slide.require_pixel_size()
    return "dense" if pitch_um < DENSE_BELOW_PITCH_UM else "spot"


def cache_key(slide: Slide, encoder: Encoder, spec: PatchSpec, mode: str = "auto") -> dict:
    """Everything the embeddings of ``slide`` depend on, the resolved embedding mode included."""
    image_file = slide.image.path if slide.image is not None else None
    spots = hashlib.sha256()
    spots.update("\n".join(slide.spot_ids).encode())
    spots.update(np.ascontiguousarray(slide.centers_px, dtype=np.float64).tobytes())
    return {
        "image": file_fingerprint(image_file)
        if image_file is not None and Path(image_file).is_file()
        else None,
        "pixel_size_um": slide.pixel_size_um,
        "spots": spots.hexdigest(),
        "encoder": encoder.name,
        "weights": encoder.weights_checksum,
        "patch": spec.to_dict(),
        **_mode_key(slide, encoder, spec, resolve_mode(slide, mode)),
    }


def _mode_key(slide: Slide, encoder, spec: PatchSpec, mode: str) -> dict:
    if mode == "spot":
        return {"mode": "spot"}
    from .dense import DenseGrid
    from .tissue import TISSUE_METHOD

    grid = DenseGrid.of(slide, encoder, spec).to_dict()
    return {"mode": "dense", "dense": {**grid, "tissue": TISSUE_METHOD}}


def cache_path(cache_dir: str | Path, slide: Slide, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return slide_file(cache_dir, slide.slide_id, f"-{digest}.npz")


def cached_embeddings(
    slide: Slide,
    encoder: Encoder | LazyEncoder,
    cache_dir: str | Path,
    spec: PatchSpec = PatchSpec(),
    mode: str = "auto",
) -> Path | None:
    """The cache file holding ``slide``'s embeddings for this encoder, patch setting and mode, if one does."""
    key = cache_key(slide, encoder, spec, mode)
    path = cache_path(cache_dir, slide, key)
    return path if _valid(path, key) else None


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(embeddings, spot_ids, key) of one cache file."""
    with np.load(path, allow_pickle=False) as data:
        return data["embeddings"], data["spot_ids"], json.loads(str(data["key"]))


def embed_cohort(
    slides: Sequence[Slide],
    encoder: Encoder | LazyEncoder,
    cache_dir: str | Path,
    spec: PatchSpec = PatchSpec(),
    batch_size: int = 64,
    prefetch_depth: int = 2,
    mode: str = "auto",
) -> Iterator[EmbeddingProgress]:
    """Embed every slide (cached ones are read, not computed); yields after each batch (of patches, or
    of tiles in dense mode, :func:`resolve_mode`).

    Stop iterating to cancel between batches: the slide in progress is not written. Up to
    ``prefetch_depth`` batches are read by a background thread while the encoder runs (0: no thread).
    """
    for index, slide in enumerate(slides):
        slide.require_pixel_size()
        resolved = resolve_mode(slide, mode)
        key = cache_key(slide, encoder, spec, resolved)
        path = cache_path(cache_dir, slide, key)
        n, where = slide.n_spots, (index, len(slides))
        if _valid(path, key):
            yield EmbeddingProgress(slide.slide_id, n, n, *where, True, path, resolved)
            continue
        if resolved == "dense":
            flow = _dense_flow(slide, encoder, spec, batch_size, prefetch_depth)
        else:
            flow = _spot_flow(slide, encoder, spec, batch_size, prefetch_depth)
        while True:
            try:
                done = next(flow)
            except StopIteration as finished:
                embeddings = finished.value
                break
            yield EmbeddingProgress(slide.slide_id, done, n, *where, mode=resolved)
        _write(path, slide, embeddings, key)
        yield EmbeddingProgress(slide.slide_id, n, n, *where, False, path, resolved)


def _spot_flow(slide, encoder, spec, batch_size, prefetch_depth) -> Generator[int, None, np.ndarray]:
    """One patch per spot: yields the spots done after each batch, returns the embeddings."""
    parts, done = [], 0
    batches = patch_batches(slide, spec, batch_size)
    for batch in prefetch(batches, prefetch_depth) if prefetch_depth else batches:
        parts.append(encoder(batch))
        done += len(batch)
        yield done
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, encoder.dim), np.float32)


def _dense_flow(slide, encoder, spec, batch_size, prefetch_depth) -> Generator[int, None, np.ndarray]:
    """One pass per tile: yields the spots done (in proportion to the tiles done), returns the embeddings.
    A tile batch holds about as many pixels as ``batch_size`` patches."""
    from .dense import DenseGrid, dense_embeddings

    grid = DenseGrid.of(slide, encoder, spec)
    per_batch = max(1, round(batch_size * spec.size**2 / grid.input_px**2))
    flow = dense_embeddings(slide, encoder, spec, per_batch, min(prefetch_depth, 1))
    while True:
        try:
            progress = next(flow)
        except StopIteration as finished:
            return finished.value
        yield min(slide.n_spots * progress.tiles_done // max(progress.tiles_total, 1), slide.n_spots - 1)


def _write(path: Path, slide: Slide, embeddings: np.ndarray, key: dict) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(
            handle,
            embeddings=embeddings,  # as computed: float32 per spot, float16 dense (no copy: HD 1.8 GB)
            spot_ids=slide.spot_ids.to_numpy(dtype=str),
            centers_px=slide.centers_px,
            key=json.dumps(key, sort_keys=True),
        )


def embed_flow(
    slides: Sequence[Slide],
    encoder_name: str,
    weights: str | None,
    device: str,
    batch_size: int,
    cache: str | Path,
    mode: str = "auto",
) -> Generator[Progress, None, tuple[dict, dict[str, str]]]:
    """Embed ``slides`` through the cache, yielding the spots done of the whole cohort; return (encoder
    info with its ``embedding_mode``, {slide id: cache file}). The encoder is built only when a slide is
    not cached. ``embedding_mode`` is the resolved mode, or {slide id: mode} when the slides differ."""
    total = sum(s.n_spots for s in slides)
    yield Progress(0, total, f"loading {encoder_name}")
    encoder = LazyEncoder(encoder_name, weights, device)
    finished, paths, modes = 0, {}, {}
    for p in embed_cohort(slides, encoder, cache, PatchSpec(), batch_size, mode=mode):
        label = f"{p.slide_id}: {p.done}/{p.total} spots ({encoder.name}, {p.mode})"
        yield Progress(finished + p.done, total, label)
        if p.path is not None:
            finished += p.total
            paths[p.slide_id], modes[p.slide_id] = str(p.path), p.mode
    return {**encoder.info(), "embedding_mode": embedding_mode(modes)}, paths


def embedding_mode(modes: dict[str, str]) -> str | dict[str, str]:
    """The one mode of every slide, else {slide id: mode}."""
    distinct = set(modes.values())
    return distinct.pop() if len(distinct) == 1 else dict(modes)


def cohort_embeddings(
    slides: Sequence[Slide],
    encoder: Encoder,
    cache_dir: str | Path,
    spec: PatchSpec = PatchSpec(),
    batch_size: int = 64,
    mode: str = "auto",
) -> dict[str, np.ndarray]:
    """Run :func:`embed_cohort` to the end; return ``{slide_id: (n_spots, dim) embeddings}``."""
    stream = embed_cohort(slides, encoder, cache_dir, spec, batch_size, mode=mode)
    paths = {p.slide_id: p.path for p in stream if p.path}
    return {slide_id: load_embeddings(path)[0] for slide_id, path in paths.items()}


def embed_slide(
    slide: Slide,
    encoder: Encoder,
    cache_dir: str | Path,
    spec: PatchSpec = PatchSpec(),
    batch_size: int = 64,
    mode: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, spot_ids)`` of one slide: (n_spots, dim) float32 (float16 dense) and its spot ids, through the cache."""
    *_, last = embed_cohort([slide], encoder, cache_dir, spec, batch_size, mode=mode)
    embeddings, spot_ids, _ = load_embeddings(last.path)
    return embeddings, spot_ids


def _valid(path: Path, key: dict) -> bool:
    if not path.is_file():
        return False
    try:
        return load_embeddings(path)[2] == key
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: recompute
        return False
