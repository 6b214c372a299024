"""Patch geometry at several pixel sizes, white border padding, lazy reads."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from conftest import write_ome_pyramid
from napari_spahgc import Slide, open_image
from napari_spahgc.embed.patches import PatchSpec, patch_batches, prefetch, spot_patch

PERIOD_UM = 20.0  # vertical stripes: dark for 10 µm, bright for 10 µm


def _striped_slide(tmp_path, um_per_px: float, field_um: float = 400.0) -> Slide:
    side = int(field_um / um_per_px)
    x_um = (np.arange(side) + 0.5) * um_per_px
    row = np.where((x_um % PERIOD_UM) < PERIOD_UM / 2, 40, 220).astype(np.uint8)
    pixels = np.repeat(np.repeat(row[None, :, None], side, axis=0), 3, axis=2)
    image = open_image(write_ome_pyramid(tmp_path / f"stripes_{um_per_px}.ome.tif", pixels, um_per_px))
    centre_px = np.array([[200.0 / um_per_px, 200.0 / um_per_px], [5.0, 5.0]])  # mid-image and a corner
    return Slide("stripes", pd.Index(["mid", "corner"]), centre_px, image=image, pixel_size_um=um_per_px)


@pytest.mark.parametrize("um_per_px", [0.25, 0.5, 1.0])
def test_patch_shows_the_same_micrometre_field(tmp_path, um_per_px):
    slide = _striped_slide(tmp_path, um_per_px)
    spec = PatchSpec(224, 0.5)
    patch = spot_patch(slide, slide.centers_px[0], spec)
    assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
    # expected stripes at the patch's own pixel positions, in µm from the slide origin
    x_um = 200.0 + (np.arange(224) + 0.5 - 112) * spec.um_per_px
    expected = np.where((x_um % PERIOD_UM) < PERIOD_UM / 2, 40, 220)
    profile = patch[:, :, 0].mean(axis=0)
    assert np.corrcoef(profile, expected)[0, 1] > 0.95
    assert np.abs(profile - expected).mean() < 25  # interpolation blurs only the stripe edges


def test_border_spots_are_padded_white_not_shifted(tmp_path):
    slide = _striped_slide(tmp_path, 0.5)
    patch = spot_patch(slide, slide.centers_px[1], PatchSpec(224, 0.5))
    assert (patch[:100, :100] == 255).all()  # outside the image (above-left of the corner)
    assert (patch[150:, 150:] < 255).all()  # the image itself starts where it should


def test_patches_read_lazily(tmp_path):
    rows = cols = 8000
    pixels = np.full((rows, cols, 3), 128, np.uint8)
    path = write_ome_pyramid(tmp_path / "big.ome.tif", pixels, pixel_size_um=0.25, n_levels=4)
    del pixels
    image = open_image(path)
    slide = Slide("big", pd.Index(["a", "b"]), np.array([[4000.0, 4000.0], [100.0, 7900.0]]), image=image,
                  pixel_size_um=0.25)  # fmt: skip
    tracemalloc.start()
    batches = list(patch_batches(slide, PatchSpec(224, 0.5), batch_size=2))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert batches[0].shape == (2, 224, 224, 3)
    assert peak < rows * cols * 3 / 20  # far below one full level (192 MB)


def test_prefetch_keeps_order_and_stops_early():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield np.full(3, i)

    stream = prefetch(source(), depth=2)
    assert [int(next(stream)[0]) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert len(produced) < 10  # the reader stopped instead of running ahead to the end
    assert [int(b[0]) for b in prefetch(iter([np.zeros(1), np.ones(1)]))] == [0, 1]


def test_closing_after_the_reader_read_everything_returns_at_once():
    """The reader has queued the last batches and waits to queue its end while the consumer stops (an
    embedding cancelled near a slide's end): closing neither waits for it nor leaves it behind."""
    before = threading.active_count()
    stream = prefetch(iter([np.full(1, i) for i in range(3)]), depth=2)
    assert int(next(stream)[0]) == 0
    time.sleep(0.5)  # the reader queues batches 1 and 2, then waits for room for its end
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 5  # was 60 s: the reader's join timed out
    assert threading.active_count() == before
