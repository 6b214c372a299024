"""Model selection on held-out training slides: which slides each ensemble member holds out, its
best epoch (early stopping member by member), its validation scores, the prediction smoothing the
held-out slides choose, and their out-of-fold predictions that calibrate the prediction intervals.
Test slides never reach this module."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from napari_spahgc.base.conformal import Calibration, gathered_deviation
from napari_spahgc.base.metrics import gene_pcc, score
from napari_spahgc.base.spatial import SELF_WEIGHTS, spatial_mix, spatial_neighbours
from napari_spahgc.model.network import SpaHGC
from napari_spahgc.model.relations import CS
from napari_spahgc.model.slide_data import FeatureScale
from napari_spahgc.train.batch import GraphBatch


def validation_groups(n_slides: int, members: int, seed: int, hold_out: bool = True) -> list[list[int]]:
    """The held-out slide indices of each ensemble member: the slides in a seeded order, split into
    min(members, n_slides) groups — or one slide each when a group would leave a member fewer than two
    training slides (a slide's references are the other training slides); with ``members=1`` one slide
    is held out; with fewer than three slides a single member holds nothing out; without ``hold_out``
    every member holds nothing out."""
    if not hold_out:
        return [[] for _ in range(max(members, 1))]
    if n_slides < 3:
        return [[]]
    order = np.random.default_rng(seed).permutation(n_slides)
    if members <= 1:
        return [[int(order[0])]]
    groups = np.array_split(order, min(members, n_slides))
    if max(len(group) for group in groups) > n_slides - 2:
        groups = [order[i : i + 1] for i in range(min(members, n_slides))]
    return [sorted(int(i) for i in group) for group in groups]


@dataclass
class BestEpochs:
    """Per ensemble member: its best validation PCC so far, that epoch, its per-gene PCC and weights,
    the epochs it trained, and which members still train."""

    active: list[int]
    scores: np.ndarray
    epochs: np.ndarray
    trained: np.ndarray
    gene_pcc: list[np.ndarray | None]
    weights: dict[str, Tensor]

    @classmethod
    def start(cls, network: SpaHGC, members: int) -> BestEpochs:
        return cls(
            active=list(range(members)),
            scores=np.full(members, -np.inf),
            epochs=np.zeros(members, dtype=int),
            trained=np.zeros(members, dtype=int),
            gene_pcc=[None] * members,
            weights={k: v.detach().clone() for k, v in network.state_dict().items()},
        )

    def update(
        self, epoch: int, per_gene: dict[int, np.ndarray], network: SpaHGC, patience: int | None
    ) -> dict[int, float]:
        """Record each validated member's score; keep its weights when it improved; stop members that
        have not improved for ``patience`` epochs. Returns the mean PCC of each validated member."""
        scores = {m: float(np.nanmean(values)) for m, values in per_gene.items()}
        for m, pcc in scores.items():
            if pcc > self.scores[m]:
                self.scores[m], self.epochs[m], self.gene_pcc[m] = pcc, epoch, per_gene[m]
                for name, value in network.state_dict().items():
                    self.weights[name][m] = value[m]
            if patience and epoch - self.epochs[m] >= patience:
                self.active.remove(m)  # early stopping, member by member
        return scores


def _round_predictions(network: SpaHGC, rounds, members: list[int], scale: FeatureScale, device):
    """Per validation round and listed member: (its round entry (graph, truth, coords), its
    prediction in expression units), unmasked, in eval mode, with only those members' weights."""
    network.eval()
    with torch.no_grad(), network.members_only(members):
        for graphs in rounds:
            batch = GraphBatch.from_graphs([graphs[m][0] for m in members], device)
            predictions = batch.split(network(*batch.inputs).cpu().numpy())
            for m, prediction in zip(members, predictions, strict=True):
                yield m, graphs[m], scale.inverse(prediction)


def validate(
    network: SpaHGC, rounds, members: list[int], scale: FeatureScale, device
) -> dict[int, np.ndarray]:
    """Per listed member, the per-gene PCC on its held-out slides (mean over its slides; constant
    genes are NaN)."""
    scores: dict[int, list[np.ndarray]] = {m: [] for m in members}
    for m, (_, truth, _), prediction in _round_predictions(network, rounds, members, scale, device):
        if truth is not None:
            scores[m].append(gene_pcc(truth, prediction))
    return {m: nanmean_columns(np.stack(values)) for m, values in scores.items()}


def choose_smoothing(
    network: SpaHGC, rounds, scale: FeatureScale, q: int, device
) -> tuple[float, dict[str, float]]:
    """The prediction smoothing whose mixed predictions of the members' held-out slides score the
    best mean PCC (each member predicting its own held-out slides), and every candidate's mean."""
    scores: dict[float, list[float]] = {1 - w: [] for w in reversed(SELF_WEIGHTS)}  # ties: least smoothing
    members = list(range(len(rounds[0])))
    for _, (_, truth, coords), prediction in _round_predictions(network, rounds, members, scale, device):
        if truth is None:
            continue
        neighbours = spatial_neighbours(coords, q)
        for smoothing, values_scored in scores.items():
            values_scored.append(score(truth, spatial_mix(prediction, neighbours, 1 - smoothing))[0]["pcc"])
    means = {smoothing: float(np.mean(v)) for smoothing, v in scores.items()}
    return max(means, key=means.get), {f"{k:g}": round(v, 5) for k, v in means.items()}


def held_out_predictions(
    network: SpaHGC, rounds, scale: FeatureScale, q: int, smoothing: float, device
) -> list[tuple[int, int, tuple, np.ndarray]]:
    """Every member's prediction of each of its own held-out slides, smoothed as the model predicts:
    (round, member, its round entry (graph, truth, coords), prediction), scored rounds only."""
    members = list(range(len(rounds[0])))
    predictions = []
    for r, graphs in enumerate(rounds):
        for m, entry, prediction in _round_predictions(network, [graphs], members, scale, device):
            if entry[1] is None:
                continue
            if smoothing:
                prediction = spatial_mix(prediction, spatial_neighbours(entry[2], q), 1 - smoothing)
            predictions.append((r, m, entry, prediction))
    return predictions


def calibrate(predictions, scale: FeatureScale, seed: int = 0) -> Calibration:
    """The prediction intervals' calibration (:class:`~napari_spahgc.base.conformal.Calibration`) on
    the members' predictions of their own held-out slides (:func:`held_out_predictions`), each spot
    with the deviation of its retrieved references (the slide's bank: the member's training slides);
    the held-out slides are the inner validation's groups."""
    parts: dict[str, list[np.ndarray]] = {"truth": [], "prediction": [], "deviation": [], "group": []}
    for _, _, (graph, truth, _), prediction in predictions:
        store = graph["reference"]
        bank_rows = store.bank_index[graph[CS].edge_index[0].view(len(truth), -1)].numpy()
        used, rows = np.unique(bank_rows, return_inverse=True)
        table = scale.inverse(store["shared_y"](used).numpy())
        group = np.full(len(truth), len(parts["group"]))
        values = (
            truth,
            prediction,
            gathered_deviation(prediction, rows.reshape(bank_rows.shape), table),
            group,
        )
        for name, value in zip(parts, values, strict=True):
            parts[name].append(value)
    return Calibration.fit(*(np.concatenate(v) for v in parts.values()), seed=seed)


def nanmean_columns(values: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (NaN where a column has no value), without a warning."""
    counts = np.sum(~np.isnan(values), axis=0)
    return np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)
