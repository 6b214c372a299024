"""The relations table drives graph building, batching and the network: a relation added to the
table alone gets edges, member offsets, an operator and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spahgc.base.spatial import spatial_neighbours
from napari_spahgc.model.config import ModelOptions
from napari_spahgc.model.graph import GraphOptions, ReferenceBank, build_graph
from napari_spahgc.model.network import SpaHGC, relations
from napari_spahgc.model.slide_data import FeatureScale, SlideData
from napari_spahgc.train.batch import GraphBatch


def _slide(slide_id: str, n: int, seed: int) -> SlideData:
    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(n) % 5, np.arange(n) // 5], 1) * 100.0
    return SlideData(
        slide_id, np.arange(n).astype(str), rng.normal(size=(n, 6)).astype(np.float32), coords,
        rng.random((n, 3)).astype(np.float32),
    )  # fmt: skip


def _graphs(n_members: int = 2) -> list:
    references = [_slide("A", 12, 1), _slide("B", 9, 2)]
    bank = ReferenceBank.from_slides(references, FeatureScale.fit(references))
    return [
        build_graph(_slide("T", 10 + m, 3 + m), bank, GraphOptions(q=3, k=4, k_rs=2))
        for m in range(n_members)
    ]


FAR = relations.Relation(
    "far", "target", "target", lambda i: spatial_neighbours(i.target_coords, 6)[:, 3:], "sage"
)  # each spot hears from its 4th–6th nearest spots: an edge type the code has never seen


def test_a_relation_added_to_the_table_runs_everywhere(monkeypatch):
    monkeypatch.setattr(relations, "RELATIONS", (*relations.RELATIONS, FAR))
    graphs = _graphs()
    assert graphs[0][FAR.edge_type].edge_index.shape == (2, 10 * 3)
    batch = GraphBatch.from_graphs(graphs)
    n_t = batch.target_x.shape[1]
    second = batch.edges[FAR.edge_type][:, 30:]  # the second member's edges sit in its own block of rows
    assert (second >= n_t).all() and (second < 2 * n_t).all()
    torch.manual_seed(0)
    network = SpaHGC(6, 3, ModelOptions(hidden=8, layers=1, heads=2, cnap_heads=2, members=2, dropout=0.0))
    assert "far" in network.layers[0].operators
    network(*batch.inputs).sum().backward()
    assert network.layers[0].operators["far"].neighbours.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("switch, relation", [("use_ts", relations.TS), ("use_rs", relations.RS)])
def test_a_switched_off_relation_sends_no_messages(switch, relation):
    batch = GraphBatch.from_graphs(_graphs())
    torch.manual_seed(0)
    options = ModelOptions(
        hidden=8, layers=2, heads=2, cnap_heads=2, members=2, dropout=0.0, **{switch: False}
    )
    network = SpaHGC(6, 3, options).eval()
    before = network(*batch.inputs)
    scrambled = {**batch.edges, relation: batch.edges[relation].flip(0)}  # other edges entirely
    after = network(batch.target_x, batch.reference_x, scrambled, batch.retrieved)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    on = SpaHGC(6, 3, ModelOptions(hidden=8, layers=2, heads=2, cnap_heads=2, members=2, dropout=0.0)).eval()
    assert not torch.equal(
        on(*batch.inputs), on(batch.target_x, batch.reference_x, scrambled, batch.retrieved)
    )
