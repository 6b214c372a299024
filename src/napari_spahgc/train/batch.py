"""The ensemble members' graphs as one padded batch for the batched network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from napari_spahgc.base.errors import InputError
from napari_spahgc.model import relations
from napari_spahgc.model.graph import ReferenceBank, reference_features
from napari_spahgc.model.relations import CS


@dataclass
class GraphBatch:
    """One graph per ensemble member, padded to common node counts: features ``(members, n, d)``,
    edges indexing the flattened ``members × n`` rows (each member's graph a disjoint block), each
    target's CS references as a ``(members, n_target, k)`` table, and masks of the real rows."""

    target_x: Tensor
    reference_x: Tensor
    edges: dict
    retrieved: Tensor
    n_targets: list[int]
    target_mask: Tensor
    reference_mask: Tensor
    truth: Tensor | None = None
    prior: Tensor | None = None

    @property
    def inputs(self) -> tuple[Tensor, Tensor, dict, Tensor, Tensor | None]:
        return self.target_x, self.reference_x, self.edges, self.retrieved, self.prior

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """Per member, its real target rows of a ``(members, n, …)`` array."""
        return [values[m, :n] for m, n in enumerate(self.n_targets)]

    @classmethod
    def from_graphs(cls, graphs: Sequence[HeteroData], device: torch.device | str = "cpu") -> GraphBatch:
        n_t = max(g["target"].num_nodes for g in graphs)
        n_r = max(g["reference"].num_nodes for g in graphs)
        ks = {g[CS].edge_index.shape[1] // max(g["target"].num_nodes, 1) for g in graphs}
        if len(ks) > 1:
            raise InputError("every member's bank must offer the same number K of CS references")
        k = ks.pop()
        edges: dict = {relation.edge_type: [] for relation in relations.RELATIONS}
        retrieved = torch.empty(len(graphs), n_t, k, dtype=torch.long)
        for m, g in enumerate(graphs):
            offset = {"target": m * n_t, "reference": m * n_r}
            for relation in relations.RELATIONS:
                shift = torch.tensor([[offset[relation.source]], [offset[relation.destination]]])
                edges[relation.edge_type].append(g[relation.edge_type].edge_index + shift)
            # padded targets point at the member's first reference; never scored
            retrieved[m] = offset["reference"]
            retrieved[m, : g["target"].num_nodes] = g[CS].edge_index[0].view(-1, k) + offset["reference"]
        has_truth = all(_has(g["target"], "y") for g in graphs)
        has_prior = all("prior" in g["target"] for g in graphs)
        return cls(
            target_x=_pad([_rows(g["target"], "x") for g in graphs], n_t).to(device),
            reference_x=_pad([_rows(g["reference"], "x") for g in graphs], n_r).to(device),
            edges={relation: torch.cat(e, dim=1).to(device) for relation, e in edges.items()},
            retrieved=retrieved.to(device),
            n_targets=[g["target"].num_nodes for g in graphs],
            target_mask=_pad([torch.ones(g["target"].num_nodes, 1) for g in graphs], n_t).to(device),
            reference_mask=_pad([torch.ones(g["reference"].num_nodes, 1) for g in graphs], n_r).to(device),
            truth=_pad([_rows(g["target"], "y") for g in graphs], n_t).to(device) if has_truth else None,
            prior=_pad([g["target"].prior for g in graphs], n_t).to(device) if has_prior else None,
        )


@dataclass(frozen=True)
class TableRows:
    """What a node store reads of the table of every training spot (a :class:`ReferenceBank`) at its
    rows ``bank_index`` when a batch is made: their standardised ``"embeddings"``, ``"expression"``
    or both (``"joint"``: a reference node's features), float32."""

    table: ReferenceBank = field(repr=False)
    columns: str

    def __call__(self, rows: np.ndarray) -> Tensor:
        if self.columns == "joint":
            return reference_features(self.table, rows)
        return torch.from_numpy(np.asarray(getattr(self.table, self.columns)[rows], dtype=np.float32))


def _has(store, name: str) -> bool:
    return name in store or f"shared_{name}" in store


def _rows(store, name: str) -> Tensor:
    """A node store's ``name``: its own tensor, or its rows (``bank_index``) of the shared table
    (``shared_<name>``: :class:`TableRows`)."""
    if name in store:
        return store[name]
    return store[f"shared_{name}"](store.bank_index.numpy())


def _pad(tensors: Sequence[Tensor], rows: int) -> Tensor:
    """Stack 2-d tensors along a new first axis, zero-padding their rows to ``rows``."""
    out = tensors[0].new_zeros(len(tensors), rows, tensors[0].shape[1])
    for m, t in enumerate(tensors):
        out[m, : len(t)] = t
    return out
