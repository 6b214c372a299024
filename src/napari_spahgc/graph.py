"""The SpaHGC heterogeneous graph of one target slide and its reference bank (torch_geometric
HeteroData): the node features, and every relation of ``relations.RELATIONS`` as an edge type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import HeteroData

from . import relations
from .dataset import FeatureScale, SlideData
from .neighbours import topk_cosine
from .options import GraphOptions
from .relations import GraphInputs


@dataclass
class ReferenceBank:
    """Reference spots: embeddings, standardised expression and the slide each came from."""

    embeddings: np.ndarray
    expression: np.ndarray
    slide_ids: np.ndarray

    @classmethod
    def from_slides(cls, slides: Sequence[SlideData], scale: FeatureScale) -> ReferenceBank:
        if any(s.expression is None for s in slides):
            raise ValueError("every reference slide needs measured expression")
        return cls(
            embeddings=np.concatenate([s.embeddings for s in slides]).astype(np.float32),
            expression=scale.transform(np.concatenate([s.expression for s in slides])),
            slide_ids=np.concatenate([np.full(s.n_spots, s.slide_id, dtype=object) for s in slides]),
        )

    def __len__(self) -> int:
        return len(self.embeddings)


def build_graph(target: SlideData, bank: ReferenceBank, options: GraphOptions = GraphOptions()) -> HeteroData:
    """The SpaHGC graph of ``target`` against ``bank`` (which must not contain the target's slide).

    Reference nodes are the bank spots some target retrieved (``reference_nodes="retrieved"``) or the
    whole bank (``"bank"``); edges are ordered by destination node, each one's sources in table order
    (so a target's CS edges are its k references, most similar first: CNAP reshapes them to (n, k)).
    """
    if np.any(bank.slide_ids == target.slide_id):
        raise ValueError(f"the reference bank contains spots of the target slide {target.slide_id!r}")
    retrieved = topk_cosine(target.embeddings, bank.embeddings, options.k)  # (n_target, k) bank indices
    if options.reference_nodes == "retrieved":
        nodes, local = np.unique(retrieved, return_inverse=True)
        local = local.reshape(retrieved.shape)
    elif options.reference_nodes == "bank":
        nodes, local = np.arange(len(bank)), retrieved
    else:
        raise ValueError(f"reference_nodes must be 'retrieved' or 'bank', not {options.reference_nodes!r}")

    inputs = GraphInputs(target.coords, bank.embeddings[nodes], bank.expression[nodes], local, options)
    data = HeteroData()
    data["target"].x = torch.from_numpy(target.embeddings.astype(np.float32))
    data["reference"].x = torch.from_numpy(
        np.concatenate([inputs.reference_embeddings, inputs.reference_expression], axis=1)
    )
    data["reference"].bank_index = torch.from_numpy(nodes.astype(np.int64))
    for relation in relations.RELATIONS:
        data[relation.edge_type].edge_index = _edges(relation.neighbours(inputs))
    if options.prior_k:  # the retrieval prior: mean expression of the prior_k most similar bank spots
        nearest = topk_cosine(target.embeddings, bank.embeddings, options.prior_k)
        data["target"].prior = torch.from_numpy(bank.expression[nearest].mean(axis=1).astype(np.float32))
    return data


def _edges(neighbours: np.ndarray) -> torch.Tensor:
    """Edges neighbour → node from an (n, m) neighbour table."""
    n, m = neighbours.shape
    return torch.from_numpy(np.stack([neighbours.ravel(), np.repeat(np.arange(n), m)]).astype(np.int64))
