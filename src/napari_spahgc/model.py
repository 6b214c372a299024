"""The SpaHGC network, one small module per operator.

``SpaHGC.encode`` runs the heterogeneous encoder (input projections, then L layers of GraphSAGE on TS
and RS edges plus CNDA on CS edges, relation outputs averaged per node type); ``SpaHGC.predict_genes``
runs CNAP (multi-head attention of each target over its CS references, residual) and the MLP head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv
from torch_geometric.utils import scatter, softmax

from .graph import CS, RS, TS


@dataclass(frozen=True)
class ModelOptions:
    """Architecture; ``use_*`` switches exist for ablations (``use_cs=False`` drops every CS edge, so
    neither CNDA nor CNAP runs and the references are not used)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    cnap_heads: int = 4
    dropout: float = 0.1
    use_ts: bool = True
    use_rs: bool = True
    use_cs: bool = True
    use_cnda: bool = True
    use_cnap: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class CrossNodeAttention(nn.Module):
    """One direction of CNDA: nodes of the destination type attend over their incoming CS edges.

    Queries come from the destination nodes, keys and values from the source nodes; the softmax runs
    over each destination node's incoming edges (``torch_geometric.utils.softmax``).
    """

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError("hidden must be divisible by heads")
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, source: Tensor, destination: Tensor, edge_index: Tensor) -> Tensor:
        src, dst = edge_index
        shape = (-1, self.heads, self.head_dim)
        # index_select (not fancy indexing): its backward is a cheap index_add, not index_put
        q = self.query(destination).view(shape).index_select(0, dst)
        k = self.key(source).view(shape).index_select(0, src)
        v = self.value(source).view(shape).index_select(0, src)
        weights = softmax((q * k).sum(-1) / self.head_dim**0.5, dst, num_nodes=len(destination))
        messages = (weights.unsqueeze(-1) * v).reshape(len(src), -1)
        return self.out(scatter(messages, dst, dim=0, dim_size=len(destination), reduce="sum"))


class HeteroLayer(nn.Module):
    """One encoder layer: SAGE(TS) and CNDA(reference→target) for targets, SAGE(RS) and
    CNDA(target→reference) for references; each type's relation outputs are averaged, then
    residual + LayerNorm + ELU + dropout."""

    def __init__(self, options: ModelOptions) -> None:
        super().__init__()
        h = options.hidden
        self.options = options
        self.ts = SAGEConv(h, h)
        self.rs = SAGEConv(h, h)
        self.cnda_to_target = CrossNodeAttention(h, options.heads)
        self.cnda_to_reference = CrossNodeAttention(h, options.heads)
        self.norm_target = nn.LayerNorm(h)
        self.norm_reference = nn.LayerNorm(h)
        self.dropout = nn.Dropout(options.dropout)

    def forward(self, target: Tensor, reference: Tensor, edges: dict) -> tuple[Tensor, Tensor]:
        o = self.options
        to_target, to_reference = [], []
        if o.use_ts:
            to_target.append(self.ts(target, edges[TS]))
        if o.use_rs:
            to_reference.append(self.rs(reference, edges[RS]))
        if o.use_cs and o.use_cnda:
            to_target.append(self.cnda_to_target(reference, target, edges[CS]))
            to_reference.append(self.cnda_to_reference(target, reference, edges[CS].flip(0)))
        return self._update(target, to_target, self.norm_target), self._update(
            reference, to_reference, self.norm_reference
        )

    def _update(self, h: Tensor, relations: list[Tensor], norm: nn.LayerNorm) -> Tensor:
        if not relations:
            return h
        mixed = torch.stack(relations).mean(0)
        return self.dropout(nn.functional.elu(norm(h + mixed)))


class AttentionPooling(nn.Module):
    """CNAP: each target attends (multi-head) over the final embeddings of its k CS references;
    the pooled vector is added to the target embedding (residual)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, target: Tensor, reference: Tensor, cs_edges: Tensor) -> Tensor:
        n = len(target)
        k = cs_edges.shape[1] // max(n, 1)
        neighbours = reference.index_select(0, cs_edges[0]).view(n, k, -1)  # CS edges: by target, k each
        pooled, _ = self.attention(target.unsqueeze(1), neighbours, neighbours, need_weights=False)
        return self.norm(target + pooled.squeeze(1))


class SpaHGC(nn.Module):
    """Heterogeneous graph network: embeddings (+ reference expression) → predicted genes (standardised)."""

    def __init__(self, embedding_dim: int, n_genes: int, options: ModelOptions = ModelOptions()) -> None:
        super().__init__()
        h = options.hidden
        self.options = options
        self.project_target = nn.Sequential(nn.Linear(embedding_dim, h), nn.LayerNorm(h), nn.ELU())
        self.project_reference = nn.Sequential(
            nn.Linear(embedding_dim + n_genes, h), nn.LayerNorm(h), nn.ELU()
        )
        self.layers = nn.ModuleList(HeteroLayer(options) for _ in range(options.layers))
        self.pooling = (
            AttentionPooling(h, options.cnap_heads) if options.use_cs and options.use_cnap else None
        )
        self.head = nn.Sequential(
            nn.Linear(h, h), nn.ELU(), nn.Dropout(options.dropout), nn.Linear(h, n_genes)
        )

    def encode(self, target_x: Tensor, reference_x: Tensor, edges: dict) -> tuple[Tensor, Tensor]:
        target, reference = self.project_target(target_x), self.project_reference(reference_x)
        for layer in self.layers:
            target, reference = layer(target, reference, edges)
        return target, reference

    def predict_genes(self, target: Tensor, reference: Tensor, edges: dict) -> Tensor:
        if self.pooling is not None:
            target = self.pooling(target, reference, edges[CS])
        return self.head(target)

    def forward(self, target_x: Tensor, reference_x: Tensor, edges: dict) -> Tensor:
        return self.predict_genes(*self.encode(target_x, reference_x, edges), edges)
