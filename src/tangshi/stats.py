"""The statistics that comparisons report: means over seeds, Welch's t-test for bpc, Fisher's exact test and
Wilson intervals for shares of poems, and Holm's adjustment for testing many pairs at once."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; the deviation of a single run is unknown (NaN), not 0, and so is the
    deviation of values of which one is not finite (a run that diverged, or had no validation yet)."""
    if not values:
        return math.nan, math.nan
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return statistics.fmean(values), math.nan
    return statistics.fmean(values), statistics.stdev(values)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN when either side has fewer than two runs."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def fisher_p(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that two shares (``hits/n``) are equal; NaN when a side is empty."""
    if n_a < 1 or n_b < 1:
        return math.nan
    from scipy.stats import fisher_exact

    return float(fisher_exact([[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]).pvalue)


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a share ``hits/n`` (95 % by default); (NaN, NaN) for ``n = 0``. Unlike the
    normal approximation it stays inside [0, 1] and is honest at 0 % and 100 %."""
    if n < 1:
        return math.nan, math.nan
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (NaNs are left out of the family and stay NaN):
    the k-th smallest of m is multiplied by m - k + 1, and adjusted values never decrease along that order."""
    finite = sorted((p, name) for name, p in pvalues.items() if not math.isnan(p))
    m, running = len(finite), 0.0
    out = {name: math.nan for name in pvalues}
    for k, (p, name) in enumerate(finite):
        running = max(running, min(1.0, (m - k) * p))
        out[name] = running
    return out
