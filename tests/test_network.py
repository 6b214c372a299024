"""The batched ensemble network: members with their own weights, independent of each other and of
the padding their batch adds."""

from __future__ import annotations

import torch

from napari_spahgc.model.config import SpaHGCConfig
from napari_spahgc.model.graph import ReferenceBank, build_graph
from napari_spahgc.model.network import SpaHGC
from napari_spahgc.model.slide_data import FeatureScale
from napari_spahgc.train.batch import GraphBatch
from synthetic_slides import GENES, make_slides


def test_members_are_independent_and_padding_is_inert():
    """Member 0's output and gradients do not depend on what member 1 is given (or how much padding
    its larger graph adds)."""
    slides = make_slides(n_slides=4)
    small = make_slides(n_slides=1, n=20, seed=4)[0]
    small.coords = small.coords[:20]
    config = SpaHGCConfig.from_options({"hidden": 32, "q": 3, "k": 4, "members": 2})
    graph_options, model_options = config.graph, config.model
    torch.manual_seed(0)
    network = SpaHGC(16, len(GENES), model_options).eval()
    scale = FeatureScale.fit(slides)
    bank = ReferenceBank.from_slides(slides[1:], scale)
    graph_small = build_graph(small, bank, graph_options)
    outputs = []
    for other in (slides[0], make_slides(n_slides=1, n=36, seed=8)[0]):
        other.slide_id = "other"
        batch = GraphBatch.from_graphs([graph_small, build_graph(other, bank, graph_options)])
        assert batch.target_x.shape[1] == 36 and batch.n_targets == [20, 36]
        outputs.append(network(*batch.inputs)[0, :20])
    torch.testing.assert_close(outputs[0], outputs[1])
    alone = network(*GraphBatch.from_graphs([graph_small, graph_small]).inputs)[0]
    torch.testing.assert_close(alone, outputs[0])
    outputs[1].sum().backward()
    gradients = [p.grad for p in network.parameters() if p.grad is not None]
    assert all(g[1].abs().max() == 0 for g in gradients) and any(g[0].abs().max() > 0 for g in gradients)
    network.zero_grad()
    with network.members_only([1]):  # member 1 alone, with its own weights
        only = network(*GraphBatch.from_graphs([graph_small]).inputs)[0]
        only.sum().backward()
    torch.testing.assert_close(only, network(*GraphBatch.from_graphs([graph_small] * 2).inputs)[1])
    assert not torch.allclose(only, alone)  # member 0's weights give another output
    gradients = [p.grad for p in network.parameters() if p.grad is not None]
    assert all(g[0].abs().max() == 0 for g in gradients) and any(g[1].abs().max() > 0 for g in gradients)


def test_with_a_retrieval_prior_the_network_predicts_the_residual():
    slides = make_slides(n_slides=4)
    options = SpaHGCConfig.from_options({"hidden": 32, "q": 3, "k": 4, "members": 2, "prior_k": 6})
    torch.manual_seed(0)
    network = SpaHGC(16, len(GENES), options.model).eval()
    bank = ReferenceBank.from_slides(slides[1:], FeatureScale.fit(slides))
    batch = GraphBatch.from_graphs([build_graph(slides[0], bank, options.graph)] * 2)
    assert batch.prior.shape == (2, 36, len(GENES))
    with_prior = network(*batch.inputs)
    without = network(batch.target_x, batch.reference_x, batch.edges, batch.retrieved)
    torch.testing.assert_close(with_prior, without + batch.prior)
