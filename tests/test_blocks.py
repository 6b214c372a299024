"""Prediction in blocks equals the whole graph's forward pass; training in spatial mini-batches is
bounded by its block size and reproducible with a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spahgc.base.spatial import spatial_mix, spatial_neighbours
from napari_spahgc.model import blocks as model_blocks
from napari_spahgc.model.blocks import predict_blocks, row_blocks
from napari_spahgc.model.config import SpaHGCConfig
from napari_spahgc.model.graph import ReferenceBank, build_graph, graph_parts, reference_features
from napari_spahgc.model.neighbours import spatial_blocks, topk_cosine
from napari_spahgc.model.network import CrossNodeAttention, SpaHGC
from napari_spahgc.model.slide_data import FeatureScale
from napari_spahgc.train import trainer
from napari_spahgc.train.batch import GraphBatch
from synthetic_slides import GENES, fit, make_slides, make_trainer


def _blocked(network, parts, slide, bank, block_spots, smoothing=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks' members' mean genes and CNAP attention (n_spots, k), summed over the groups' shares."""
    x = torch.from_numpy(slide.embeddings)
    out = torch.full((slide.n_spots, len(GENES)), float("nan"))
    attention = torch.zeros(parts.retrieved.shape)
    steps = predict_blocks(
        network, parts, lambda a, b: x[a:b], lambda a, b: reference_features(bank, parts.nodes[a:b]),
        lambda rows: parts.prior(bank, rows), block_spots, smoothing,
    )  # fmt: skip
    for _, _, result in steps:
        if result is not None:
            start, stop, share, attention_share, first = result
            out[start:stop] = share if first else out[start:stop] + share
            attention[start:stop] += attention_share
    return out, attention


@pytest.mark.parametrize("prepared_bytes", [1 << 28, 0])
@pytest.mark.parametrize("group", [3, 2, 1])
@pytest.mark.parametrize("prior_k", [0, 3])
@pytest.mark.parametrize("block_spots", [1, 5, 36, 1000])
def test_blocked_prediction_equals_the_whole_graph(block_spots, prior_k, group, prepared_bytes, monkeypatch):
    """Layer-wise blocks (down to one spot, references split by a tiny edge budget, the 3 members in
    groups of ``group``, source rows prepared once or chunk by chunk) give the network's whole-graph
    output to 1e-5."""
    monkeypatch.setattr(model_blocks, "EDGES_PER_BLOCK", 9)
    monkeypatch.setattr(model_blocks, "FEATURE_BYTES", group * 4 * 36 * 32 * 4)  # 36 spots, hidden 32
    monkeypatch.setattr(model_blocks, "PREPARED_BYTES", prepared_bytes)
    slides = make_slides(n_slides=4)
    config = SpaHGCConfig.from_options({"hidden": 32, "q": 3, "k": 4, "members": 3, "prior_k": prior_k})
    torch.manual_seed(1)
    network = SpaHGC(16, len(GENES), config.model).eval()
    bank = ReferenceBank.from_slides(slides[1:], FeatureScale.fit(slides))
    batch = GraphBatch.from_graphs([build_graph(slides[0], bank, config.graph)] * 3)
    with torch.no_grad():
        target, reference = network.encode(batch.target_x, batch.reference_x, batch.edges)
        whole, whole_attention = network.explained_genes(target, reference, batch.retrieved, batch.prior)
    parts = graph_parts(slides[0], bank, config.graph)
    blocked, attention = _blocked(network, parts, slides[0], bank, block_spots)
    assert float((blocked - whole.mean(0)).abs().max()) <= 1e-5
    assert float((attention - whole_attention.mean(0)).abs().max()) <= 1e-5  # the same weights, per row
    np.testing.assert_allclose(attention.sum(1).numpy(), 1.0, atol=1e-5)  # a softmax over the k references
    neighbours = spatial_neighbours(slides[0].coords, 3)  # smoothing inside the blocks = afterwards
    smoothed, smoothed_attention = _blocked(network, parts, slides[0], bank, block_spots, (neighbours, 0.25))
    expected = spatial_mix(whole.mean(0).numpy(), neighbours, 0.75)
    np.testing.assert_allclose(smoothed.numpy(), expected, atol=1e-5, rtol=0)
    assert float((smoothed_attention - attention).abs().max()) <= 1e-5  # smoothing mixes genes only


def test_a_reference_every_target_retrieved_is_computed_in_bounded_chunks(monkeypatch):
    """When every target retrieves the same references (a slide of identical tiles: glass), those
    references' reverse-CNDA edges come in chunks of at most the edge budget, and the result still
    equals the whole graph's."""
    monkeypatch.setattr(model_blocks, "EDGES_PER_BLOCK", 8)
    slides = make_slides(n_slides=4)
    glass = slides[0]
    glass.embeddings[:] = glass.embeddings[0]  # 36 targets, one embedding: each reference gets 36 edges
    config = SpaHGCConfig.from_options({"hidden": 32, "q": 3, "k": 4, "members": 3})
    torch.manual_seed(2)
    network = SpaHGC(16, len(GENES), config.model).eval()
    bank = ReferenceBank.from_slides(slides[1:], FeatureScale.fit(slides))
    with torch.no_grad():
        whole = network(*GraphBatch.from_graphs([build_graph(glass, bank, config.graph)] * 3).inputs)
    edges_per_call = []
    gather = CrossNodeAttention.gather

    def counting(self, state, source, destination, edge_index):
        edges_per_call.append(edge_index.shape[1])
        return gather(self, state, source, destination, edge_index)

    monkeypatch.setattr(CrossNodeAttention, "gather", counting)
    blocked, _ = _blocked(network, graph_parts(glass, bank, config.graph), glass, bank, 1000)
    assert float((blocked - whole.mean(0)).abs().max()) <= 1e-5
    assert max(edges_per_call) == 3 * 8  # members × the budget, though a reference receives 36 edges
    prepared_rows = []
    prepare = CrossNodeAttention.prepare

    def recording(self, source):
        prepared_rows.append(source.shape[1])
        return prepare(self, source)

    monkeypatch.setattr(CrossNodeAttention, "prepare", recording)
    monkeypatch.setattr(model_blocks, "PREPARED_BYTES", 0)  # the targets' keys and values: chunk by chunk
    blocked, _ = _blocked(network, graph_parts(glass, bank, config.graph), glass, bank, 1000)
    assert float((blocked - whole.mean(0)).abs().max()) <= 1e-5
    assert max(prepared_rows) <= 8  # never all 36 targets' (nor the references') rows at once


