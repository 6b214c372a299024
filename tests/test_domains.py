"""Tissue domains on slides drawn with known regions: KMeans and Leiden find them, the spatial weight
recovers them from noisy expression, values read block by block from an h5ad give the same domains
as in memory, a subsampled fit assigns every spot, and bad settings are refused before any work."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from napari_spahgc.base.errors import InputError
from napari_spahgc.downstream.domains import DomainOptions, domain_sizes, find_domains


def regions_slide(n_side: int = 30, genes: int = 40, noise: float = 1.0, seed: int = 0):
    """A square grid of spots in three vertical bands, each band raising its own block of genes by 1
    (log units) over Gaussian noise of sd ``noise``: (values, coords, true band)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(n_side), np.arange(n_side))
    coords = np.column_stack([x.ravel(), y.ravel()]).astype(float) * 100
    band = np.minimum(x.ravel() * 3 // n_side, 2)
    values = rng.normal(0, noise, (len(coords), genes)).astype(np.float32)
    for b in range(3):
        values[band == b, b * 10 : (b + 1) * 10] += 1.0
    return values + 3, coords, band


def test_kmeans_finds_clean_regions_without_space():
    values, coords, band = regions_slide(noise=0.3)
    found = find_domains(values, coords, DomainOptions(n_domains=3, spatial_weight=0.0))
    assert adjusted_rand_score(band, found) > 0.95
    sizes = domain_sizes(found)
    assert list(sizes["domain"]) == ["0", "1", "2"] and sizes["spots"].is_monotonic_decreasing
    assert sizes["spots"].sum() == len(values) and np.isclose(sizes["share"].sum(), 1)


def test_the_spatial_weight_recovers_regions_from_noisy_expression():
    values, coords, band = regions_slide(noise=2.0)
    alone = adjusted_rand_score(band, find_domains(values, coords, DomainOptions(3, spatial_weight=0.0)))
    mixed = adjusted_rand_score(band, find_domains(values, coords, DomainOptions(3, spatial_weight=0.75)))
    assert mixed > alone + 0.2 and mixed > 0.6, (alone, mixed)


def test_leiden_finds_the_regions_at_a_resolution():
    values, coords, band = regions_slide(n_side=70, noise=0.5)  # 4,900 spots: above scanpy's brute-force size
    found = find_domains(values, coords, DomainOptions(resolution=0.3, spatial_weight=0.5))
    assert adjusted_rand_score(band, found) > 0.8
    finer = find_domains(values, coords, DomainOptions(resolution=2.0, spatial_weight=0.5))
    assert len(finer.categories) > len(found.categories)


def test_values_read_from_an_h5ad_block_by_block_give_the_same_domains(tmp_path, monkeypatch):
    import napari_spahgc.downstream.domains as domains

    values, coords, _ = regions_slide(noise=1.0)
    path = tmp_path / "slide.h5ad"
    ad.AnnData(values, obsm={"spatial": coords}).write_h5ad(path)
    monkeypatch.setattr(domains, "_BLOCK_VALUES", 40 * 64)  # 64 spots per block: many blocks
    backed = ad.read_h5ad(path, backed="r")
    for options in (
        DomainOptions(3, spatial_weight=0.5),
        DomainOptions(3, spatial_weight=0.5, max_fit_spots=300),
    ):
        in_memory = find_domains(values, coords, options)
        from_disk = find_domains(backed.X, coords, options)
        assert adjusted_rand_score(in_memory, from_disk) > 0.99


def test_a_subsampled_fit_assigns_every_spot_like_the_full_fit():
    values, coords, _ = regions_slide(n_side=60, noise=1.0)
    for options in (DomainOptions(3, spatial_weight=0.5), DomainOptions(resolution=0.3, spatial_weight=0.5)):
        full = find_domains(values, coords, options)
        sampled = find_domains(values, coords, DomainOptions(**{**options.__dict__, "max_fit_spots": 500}))
        assert len(sampled) == len(values) and not sampled.isna().any()
        assert adjusted_rand_score(full, sampled) > 0.85, options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DomainOptions(n_domains=1000), "1000 domains asked for, but the slide has only 900 spots"),
        (DomainOptions(n_domains=1), "at least 2"),
        (DomainOptions(spatial_weight=1.5), "between 0 and 1"),
        (DomainOptions(resolution=0), "must be positive"),
    ],
)
def test_bad_settings_are_refused(options, message):
    values, coords, _ = regions_slide()
    with pytest.raises(InputError, match=message):
        find_domains(values, coords, options)


