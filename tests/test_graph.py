"""SpaHGC graph construction on small hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spahgc.model.graph import GraphOptions, ReferenceBank, build_graph
from napari_spahgc.model.neighbours import topk_cosine
from napari_spahgc.model.relations import CS, RS, TS
from napari_spahgc.model.slide_data import FeatureScale, SlideData


def _slide(slide_id: str, n: int, dim: int = 6, genes: int = 3, seed: int = 0) -> SlideData:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    coords = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * 100.0
    return SlideData(
        slide_id, np.array([f"{slide_id}-{i}" for i in range(n)]),
        rng.normal(size=(n, dim)).astype(np.float32), coords,
        rng.random((n, genes)).astype(np.float32),
    )  # fmt: skip


def test_graph_edges_and_reference_nodes():
    target = _slide("T", 10, seed=1)
    references = [_slide("A", 8, seed=2), _slide("B", 9, seed=3)]
    scale = FeatureScale.fit(references)
    bank = ReferenceBank.from_slides(references, scale)
    graph = build_graph(target, bank, GraphOptions(q=3, k=4, k_rs=2))
    n_ref = graph["reference"].num_nodes
    assert graph[TS].edge_index.shape == (2, 10 * 3)
    assert graph[CS].edge_index.shape == (2, 10 * 4)
    assert graph[RS].edge_index.shape == (2, n_ref * 2)
    assert not (graph[RS].edge_index[0] == graph[RS].edge_index[1]).any()
    assert not (graph[TS].edge_index[0] == graph[TS].edge_index[1]).any()
    # CS edges are grouped by target, k each, and point at the retrieved bank spots
    destinations = graph[CS].edge_index[1].numpy()
    assert (destinations == np.repeat(np.arange(10), 4)).all()
    retrieved = topk_cosine(target.embeddings, bank.embeddings, 4)
    bank_index = graph["reference"].bank_index.numpy()
    np.testing.assert_array_equal(bank_index[graph[CS].edge_index[0].numpy()].reshape(10, 4), retrieved)
    assert set(bank_index) == set(retrieved.ravel())  # "retrieved": the union of retrieved spots
    # reference features are [embedding ‖ standardised expression]
    np.testing.assert_allclose(graph["reference"].x[:, :6].numpy(), bank.embeddings[bank_index])
    np.testing.assert_allclose(graph["reference"].x[:, 6:].numpy(), bank.expression[bank_index])
    whole = build_graph(target, bank, GraphOptions(q=3, k=4, k_rs=2, reference_nodes="bank"))
    assert whole["reference"].num_nodes == len(bank) == 17


def test_target_slide_never_in_its_own_bank():
    target = _slide("T", 6)
    own = ReferenceBank.from_slides([_slide("A", 5), target], FeatureScale.fit([target]))
    with pytest.raises(ValueError, match="contains spots of the target slide"):
        build_graph(target, own)


def test_expression_scale_round_trip():
    slides = [_slide("A", 8, seed=4), _slide("B", 8, seed=5)]
    scale = FeatureScale.fit(slides)
    values = np.concatenate([s.expression for s in slides])
    z = scale.transform(values)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(scale.inverse(z), values, atol=1e-5)


def test_the_retrieval_prior_is_the_mean_expression_of_the_nearest_bank_spots():
    target = _slide("T", 10, seed=1)
    references = [_slide("A", 8, seed=2), _slide("B", 9, seed=3)]
    bank = ReferenceBank.from_slides(references, FeatureScale.fit(references))
    assert "prior" not in build_graph(target, bank, GraphOptions(q=3, k=4))["target"]
    graph = build_graph(target, bank, GraphOptions(q=3, k=4, prior_k=5))
    nearest = topk_cosine(target.embeddings, bank.embeddings, 5)
    np.testing.assert_allclose(graph["target"].prior.numpy(), bank.expression[nearest].mean(1), rtol=1e-6)


def test_a_bank_over_the_threshold_is_searched_through_its_index_built_once():
    target = _slide("T", 400, dim=48, seed=4)
    references = [_slide(name, 1500, dim=48, seed=seed) for name, seed in (("A", 5), ("B", 6))]
    scale = FeatureScale.fit(references)
    bank = ReferenceBank.from_slides(references, scale)
    exact = build_graph(target, bank, GraphOptions(k=7))
    approximate = GraphOptions(k=7, ann_min_keys=1000)  # 3,000 distinct keys: the approximate index
    graph = build_graph(target, bank, approximate)
    assert [index.approximate for index in bank._indexes.values()] == [False, True]
    build_graph(target, bank, approximate)
    assert len(bank._indexes) == 2  # the bank's index is built once, not per graph

    def retrieved(graph):
        return graph["reference"].bank_index.numpy()[graph[CS].edge_index[0].numpy()].reshape(400, 7)

    found, wanted = retrieved(graph), retrieved(exact)
    assert np.mean([len(set(a) & set(b)) / 7 for a, b in zip(found, wanted, strict=True)]) >= 0.95
    assert not (graph[RS].edge_index[0] == graph[RS].edge_index[1]).any()
