"""The SpaHGC network, one small module per operator, for an ensemble of independent members.

Every weight has a leading *member* axis: ``members`` networks with their own parameters run in one
batched computation (one matrix product per operator for all of them), which is what makes a
cross-validated ensemble affordable on a CPU, where small graphs are limited by per-operation
overhead, not arithmetic. Node features are ``(members, nodes, features)``; edges index the
flattened ``members × nodes`` rows, so each member's graph is a disjoint block and members never mix.

``SpaHGC.encode`` runs the heterogeneous encoder (input projections, then L layers of GraphSAGE on TS
and RS edges plus CNDA on CS edges, relation outputs averaged per node type); ``SpaHGC.predict_genes``
runs CNAP (multi-head attention of each target over its CS references, residual) and the MLP head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from napari_spahgc.model import relations
from napari_spahgc.model.config import ModelOptions


class MemberModule(nn.Module):
    """A module with one set of weights per member. :meth:`SpaHGC.members_only` can restrict it to
    some members (``active``): it then maps ``(len(active), n, …)`` inputs with those members' weights."""

    active: Tensor | None = None

    def member_weights(self, weight: Tensor | None) -> Tensor | None:
        if weight is None or self.active is None:
            return weight
        return weight.index_select(0, self.active)


class MemberLinear(MemberModule):
    """One affine map per member, applied to ``(members, n, in)`` in a single batched product; each
    member is initialised like ``torch.nn.Linear``."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = (
            nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound)) if bias else None
        )

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.member_weights(self.weight), self.member_weights(self.bias)
        return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)


class MemberLayerNorm(MemberModule):
    """LayerNorm over the feature axis with a per-member affine transform."""

    def __init__(self, members: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))

    def forward(self, x: Tensor) -> Tensor:
        normalised = nn.functional.layer_norm(x, x.shape[-1:])
        return torch.addcmul(self.member_weights(self.bias), normalised, self.member_weights(self.weight))


NODE_TYPES = ("target", "reference")


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


class MessageOperator(nn.Module):
    """An operator that aggregates messages along edges source → destination, over edges given in
    chunks: :meth:`prepare` computes what the messages need of every source row once, :meth:`gather`
    folds one chunk of edges into a running state per destination row, :meth:`finish` turns the state
    into the output. Any split of the edges gives the same result (up to float rounding), so a
    destination row with millions of incoming edges costs one chunk's memory."""

    def forward(self, source: Tensor, destination: Tensor, edge_index: Tensor) -> Tensor:
        return self.stream(destination, [(self.prepare(source), edge_index)])

    def stream(self, destination: Tensor, chunks: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """The output for ``destination`` from ``(prepared source rows, edges into destination)`` chunks."""
        state = None
        for prepared, edge_index in chunks:
            state = self.gather(state, prepared, destination, edge_index)
        return self.finish(destination, state)

    def prepare(self, source: Tensor) -> Tensor:
        """What the messages need of every source row, ``(members, rows, …)``: its features."""
        return source

    def gather(self, state, prepared: Tensor, destination: Tensor, edge_index: Tensor):
        raise NotImplementedError

    def finish(self, destination: Tensor, state) -> Tensor:
        raise NotImplementedError


class GraphSAGE(MessageOperator):
    """GraphSAGE with mean aggregation: W₁·mean_{j→i} x_j + W₂·x_i (``SAGEConv``'s operator, with a
    weight per member). State: the sum of the incoming features and their count per row."""

    def __init__(self, members: int, hidden: int) -> None:
        super().__init__()
        self.neighbours = MemberLinear(members, hidden, hidden)
        self.root = MemberLinear(members, hidden, hidden, bias=False)

    def gather(self, state, prepared: Tensor, destination: Tensor, edge_index: Tensor):
        src, dst = edge_index
        n_destination = destination.shape[0] * destination.shape[1]
        total = scatter(
            _flat(prepared).index_select(0, src), dst, dim=0, dim_size=n_destination, reduce="sum"
        )
        count = torch.bincount(dst, minlength=n_destination).to(total.dtype).unsqueeze(1)
        return (total, count) if state is None else (state[0] + total, state[1] + count)

    def finish(self, destination: Tensor, state) -> Tensor:
        total, count = state
        mean = total / count.clamp_min(1)
        root = self.root.member_weights(self.root.weight)
        return torch.baddbmm(self.neighbours(mean.view_as(destination)), destination, root)  # + W₂·x, fused


class CrossNodeAttention(MessageOperator):
    """One direction of CNDA: nodes of the destination type attend over their incoming CS edges,

        out_i = W_o · Σ_{j→i} softmax_j(q_i · k_j / √d) v_j,   per head,

    queries from the destination nodes, keys and values from the source nodes (:meth:`prepare`
    projects each source row once, keys ‖ values). The softmax is an online one (state: the running
    maximum logit, Σ exp and Σ exp·v per row and head), so the edges may come in any number of chunks.
    """

    def __init__(self, members: int, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError("hidden must be divisible by heads")
        self.heads, self.head_dim = heads, hidden // heads
        self.query = MemberLinear(members, hidden, hidden)
        self.key = MemberLinear(members, hidden, hidden)
        self.value = MemberLinear(members, hidden, hidden)
        self.out = MemberLinear(members, hidden, hidden)

    def prepare(self, source: Tensor) -> Tensor:
        """Keys ‖ values of every source row, one batched product."""
        weights = [self.key.member_weights(self.key.weight), self.value.member_weights(self.value.weight)]
        biases = [self.key.member_weights(self.key.bias), self.value.member_weights(self.value.bias)]
        return torch.baddbmm(torch.cat(biases, -1), source, torch.cat(weights, -1))

    def gather(self, state, prepared: Tensor, destination: Tensor, edge_index: Tensor):
        src, dst = edge_index
        shape = (-1, self.heads, self.head_dim)
        n_destination = destination.shape[0] * destination.shape[1]
        # index_select (not fancy indexing): its backward is a cheap index_add, not index_put
        q = self.query(destination).reshape(shape).index_select(0, dst)
        k, v = (part.reshape(shape).index_select(0, src) for part in prepared.chunk(2, dim=-1))
        logits = (q * k).sum(-1) / self.head_dim**0.5  # (edges, heads)
        top = logits.new_full((n_destination, self.heads), -math.inf)
        top = top.scatter_reduce(0, dst.unsqueeze(1).expand_as(logits), logits.detach(), "amax")
        if state is not None:
            top = torch.maximum(top, state[0])
        weights = torch.exp(logits - top.index_select(0, dst))
        total = scatter(weights, dst, dim=0, dim_size=n_destination, reduce="sum")
        pooled = scatter(weights.unsqueeze(-1) * v, dst, dim=0, dim_size=n_destination, reduce="sum")
        if state is None:
            return top, total, pooled
        rescale = torch.exp(state[0] - top).nan_to_num(0.0)  # rows without edges so far: −inf − −inf
        return top, state[1] * rescale + total, state[2] * rescale.unsqueeze(-1) + pooled

    def finish(self, destination: Tensor, state) -> Tensor:
        _, total, pooled = state
        pooled = pooled / total.clamp_min(1e-16).unsqueeze(-1)  # rows without edges: 0
        return self.out(pooled.reshape(destination.shape))


OPERATORS = {
    "sage": lambda options: GraphSAGE(options.members, options.hidden),
    "attention": lambda options: CrossNodeAttention(options.members, options.hidden, options.heads),
}  # a relation's ``operator`` → its module, built from ``ModelOptions``


class HeteroLayer(nn.Module):
    """One encoder layer: every relation of ``RELATIONS`` that the options use passes messages with its
    operator (and, ``both_ways``, a second one on the reversed edges: CNDA); each node type's incoming
    relation outputs are averaged, then residual + LayerNorm + ELU + dropout."""

    def __init__(self, options: ModelOptions) -> None:
        super().__init__()
        self.used_relations = [r for r in relations.RELATIONS if r.used_by(options)]
        self.operators = nn.ModuleDict()
        for relation in relations.RELATIONS:  # all of them: the weights' layout does not depend on switches
            self.operators[relation.name] = OPERATORS[relation.operator](options)
            if relation.both_ways:
                self.operators[f"{relation.name}_reverse"] = OPERATORS[relation.operator](options)
        self.norms = nn.ModuleDict(
            {node: MemberLayerNorm(options.members, options.hidden) for node in NODE_TYPES}
        )
        self.dropout = nn.Dropout(options.dropout)

    def routes(self, node: str, edges: dict) -> Iterator[tuple[str, str, Tensor]]:
        """Every message into ``node``'s rows, in a fixed order: (operator name, source node type,
        edges source → ``node``) — a used relation ending at ``node``, or a ``both_ways`` relation
        starting there (its reversed edges)."""
        for relation in self.used_relations:
            edge_index = edges[relation.edge_type]
            if relation.destination == node:
                yield relation.name, relation.source, edge_index
            if relation.both_ways and relation.source == node:
                yield f"{relation.name}_reverse", relation.destination, edge_index.flip(0)

    def update(
        self, node: str, destination: Tensor, inputs: Sequence[tuple[str, Iterable[tuple[Tensor, Tensor]]]]
    ) -> Tensor:
        """New features of ``destination`` (rows of type ``node``: all of them or a block) from its
        incoming messages, ``(operator name, chunks of (source features, edges source → destination
        rows))``, the source rows as :meth:`MessageOperator.prepare` gives them."""
        messages = [self.operators[name].stream(destination, chunks) for name, chunks in inputs]
        return self._update(destination, messages, node)

    def forward(self, target: Tensor, reference: Tensor, edges: dict) -> tuple[Tensor, Tensor]:
        h = {"target": target, "reference": reference}
        target, reference = (
            self.update(
                node,
                h[node],
                [
                    (name, [(self.operators[name].prepare(h[source]), e)])
                    for name, source, e in self.routes(node, edges)
                ],
            )
            for node in NODE_TYPES
        )
        return target, reference

    def _update(self, h: Tensor, messages: list[Tensor], node: str) -> Tensor:
        if not messages:
            return h
        mixed = torch.stack(messages).mean(0)
        return self.dropout(nn.functional.elu(self.norms[node](h + mixed)))


class AttentionPooling(CrossNodeAttention):
    """CNAP: each target attends (multi-head) over the final embeddings of its k CS references;
    the pooled vector is added to the target embedding (residual). Same projections as CNDA, over a
    dense (target, k) table instead of an edge list."""

    def __init__(self, members: int, hidden: int, heads: int) -> None:
        super().__init__(members, hidden, heads)
        self.norm = MemberLayerNorm(members, hidden)

    def forward(self, target: Tensor, reference: Tensor, retrieved: Tensor) -> Tensor:
        """``retrieved``: (members, n_target, k) flattened reference rows of each target's CS edges."""
        return self.attend(target, reference, retrieved)[0]

    def attend(self, target: Tensor, reference: Tensor, retrieved: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled targets and the attention weights (members, n_target, k, heads)."""
        m, n, k = retrieved.shape
        rows = retrieved.reshape(-1)
        # project every reference once, then gather each target's k (cheaper than projecting n·k copies)
        q = self.query(target).view(m, n, 1, self.heads, self.head_dim)
        keys = _flat(self.key(reference)).index_select(0, rows).view(m, n, k, self.heads, self.head_dim)
        values = _flat(self.value(reference)).index_select(0, rows).view(m, n, k, self.heads, self.head_dim)
        weights = torch.softmax((q * keys).sum(-1) / self.head_dim**0.5, dim=2)  # over the k references
        pooled = (weights.unsqueeze(-1) * values).sum(2).reshape(m, n, -1)
        return self.norm(target + self.out(pooled)), weights


class SpaHGC(nn.Module):
    """Heterogeneous graph network: embeddings (+ reference expression) → predicted genes
    (standardised), for every ensemble member at once."""

    def __init__(self, embedding_dim: int, n_genes: int, options: ModelOptions = ModelOptions()) -> None:
        super().__init__()
        m, h = options.members, options.hidden
        self.options = options
        self.project_target = nn.Sequential(
            MemberLinear(m, embedding_dim, h), MemberLayerNorm(m, h), nn.ELU()
        )
        self.project_reference = nn.Sequential(
            MemberLinear(m, embedding_dim + n_genes, h), MemberLayerNorm(m, h), nn.ELU()
        )
        self.layers = nn.ModuleList(HeteroLayer(options) for _ in range(options.layers))
        self.pooling = (
            AttentionPooling(m, h, options.cnap_heads) if options.use_cs and options.use_cnap else None
        )
        self.head = nn.Sequential(
            MemberLinear(m, h, h), nn.ELU(), nn.Dropout(options.dropout), MemberLinear(m, h, n_genes)
        )

    def encode(self, target_x: Tensor, reference_x: Tensor, edges: dict) -> tuple[Tensor, Tensor]:
        target, reference = self.project_target(target_x), self.project_reference(reference_x)
        for layer in self.layers:
            target, reference = layer(target, reference, edges)
        return target, reference

    def predict_genes(
        self, target: Tensor, reference: Tensor, retrieved: Tensor, prior: Tensor | None = None
    ) -> Tensor:
        """The genes of every target; with a retrieval ``prior``, the head predicts the residual over it."""
        return self.explained_genes(target, reference, retrieved, prior)[0]

    def explained_genes(
        self, target: Tensor, reference: Tensor, retrieved: Tensor, prior: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`predict_genes` and CNAP's attention of each target over its k references, the mean
        over heads (members, n_target, k); None without CNAP."""
        attention = None
        if self.pooling is not None:
            target, weights = self.pooling.attend(target, reference, retrieved)
            attention = weights.mean(-1)
        genes = self.head(target)
        return (genes if prior is None else genes + prior), attention

    def forward(
        self,
        target_x: Tensor,
        reference_x: Tensor,
        edges: dict,
        retrieved: Tensor,
        prior: Tensor | None = None,
    ) -> Tensor:
        return self.predict_genes(*self.encode(target_x, reference_x, edges), retrieved, prior)

    @contextmanager
    def members_only(self, members: Sequence[int]) -> Iterator[None]:
        """Inside the block the network runs only ``members``: inputs hold one graph per listed member,
        in that order; the other members' weights are not used and get no gradient. Training uses
        this to drop members that have stopped early, so they cost nothing."""
        if list(members) == list(range(self.options.members)):
            yield
            return
        modules = [m for m in self.modules() if isinstance(m, MemberModule)]
        index = torch.as_tensor(list(members), dtype=torch.long, device=modules[0].weight.device)
        for module in modules:
            module.active = index
        try:
            yield
        finally:
            for module in modules:
                module.active = None
