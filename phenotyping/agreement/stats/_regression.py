"""Method-comparison regression: Passing-Bablok with its cusum linearity test (Deming is in ``_deming``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import JsonResult, _confidence, _labels, _paired

SLOPE_RTOL = 1e-9
"""Relative tolerance within which a Passing-Bablok pairwise slope counts as -1 (dropped) rather than below -1
(shifting the median). Rounding of rescaled inputs moves a slope of -1 by ~1e-15 relative; real slopes differ far
more."""


@dataclass(frozen=True)
class CusumTest(JsonResult):
    """Passing & Bablok 1983 cusum test for linearity: ``statistic = max|cusum| / sqrt(L + 1)`` against the
    Kolmogorov-Smirnov limiting distribution; ``linear`` is False when ``p_value < alpha``."""

    statistic: float
    p_value: float
    critical_value: float
    alpha: float
    linear: bool


@dataclass(frozen=True)
class PassingBablokResult(JsonResult):
    """Passing-Bablok fit ``test = intercept + slope * reference``. CI bounds are NaN (``None`` in ``to_dict``)
    where n is too small for the rank-based interval. ``x``/``y`` are the points (reference, test)."""

    n: int
    slope: float
    slope_ci: tuple[float, float]
    intercept: float
    intercept_ci: tuple[float, float]
    confidence: float
    n_slopes: int
    shift: int
    cusum: CusumTest
    x: tuple[float, ...]
    y: tuple[float, ...]
    labels: tuple[str, ...] | None


def passing_bablok(
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    alpha: float = 0.05,
    labels: Sequence[str] | None = None,
) -> PassingBablokResult:
    """Passing-Bablok regression (Passing & Bablok 1983, J Clin Chem Clin Biochem 21:709).

    Slopes ``S_ij = (y_j - y_i)/(x_j - x_i)`` over all pairs; pairs identical in both methods are skipped, vertical
    pairs count as -/+inf by the sign of ``y_j - y_i``, slopes of -1 are dropped (within the relative tolerance
    :data:`SLOPE_RTOL`, as is the count K of slopes below -1, so that the fit does not depend on the units). With
    K slopes < -1 the slope is the median shifted by K. Its CI takes the ranks ``M1 = round((N - C)/2)`` and ``M2 = N - M1 + 1`` (shifted by
    K) with ``C = z_{1-alpha/2} * sqrt(n(n-1)(2n+5)/18)``; the intercept is ``median(y - b x)`` and its CI
    ``median(y - b_upper x)``, ``median(y - b_lower x)``. Linearity: the cusum test of the same paper.
    """
    x, y = _paired(reference, test)
    a = _confidence(confidence)
    names = _labels(labels, x.size)
    n = x.size
    i, j = np.triu_indices(n, 1)
    dx, dy = x[j] - x[i], y[j] - y[i]
    keep = ~((dx == 0) & (dy == 0))
    dx, dy = dx[keep], dy[keep]
    vertical = dx == 0
    s = np.empty(dx.size)
    s[~vertical] = dy[~vertical] / dx[~vertical]
    s[vertical] = np.sign(dy[vertical]) * np.inf
    # a slope computed from rescaled data (l/min divided by 10, counts into percentages) misses -1 by rounding;
    # comparing with a tolerance keeps the fit independent of the units the numbers are written in
    minus_one = np.abs(s + 1.0) <= SLOPE_RTOL
    s = np.sort(s[~minus_one])
    big_n = s.size
    if big_n == 0:
        raise ValueError("Passing-Bablok needs at least two distinct points; all pairs are identical")
    k = int(np.sum(s < -1.0 - SLOPE_RTOL))
    half = (big_n + 1) // 2 if big_n % 2 else big_n // 2
    if half + k > big_n or (big_n % 2 == 0 and half + k + 1 > big_n):
        raise ValueError(
            "Passing-Bablok assumes the two methods are positively related; most pairwise slopes are below -1"
        )
    if big_n % 2:
        b = float(s[half + k - 1])
    else:
        b = 0.5 * float(s[half + k - 1] + s[half + k])
    if not math.isfinite(b) or b <= 0:
        raise ValueError(f"Passing-Bablok slope is {b}; the methods must be positively related with finite slope")

    c = float(stats.norm.ppf(1.0 - a / 2.0)) * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    m1 = int(math.floor((big_n - c) / 2.0 + 0.5))
    m2 = big_n - m1 + 1

    def rank(r: int) -> float:
        return float(s[r - 1]) if 1 <= r <= big_n and math.isfinite(s[r - 1]) else math.nan

    b_lo, b_hi = rank(m1 + k), rank(m2 + k)
    intercept = float(np.median(y - b * x))
    a_lo = float(np.median(y - b_hi * x)) if math.isfinite(b_hi) else math.nan
    a_hi = float(np.median(y - b_lo * x)) if math.isfinite(b_lo) else math.nan
    return PassingBablokResult(
        n=n, slope=b, slope_ci=(b_lo, b_hi), intercept=intercept, intercept_ci=(a_lo, a_hi), confidence=confidence,
        n_slopes=big_n, shift=k, cusum=_cusum(x, y, intercept, b, alpha), x=tuple(x.tolist()), y=tuple(y.tolist()),
        labels=names,
    )  # fmt: skip


def _cusum(x: np.ndarray, y: np.ndarray, a: float, b: float, alpha: float) -> CusumTest:
    resid = y - (a + b * x)
    above, below = resid > 0, resid < 0
    n_above, n_below = int(above.sum()), int(below.sum())
    r = np.zeros(x.size)
    if n_above and n_below:
        r[above] = math.sqrt(n_below / n_above)
        r[below] = -math.sqrt(n_above / n_below)
    # points ordered by their projection on the fitted line; (y + x/b - a) / sqrt(1 + 1/b^2) written as below so
    # that a tiny positive slope (b^2 underflowing to 0) cannot divide by zero
    order = np.argsort((b * y + x - a * b) / math.hypot(b, 1.0), kind="stable")
    h = float(np.max(np.abs(np.cumsum(r[order])))) / math.sqrt(n_below + 1)
    p = float(stats.kstwobign.sf(h))
    return CusumTest(
        statistic=h, p_value=p, critical_value=float(stats.kstwobign.isf(alpha)), alpha=alpha, linear=bool(p >= alpha)
    )
