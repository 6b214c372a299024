"""The SpaHGC heterogeneous graph of one target slide and its reference bank (torch_geometric
HeteroData): the node features, and every relation of ``relations.RELATIONS`` as an edge type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch_geometric.data import HeteroData

from napari_spahgc.model import relations
from napari_spahgc.model.config import GraphOptions
from napari_spahgc.model.neighbours import CosineIndex, SearchOptions, row_bytes
from napari_spahgc.model.relations import GraphInputs
from napari_spahgc.model.slide_data import FeatureScale, SlideData

_ROWS = 65536  # target rows per block of the reference search


@dataclass
class ReferenceBank:
    """Reference spots: embeddings, standardised expression, the slide each came from and, where
    known (not in models saved before they were recorded), its spot id and full-resolution centre."""

    embeddings: np.ndarray
    expression: np.ndarray
    slide_ids: np.ndarray
    spot_ids: np.ndarray | None = None
    centers_px: np.ndarray | None = None
    _indexes: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_slides(cls, slides: Sequence[SlideData], scale: FeatureScale) -> ReferenceBank:
        if any(s.expression is None for s in slides):
            raise ValueError("every reference slide needs measured expression")
        return cls(
            embeddings=np.concatenate([s.embeddings for s in slides]).astype(np.float32),
            expression=scale.transform(np.concatenate([s.expression for s in slides])),
            slide_ids=np.concatenate([np.full(s.n_spots, s.slide_id, dtype=object) for s in slides]),
            spot_ids=np.concatenate([np.asarray(s.spot_ids, dtype=object) for s in slides]),
            centers_px=np.concatenate([s.coords for s in slides]).astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.embeddings)

    def search_index(self, options: SearchOptions) -> CosineIndex:
        """The index of the bank's embeddings for ``options``, built once per bank and options."""
        if options not in self._indexes:
            self._indexes[options] = CosineIndex(self.embeddings, options)
        return self._indexes[options]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_indexes": {}}  # an index is rebuilt where it is needed, not sent

    def rows(self, keep: np.ndarray) -> ReferenceBank:
        """The bank's rows ``keep`` (a mask or indices)."""
        return ReferenceBank(
            *(None if v is None else v[keep] for v in (self.embeddings, self.expression, self.slide_ids)),
            *(None if v is None else v[keep] for v in (self.spot_ids, self.centers_px)),
        )


@dataclass
class GraphParts:
    """A target slide's graph without its node features: the bank rows that are reference nodes,
    each target's retrieved references as reference-node indices ``(n_target, k)`` (most similar
    first), every relation's edges (ordered by destination node, each one's sources in table order),
    the cosine similarity of each target to its retrieved references as the search measured it and,
    with a retrieval prior, each target's ``prior_k`` nearest bank rows."""

    nodes: np.ndarray
    retrieved: np.ndarray
    edges: dict[tuple[str, str, str], torch.Tensor]
    similarity: np.ndarray
    prior_neighbours: np.ndarray | None = None

    def prior(self, bank: ReferenceBank, rows: slice | np.ndarray = slice(None)) -> torch.Tensor | None:
        """The retrieval prior of targets ``rows``: their prior neighbours' mean expression."""
        if self.prior_neighbours is None:
            return None
        return torch.from_numpy(bank.expression[self.prior_neighbours[rows]].mean(axis=1).astype(np.float32))


def nearest_references(
    embeddings: np.ndarray,
    bank: ReferenceBank,
    k: int,
    scale: FeatureScale | None = None,
    search: SearchOptions = SearchOptions(),
) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) bank rows most cosine-similar to each embedding (standardised by ``scale`` first) and
    their cosine similarities, searched in blocks of rows: memory stays flat in the number of spots.
    Repeated rows are searched once (dense embeddings repeat: 8 µm bins that share a field's feature
    cells share the embedding). A bank of ``search.min_keys`` spots or more is searched through its
    approximate index (:meth:`ReferenceBank.search_index`)."""
    index = bank.search_index(search)
    rows, similarity = [], []
    for start in range(0, len(embeddings), _ROWS):
        block = np.ascontiguousarray(embeddings[start : start + _ROWS])
        _, first, inverse = np.unique(row_bytes(block), return_index=True, return_inverse=True)
        distinct = block[first] if scale is None else scale.transform(block[first])
        found, scores = index.search(distinct, k)
        rows.append(found[inverse.ravel()])
        similarity.append(scores[inverse.ravel()])
    return np.concatenate(rows), np.concatenate(similarity)


def graph_parts(
    target: SlideData,
    bank: ReferenceBank,
    options: GraphOptions = GraphOptions(),
    scale: FeatureScale | None = None,
) -> GraphParts:
    """The graph of ``target`` against ``bank`` (which must not contain the target's slide), its
    embeddings standardised by ``scale`` when given. Reference nodes are the bank spots some target
    retrieved (``reference_nodes="retrieved"``) or the whole bank (``"bank"``)."""
    if np.any(bank.slide_ids == target.slide_id):
        raise ValueError(f"the reference bank contains spots of the target slide {target.slide_id!r}")
    search = options.search()
    retrieved, similarity = nearest_references(target.embeddings, bank, options.k, scale, search)  # bank rows
    if options.reference_nodes == "retrieved":
        nodes, local = np.unique(retrieved, return_inverse=True)
        local = local.reshape(retrieved.shape)
    else:  # "bank"
        nodes, local = np.arange(len(bank)), retrieved
    inputs = GraphInputs(target.coords, bank.embeddings[nodes], bank.expression[nodes], local, options)
    edges = {relation.edge_type: _edges(relation.neighbours(inputs)) for relation in relations.RELATIONS}
    prior = (
        nearest_references(target.embeddings, bank, options.prior_k, scale, search)[0]
        if options.prior_k
        else None
    )
    return GraphParts(nodes, local, edges, similarity, prior)


def reference_features(bank: ReferenceBank, nodes: np.ndarray) -> torch.Tensor:
    """The reference nodes' features [embedding ‖ standardised expression]."""
    return torch.from_numpy(np.concatenate([bank.embeddings[nodes], bank.expression[nodes]], axis=1))


def build_graph(target: SlideData, bank: ReferenceBank, options: GraphOptions = GraphOptions()) -> HeteroData:
    """The SpaHGC graph of ``target`` against ``bank`` as ``HeteroData`` (:func:`graph_parts` with
    node features): CNAP reshapes a target's CS edges to its (k,) references, most similar first."""
    parts = graph_parts(target, bank, options)
    data = HeteroData()
    data["target"].x = torch.from_numpy(target.embeddings.astype(np.float32))
    data["reference"].x = reference_features(bank, parts.nodes)
    data["reference"].bank_index = torch.from_numpy(parts.nodes.astype(np.int64))
    for edge_type, edge_index in parts.edges.items():
        data[edge_type].edge_index = edge_index
    if options.prior_k:  # the retrieval prior: mean expression of the prior_k most similar bank spots
        data["target"].prior = parts.prior(bank)
    return data


def _edges(neighbours: np.ndarray) -> torch.Tensor:
    """Edges neighbour → node from an (n, m) neighbour table."""
    n, m = neighbours.shape
    return torch.from_numpy(np.stack([neighbours.ravel(), np.repeat(np.arange(n), m)]).astype(np.int64))
