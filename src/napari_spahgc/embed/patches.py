"""Spot patches at a fixed physical scale, read lazily from the slide pyramid."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from napari_spahgc.io.slide import Slide


@dataclass(frozen=True)
class PatchSpec:
    """``size`` × ``size`` pixel patches at ``um_per_px`` (default 224 px at 0.5 µm/px = a 112 µm field,
    as UNI and HEST use)."""

    size: int = 224
    um_per_px: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def spot_patch(slide: Slide, center_xy: np.ndarray, spec: PatchSpec = PatchSpec()) -> np.ndarray:
    """The (size, size, 3) uint8 patch centred on a full-resolution (x, y) centre.

    Reads only the needed region from the pyramid level nearest the target scale (at least as fine),
    resamples it with sub-pixel accuracy, and pads outside the image with white.
    """
    if slide.image is None:
        raise ValueError(f"slide {slide.slide_id!r} has no image")
    return slide.image.patch(center_xy, slide.require_pixel_size(), spec.size, spec.um_per_px)


def patch_batches(slide: Slide, spec: PatchSpec = PatchSpec(), batch_size: int = 64) -> Iterator[np.ndarray]:
    """(B, size, size, 3) uint8 batches of the slide's spot patches, in spot order (bounded memory)."""
    for start in range(0, slide.n_spots, batch_size):
        centres = slide.centers_px[start : start + batch_size]
        yield np.stack([spot_patch(slide, centre, spec) for centre in centres])


def prefetch(batches: Iterator[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Read the next batches in a background thread while the caller encodes the current one.

    Stopping early (``close()`` / leaving the loop) stops the reader after its current batch.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def _put(item) -> bool:
        """Queue ``item`` unless the consumer stopped (then a full queue is never waited on)."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read() -> None:
        try:
            for batch in batches:
                if not _put(batch):
                    return
            _put(done)
        except BaseException as error:  # handed to the consumer, raised there
            _put(error)

    reader = threading.Thread(target=_read, daemon=True)
    reader.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=60)  # it finishes the batch it reads: no thread left to die at exit
