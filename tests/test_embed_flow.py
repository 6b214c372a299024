"""The embedding flow through its cache (embed/flow.py, embed/cache.py): hit, miss, invalidation, cancel
and resume, a damaged entry, lazy and named encoders, the result's mapping — on real HER2ST spots."""

from __future__ import annotations

import numpy as np
import pytest

import napari_spahgc as ns
from napari_spahgc import Embeddings, EmbedRequest, Slide, embed, read_cohort, run_to_end
from napari_spahgc.embed.cache import load_embeddings
from napari_spahgc.embed.encoders import create_encoder
from napari_spahgc.embed.flow import embeddings_for
from napari_spahgc.embed.patches import PatchSpec


class CountingEncoder:
    """The real encoder, counting the patches it is asked to embed."""

    def __init__(self, encoder) -> None:
        self.encoder, self.calls = encoder, 0
        self.name, self.dim, self.weights_checksum = encoder.name, encoder.dim, encoder.weights_checksum

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


def _embedded(slides, encoder, cache, **settings) -> Embeddings:
    return run_to_end(embed(EmbedRequest(slides, encoder, cache=cache, **settings)))


def _finished(progress) -> list[dict]:
    """The values of the progress items that end a slide (its id, cache file, mode, whether cached)."""
    return [dict(p.values) for p in progress if p.values]


def test_hit_miss_and_invalidation(tmp_path, slides, encoder):
    counting = CountingEncoder(encoder)
    first = _embedded(slides, counting, tmp_path, batch_size=10)
    assert counting.calls == 48 and set(first) == {"C2", "C3"} and len(first) == 2
    assert first["C2"].shape == (24, 1280) and np.isfinite(first["C2"]).all()
    assert not np.allclose(first["C2"][0], first["C2"][1])
    assert first.modes == {"C2": "spot", "C3": "spot"} and first.patch == PatchSpec().to_dict()
    assert first.info == {**encoder.info(), "embedding_mode": "spot"}

    again = _embedded(slides, counting, tmp_path, batch_size=10)
    assert counting.calls == 48  # cache hit: nothing computed
    np.testing.assert_array_equal(again["C2"], first["C2"])
    assert again.files == first.files
    progress = list(embed(EmbedRequest(slides, counting, cache=tmp_path)))
    finished = _finished(progress)
    assert [(v["slide_id"], v["cached"]) for v in finished] == [("C2", True), ("C3", True)]
    assert [p.done for p in progress] == [0, 24, 48] and {p.total for p in progress} == {48}
    assert {p.stage for p in progress} == {"embed"}

    _embedded(slides, counting, tmp_path, patch=PatchSpec(224, 1.0))
    assert counting.calls == 96  # another patch scale: recomputed
    moved = Slide("C2", slides[0].spot_ids, slides[0].centers_px + 30, image=slides[0].image,
                  pixel_size_um=slides[0].pixel_size_um, sources=slides[0].sources)  # fmt: skip
    _embedded([moved], counting, tmp_path)
    assert counting.calls == 120  # other spot centres: recomputed
    counting.weights_checksum = "other-weights"
    _embedded(slides[:1], counting, tmp_path)
    assert counting.calls == 144  # other encoder weights: recomputed
    counting.name = "other-encoder"
    _embedded(slides[:1], counting, tmp_path)
    assert counting.calls == 168  # another encoder: recomputed

    embeddings, spot_ids, key = load_embeddings(finished[0]["path"])
    np.testing.assert_array_equal(embeddings, first["C2"])
    assert list(spot_ids) == list(slides[0].spot_ids) and key["encoder"] == "efficientnet-lite0"


def test_cancel_leaves_no_partial_entry_and_resume_skips_done_slides(tmp_path, slides, encoder):
    counting = CountingEncoder(encoder)
    stream = embed(EmbedRequest(slides, counting, batch_size=8, cache=tmp_path))
    for progress in stream:
        if progress.done == 24 + 8:  # C2 finished, C3 part-way
            assert progress.text == "C3 (efficientnet-lite0, spot): 8 spots"
            break
    stream.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("C2-")  # no partial C3 entry, no temp file
    request = EmbedRequest(slides, counting, batch_size=8, cache=tmp_path)
    assert list(request.finished().files) == ["C2"]  # what a cluster would not send again
    before = counting.calls
    result = run_to_end(embed(request))
    assert counting.calls - before == 24  # only C3 was computed on resume
    assert set(result) == {"C2", "C3"} and set(request.finished().files) == {"C2", "C3"}


