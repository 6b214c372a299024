"""The embedding flow through its cache (embed/flow.py, embed/cache.py): hit, miss, invalidation, cancel
and resume, a damaged entry, lazy and named encoders, the result's mapping — on real HER2ST spots, per
spot (quick here, and the patches can be counted; dense mode: test_dense.py) — and the warning before a
large per-spot run."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    return run_to_end(embed(EmbedRequest(slides, encoder, cache=cache, mode="spot", **settings)))


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
    progress = list(embed(EmbedRequest(slides, counting, cache=tmp_path, mode="spot")))
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
    stream = embed(EmbedRequest(slides, counting, batch_size=8, cache=tmp_path, mode="spot"))
    for progress in stream:
        if progress.done == 24 + 8:  # C2 finished, C3 part-way
            assert progress.text == "C3 (efficientnet-lite0, spot): 8 spots"
            break
    stream.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("C2-")  # no partial C3 entry, no temp file
    request = EmbedRequest(slides, counting, batch_size=8, cache=tmp_path, mode="spot")
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
    damaged = EmbedRequest(slides[:1], counting, cache=tmp_path, mode="spot")
    assert damaged.finished().files == {}  # not an entry
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
    named = EmbedRequest(slides[:1], "efficientnet-lite0", device="cpu", cache=tmp_path, mode="spot")
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
    request = EmbedRequest(slides, encoder, cache=tmp_path, mode="spot")
    assert run_to_end(embeddings_for(request)).files == result.files  # a request is embedded (cached here)


def test_embed_on_a_cached_cohort_builds_no_encoder_and_imports_no_torch(her2st_cohort, tmp_path):
    import subprocess
    import sys

    cache, cohort = tmp_path / "cache", tmp_path / "C2.csv"
    lines = her2st_cohort.read_text().splitlines()
    cohort.write_text("\n".join(lines[:2]).replace("../../shared", str(her2st_cohort.parents[2] / "shared")))
    cli = (
        "import sys; from napari_spahgc.cli import app\n"
        f"app(['embed', {str(cohort)!r}, '--cache', {str(cache)!r}, '--mode', 'spot'], standalone_mode=False)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    api = (
        "import sys; import napari_spahgc as ns\n"
        f"slides = ns.load_cohort({str(cohort)!r})\n"
        f"result = ns.run_to_end(ns.embed(ns.EmbedRequest(slides, cache={str(cache)!r}, mode='spot')))\n"
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


def _many_spots(n: int) -> Slide:
    """A slide of ``n`` spot centres on a 50 µm grid (no image is read: nothing is embedded)."""
    xy = np.stack(np.divmod(np.arange(n), 400), axis=1)[:, ::-1] * 100.0
    return Slide("many", pd.Index([f"s{i}" for i in range(n)]), xy, pixel_size_um=0.5)


def test_a_large_per_spot_run_is_announced_before_it_starts_with_its_time_and_dense(tmp_path):
    from napari_spahgc.embed.encoders import LazyEncoder
    from napari_spahgc.embed.flow import LARGE_SPOT_RUN, SPOT_PATCHES_PER_S

    many, lazy = _many_spots(LARGE_SPOT_RUN + 1), LazyEncoder("efficientnet-lite0", device="cpu")
    flow = embed(EmbedRequest([many], lazy, device="cpu", cache=tmp_path, mode="spot"))
    first = next(flow)  # before the first batch: no patch is read, the encoder is not built
    flow.close()
    minutes = round((LARGE_SPOT_RUN + 1) / SPOT_PATCHES_PER_S[("efficientnet-lite0", "cpu")] / 60)
    assert (first.done, first.total, first.stage) == (0, 100_001, "embed")
    assert first.warning.startswith(f"embedding 100,001 spots per spot: about {minutes} min at the ")
    assert "Dense mode (--mode dense" in first.warning and lazy._encoder is None
    assert list(tmp_path.iterdir()) == []
    for quiet in ("dense", None):  # dense, asked for or by default, costs the tissue: nothing to say
        flow = embed(EmbedRequest([many], lazy, device="cpu", cache=tmp_path, mode=quiet))
        assert next(flow).warning == ""
        flow.close()


def test_the_warning_counts_only_spots_still_to_embed_and_estimates_only_what_was_measured(
    tmp_path, slides, encoder, monkeypatch
):
    from types import SimpleNamespace

    from napari_spahgc.embed import flow as embed_flow

    monkeypatch.setattr(embed_flow, "LARGE_SPOT_RUN", 30)  # the two 24-spot slides: 48 spots
    first = list(embed(EmbedRequest(slides[:1], encoder, cache=tmp_path, mode="spot")))
    assert [r.warning for r in first] == [""] * len(first)  # 24 spots: a small run
    again = list(embed(EmbedRequest(slides, encoder, cache=tmp_path, mode="spot")))
    assert [r.warning for r in again] == [""] * len(again)  # C2 is cached: 24 spots left to embed
    moved = [Slide(s.slide_id, s.spot_ids, s.centers_px + 1, image=s.image, pixel_size_um=s.pixel_size_um,
                   sources=s.sources) for s in slides]  # fmt: skip
    flow = embed(EmbedRequest(moved, encoder, cache=tmp_path, mode="spot"))  # other centres: 48 to embed
    rate = embed_flow.SPOT_PATCHES_PER_S[("efficientnet-lite0", "cpu")]
    assert next(flow).warning.startswith(
        f"embedding 48 spots per spot: about 1 min at the {rate:g} patches/s efficientnet-lite0 embeds on 2 CPU cores."
    )
    flow.close()
    gpu = SimpleNamespace(name="uni", device="cuda")  # no throughput known on CUDA: the count, no time
    said = embed_flow.large_spot_run_warning(700_000, gpu, "auto")
    assert (
        said.startswith("embedding 700,000 spots per spot. Dense mode (--mode dense") and "about" not in said
    )
    cpu = SimpleNamespace(name="uni", device="cpu")
    assert embed_flow.large_spot_run_warning(700_000, cpu, "cpu").startswith(
        "embedding 700,000 spots per spot: about 194.4 h at the 1 patches/s uni embeds on 2 CPU cores."
    )


def test_the_command_line_prints_the_warning_before_the_progress_bar(
    tmp_path, slides, encoder, capsys, monkeypatch
):
    from napari_spahgc.cli.drive import drive
    from napari_spahgc.embed import flow as embed_flow
    from napari_spahgc.run.runners import InProcess

    monkeypatch.setattr(embed_flow, "LARGE_SPOT_RUN", 30)
    drive(InProcess(), embed, EmbedRequest(slides, encoder, cache=tmp_path, mode="spot"))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("warning: embedding 48 spots per spot: about 1 min"), lines
    assert lines[1].startswith("embedding"), lines  # then the bar
