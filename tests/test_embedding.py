"""Embedding cache: hit, miss, invalidation, cancel and resume — on real HER2ST spots."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc import Slide, read_cohort
from napari_spahgc.embedding import cohort_embeddings, embed_cohort, embed_slide, load_embeddings
from napari_spahgc.encoders import create_encoder
from napari_spahgc.patches import PatchSpec


class CountingEncoder:
    """The real encoder, counting the patches it is asked to embed."""

    def __init__(self, encoder) -> None:
        self.encoder, self.calls = encoder, 0
        self.name, self.weights_checksum = encoder.name, encoder.weights_checksum

    def __call__(self, patches):
        self.calls += len(patches)
        return self.encoder(patches)


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture
def slides(her2st_cohort) -> list[Slide]:
    """Two real sections, 24 spots each (keeps the test quick)."""
    subset = []
    for entry in read_cohort(her2st_cohort)[:2]:
        slide = entry.load()
        subset.append(Slide(slide.slide_id, slide.spot_ids[:24], slide.centers_px[:24], image=slide.image,
                            pixel_size_um=slide.pixel_size_um, sources=slide.sources))  # fmt: skip
    return subset


def test_hit_miss_and_invalidation(tmp_path, slides, encoder):
    counting = CountingEncoder(encoder)
    first = cohort_embeddings(slides, counting, tmp_path, batch_size=10)
    assert counting.calls == 48 and set(first) == {"C2", "C3"}
    assert first["C2"].shape == (24, 1280) and np.isfinite(first["C2"]).all()
    assert not np.allclose(first["C2"][0], first["C2"][1])

    again = cohort_embeddings(slides, counting, tmp_path, batch_size=10)
    assert counting.calls == 48  # cache hit: nothing computed
    np.testing.assert_array_equal(again["C2"], first["C2"])
    progress = list(embed_cohort(slides, counting, tmp_path))
    assert all(p.cached for p in progress)

    cohort_embeddings(slides, counting, tmp_path, spec=PatchSpec(224, 1.0))
    assert counting.calls == 96  # another patch scale: recomputed
    moved = Slide("C2", slides[0].spot_ids, slides[0].centers_px + 30, image=slides[0].image,
                  pixel_size_um=slides[0].pixel_size_um, sources=slides[0].sources)  # fmt: skip
    cohort_embeddings([moved], counting, tmp_path)
    assert counting.calls == 120  # other spot centres: recomputed
    counting.weights_checksum = "other-weights"
    cohort_embeddings(slides[:1], counting, tmp_path)
    assert counting.calls == 144  # other encoder weights: recomputed
    counting.name = "other-encoder"
    cohort_embeddings(slides[:1], counting, tmp_path)
    assert counting.calls == 168  # another encoder: recomputed

    embeddings, spot_ids, key = load_embeddings(progress[0].path)
    np.testing.assert_array_equal(embeddings, first["C2"])
    assert list(spot_ids) == list(slides[0].spot_ids) and key["encoder"] == "efficientnet-lite0"


def test_cancel_leaves_no_partial_entry_and_resume_skips_done_slides(tmp_path, slides, encoder):
    counting = CountingEncoder(encoder)
    stream = embed_cohort(slides, counting, tmp_path, batch_size=8)
    for progress in stream:
        if progress.slide_id == "C3" and progress.done == 8:  # C2 finished, C3 part-way
            break
    stream.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("C2-")  # no partial C3 entry, no temp file
    before = counting.calls
    result = cohort_embeddings(slides, counting, tmp_path, batch_size=8)
    assert counting.calls - before == 24  # only C3 was computed on resume
    assert set(result) == {"C2", "C3"}


def test_embed_slide_and_a_damaged_cache_file(tmp_path, slides, encoder):
    counting = CountingEncoder(encoder)
    embeddings, spot_ids = embed_slide(slides[0], counting, tmp_path, batch_size=12)
    assert embeddings.shape == (24, 1280) and embeddings.dtype == np.float32
    assert list(spot_ids) == list(slides[0].spot_ids) and counting.calls == 24
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:1000])  # e.g. a disk that filled up outside this program
    again, _ = embed_slide(slides[0], counting, tmp_path, batch_size=12)
    assert counting.calls == 48  # unreadable entry: recomputed, and replaced
    np.testing.assert_array_equal(again, embeddings)
    assert load_embeddings(path)[0].shape == (24, 1280)


def test_a_lazy_encoder_keys_the_cache_like_the_built_one_and_embeds_the_same(tmp_path, slides, encoder):
    import sys

    from napari_spahgc.encoders import LazyEncoder

    lazy = LazyEncoder("efficientnet-lite0", device="cpu")
    assert lazy.info() == encoder.info()  # the key is known before the model is built
    first = cohort_embeddings(slides[:1], lazy, tmp_path)
    again = cohort_embeddings(slides[:1], encoder, tmp_path)  # a cache hit for the built encoder
    np.testing.assert_array_equal(first[slides[0].slide_id], again[slides[0].slide_id])
    assert "torch" in sys.modules  # (imported by the fixture; the CLI test below checks a fresh process)


def test_embed_on_a_cached_cohort_builds_no_encoder_and_imports_no_torch(her2st_cohort, tmp_path):
    import subprocess
    import sys

    cache, cohort = tmp_path / "cache", tmp_path / "C2.csv"
    lines = her2st_cohort.read_text().splitlines()
    cohort.write_text("\n".join(lines[:2]).replace("../../shared", str(her2st_cohort.parents[2] / "shared")))
    code = (
        "import sys; from napari_spahgc.cli import app\n"
        f"app(['embed', {str(cohort)!r}, '--cache', {str(cache)!r}], standalone_mode=False)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert "TORCH True" in runs[0].stdout  # the first run embeds
    assert "TORCH False" in runs[1].stdout  # the second reads every slide from the cache
    assert len(list(cache.glob("*.npz"))) == 1
