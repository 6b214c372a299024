"""The SpaHGC heterogeneous graph of one target slide and its reference bank (torch_geometric HeteroData).

Node types: ``target`` (the slide's spots; features = patch embeddings) and ``reference`` (spots of
*other* slides; features = [embedding ‖ expression]). Edge types:

- ``(target, ts, target)``: each spot receives from its Q nearest spots in the same slide;
- ``(reference, cs, target)``: each target spot receives from its top-K cosine-similar reference
  embeddings (CNDA also runs this relation in reverse);
- ``(reference, rs, reference)``: each reference node receives from its top-K most similar peers on the
  joint features (no self loops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch_geometric.data import HeteroData

from .dataset import FeatureScale, SlideData
from .options import GraphOptions

TS = ("target", "ts", "target")
CS = ("reference", "cs", "target")
RS = ("reference", "rs", "reference")

_CHUNK = 2048  # rows (and key columns) per block of the similarity search


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


def spatial_neighbours(coords: np.ndarray, q: int) -> np.ndarray:
    """(n, q') indices of each spot's q nearest other spots (Euclidean, nearest first, no self);
    q' = min(q, n − 1)."""
    q = min(q, len(coords) - 1)
    if q <= 0:
        return np.empty((len(coords), 0), dtype=np.int64)
    _, index = cKDTree(coords).query(coords, k=q + 1)
    index = np.asarray(index).reshape(len(coords), q + 1)
    own = np.arange(len(coords))[:, None]
    # drop self (ties at distance 0 may put another spot first): keep the first q that are not self
    order = np.argsort(index == own, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1)[:, :q].astype(np.int64)


def topk_cosine(queries: np.ndarray, keys: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """(n_queries, k) indices of the k keys most cosine-similar to each query, most similar first.

    Searched block by block (never the full similarity matrix); ``exclude_self`` skips key i for
    query i (queries and keys are the same set).
    """
    k = min(k, len(keys) - int(exclude_self))
    q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    c = torch.nn.functional.normalize(torch.as_tensor(keys, dtype=torch.float32), dim=1)
    result = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), _CHUNK):
        block = q[start : start + _CHUNK]
        best_scores = torch.full((len(block), 0), -np.inf)
        best_index = torch.empty((len(block), 0), dtype=torch.long)
        for key_start in range(0, len(c), _CHUNK):
            scores = block @ c[key_start : key_start + _CHUNK].T
            if exclude_self:
                rows = torch.arange(len(block))
                cols = rows + start - key_start
                inside = (cols >= 0) & (cols < scores.shape[1])
                scores[rows[inside], cols[inside]] = -np.inf
            take = min(k, scores.shape[1])
            top_scores, top_index = scores.topk(take, dim=1)
            best_scores = torch.cat([best_scores, top_scores], dim=1)
            best_index = torch.cat([best_index, top_index + key_start], dim=1)
            best_scores, order = best_scores.topk(min(k, best_scores.shape[1]), dim=1)
            best_index = best_index.gather(1, order)
        result[start : start + len(block)] = best_index.numpy()
    return result


def joint_features(embeddings: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """[embedding ‖ expression] with each block L2-normalised, so both weigh equally in a cosine."""

    def unit(block: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        return block / np.where(norm > 0, norm, 1.0)

    return np.concatenate([unit(embeddings), unit(expression)], axis=1).astype(np.float32)


def build_graph(target: SlideData, bank: ReferenceBank, options: GraphOptions = GraphOptions()) -> HeteroData:
    """The SpaHGC graph of ``target`` against ``bank`` (which must not contain the target's slide)."""
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

    data = HeteroData()
    data["target"].x = torch.from_numpy(target.embeddings.astype(np.float32))
    ref_embeddings, ref_expression = bank.embeddings[nodes], bank.expression[nodes]
    data["reference"].x = torch.from_numpy(np.concatenate([ref_embeddings, ref_expression], axis=1))
    data["reference"].bank_index = torch.from_numpy(nodes.astype(np.int64))

    n_target, k = local.shape
    neighbours = spatial_neighbours(target.coords, options.q)
    data[TS].edge_index = _edges(neighbours)
    # CS edges are ordered by target, k per target: CNAP reshapes them to (n_target, k)
    data[CS].edge_index = torch.from_numpy(np.stack([local.ravel(), np.repeat(np.arange(n_target), k)]))
    peers = topk_cosine(
        *(2 * [joint_features(ref_embeddings, ref_expression)]), options.k_rs, exclude_self=True
    )
    data[RS].edge_index = _edges(peers)
    return data


def _edges(neighbours: np.ndarray) -> torch.Tensor:
    """Edges neighbour → node from an (n, m) neighbour table."""
    n, m = neighbours.shape
    return torch.from_numpy(np.stack([neighbours.ravel(), np.repeat(np.arange(n), m)]).astype(np.int64))