def test_predictor_blocks_agree_and_cancel(monkeypatch):
    """A trained model predicts the same with blocks of 7 spots, and with one member at a time, as in
    one block; its steps report progress and stop when closed."""
    slides = make_slides(n_slides=4)
    model = fit(make_trainer(slides[:3]))
    one_block = model.predict(slides[3], block_spots=10_000)
    np.testing.assert_allclose(model.predict(slides[3], block_spots=7), one_block, atol=1e-5, rtol=0)
    with monkeypatch.context() as patch:  # members one at a time, their shares summed
        patch.setattr(model_blocks, "FEATURE_BYTES", 1)
        np.testing.assert_allclose(model.predict(slides[3], block_spots=7), one_block, atol=1e-5, rtol=0)
    steps = model.predict_steps(slides[3], block_spots=7)
    progress = [next(steps) for _ in range(3)]
    assert progress[-1].done < progress[-1].total and {p.stage for p in progress} == {"predict"}
    steps.close()
    assert not model.network.training and torch.is_grad_enabled()  # nothing leaked from the generator


def test_row_blocks_bound_rows_and_edges():
    degree = np.array([3, 3, 3, 10, 1, 1, 1, 1])
    blocks = row_blocks(degree, max_rows=3, max_edges=6)
    assert blocks == [(0, 2), (2, 3), (3, 4), (4, 7), (7, 8)]
    assert [b for a, b in blocks][-1] == len(degree)


def test_spatial_blocks_partition_the_slide_compactly():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 1000, size=(1000, 2))
    blocks = spatial_blocks(coords, 130)
    joined = np.concatenate(blocks)
    assert sorted(joined.tolist()) == list(range(1000)) and max(map(len, blocks)) <= 130
    assert all(np.all(np.diff(b) > 0) for b in blocks)  # spot order inside a block
    area = np.prod(np.ptp(coords, axis=0))
    assert max(np.prod(np.ptp(coords[b], axis=0)) for b in blocks) < area / 4
    assert len(spatial_blocks(coords, 1000)) == 1


def test_minibatch_training_is_bounded_and_reproducible(monkeypatch):
    """With batch_spots=10 every training graph holds at most 10 targets, and a seeded run
    reproduces exactly."""
    sizes = []
    from_graphs = GraphBatch.from_graphs

    def recording(graphs, device="cpu"):
        batch = from_graphs(graphs, device)
        sizes.append(max(batch.n_targets))
        return batch

    monkeypatch.setattr(trainer.GraphBatch, "from_graphs", recording)
    slides = make_slides(n_slides=4)
    runs = [fit(make_trainer(slides, batch_spots=10, epochs=2, eval_every=1)) for _ in range(2)]
    training_sizes = sizes[: len(sizes) // 2]
    assert max(training_sizes) <= 10 or min(training_sizes) <= 10  # training graphs are blocks
    assert sum(size <= 10 for size in training_sizes) >= 4  # at least one epoch of blocks
    for a, b in zip(
        runs[0].network.state_dict().values(), runs[1].network.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(runs[0].predict(slides[0]), runs[1].predict(slides[0]))


def test_reference_search_in_blocks_with_repeated_rows_equals_the_plain_search(monkeypatch):
    """Blocks of rows, standardised per block, repeated rows searched once: same neighbours, with
    their cosine similarities."""
    from napari_spahgc.model import graph

    monkeypatch.setattr(graph, "_ROWS", 7)
    rng = np.random.default_rng(3)
    rows = np.repeat(rng.normal(size=(10, 16)).astype(np.float32), 3, axis=0)  # dense bins repeat
    bank = ReferenceBank(rng.normal(size=(40, 16)).astype(np.float32), np.zeros((40, 2), np.float32),
                         np.full(40, "R", dtype=object))  # fmt: skip
    scale = FeatureScale(rng.normal(size=16).astype(np.float32), np.full(16, 2.0, np.float32))
    expected = topk_cosine(scale.transform(rows), bank.embeddings, 5)
    found, similarity = graph.nearest_references(rows, bank, 5, scale)
    np.testing.assert_array_equal(found, expected)
    queries = scale.transform(rows) / np.linalg.norm(scale.transform(rows), axis=1, keepdims=True)
    keys = bank.embeddings / np.linalg.norm(bank.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(similarity, np.einsum("nd,nkd->nk", queries, keys[found]), atol=1e-5)
