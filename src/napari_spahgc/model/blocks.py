"""Prediction of a whole slide in blocks, layer by layer, with memory flat in the block size.

A spot's prediction depends on its TS neighbourhood (one hop per layer) and on its references, whose
features depend, through CNDA's reverse direction, on every target that retrieved them: no spatial
block with a halo is exact. So the encoder runs *layer by layer*: each layer computes every node's
new features in blocks of destination rows, each block receiving its messages from the previous
layer's features of all nodes (only the source rows its edges touch are projected). The results
equal :meth:`SpaHGC.forward` on the whole graph up to float rounding (a test holds them to 1e-5).
Memory: two copies of the hidden features of a group of members (group × nodes × hidden) and what the
messages need of the source rows (CNDA's keys and values: prepared once for all rows when they take
at most ``PREPARED_BYTES``, else for each chunk's source rows as it needs them — a Visium HD slide's
targets), plus one chunk's messages, at most ``EDGES_PER_BLOCK`` edges whatever one row receives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain

import numpy as np
import torch
from torch import Tensor

from napari_spahgc.model.config import ModelOptions
from napari_spahgc.model.graph import GraphParts
from napari_spahgc.model.network import NODE_TYPES, MessageOperator, SpaHGC

#: most incoming edges (over all relations) a block's messages are computed for at once
EDGES_PER_BLOCK = 1 << 16
#: most bytes the target features of one group of members may take (see :func:`member_groups`)
FEATURE_BYTES = 1 << 30
#: most bytes a route's source rows, prepared (:meth:`MessageOperator.prepare`), are held in at once
PREPARED_BYTES = 1 << 28


class _Route:
    """Edges into one node type of one message kind, sorted by destination, with row pointers."""

    def __init__(self, name: str, source: str, edge_index: Tensor, n_rows: int) -> None:
        order = torch.argsort(edge_index[1], stable=True)
        self.name, self.source = name, source
        self.src, self.dst = edge_index[0][order], edge_index[1][order]
        self.ptr = torch.searchsorted(self.dst, torch.arange(n_rows + 1, device=self.dst.device)).cpu()

    def chunks(self, sources: _Sources, start: int, stop: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The edges into destination rows ``start:stop`` in chunks of at most ``EDGES_PER_BLOCK``
        (per member): ``(the prepared source rows the chunk's edges touch, its edges in flattened
        members × rows indices)``. A row with more incoming edges than that is split over several
        chunks."""
        first, last = int(self.ptr[start]), int(self.ptr[stop])
        members = sources.members
        for begin in range(first, max(last, first + 1), EDGES_PER_BLOCK):
            end = min(begin + EDGES_PER_BLOCK, last)
            used, src = torch.unique(self.src[begin:end], return_inverse=True)
            shift = torch.arange(members, device=src.device).unsqueeze(1)
            edge_index = torch.stack(
                [
                    (shift * len(used) + src).reshape(-1),
                    (shift * (stop - start) + (self.dst[begin:end] - start)).reshape(-1),
                ]
            )
            yield sources.rows(used), edge_index


class _Sources:
    """A route's source rows as its operator's messages need them (:meth:`MessageOperator.prepare`):
    all prepared once when they fit ``PREPARED_BYTES``, else each chunk's rows when it asks (the keys
    and values of a 700,000-bin slide's targets would take 1 GB a member)."""

    def __init__(self, operator: MessageOperator, features: Tensor) -> None:
        members, rows = features.shape[:2]
        self.operator, self.features, self.members = operator, features, members
        width = operator.prepare(features[:, :1]).shape[-1]
        fits = members * rows * width * features.element_size() <= PREPARED_BYTES
        self.prepared = operator.prepare(features) if fits else None

    def rows(self, used: Tensor) -> Tensor:
        """The prepared source rows ``used``."""
        if self.prepared is not None:
            return self.prepared.index_select(1, used)
        return self.operator.prepare(self.features.index_select(1, used))


