"""Method-comparison regression: Passing-Bablok (with its cusum linearity test) and Deming."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import JsonResult, _confidence, _labels, _paired


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
    pairs count as -/+inf by the sign of ``y_j - y_i``, slopes of exactly -1 are dropped. With K slopes < -1 the slope
    is the median shifted by K. Its CI takes the ranks ``M1 = round((N - C)/2)`` and ``M2 = N - M1 + 1`` (shifted by
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
    s = np.sort(s[s != -1.0])
    big_n = s.size
    if big_n == 0:
        raise ValueError("Passing-Bablok needs at least two distinct points; all pairs are identical")
    k = int(np.sum(s < -1.0))
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


@dataclass(frozen=True)
class DemingResult(JsonResult):
    """Deming fit ``test = intercept + slope * reference``; CIs from the jackknife (Linnet 1990) with t(n-2)."""

    n: int
    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    slope_se: float
    intercept_se: float
    error_ratio: float
    confidence: float


def _deming_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, float]:
    mx, my = x.mean(), y.mean()
    sxx = float(np.sum((x - mx) ** 2))
    syy = float(np.sum((y - my) ** 2))
    sxy = float(np.sum((x - mx) * (y - my)))
    if sxy == 0:
        raise ValueError("Deming regression is undefined when the two methods are uncorrelated (covariance 0)")
    u = syy - lam * sxx
    b = (u + math.sqrt(u * u + 4.0 * lam * sxy * sxy)) / (2.0 * sxy)
    return b, float(my - b * mx)


def deming(
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    *,
    error_ratio: float = 1.0,
    confidence: float = 0.95,
) -> DemingResult:
    """Deming regression, closed form (Cornbleet & Gochman 1979, Clin Chem 25:432; Linnet 1990, Stat Med 9:1463).

    ``error_ratio`` is ``lambda = var(error of test) / var(error of reference)`` (1: orthogonal regression).
    ``slope = (Syy - l*Sxx + sqrt((Syy - l*Sxx)^2 + 4*l*Sxy^2)) / (2*Sxy)``. CIs: leave-one-out jackknife standard
    errors ``sqrt((n-1)/n * sum (b_i - mean b_i)^2)`` around the full-data estimate, with t(n-2) (Linnet 1990).
    """
    x, y = _paired(reference, test)
    a = _confidence(confidence)
    if not (error_ratio > 0 and math.isfinite(error_ratio)):
        raise ValueError(f"error_ratio must be a positive number, got {error_ratio!r}")
    n = x.size
    b, icpt = _deming_fit(x, y, error_ratio)
    loo = np.empty((n, 2))
    mask = np.ones(n, dtype=bool)
    for k in range(n):
        mask[k] = False
        loo[k] = _deming_fit(x[mask], y[mask], error_ratio)
        mask[k] = True
    se = np.sqrt((n - 1) / n * np.sum((loo - loo.mean(axis=0)) ** 2, axis=0))
    t = float(stats.t.ppf(1.0 - a / 2.0, n - 2))
    return DemingResult(
        n=n, slope=b, intercept=icpt, slope_ci=(b - t * se[0], b + t * se[0]),
        intercept_ci=(icpt - t * se[1], icpt + t * se[1]), slope_se=float(se[0]), intercept_se=float(se[1]),
        error_ratio=error_ratio, confidence=confidence,
    )  # fmt: skip
