"""Spot embeddings with an on-disk cache, as a generator that yields progress and can be cancelled.

Cache format: one ``<slide_id>-<key>.npz`` (the id's safe file-name form, :func:`~napari_spahgc._files.safe_name`) per slide and setting in the cache folder, holding
``embeddings`` (n_spots, dim) float32, ``spot_ids`` (str), ``centers_px`` (n, 2) and ``key`` (the JSON of
what the embeddings depend on: image content fingerprint, spot ids and centres, encoder name and
weights checksum, patch size and scale). A file is written once, atomically, after its slide is
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
from .patches import PatchSpec, patch_batches, prefetch
from .progress import Progress
from .slide import Slide


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


def cache_key(slide: Slide, encoder: Encoder, spec: PatchSpec) -> dict:
    """Everything the embeddings of ``slide`` depend on."""
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
    }


def cache_path(cache_dir: str | Path, slide: Slide, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return slide_file(cache_dir, slide.slide_id, f"-{digest}.npz")


def cached_embeddings(
    slide: Slide, encoder: Encoder | LazyEncoder, cache_dir: str | Path, spec: PatchSpec = PatchSpec()
) -> Path | None:
    """The cache file holding ``slide``'s embeddings for this encoder and patch setting, if one does."""
    key = cache_key(slide, encoder, spec)
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
) -> Iterator[EmbeddingProgress]:
    """Embed every slide (cached ones are read, not computed); yields after each batch.

    Stop iterating to cancel between batches: the slide in progress is not written. Up to
    ``prefetch_depth`` batches are read by a background thread while the encoder runs (0: no thread).
    """
    for index, slide in enumerate(slides):
        slide.require_pixel_size()
        key = cache_key(slide, encoder, spec)
        path = cache_path(cache_dir, slide, key)
        if _valid(path, key):
            yield EmbeddingProgress(
                slide.slide_id, slide.n_spots, slide.n_spots, index, len(slides), True, path
            )
            continue
        parts, done = [], 0
        batches = patch_batches(slide, spec, batch_size)
        for batch in prefetch(batches, prefetch_depth) if prefetch_depth else batches:
            parts.append(encoder(batch))
            done += len(batch)
            yield EmbeddingProgress(slide.slide_id, done, slide.n_spots, index, len(slides))
        embeddings = np.concatenate(parts).astype(np.float32)
        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            np.savez(
                handle,
                embeddings=embeddings,
                spot_ids=slide.spot_ids.to_numpy(dtype=str),
                centers_px=slide.centers_px,
                key=json.dumps(key, sort_keys=True),
            )
        yield EmbeddingProgress(slide.slide_id, done, slide.n_spots, index, len(slides), False, path)


def embed_flow(
    slides: Sequence[Slide],
    encoder_name: str,
    weights: str | None,
    device: str,
    batch_size: int,
    cache: str | Path,
) -> Generator[Progress, None, tuple[dict, dict[str, str]]]:
    """Embed ``slides`` through the cache, yielding the spots done of the whole cohort; return (encoder
    info, {slide id: cache file}). The encoder is built only when a slide is not cached."""
    total = sum(s.n_spots for s in slides)
    yield Progress(0, total, f"loading {encoder_name}")
    encoder = LazyEncoder(encoder_name, weights, device)
    finished, paths = 0, {}
    for p in embed_cohort(slides, encoder, cache, PatchSpec(), batch_size):
        yield Progress(finished + p.done, total, f"{p.slide_id}: {p.done}/{p.total} spots ({encoder.name})")
        if p.path is not None:
            finished += p.total
            paths[p.slide_id] = str(p.path)
    return encoder.info(), paths


def cohort_embeddings(
    slides: Sequence[Slide],
    encoder: Encoder,
    cache_dir: str | Path,
    spec: PatchSpec = PatchSpec(),
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Run :func:`embed_cohort` to the end; return ``{slide_id: (n_spots, dim) embeddings}``."""
    paths = {p.slide_id: p.path for p in embed_cohort(slides, encoder, cache_dir, spec, batch_size) if p.path}
    return {slide_id: load_embeddings(path)[0] for slide_id, path in paths.items()}


def embed_slide(
    slide: Slide,
    encoder: Encoder,
    cache_dir: str | Path,
    spec: PatchSpec = PatchSpec(),
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, spot_ids)`` of one slide: (n_spots, dim) float32 and its spot ids, through the cache."""
    *_, last = embed_cohort([slide], encoder, cache_dir, spec, batch_size)
    embeddings, spot_ids, _ = load_embeddings(last.path)
    return embeddings, spot_ids


def _valid(path: Path, key: dict) -> bool:
    if not path.is_file():
        return False
    try:
        return load_embeddings(path)[2] == key
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: recompute
        return False
