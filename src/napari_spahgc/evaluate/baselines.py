"""Baselines on the same embeddings and genes as SpaHGC, each tuned as carefully as SpaHGC.

Every baseline chooses its own hyperparameters by **inner cross-validation on the training slides
only** — leave one training patient out when the training slides name at least two patients, else
one training slide — scoring each candidate by the benchmark's own metric (mean PCC over genes,
:func:`~napari_spahgc.base.metrics.score`), then refits the chosen setting on every training slide and
predicts the test slide. The test slide is only predicted: its expression is never read here.

- ``ridge``: the HEST-Benchmark probe (standardise, PCA to 256 components, ridge); α on a log grid.
- ``knn``: mean expression of the k cosine-nearest training spots (BLEEP / mclSTExp), retrieved on
  the raw embeddings or on embeddings standardised per feature (mean and sd of the pooled training
  slides, the test slide transformed with them); k and the choice of standardising tuned.
- ``ridge_spatial`` / ``knn_spatial``: each spot's prediction mixed with the mean of its Q = 5 nearest
  spots in the same slide, w · self + (1 − w) · neighbours; w tuned with α or k.
- ``blend_spatial``: λ · ridge + (1 − λ) · kNN (α, and kNN's standardising and k, as their own tuning
  chose), spatially mixed; λ and w tuned.
- ``mlp``: a one-hidden-layer MLP probe on the standardised embeddings; weight decay and the number
  of epochs (early stopping) tuned. The only stochastic baseline: its ``seed`` (every baseline takes
  one, see :data:`SEEDED_BASELINES`) seeds its initialisation, dropout and batch order.

Each baseline also returns the chosen setting's predictions of the inner validation slides (by refits
that never saw them): the benchmark takes from their absolute residuals the calibration of its
conformal prediction intervals, a constant width per gene (:mod:`napari_spahgc.base.conformal` with
σ = 1) at the same level as SpaHGC's, and chooses its tissue-domain settings on them.

Inside :func:`shared_candidates` (the benchmark enters it once per outer fold), the candidate
predictions of ridge, kNN and the MLP for a (training slides, slide, seed) are computed once and
reused by every baseline and by the calibration that need them: the same values, never recomputed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from napari_spahgc.base.metrics import score
from napari_spahgc.base.spatial import SELF_WEIGHTS, spatial_mix, spatial_neighbours
from napari_spahgc.model.neighbours import topk_cosine
from napari_spahgc.model.slide_data import SlideData, make_folds

RIDGE_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(1.0, 10.01, 0.5))  # 1e1 … 1e10
PCA_COMPONENTS = 256
KNN_KS = (5, 10, 20, 50, 100, 200, 400)
KNN_STANDARDISE = (0.0, 1.0)  # retrieve on the raw embeddings (0) or standardised ones (1)
_SD_FLOOR = 1e-6  # a training feature with a smaller sd is only centred (its sd taken as 1)
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of ridge against kNN
SPATIAL_Q = 5
_NEIGHBOUR_BLOCK = 50  # kNN neighbours summed per block
MLP_HIDDEN, MLP_DROPOUT, MLP_LR, MLP_BATCH = 256, 0.5, 3e-4, 256
MLP_WEIGHT_DECAYS = (1e-2, 1.0)
MLP_EPOCHS = (10, 20, 40, 80, 120)

Setting = tuple[tuple[str, float], ...]  # ((name, value), …): one candidate's hyperparameters
Grid = Callable[[Sequence[SlideData], SlideData], dict[Setting, np.ndarray]]


@dataclass(frozen=True)
class Tuned:
    """A baseline's prediction of the test slide, the hyperparameters the training slides chose
    (with each candidate's mean inner-validation PCC) and the chosen setting's predictions of the
    inner validation slides (slide id → spots × genes)."""

    prediction: np.ndarray
    chosen: dict
    inner_pcc: dict
    inner_predictions: dict[str, np.ndarray]


class Baseline(Protocol):
    """A baseline: tunes on ``train``, predicts ``test``. ``seed`` seeds a stochastic baseline (those
    named in :data:`SEEDED_BASELINES`); the deterministic ones ignore it."""

    def __call__(self, train: Sequence[SlideData], test: SlideData, seed: int = 0) -> Tuned: ...


_shared: dict | None = None  # the candidates of the current shared_candidates block; None outside one


@contextmanager
def shared_candidates() -> Iterator[None]:
    """Within the block, each :func:`_shareable` grid is computed once per (training slides, slide)."""
    global _shared
    previous, _shared = _shared, {}
    try:
        yield
    finally:
        _shared = previous


def _shareable(grid: Grid) -> Grid:
    """``grid``, its results kept for the current :func:`shared_candidates` block (keyed by the slide
    objects themselves, which the entry keeps alive, so a key can never name other data, and by the
    keyword options, e.g. a seed)."""

    @functools.wraps(grid)
    def shared(train: Sequence[SlideData], test: SlideData, **options) -> dict[Setting, np.ndarray]:
        if _shared is None:
            return grid(train, test, **options)
        key = (grid.__name__, *map(id, train), id(test), *sorted(options.items()))
        if key not in _shared:
            _shared[key] = (list(train), test, grid(train, test, **options))
        return _shared[key][2]

    return shared


def inner_folds(train: Sequence[SlideData]) -> list[tuple[list[SlideData], list[SlideData]]]:
    """(inner training, inner validation) splits of the training slides, by the benchmark's own rule
    (:func:`~napari_spahgc.model.slide_data.make_folds`): one patient out when they name at least two, else
    one slide out."""
    return [
        ([s for s in train if s.slide_id not in held], [s for s in train if s.slide_id in held])
        for held in make_folds(train)[1]
    ]


def choose(grid: Grid, train: Sequence[SlideData]) -> tuple[Setting, dict[Setting, float]]:
    """The setting of ``grid`` with the best mean inner-validation PCC (ties: the first), and every
    setting's mean."""
    if len(train) < 2:
        raise ValueError("tuning needs at least two training slides")
    totals: dict[Setting, list[float]] = {}
    for inner_train, inner_validation in inner_folds(train):
        for slide in inner_validation:
            for setting, prediction in grid(inner_train, slide).items():
                totals.setdefault(setting, []).append(score(slide.expression, prediction)[0]["pcc"])
    means = {setting: float(np.mean(values)) for setting, values in totals.items()}
    return max(means, key=means.get), means


def inner_predictions(grid: Grid, train: Sequence[SlideData], setting: Setting) -> dict[str, np.ndarray]:
    """``setting``'s prediction of every inner validation slide, by slide id."""
    return {
        slide.slide_id: grid(inner_train, slide)[setting]
        for inner_train, inner_validation in inner_folds(train)
        for slide in inner_validation
    }


def tuned(grid: Callable[..., dict[Setting, np.ndarray]], seeded: bool = False) -> Baseline:
    """A baseline that tunes ``grid``'s hyperparameters on the training slides, then predicts.
    ``seeded``: ``grid`` takes a ``seed`` keyword, the baseline's seed (else the seed is ignored)."""

    def run(train: Sequence[SlideData], test: SlideData, seed: int = 0) -> Tuned:
        candidates = functools.partial(grid, seed=seed) if seeded else grid
        setting, means = choose(candidates, train)
        return Tuned(
            candidates(train, test)[setting],
            dict(setting),
            {_label(s): round(v, 5) for s, v in means.items()},
            inner_predictions(candidates, train, setting),
        )

    return run


def _label(setting: Setting) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in setting)


