"""Split-conformal prediction intervals, made adaptive by a per-spot, per-gene uncertainty score.

For the prediction ŷ_sg (log1p CPM) of spot s and gene g, drawn on the spot's K retrieved reference
spots with measured values r_skg, the **deviation** and the spot's **uncertainty** are

    d_sg = (1/K) Σ_k |r_skg − ŷ_sg|,        u_s = mean_g d_sg,

and the interval's scale is σ_sg = max((1 − γ)·d_sg + γ·u_s, FLOOR), γ ∈ :data:`MIX_WEIGHTS`.
Calibration takes predictions of spots the model never trained on (n of them): per gene, the
normalised residuals e_sg = |y_sg − ŷ_sg| / σ_sg, and the quantile q_g(level) is their
⌈(n + 1)·level⌉-th smallest (∞ when that rank exceeds n). The interval is

    [max(ŷ − σ·q, 0), max(ŷ + σ·q, 0)]

(expression is never negative, so clipping at 0 keeps every covered value covered). Guarantee: for a
spot exchangeable with the calibration spots, the gene's value lies in its interval with probability
at least ``level`` (marginal over spots, per gene). Without references a baseline uses σ = 1: a
constant width per gene.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_spahgc.base.errors import InputError

DEFAULT_LEVEL = 0.9
#: the levels whose quantiles a prediction file stores (any of them can be asked for later)
LEVELS = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))
#: candidate weights γ of the spot's uncertainty against the gene's own deviation
MIX_WEIGHTS = (0.0, 0.5, 1.0)
#: smallest scale σ: a spot whose references all equal its prediction still gets a width
FLOOR = 0.01
#: most calibration spots a model keeps (a seeded random subset of more)
MAX_CALIBRATION_SPOTS = 4096
_ROWS = 2048  # spots per block of reference deviations


def check_level(level: float) -> float:
    """``level`` as a float in (0, 1), or an :class:`InputError`."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise InputError(f"interval level {level!r} is not a number") from None
    if not 0 < value < 1:
        raise InputError(f"interval level {level} is outside (0, 1): give e.g. 0.9 for 90 % intervals")
    return value


def reference_deviation(prediction: np.ndarray, references: np.ndarray) -> np.ndarray:
    """d (n, genes): the mean absolute deviation of each spot's references ``(n, K, genes)`` from its
    prediction ``(n, genes)``, float32."""
    return np.abs(references - prediction[:, None, :]).mean(axis=1, dtype=np.float32)


def deviation_blocks(
    prediction, rows: np.ndarray, table: np.ndarray, block_rows: int = _ROWS
) -> Iterator[tuple[int, int, np.ndarray]]:
    """:func:`reference_deviation` of a whole slide, block by block ``(start, stop, d)``: ``rows``
    (n, K) index each spot's references in ``table`` (references × genes, log1p CPM); ``prediction``
    anything that takes row slices (an array, an h5py dataset). Memory: one block's references."""
    for start in range(0, len(rows), block_rows):
        stop = min(start + block_rows, len(rows))
        yield start, stop, reference_deviation(np.asarray(prediction[start:stop]), table[rows[start:stop]])


def gathered_deviation(prediction, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """d (n, genes) of a whole slide (:func:`deviation_blocks`)."""
    out = np.empty((len(rows), table.shape[1]), dtype=np.float32)
    for start, stop, deviation in deviation_blocks(prediction, rows, table):
        out[start:stop] = deviation
    return out


def spot_uncertainty(prediction, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """u (n,): each spot's mean deviation over genes, computed block by block."""
    out = np.empty(len(rows), dtype=np.float32)
    for start, stop, deviation in deviation_blocks(prediction, rows, table):
        out[start:stop] = deviation.mean(axis=1)
    return out


def scale(deviation: np.ndarray, uncertainty: np.ndarray, mix: float) -> np.ndarray:
    """σ = max((1 − γ)·d + γ·u, FLOOR): ``deviation`` (n, genes), ``uncertainty`` u (n,) over all
    the model's genes (``deviation`` may hold a few of them)."""
    return np.maximum((1 - mix) * deviation + mix * uncertainty[:, None], FLOOR)


def conformal_quantile(scores: np.ndarray, level: float) -> np.ndarray:
    """Per column, the ⌈(n + 1)·level⌉-th smallest of n scores (∞ where that exceeds n)."""
    rank = int(np.ceil((len(scores) + 1) * level))
    if rank > len(scores):
        return np.full(scores.shape[1], np.inf, dtype=np.float32)
    return np.partition(scores, rank - 1, axis=0)[rank - 1].astype(np.float32)


def interval(
    prediction: np.ndarray, sigma: np.ndarray, quantile: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) = max(ŷ ∓ σ·q, 0), float32."""
    half = sigma * quantile
    return (
        np.maximum(prediction - half, 0).astype(np.float32),
        np.maximum(prediction + half, 0).astype(np.float32),
    )


def coverage_and_width(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[float, float]:
    """The share of measured values inside their interval, and the mean width (values where the truth
    is NaN are left out)."""
    known = ~np.isnan(truth)
    inside = (truth >= lower) & (truth <= upper)
    return float(inside[known].mean()), float((upper - lower)[known].mean())


@dataclass
class Calibration:
    """A model's calibration: the normalised residuals of its calibration spots (n × genes), the
    weight γ its inner validation chose, and what that validation measured per candidate."""

    scores: np.ndarray
    mix: float = 0.0
    spots: int = 0
    inner: dict = field(default_factory=dict)

    def quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """(genes, levels) conformal quantiles."""
        return np.stack([conformal_quantile(self.scores, check_level(v)) for v in levels], axis=1)

    def record(self) -> dict:
        """What config.json records of it (the scores go to the weights file)."""
        return {"mix": self.mix, "spots": self.spots, "kept_spots": len(self.scores), "inner": self.inner}

    @classmethod
    def fit(
        cls,
        truth: np.ndarray,
        prediction: np.ndarray,
        deviation: np.ndarray,
        groups: np.ndarray,
        level: float = DEFAULT_LEVEL,
        seed: int = 0,
    ) -> Calibration:
        """Calibrate on out-of-sample predictions. γ is chosen by inner validation: each group of
        spots (a held-out slide) in turn is scored with intervals calibrated on the others; the γ with
        the smallest mean width wins (ties: the first). Keeps at most :data:`MAX_CALIBRATION_SPOTS`."""
        residual, uncertainty = np.abs(truth - prediction), deviation.mean(axis=1)
        inner, unique = {}, np.unique(groups)
        for mix in MIX_WEIGHTS if len(unique) > 1 else (0.0,):
            sigma = scale(deviation, uncertainty, mix)
            measured = []
            for group in unique:
                held, rest = groups == group, groups != group
                q = conformal_quantile(residual[rest] / sigma[rest], level)
                measured.append(coverage_and_width(truth[held], *interval(prediction[held], sigma[held], q)))
            cover, width = np.mean(measured, axis=0)
            inner[f"{mix:g}"] = {"coverage": round(float(cover), 4), "width": round(float(width), 4)}
        mix = float(min(inner, key=lambda m: inner[m]["width"]))
        scores = (residual / scale(deviation, uncertainty, mix)).astype(np.float32)
        if len(scores) > MAX_CALIBRATION_SPOTS:
            keep = np.random.default_rng(seed).choice(len(scores), MAX_CALIBRATION_SPOTS, replace=False)
            scores = scores[np.sort(keep)]
        return cls(scores, mix, len(truth), {"level": level, "by_mix": inner})
