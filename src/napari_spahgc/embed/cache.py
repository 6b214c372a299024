"""The per-slide embedding cache: what a slide's embeddings depend on (the key), where they are, reading
and writing them.

Cache format: one ``<slide_id>-<key>.npz`` (the id's safe file-name form, :func:`~napari_spahgc.base.files.safe_name`) per slide and setting in the cache folder, holding
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
from pathlib import Path

import numpy as np

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import atomic_path, file_fingerprint, slide_file
from napari_spahgc.embed.encoders import Encoder, LazyEncoder
from napari_spahgc.embed.patches import PatchSpec
from napari_spahgc.io.slide import Slide

#: ``dense``: one encoder pass per tissue tile, each spot's field averaged from the feature map
#: (:mod:`~napari_spahgc.embed.dense`); ``spot``: one 224 px patch per spot through the encoder.
MODES = ("dense", "spot")
#: every slide's mode unless one is asked for: dense predicts at least as well on HER2ST and costs
#: what the tissue costs, not the spots (docs/embeddings.md)
DEFAULT_MODE = "dense"


def resolve_mode(mode: str | None = None) -> str:
    """``dense`` or ``spot``: the mode asked for, :data:`DEFAULT_MODE` when none is; an unknown one is
    an :class:`~napari_spahgc.base.errors.InputError`."""
    if mode is None:
        return DEFAULT_MODE
    if mode not in MODES:
        raise InputError(f"unknown embedding mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def cache_key(slide: Slide, encoder: Encoder, spec: PatchSpec, mode: str | None = None) -> dict:
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
        **_mode_key(slide, encoder, spec, resolve_mode(mode)),
    }


def _mode_key(slide: Slide, encoder, spec: PatchSpec, mode: str) -> dict:
    if mode == "spot":
        return {"mode": "spot"}
    from napari_spahgc.embed.dense import DenseGrid
    from napari_spahgc.embed.tissue import TISSUE_METHOD

    grid = DenseGrid.of(slide, encoder, spec).to_dict()
    return {"mode": "dense", "dense": {**grid, "tissue": TISSUE_METHOD}}


def cache_path(cache_dir: str | Path, slide: Slide, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return slide_file(cache_dir, slide.slide_id, f"-{digest}.npz")


def cached_file(
    slide: Slide,
    encoder: Encoder | LazyEncoder,
    cache_dir: str | Path,
    spec: PatchSpec = PatchSpec(),
    mode: str | None = None,
) -> Path | None:
    """The cache file holding ``slide``'s embeddings for this encoder, patch setting and mode, if one does."""
    key = cache_key(slide, encoder, spec, mode)
    path = cache_path(cache_dir, slide, key)
    return path if is_valid(path, key) else None


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(embeddings, spot_ids, key) of one cache file."""
    with np.load(path, allow_pickle=False) as data:
        return data["embeddings"], data["spot_ids"], json.loads(str(data["key"]))


def is_valid(path: Path, key: dict) -> bool:
    if not path.is_file():
        return False
    try:
        return load_embeddings(path)[2] == key
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: recompute
        return False


def write_embeddings(path: Path, slide: Slide, embeddings: np.ndarray, key: dict) -> None:
    """One slide's cache file, written atomically once the slide is complete."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(
            handle,
            embeddings=embeddings,  # as computed: float32 per spot, float16 dense (no copy: HD 1.8 GB)
            spot_ids=slide.spot_ids.to_numpy(dtype=str),
            centers_px=slide.centers_px,
            key=json.dumps(key, sort_keys=True),
        )
