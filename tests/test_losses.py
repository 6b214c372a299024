"""SpaHGC's training terms on known inputs: the per-gene Pearson, the contrastive term, the masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spahgc.train.losses import bernoulli_mask, contrastive, masked, pearson_per_gene


def test_loss_terms_on_known_inputs():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert contrastive(a, a).item() == pytest.approx(0.0)
    assert contrastive(a, -a).item() == pytest.approx(4.0)
    assert contrastive(a, a.flip(1)).item() == pytest.approx(2.0)  # orthogonal
    online = a.clone().requires_grad_(True)
    target = a.flip(1).clone().requires_grad_(True)
    contrastive(online, target).backward()
    assert online.grad is not None and target.grad is None  # stop-gradient on the second view
    truth = torch.tensor([[1.0, 5.0, 2.0], [2.0, 5.0, 4.0], [3.0, 5.0, 6.0]])
    pred = torch.tensor([[3.0, 1.0, 1.0], [2.0, 2.0, 3.0], [1.0, 3.0, 2.0]])
    scores = pearson_per_gene(pred, truth)
    assert scores[0].item() == pytest.approx(-1.0) and torch.isnan(scores[1])
    # centred (-1, 1, 0) · (-2, 0, 2) = 2; norms √2 · √8 = 4
    assert scores[2].item() == pytest.approx(0.5, abs=1e-6)


def test_masks_and_masked_views():
    kept = bernoulli_mask((400, 250), 0.8, np.random.default_rng(0))
    assert kept.dtype == torch.bool and kept.shape == (400, 250)
    assert kept.float().mean() == pytest.approx(0.8, abs=0.01)
    assert torch.equal(kept, bernoulli_mask((400, 250), 0.8, np.random.default_rng(0)))  # seeded
    assert not torch.equal(kept, bernoulli_mask((400, 250), 0.8, np.random.default_rng(1)))
    assert not bernoulli_mask((10, 10), 0.0, np.random.default_rng(0)).any()
    assert bernoulli_mask((10, 10), 1.0, np.random.default_rng(0)).all()
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    view = masked(x, torch.tensor([[True, False], [False, True]]), 0.5)
    torch.testing.assert_close(view, torch.tensor([[2.0, 0.0], [0.0, 8.0]]))  # kept entries × 1 / 0.5
    assert view.dtype == x.dtype


def test_masked_rows_are_left_out_of_both_terms():
    """Padded rows (mask 0) change neither the Pearson of a gene nor the contrastive mean."""
    rng = torch.Generator().manual_seed(0)
    pred, truth = torch.randn(2, 7, 3, generator=rng), torch.randn(2, 7, 3, generator=rng)
    mask = torch.ones(2, 7, 1)
    mask[1, 4:] = 0  # member 1 has 4 real rows
    padded = pearson_per_gene(pred, truth, mask)
    torch.testing.assert_close(padded[0], pearson_per_gene(pred[0], truth[0]))
    torch.testing.assert_close(padded[1], pearson_per_gene(pred[1, :4], truth[1, :4]))
    garbage = pred.clone()
    garbage[1, 4:] = 1e3  # whatever the padding holds
    torch.testing.assert_close(pearson_per_gene(garbage, truth, mask), padded)
    online, target = torch.randn(2, 7, 5, generator=rng), torch.randn(2, 7, 5, generator=rng)
    rows = mask.squeeze(-1)
    per_member = contrastive(online, target, rows)
    assert per_member.shape == (2,)
    torch.testing.assert_close(per_member[1], contrastive(online[1, :4], target[1, :4]))
    torch.testing.assert_close(per_member[0], contrastive(online[0], target[0]))
