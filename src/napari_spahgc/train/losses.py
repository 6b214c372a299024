"""SpaHGC's training terms: the differentiable per-gene Pearson, the asymmetric contrastive term, and
the feature masks of the two views."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pearson_per_gene(pred: Tensor, truth: Tensor, mask: Tensor | None = None) -> Tensor:
    """Differentiable Pearson correlation of each gene (last axis) across spots (second-to-last axis),
    over the rows where ``mask`` (``(…, n, 1)``) is 1, for the training loss (the metric itself is
    :func:`napari_spahgc.base.metrics.gene_pcc`); constant columns give NaN."""
    if mask is None:
        mask = torch.ones_like(pred[..., :1])
    count = mask.sum(-2, keepdim=True)
    pred = (pred - (pred * mask).sum(-2, keepdim=True) / count) * mask
    truth = (truth - (truth * mask).sum(-2, keepdim=True) / count) * mask
    denominator = pred.norm(dim=-2) * truth.norm(dim=-2)
    return torch.where(denominator > 1e-8, (pred * truth).sum(-2) / denominator.clamp_min(1e-8), torch.nan)


def contrastive(online: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Asymmetric contrastive term 2 − 2·cos(online, stop-gradient target), averaged over nodes (the
    real ones where ``mask`` is given; one value per leading index)."""
    term = 2 - 2 * torch.nn.functional.cosine_similarity(online, target.detach(), dim=-1)
    if mask is None:
        return term.mean(-1)
    return (term * mask).sum(-1) / mask.sum(-1)


def bernoulli_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> Tensor:
    """A boolean mask, each entry True with probability ``p`` (to 1/65536): drawn as 16-bit integers
    by numpy's PCG64, about 3× faster than torch's CPU generator for these millions of entries."""
    draws = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    return torch.from_numpy(draws < round(p * (1 << 16)))


def masked(x: Tensor, kept: Tensor, keep_ratio: float) -> Tensor:
    """``x`` where ``kept``, 0 elsewhere, rescaled by 1 / ``keep_ratio`` (one pass; the bool mask is
    never converted to floats, which is slow on the CPU)."""
    return torch.where(kept, x * (1 / torch.tensor(keep_ratio, dtype=x.dtype)), 0.0)
