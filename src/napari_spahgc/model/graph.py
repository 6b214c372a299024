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
from napari_spahgc.model.neighbours import CosineIndex, DistinctRows, SearchOptions, row_bytes
from napari_spahgc.model.relations import GraphInputs
from napari_spahgc.model.slide_data import FeatureScale, SlideData

_ROWS = 65536  # target rows per block of the reference search


@dataclass
class ReferenceBank:
    """Reference spots: standardised embeddings (held by their distinct rows: dense embeddings
    repeat), standardised expression (float16 when the embeddings are), the slide each came from and,
    where known (not in models saved before they were recorded), its spot id and full-resolution
    centre."""

    embeddings: DistinctRows
    expression: np.ndarray
    slide_ids: np.ndarray
    spot_ids: np.ndarray | None = None
    centers_px: np.ndarray | None = None
    _indexes: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.embeddings = DistinctRows.of(self.embeddings)  # an array: its rows found once

    @classmethod
    def from_slides(
        cls, slides: Sequence[SlideData], scale: FeatureScale, embedding_scale: FeatureScale | None = None
    ) -> ReferenceBank:
        """The bank of ``slides``' spots: their embeddings (standardised by ``embedding_scale`` when
        given) and their expression standardised by ``scale``, each slide's block by block: no float32
        copy of a float16 slide is ever whole."""
        if any(s.expression is None for s in slides):
            raise ValueError("every reference slide needs measured expression")
        transform = None if embedding_scale is None else embedding_scale.transform
        embeddings = DistinctRows.concatenate([DistinctRows.of(s.embeddings, transform) for s in slides])
        expression = np.empty((len(embeddings), slides[0].expression.shape[1]), embeddings.distinct.dtype)
        for slide, first in zip(slides, np.cumsum([0, *(s.n_spots for s in slides)]), strict=False):
            for start in range(0, slide.n_spots, _ROWS):
                block = slide.expression[start : start + _ROWS]
                expression[first + start : first + start + len(block)] = scale.transform(block)
        return cls(
            embeddings=embeddings,
            expression=expression,
            slide_ids=np.concatenate([np.full(s.n_spots, s.slide_id, dtype=object) for s in slides]),
            spot_ids=np.concatenate([np.asarray(s.spot_ids, dtype=object) for s in slides]),
            centers_px=np.concatenate([s.coords for s in slides]).astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.embeddings)

    def search_index(self, options: SearchOptions, graph: dict[str, np.ndarray] | None = None) -> CosineIndex:
        """The index of the bank's embeddings for ``options``, built once per bank and options (or
        from a saved ``graph``: :meth:`CosineIndex.graph`)."""
        if options not in self._indexes:
            self._indexes[options] = CosineIndex(self.embeddings, options, graph)
        return self._indexes[options]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_indexes": {}}  # an index is rebuilt where it is needed, not sent

    def rows(self, keep: np.ndarray) -> ReferenceBank:
        """The bank's rows ``keep`` (a mask or indices)."""
        return ReferenceBank(
            self.embeddings.take(keep),
            *(None if v is None else v[keep] for v in (self.expression, self.slide_ids)),
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

    def hetero_data(self, bank: ReferenceBank) -> HeteroData:
        """The graph as ``HeteroData`` without node features: the reference nodes' rows of ``bank``
        (``bank_index``), every relation's edges and, with a retrieval prior, the targets' ``prior``."""
        data = HeteroData()
        data["target"].num_nodes = len(self.retrieved)
        data["reference"].num_nodes = len(self.nodes)
        data["reference"].bank_index = torch.from_numpy(self.nodes.astype(np.int64))
        for edge_type, edge_index in self.edges.items():
            data[edge_type].edge_index = edge_index
        if self.prior_neighbours is not None:  # mean expression of the prior_k most similar bank spots
            data["target"].prior = self.prior(bank)
        return data

    def prior(self, bank: ReferenceBank, rows: slice | np.ndarray = slice(None)) -> torch.Tensor | None:
        """The retrieval prior of targets ``rows``: their prior neighbours' mean expression."""
        if self.prior_neighbours is None:
            return None
        return torch.from_numpy(bank.expression[self.prior_neighbours[rows]].mean(axis=1, dtype=np.float32))


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
    inputs = GraphInputs(target.coords, bank.embeddings.take(nodes), bank.expression[nodes], local, options)
    edges = {relation.edge_type: _edges(relation.neighbours(inputs)) for relation in relations.RELATIONS}
    prior = (
        nearest_references(target.embeddings, bank, options.prior_k, scale, search)[0]
        if options.prior_k
        else None
    )
    return GraphParts(nodes, local, edges, similarity, prior)


def reference_features(bank: ReferenceBank, nodes: np.ndarray) -> torch.Tensor:
    """The reference nodes' features [embedding ‖ standardised expression], float32, filled a block of
    nodes at a time (no float32 copy of either part)."""
    width = bank.embeddings.shape[1]
    features = np.empty((len(nodes), width + bank.expression.shape[1]), np.float32)
    for start in range(0, len(nodes), _FEATURE_ROWS):
        rows = nodes[start : start + _FEATURE_ROWS]
        features[start : start + len(rows), :width] = bank.embeddings[rows]
        features[start : start + len(rows), width:] = bank.expression[rows]
    return torch.from_numpy(features)


_FEATURE_ROWS = 1 << 14


def build_graph(target: SlideData, bank: ReferenceBank, options: GraphOptions = GraphOptions()) -> HeteroData:
    """The SpaHGC graph of ``target`` against ``bank`` as ``HeteroData`` (:func:`graph_parts` with
    node features): CNAP reshapes a target's CS edges to its (k,) references, most similar first."""
    data = graph_parts(target, bank, options).hetero_data(bank)
    data["target"].x = torch.from_numpy(np.array(target.embeddings, dtype=np.float32))
    data["reference"].x = reference_features(bank, data["reference"].bank_index.numpy())
    return data


def _edges(neighbours: np.ndarray) -> torch.Tensor:
    """Edges neighbour → node from an (n, m) neighbour table."""
    n, m = neighbours.shape
    return torch.from_numpy(np.stack([neighbours.ravel(), np.repeat(np.arange(n), m)]).astype(np.int64))
