"""Dense embedding (one encoder pass per tile; embed/dense.py, and the embed flow's dense mode) and tissue
detection — on a real HER2ST section."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile

from napari_spahgc import EmbedRequest, InputError, Slide, embed, read_cohort
from napari_spahgc.embed.cache import cache_key, load_embeddings, resolve_mode
from napari_spahgc.embed.dense import DenseGrid, dense_embeddings
from napari_spahgc.embed.encoders import REGISTRY, Encoder, create_encoder
from napari_spahgc.embed.patches import PatchSpec, patch_batches
from napari_spahgc.embed.tissue import TISSUE_METHOD, detect_tissue
from napari_spahgc.io.images import open_image
from napari_spahgc.model.slide_data import slide_data

#: Measured on these 9 C2 spots (efficientnet-lite0, CPU): median 0.50, 5th percentile 0.34 — a CNN's
#: cells see more context in a tile than in an isolated 224 px patch (docs/embeddings.md).
MIN_MEDIAN_COSINE, MIN_P5_COSINE = 0.35, 0.25


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def c2(her2st_cohort_module):
    return read_cohort(her2st_cohort_module)[0].load(with_expression=False)


@pytest.fixture(scope="module")
def her2st_cohort_module():
    from conftest import HER2ST, HER2ST_COHORT

    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    return HER2ST_COHORT


@pytest.fixture(scope="module")
def block(c2) -> Slide:
    """9 neighbouring C2 spots (a 3 × 3 block of the 200 µm ST grid: a few tiles), in a shuffled order."""
    centre = c2.centers_px[50]
    nearest = np.argsort(np.linalg.norm(c2.centers_px - centre, axis=1))[:9]
    order = np.random.default_rng(0).permutation(nearest)
    return Slide("C2", c2.spot_ids[order], c2.centers_px[order], image=c2.image,
                 pixel_size_um=c2.pixel_size_um, sources=c2.sources)  # fmt: skip


def _run(flow):
    progress = []
    while True:
        try:
            progress.append(next(flow))
        except StopIteration as finished:
            return finished.value, progress


def test_dense_agrees_with_per_spot(block, encoder):
    spot = np.concatenate([encoder(batch) for batch in patch_batches(block, batch_size=16)])
    dense, progress = _run(dense_embeddings(block, encoder, tissue=None))
    assert dense.shape == spot.shape == (9, 1280) and np.isfinite(dense).all()
    cosine = (dense * spot).sum(1) / np.linalg.norm(dense, axis=1) / np.linalg.norm(spot, axis=1)
    assert np.median(cosine) > MIN_MEDIAN_COSINE and np.percentile(cosine, 5) > MIN_P5_COSINE
    # each spot is nearer its own per-spot embedding than the other spots' on average
    others = (dense @ spot.T) / np.outer(np.linalg.norm(dense, axis=1), np.linalg.norm(spot, axis=1))
    assert np.mean(cosine) > np.mean(others[~np.eye(9, dtype=bool)])
    tiles = [p.done for p in progress]
    assert tiles == sorted(tiles) and progress[-1].done == progress[-1].total >= 1
    assert progress[-1].values["spots_done"] == 9


def test_tissue_mask_on_a_real_section(c2):
    tissue = detect_tissue(c2.image, pixel_size_um=c2.pixel_size_um)
    assert tissue.at(c2.centers_px).mean() >= 0.95  # the section's spots lie on tissue (measured 0.968)
    assert 0.05 < tissue.fraction < 0.6
    border = np.concatenate([tissue.mask[:15].ravel(), tissue.mask[-15:].ravel(),
                             tissue.mask[:, :15].ravel(), tissue.mask[:, -15:].ravel()])  # fmt: skip
    assert not border.any()  # the white glass around the section
    assert not tissue.contains(0, 0, 400, 400)  # a corner, in full-resolution px
    x, y = c2.centers_px[50]
    assert tissue.contains(y - 50, x - 50, 100, 100)


def test_an_image_that_tissue_fills_is_all_tissue(c2, tmp_path):
    """A 1.5 mm crop inside C2's tissue has no glass: Otsu alone would split the tissue in two and call
    the paler half glass (such crops of HD bins were embedded as glass); all of it is tissue."""
    xy = c2.centers_px
    x, y = xy[np.argmin(((xy - xy.mean(axis=0)) ** 2).sum(axis=1))].astype(int)  # a spot amid the tissue
    tifffile.imwrite(tmp_path / "crop.tif", c2.image.read_region(0, y - 1000, x - 1000, 2000, 2000))
    tissue = detect_tissue(open_image(tmp_path / "crop.tif"), pixel_size_um=c2.pixel_size_um)
    inside = xy[(np.abs(xy - [x, y]) < 1000).all(axis=1)] - [x - 1000, y - 1000]
    assert tissue.fraction > 0.9 and len(inside) > 40 and tissue.at(inside).all()


def test_dense_mode_embeds_every_spot_once_in_order_and_caches_apart(tmp_path, block, encoder):
    assert resolve_mode() == resolve_mode(None) == "dense"  # the default, whatever the spot pitch
    assert resolve_mode("spot") == "spot" and resolve_mode("dense") == "dense"
    spot_key, dense_key = (
        cache_key(block, encoder, PatchSpec(), "spot"),
        cache_key(block, encoder, PatchSpec(), "dense"),
    )
    assert spot_key["mode"] == "spot" and dense_key["mode"] == "dense" and spot_key != dense_key
    assert dense_key["dense"] == {**DenseGrid.of(block, encoder).to_dict(), "tissue": TISSUE_METHOD}
    assert cache_key(block, encoder, PatchSpec()) == dense_key  # dense by default, legacy ST's 200 µm too

    request = EmbedRequest([block], encoder, cache=tmp_path, mode="dense")
    result, progress = _run(embed(request))
    assert result.modes == {"C2": "dense"} and result.info["embedding_mode"] == "dense"
    (finished,) = [p.values for p in progress if p.values]
    assert finished == {"slide_id": "C2", "path": result.files["C2"], "mode": "dense", "cached": False}
    assert all("(efficientnet-lite0, dense)" in p.text for p in progress[1:])
    done = [p.done for p in progress]
    assert done == sorted(done) and done[-1] == progress[-1].total == 9 and len(progress) > 2
    embeddings, spot_ids, key = load_embeddings(finished["path"])
    assert list(spot_ids) == list(block.spot_ids) and embeddings.shape == (9, 1280)
    assert embeddings.dtype == np.float16  # stored as the float16 cells they average: half the memory
    assert result["C2"].dtype == np.float16  # and read back so
    assert slide_data(block, embeddings, None).embeddings.dtype == np.float16  # and kept so
    assert key == dense_key and np.isfinite(embeddings).all()
    assert len({row.tobytes() for row in embeddings}) == 9  # nine different spots, nine embeddings
    _, again = _run(embed(request))
    assert len(again) == 2 and again[-1].values["cached"]  # loading, then read: no tile computed
    assert request.finished().files == result.files
    assert EmbedRequest([block], encoder, cache=tmp_path).finished().files == result.files  # the default
    assert EmbedRequest([block], encoder, cache=tmp_path, mode="spot").finished().files == {}  # apart
    with pytest.raises(InputError, match="unknown embedding mode 'auto'"):  # auto is no mode any more
        resolve_mode("auto")
    with pytest.raises(InputError, match="unknown embedding mode 'tiles'; choose one of dense, spot"):
        _run(embed(EmbedRequest([block], encoder, cache=tmp_path, mode="tiles")))


def _tiny_vit():
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, embed_dim=32, depth=1, num_heads=2,
        reg_tokens=2, dynamic_img_size=True,
    )  # fmt: skip


def test_vit_token_grid(block):
    import torch

    spec = dataclasses.replace(REGISTRY["uni"], name="tiny-vit", dim=32, build=_tiny_vit, tile_cells=8)
    torch.manual_seed(0)
    model = _tiny_vit()
    encoder = Encoder(spec, model, "random", torch.device("cpu"))
    tiles = np.random.default_rng(0).integers(0, 255, size=(2, 64, 96, 3), dtype=np.uint8)
    grid = encoder.feature_grid(tiles)
    assert grid.shape == (2, 4, 6, 32) and grid.dtype == np.float32
    with torch.inference_mode():
        x = encoder._normalised(tiles)
        tokens = model.forward_features(x)[:, model.num_prefix_tokens :]  # class + 2 register tokens out
    assert model.num_prefix_tokens == 3
    np.testing.assert_allclose(grid.reshape(2, 24, 32), tokens.numpy(), rtol=1e-5, atol=1e-5)
    dense, _ = _run(dense_embeddings(block, encoder, tissue=None))
    assert dense.shape == (9, 32) and np.isfinite(dense).all()