def _pooled(train: Sequence[SlideData]) -> tuple[np.ndarray, np.ndarray]:
    """The training slides' embeddings (float32, whatever they are stored as) and expression, pooled."""
    embeddings = np.concatenate([s.embeddings for s in train], dtype=np.float32)
    return embeddings, np.concatenate([s.expression for s in train])


def _reduced(train: Sequence[SlideData], test: SlideData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training embeddings standardised and PCA-reduced (fitted on the training slides), the test
    slide's the same way, and the pooled training expression."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _pooled(train)
    reduce = make_pipeline(StandardScaler(), PCA(min(PCA_COMPONENTS, *x.shape), random_state=0))
    z = reduce.fit_transform(x).astype(np.float64)
    return z, reduce.transform(test.embeddings.astype(np.float32, copy=False)).astype(np.float64), y


@_shareable
def ridge_grid(train: Sequence[SlideData], test: SlideData) -> dict[Setting, np.ndarray]:
    """Ridge predictions for every α at once: standardise, PCA, then the ridge path from one SVD
    (coefficients V · s / (s² + α) · Uᵀ y on centred data, as ``sklearn.linear_model.Ridge``)."""
    z, z_test, y = _reduced(train, test)
    z_mean, y_mean = z.mean(0), y.mean(0, dtype=np.float64)
    u, s, vt = np.linalg.svd(z - z_mean, full_matrices=False)
    projected = u.T @ (y - y_mean)  # (components, genes)
    test_basis = (z_test - z_mean) @ vt.T  # (n_test, components)
    return {
        (("alpha", alpha),): (test_basis @ ((s / (s**2 + alpha))[:, None] * projected) + y_mean).astype(
            np.float32
        )
        for alpha in RIDGE_ALPHAS
    }


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and sd of ``x`` (the pooled training embeddings), an sd below the floor
    taken as 1: the statistics kNN's ``standardise`` candidates apply to training and test slides."""
    mean, sd = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    return mean, np.where(sd > _SD_FLOOR, sd, 1.0)


@_shareable
def knn_grid(train: Sequence[SlideData], test: SlideData) -> dict[Setting, np.ndarray]:
    """kNN predictions for every (standardise, k) at once: per choice of standardising (statistics of
    the training slides only, :func:`standardiser`), one top-max(k) search, then running sums over
    blocks of neighbours (memory: one block of neighbours' expression, not all max(k) of them)."""
    x, y = _pooled(train)
    ks = [k for k in KNN_KS if k <= len(x)] or [len(x)]
    queries = test.embeddings.astype(np.float32, copy=False)
    grid = {}
    for standardise in KNN_STANDARDISE:
        keys, probes = x, queries
        if standardise:
            mean, sd = standardiser(x)
            keys, probes = (((v - mean) / sd).astype(np.float32) for v in (x, queries))
        nearest = topk_cosine(probes, keys, max(ks))
        total, done = np.zeros((len(nearest), y.shape[1])), 0
        for k in ks:
            for start in range(done, k, _NEIGHBOUR_BLOCK):
                block = nearest[:, start : min(start + _NEIGHBOUR_BLOCK, k)]
                total += y[block].sum(axis=1, dtype=np.float64)
            done = k
            grid[(("standardise", standardise), ("k", float(k)))] = (total / k).astype(np.float32)
    return grid


def spatially(grid: Grid) -> Grid:
    """``grid``'s candidates, each also mixed with its Q nearest spots' values for every self weight w."""

    def mixed(train: Sequence[SlideData], test: SlideData) -> dict[Setting, np.ndarray]:
        neighbours = spatial_neighbours(test.coords, SPATIAL_Q)
        return {
            (*setting, ("self_weight", w)): spatial_mix(prediction, neighbours, w)
            for setting, prediction in grid(train, test).items()
            for w in SELF_WEIGHTS
        }

    return mixed


def blend_spatial(train: Sequence[SlideData], test: SlideData, seed: int = 0) -> Tuned:
    """λ · ridge + (1 − λ) · kNN, spatially mixed: α, and kNN's standardising and k, as ridge's and
    kNN's own tuning choose them on the training slides, then λ and w tuned on the same inner folds.
    Deterministic: ``seed`` is ignored."""
    ridge_setting, _ = choose(ridge_grid, train)
    knn_setting, _ = choose(knn_grid, train)

    def grid(inner_train: Sequence[SlideData], slide: SlideData) -> dict[Setting, np.ndarray]:
        ridge_prediction = ridge_grid(inner_train, slide)[ridge_setting]
        knn_prediction = knn_grid(inner_train, slide)[knn_setting]
        chosen = (*ridge_setting, *knn_setting)  # e.g. alpha, standardise, k
        return {
            (*chosen, ("ridge_weight", lam)): lam * ridge_prediction + (1 - lam) * knn_prediction
            for lam in BLEND_WEIGHTS
        }

    return tuned(spatially(grid))(train, test)


@_shareable
def mlp_grid(train: Sequence[SlideData], test: SlideData, seed: int = 0) -> dict[Setting, np.ndarray]:
    """MLP probe predictions for every weight decay and every checkpoint epoch of one seeded run each,
    on the ridge probe's standardised PCA inputs (one common scale, so components keep their variance)."""
    import torch

    z, z_test, y = _reduced(train, test)
    z_sd = z.std() + 1e-6  # one scale for all components: PCA keeps their relative variance
    y_mean, y_sd = y.mean(0), np.where(y.std(0) > 1e-6, y.std(0), 1.0)
    inputs, test_inputs = (torch.from_numpy((v / z_sd).astype(np.float32)) for v in (z, z_test))
    targets = torch.from_numpy(((y - y_mean) / y_sd).astype(np.float32))
    predictions = {}
    for decay in MLP_WEIGHT_DECAYS:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        network = torch.nn.Sequential(
            torch.nn.Linear(z.shape[1], MLP_HIDDEN),
            torch.nn.GELU(),
            torch.nn.Dropout(MLP_DROPOUT),
            torch.nn.Linear(MLP_HIDDEN, y.shape[1]),
        )
        optimiser = torch.optim.AdamW(network.parameters(), lr=MLP_LR, weight_decay=decay)
        for epoch in range(1, max(MLP_EPOCHS) + 1):
            network.train()
            for rows in torch.randperm(len(inputs), generator=generator).split(MLP_BATCH):
                optimiser.zero_grad()
                torch.nn.functional.mse_loss(network(inputs[rows]), targets[rows]).backward()
                optimiser.step()
            if epoch in MLP_EPOCHS:
                network.eval()
                with torch.no_grad():
                    out = network(test_inputs).numpy() * y_sd + y_mean
                predictions[(("weight_decay", decay), ("epochs", float(epoch)))] = out.astype(np.float32)
    return predictions


BASELINES: dict[str, Baseline] = {
    "ridge": tuned(ridge_grid),
    "knn": tuned(knn_grid),
    "ridge_spatial": tuned(spatially(ridge_grid)),
    "knn_spatial": tuned(spatially(knn_grid)),
    "blend_spatial": blend_spatial,
    "mlp": tuned(mlp_grid, seeded=True),
}

#: The baselines whose result depends on their seed (a benchmark with N seeds runs only these N times).
SEEDED_BASELINES: tuple[str, ...] = ("mlp",)

#: The hyperparameter grids inner cross-validation chooses from, as the benchmark report records them.
TUNING_GRIDS: dict[str, list] = {
    "ridge alpha": list(RIDGE_ALPHAS),
    "knn standardise": [int(s) for s in KNN_STANDARDISE],
    "knn k": list(KNN_KS),
    "spatial self weight": list(SELF_WEIGHTS),
    "blend ridge weight": list(BLEND_WEIGHTS),
    "mlp weight decay": list(MLP_WEIGHT_DECAYS),
    "mlp epochs": list(MLP_EPOCHS),
}