def test_constant_expression_has_no_domains():
    values, coords, _ = regions_slide()
    with pytest.raises(InputError, match="two genes that vary"):
        find_domains(np.ones_like(values), coords, DomainOptions(3))


def test_the_benchmarks_domain_settings_never_see_the_held_out_labels():
    """Poisoning: shuffling the held-out slide's labels changes its score, never what was chosen."""
    import pandas as pd

    from napari_spahgc.evaluate.domains import domain_scores
    from napari_spahgc.model.slide_data import SlideData

    slides, labels, inner = [], {}, {}
    for index in range(4):
        values, coords, band = regions_slide(noise=1.5, seed=index)
        ids = np.array([f"{index}-{i}" for i in range(len(values))])
        slides.append(SlideData(f"S{index}", ids, np.zeros((len(ids), 2), np.float32), coords, values))
        labels[f"S{index}"] = pd.Series(band.astype(str), index=ids)
        inner[f"S{index}"] = values
    train, test = slides[:3], slides[3]
    honest = domain_scores(test.expression, inner, train, test, labels)
    shuffled = dict(
        labels,
        S3=pd.Series(np.random.default_rng(0).permutation(labels["S3"].to_numpy()), index=labels["S3"].index),
    )
    poisoned = domain_scores(test.expression, inner, train, test, shuffled)
    chosen = ("domain_spatial_weight", "domain_inner_ari", "domain_count")
    assert {k: honest[k] for k in chosen} == {k: poisoned[k] for k in chosen}
    assert honest["domain_count"] == 3 and honest["domain_ari"] > 0.5 > abs(poisoned["domain_ari"])
    # and the training slides' labels are what the choice is made on
    flipped = dict(
        labels,
        **{
            s.slide_id: labels[s.slide_id].sample(frac=1, random_state=1).set_axis(labels[s.slide_id].index)
            for s in train
        },
    )
    assert (
        domain_scores(test.expression, inner, train, test, flipped)["domain_inner_ari"]
        != honest["domain_inner_ari"]
    )


def test_domain_layers_are_points_or_a_labels_raster_for_binned_slides():
    import pandas as pd

    from napari_spahgc.io.slide import Slide
    from napari_spahgc.view.figures import domain_colours
    from napari_spahgc.view.layers import RASTER_MIN_SPOTS, domain_layer

    side = int(np.ceil(np.sqrt(RASTER_MIN_SPOTS)))
    x, y = np.meshgrid(np.arange(side), np.arange(side))
    centres = np.column_stack([x.ravel(), y.ravel()]).astype(float) * 20 + 100
    binned = Slide("HD", pd.Index([f"b{i}" for i in range(len(centres))]), centres, pixel_size_um=0.4)
    domains = pd.Categorical((x.ravel() * 3 // side).astype(str))
    labels, meta, kind = domain_layer(binned, domains)
    assert kind == "labels" and labels.shape == (side, side) and meta["name"] == "HD domains (predicted)"
    np.testing.assert_array_equal(labels, domains.codes.reshape(side, side) + 1)  # row = y, column = x
    assert meta["scale"] == (8.0, 8.0) and meta["colormap"][1] == tuple(domain_colours(3)[0])
    spots = Slide(
        "ST", pd.Index(["a", "b", "c"]), np.array([[0, 0], [200, 0], [400, 0]], float), pixel_size_um=1.0
    )
    data, meta, kind = domain_layer(spots, pd.Categorical(["1", "0", "1"]), "measured")
    assert kind == "points" and meta["name"] == "ST domains (measured)" and len(data) == 3
    np.testing.assert_array_equal(meta["face_color"], domain_colours(2)[[1, 0, 1]])
    assert list(meta["features"]["domain"]) == ["1", "0", "1"]