def test_one_slide_and_a_damaged_cache_file(tmp_path, slides, encoder):
    counting = CountingEncoder(encoder)
    result = _embedded(slides[:1], counting, tmp_path, batch_size=12)
    embeddings = result["C2"]
    assert embeddings.shape == (24, 1280) and embeddings.dtype == np.float32 and counting.calls == 24
    (path,) = tmp_path.iterdir()
    assert result.files == {"C2": str(path)}
    assert list(load_embeddings(path)[1]) == list(slides[0].spot_ids)
    path.write_bytes(path.read_bytes()[:1000])  # e.g. a disk that filled up outside this program
    assert EmbedRequest(slides[:1], counting, cache=tmp_path).finished().files == {}  # not an entry
    again = _embedded(slides[:1], counting, tmp_path, batch_size=12)["C2"]
    assert counting.calls == 48  # unreadable entry: recomputed, and replaced
    np.testing.assert_array_equal(again, embeddings)
    assert load_embeddings(path)[0].shape == (24, 1280)


def test_lazy_and_named_encoders_key_the_cache_like_the_built_one_and_embed_the_same(
    tmp_path, slides, encoder
):
    import sys

    from napari_spahgc.embed.encoders import LazyEncoder

    lazy = LazyEncoder("efficientnet-lite0", device="cpu")
    assert lazy.info() == encoder.info()  # the key is known before the model is built
    first = _embedded(slides[:1], lazy, tmp_path)
    again = _embedded(slides[:1], encoder, tmp_path)  # a cache hit for the built encoder
    np.testing.assert_array_equal(first[slides[0].slide_id], again[slides[0].slide_id])
    named = EmbedRequest(slides[:1], "efficientnet-lite0", device="cpu", cache=tmp_path)
    assert named.finished().files == first.files  # and for the encoder by name, unbuilt
    assert named.lazy_encoder() is named.lazy_encoder()  # one per name, weights and device
    assert "torch" in sys.modules  # (imported by the fixture; the test below checks fresh processes)
    with pytest.raises(ns.InputError, match="unknown encoder 'resnet'"):
        run_to_end(embed(EmbedRequest(slides[:1], "resnet", cache=tmp_path)))


def test_the_result_maps_slides_to_arrays_read_on_first_use(tmp_path, slides, encoder):
    result = _embedded(slides, encoder, tmp_path)
    assert result.arrays == {} and list(result) == ["C2", "C3"]  # files only, until read
    c2 = result["C2"]
    assert set(result.arrays) == {"C2"} and result["C2"] is c2  # read once, then kept
    only = result.only(["C3"])
    assert list(only) == ["C3"] and only.modes == {"C3": "spot"} and only.encoder == result.encoder
    np.testing.assert_array_equal(only["C3"], result["C3"])
    merged = Embeddings.merge([result.only(["C2"]), only])
    assert merged.files == result.files and merged.info == result.info and merged.patch == result.patch
    mixed = Embeddings(result.encoder, modes={"C2": "spot", "C3": "dense"})
    assert mixed.info["embedding_mode"] == {"C2": "spot", "C3": "dense"}  # what a model folder records
    assert run_to_end(embeddings_for(result)) is result  # given embeddings are used as they are
    request = EmbedRequest(slides, encoder, cache=tmp_path)
    assert run_to_end(embeddings_for(request)).files == result.files  # a request is embedded (cached here)


def test_embed_on_a_cached_cohort_builds_no_encoder_and_imports_no_torch(her2st_cohort, tmp_path):
    import subprocess
    import sys

    cache, cohort = tmp_path / "cache", tmp_path / "C2.csv"
    lines = her2st_cohort.read_text().splitlines()
    cohort.write_text("\n".join(lines[:2]).replace("../../shared", str(her2st_cohort.parents[2] / "shared")))
    cli = (
        "import sys; from napari_spahgc.cli import app\n"
        f"app(['embed', {str(cohort)!r}, '--cache', {str(cache)!r}], standalone_mode=False)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    api = (
        "import sys; import napari_spahgc as ns\n"
        f"slides = ns.load_cohort({str(cohort)!r})\n"
        f"result = ns.run_to_end(ns.embed(ns.EmbedRequest(slides, cache={str(cache)!r})))\n"
        "print('SLIDES', sorted(result), 'TORCH', 'torch' in sys.modules)\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        for code in (cli, cli, api)
    ]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr[-2000:] for r in runs]
    assert "TORCH True" in runs[0].stdout  # the first run embeds
    assert "TORCH False" in runs[1].stdout  # the second reads every slide from the cache
    assert "SLIDES ['C2'] TORCH False" in runs[2].stdout  # so does the Python API
    assert len(list(cache.glob("*.npz"))) == 1
