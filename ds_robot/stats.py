"""Confidence intervals for the numbers every benchmark reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two-sided 95% Student-t quantiles for small samples (df = 1..30); beyond that, ~normal.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(df: int) -> float:
    if df < 1:
        return math.nan
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df


def mean_ci95(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean and its 95% confidence interval (Student t). NaNs are dropped."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(x.mean())
    if len(x) == 1:
        return mean, (math.nan, math.nan)
    half = t95(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, (mean - half, mean + half)


def wilson_ci95(successes: int, trials: int) -> tuple[float, tuple[float, float]]:
    """Success rate and its 95% Wilson score interval (well behaved near 0 and 1)."""
    if trials == 0:
        return math.nan, (math.nan, math.nan)
    z = 1.959964
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # At p = 0 or 1 one end is exactly p; rounding would otherwise leave it a hair inside (an
    # interval that excludes its own estimate, and a negative error bar in the plots).
    return p, (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))
