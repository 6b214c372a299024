"""GraphBatch: the members' graphs padded into one batch, each member's edges a disjoint block that
never touches another member's rows or the padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spahgc import InputError
from napari_spahgc.model.config import GraphOptions
from napari_spahgc.model.graph import ReferenceBank, build_graph
from napari_spahgc.model.relations import CS
from napari_spahgc.model.slide_data import FeatureScale
from napari_spahgc.train.batch import GraphBatch
from synthetic_slides import make_slides


def _graphs(options: GraphOptions = GraphOptions(q=3, k=4)):
    """A 20-spot and a 36-spot target against the same bank, with their truth."""
    slides = make_slides(n_slides=4)
    small = make_slides(n_slides=1, n=20, seed=4)[0]
    small.coords, small.slide_id = small.coords[:20], "small"
    bank = ReferenceBank.from_slides(slides[1:], FeatureScale.fit(slides))
    graphs = [build_graph(small, bank, options), build_graph(slides[0], bank, options)]
    for graph, slide in zip(graphs, (small, slides[0]), strict=True):
        graph["target"].y = torch.from_numpy(slide.expression)
    return graphs


def test_padding_and_masks():
    graphs = _graphs()
    batch = GraphBatch.from_graphs(graphs)
    n_r = [g["reference"].num_nodes for g in graphs]
    assert batch.n_targets == [20, 36] and batch.target_x.shape == (2, 36, 16)
    assert batch.reference_x.shape == (2, max(n_r), graphs[0]["reference"].x.shape[1])
    torch.testing.assert_close(batch.target_x[0, :20], graphs[0]["target"].x)
    assert (batch.target_x[0, 20:] == 0).all() and (batch.truth[0, 20:] == 0).all()
    torch.testing.assert_close(batch.truth[1], graphs[1]["target"].y)
    assert batch.target_mask.squeeze(-1).sum(1).tolist() == [20, 36]
    assert batch.reference_mask.squeeze(-1).sum(1).tolist() == n_r
    rows = np.arange(2 * 36 * 3).reshape(2, 36, 3)
    first, second = batch.split(rows)
    np.testing.assert_array_equal(first, rows[0, :20])
    np.testing.assert_array_equal(second, rows[1])
    del graphs[1]["target"].y
    assert GraphBatch.from_graphs(graphs).truth is None  # a graph to predict: no truth for any member


def test_each_members_edges_stay_in_its_own_real_rows():
    graphs = _graphs()
    batch = GraphBatch.from_graphs(graphs)
    padded = {"target": batch.target_x.shape[1], "reference": batch.reference_x.shape[1]}
    for edge_type, edges in batch.edges.items():
        source, _, destination = edge_type
        assert edges.shape[1] == sum(g[edge_type].edge_index.shape[1] for g in graphs)
        start = 0
        for m, graph in enumerate(graphs):
            own = edges[:, start : start + graph[edge_type].edge_index.shape[1]]
            start += own.shape[1]
            for side, node in ((0, source), (1, destination)):  # shifted into member m's block
                torch.testing.assert_close(own[side] - m * padded[node], graph[edge_type].edge_index[side])
    k = 4
    for m, graph in enumerate(graphs):
        n = graph["target"].num_nodes
        offset = m * padded["reference"]
        np.testing.assert_array_equal(  # each target's k references, in the member's block
            batch.retrieved[m, :n].numpy(), graph[CS].edge_index[0].view(-1, k).numpy() + offset
        )
        assert (batch.retrieved[m, n:] == offset).all()  # padded targets point at a real reference


def test_members_must_retrieve_the_same_number_of_references():
    small_k = _graphs(GraphOptions(q=3, k=3))[0]
    with pytest.raises(InputError, match="same number K of CS references"):
        GraphBatch.from_graphs([small_k, _graphs()[1]])
