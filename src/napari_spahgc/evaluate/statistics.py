"""Paired statistics of one method against another over the same held-out folds.

Each fold contributes one pair of scores (a method's mean PCC on the held-out section, averaged over
seeds when there are several). The tests are two-sided: the paired t-test (``scipy.stats.ttest_rel``),
the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact for small samples: with five folds its
smallest possible p is 0.0625) and a percentile bootstrap over folds of the ratio of the two means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_LEVEL = 0.95


def paired_comparison(ours: Sequence[float], theirs: Sequence[float], seed: int = 0) -> dict:
    """Differences ``ours − theirs`` per fold, their mean, the folds won, the ratio of the means with
    its bootstrap confidence interval, and the paired t-test's and Wilcoxon test's p-values (None with
    fewer than two folds, or when every difference is zero)."""
    from scipy import stats

    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    differences = a - b
    resampled = np.random.default_rng(seed).integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a)))
    ratios = a[resampled].mean(1) / b[resampled].mean(1)
    tail = (1 - BOOTSTRAP_LEVEL) / 2
    testable = len(a) >= 2 and np.any(differences != 0)
    return {
        "differences": [round(float(d), 5) for d in differences],
        "mean_difference": float(differences.mean()),
        "wins": int((differences > 0).sum()),
        "folds": len(a),
        "ratio": float(a.mean() / b.mean()),
        "ratio_ci": [float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))],
        "ratio_ci_level": BOOTSTRAP_LEVEL,
        "t_test_p": float(stats.ttest_rel(a, b).pvalue) if testable else None,
        "wilcoxon_p": float(stats.wilcoxon(a, b).pvalue) if testable else None,
    }