def row_blocks(degree: np.ndarray, max_rows: int, max_edges: int) -> list[tuple[int, int]]:
    """Consecutive row ranges of at most ``max_rows`` rows and (unless one row alone has more: its
    edges then come in chunks, :meth:`_Route.chunks`) at most ``max_edges`` incoming edges."""
    ends = np.cumsum(degree)
    blocks, start = [], 0
    while start < len(degree):
        before = ends[start - 1] if start else 0
        stop = min(start + max_rows, int(np.searchsorted(ends, before + max_edges, side="right")))
        stop = max(stop, start + 1)
        blocks.append((start, stop))
        start = stop
    return blocks


@torch.inference_mode()  # on a generator: entered on every resume, left at every yield
def predict_blocks(
    network: SpaHGC,
    parts: GraphParts,
    target_rows: Callable[[int, int], Tensor],
    reference_rows: Callable[[int, int], Tensor],
    prior: Callable[[np.ndarray], Tensor | None],
    block_spots: int,
    smoothing: tuple[np.ndarray, float] | None = None,
) -> Iterator[tuple[int, int, tuple[int, int, Tensor, bool] | None]]:
    """The members' mean standardised genes of every target, block by block.

    The members run in groups (:func:`member_groups`) whose target features fit ``FEATURE_BYTES``:
    all at once on a small slide, one by one on a Visium HD slide. Yields
    ``(blocks done, blocks in all, result)`` after every block of every stage; ``result`` is
    ``(start, stop, share (stop − start, n_genes), attention (stop − start, k) or None, first)`` for the
    final stage's blocks, else None: ``share`` is one group's part of the members' mean (the sum of its
    members' genes / members), and the mean is the sum of the shares, the first group's ``first``
    True; ``attention`` the same share of CNAP's attention over each target's references. ``target_rows(start, stop)``
    gives those targets' (standardised) embeddings, ``reference_rows(start, stop)`` those reference
    nodes' features (both are projected block by block); ``prior(rows)`` the retrieval prior of target rows
    ``rows`` or None. ``smoothing = (neighbours (n, q), s)`` mixes each spot's genes with its neighbours'
    mean, (1 − s) · own + s · mean (the neighbours' genes are computed with the block: no second
    slide-sized array). Stop iterating to cancel.
    """
    n_rows = {"target": len(parts.retrieved), "reference": len(parts.nodes)}
    first = network.layers[0] if len(network.layers) else None
    routes = {
        node: [_Route(name, src, e, n_rows[node]) for name, src, e in first.routes(node, parts.edges)]
        if first
        else []
        for node in NODE_TYPES
    }
    blocks = {
        node: _blocks(routes[node], n_rows[node], block_spots) if routes[node] else [] for node in NODE_TYPES
    }
    rows = {node: _row_ranges(n_rows[node], block_spots) for node in NODE_TYPES}
    inputs = {
        "target": (network.project_target, target_rows),
        "reference": (network.project_reference, reference_rows),
    }
    groups = member_groups(network.options, n_rows["target"])
    total = len(groups) * (
        len(rows["reference"])
        + 2 * len(rows["target"])
        + len(network.layers) * sum(map(len, blocks.values()))
    )
    done = 0
    for group in groups:
        with network.members_only(group):
            h: dict[str, Tensor] = {}
            stages = chain(
                *(
                    _project(*inputs[node], h, node, len(group), rows[node], n_rows[node])
                    for node in NODE_TYPES
                ),
                *(_layer(layer, h, routes, blocks) for layer in network.layers),
                _predict_targets(network, h, parts.retrieved, prior, rows["target"], smoothing),
            )
            for result in stages:
                done += 1
                yield done, total, None if result is None else (*result, group[0] == 0)
        del h, stages  # the group's features go before the next group's are made


def member_groups(options: ModelOptions, n_targets: int) -> list[list[int]]:
    """The members in consecutive groups whose target features — two copies, and CNDA's keys and
    values (float32) — fit ``FEATURE_BYTES`` (at least one member a group)."""
    per_member = 4 * n_targets * options.hidden * 4
    size = max(1, min(options.members, FEATURE_BYTES // max(per_member, 1)))
    return [list(range(m, min(m + size, options.members))) for m in range(0, options.members, size)]


def _row_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive ranges of at most ``size`` of ``n`` rows."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _project(project, rows, h: dict, node: str, members: int, blocks, n: int) -> Iterator[None]:
    """A node type's input projection, block by block of its rows, into ``h[node]`` (members, n, hidden)."""
    for start, stop in blocks:
        projected = project(rows(start, stop).expand(members, -1, -1))
        if node not in h:
            h[node] = projected.new_empty(members, n, projected.shape[-1])
        h[node][:, start:stop] = projected
        yield None


def _layer(layer, h: dict, routes: dict, blocks: dict) -> Iterator[None]:
    """One encoder layer over every node, block by block of destination rows; then ``h`` holds its
    output. Each route's source rows are prepared (CNDA's keys and values) once for all its blocks, or
    chunk by chunk when they would not fit ``PREPARED_BYTES`` (:class:`_Sources`)."""
    new = {node: torch.empty_like(h[node]) if routes[node] else h[node] for node in NODE_TYPES}
    for node in NODE_TYPES:
        sources = {
            route.name: _Sources(layer.operators[route.name], h[route.source]) for route in routes[node]
        }
        for start, stop in blocks[node]:
            inputs = [(route.name, route.chunks(sources[route.name], start, stop)) for route in routes[node]]
            new[node][:, start:stop] = layer.update(node, h[node][:, start:stop], inputs)
            yield None
        del sources
    h.update(new)


def _predict_targets(
    network: SpaHGC, h: dict, retrieved, prior, blocks, smoothing
) -> Iterator[tuple[int, int, Tensor, Tensor | None]]:
    """CNAP and the head per block of targets: ``(start, stop, the group's share of the members' mean
    genes, and of their attention over the references)``, the genes smoothed with the block's
    neighbours when ``smoothing`` is given."""
    members, n_references = h["reference"].shape[:2]
    device = h["reference"].device
    shift = (torch.arange(members, device=device) * n_references).view(-1, 1, 1)
    retrieved = torch.from_numpy(retrieved).to(device)
    for start, stop in blocks:
        rows = np.arange(start, stop)
        if smoothing is not None:
            near = smoothing[0][start:stop]
            rows, position = np.unique(np.concatenate([rows, near.ravel()]), return_inverse=True)
        index = torch.from_numpy(rows).to(device)
        table = retrieved.index_select(0, index).unsqueeze(0) + shift
        genes, attention = network.explained_genes(
            h["target"].index_select(1, index), h["reference"], table, prior(rows)
        )
        genes = genes.sum(0) / network.options.members
        if attention is not None:
            attention = attention.sum(0) / network.options.members
        if smoothing is not None:
            own, around = (
                torch.from_numpy(position[: stop - start]).to(device),
                torch.from_numpy(position[stop - start :]).to(device),
            )
            mean = genes.index_select(0, around).view(stop - start, near.shape[1], -1).mean(1)
            genes = (1 - smoothing[1]) * genes.index_select(0, own) + smoothing[1] * mean
            attention = None if attention is None else attention.index_select(0, own)
        yield start, stop, genes, attention


def _blocks(routes: list[_Route], n_rows: int, block_spots: int) -> list[tuple[int, int]]:
    """Blocks of destination rows, bounded in rows and in incoming edges."""
    degree = sum((np.diff(route.ptr.numpy()) for route in routes), np.zeros(n_rows, dtype=np.int64))
    return row_blocks(degree, block_spots, EDGES_PER_BLOCK)
