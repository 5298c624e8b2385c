"""Deming regression: ordinary (constant errors) and weighted (constant CV, Linnet 1990), with jackknife CIs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import JsonResult, _confidence, _paired

_MAX_ITER = 200
_TOL = 1e-12


@dataclass(frozen=True)
class DemingResult(JsonResult):
    """Deming fit ``test = intercept + slope * reference``; CIs from the jackknife (Linnet 1990) with t(n-2).

    ``weighted``: weighted Deming for a constant coefficient of variation (Linnet 1990), else ordinary Deming.
    """

    n: int
    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    slope_se: float
    intercept_se: float
    error_ratio: float
    confidence: float
    weighted: bool = False


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float) -> tuple[float, float]:
    """Closed-form Deming line with weights ``w`` minimising ``sum w_i [(x_i - X_i)^2 + (y_i - a - b X_i)^2 / lam]``."""
    sw = float(w.sum())
    mx, my = float(w @ x) / sw, float(w @ y) / sw
    sxx = float(w @ (x - mx) ** 2)
    syy = float(w @ (y - my) ** 2)
    sxy = float(w @ ((x - mx) * (y - my)))
    if sxy == 0:
        raise ValueError("Deming regression is undefined when the two methods are uncorrelated (covariance 0)")
    u = syy - lam * sxx
    b = (u + math.sqrt(u * u + 4.0 * lam * sxy * sxy)) / (2.0 * sxy)
    return b, my - b * mx


def _deming_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, float]:
    return _weighted_line(x, y, np.ones_like(x), lam)


def _weighted_deming_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, float]:
    """Linnet 1990's iteration: weights ``1 / ((X_i + Y_i)/2)^2`` from the estimated true values
    ``X_i = x_i + b d_i / (lam + b^2)``, ``Y_i = a + b X_i`` (``d_i = y_i - a - b x_i``), refitted until the slope
    is stable; starts from the pair means ``(x_i + y_i)/2``."""
    level = (x + y) / 2.0
    if np.any(level <= 0):
        raise ValueError("weighted Deming (constant CV) needs positive values: some pairs have mean <= 0; "
                         "use ordinary Deming")  # fmt: skip
    b, a = _weighted_line(x, y, 1.0 / level**2, lam)
    for _ in range(_MAX_ITER):
        big_x = x + b * (y - a - b * x) / (lam + b * b)
        level = (big_x + a + b * big_x) / 2.0
        if np.any(level <= 0):
            raise ValueError("weighted Deming: an estimated true value is <= 0; use ordinary Deming")
        b_new, a = _weighted_line(x, y, 1.0 / level**2, lam)
        if abs(b_new - b) <= _TOL * max(1.0, abs(b)):
            return b_new, a
        b = b_new
    raise ValueError(f"weighted Deming did not converge in {_MAX_ITER} iterations; use ordinary Deming")


def _fitter(weighted: bool):
    return _weighted_deming_fit if weighted else _deming_fit


def _jackknife(x: np.ndarray, y: np.ndarray, lam: float, weighted: bool) -> np.ndarray:
    """Leave-one-out ``(slope, intercept)`` of each sample, shape ``(n, 2)``."""
    fit = _fitter(weighted)
    n = x.size
    loo = np.empty((n, 2))
    mask = np.ones(n, dtype=bool)
    for k in range(n):
        mask[k] = False
        loo[k] = fit(x[mask], y[mask], lam)
        mask[k] = True
    return loo


def _jackknife_se(values: np.ndarray) -> np.ndarray:
    """Jackknife SE ``sqrt((n-1)/n * sum (v_i - mean v)^2)`` along axis 0 (Linnet 1990)."""
    n = values.shape[0]
    return np.sqrt((n - 1) / n * np.sum((values - values.mean(axis=0)) ** 2, axis=0))


def _check_error_ratio(error_ratio: float) -> None:
    if not (error_ratio > 0 and math.isfinite(error_ratio)):
        raise ValueError(f"error_ratio must be a positive number, got {error_ratio!r}")


def deming(
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    *,
    error_ratio: float = 1.0,
    confidence: float = 0.95,
    weighted: bool = False,
) -> DemingResult:
    """Deming regression, closed form (Cornbleet & Gochman 1979, Clin Chem 25:432; Linnet 1990, Stat Med 9:1463).

    ``error_ratio`` is ``lambda = var(error of test) / var(error of reference)`` (1: orthogonal regression).
    ``slope = (Syy - l*Sxx + sqrt((Syy - l*Sxx)^2 + 4*l*Sxy^2)) / (2*Sxy)``; with ``weighted`` the sums are
    weighted for errors proportional to the level (constant CV; Linnet 1990, see :func:`_weighted_deming_fit`),
    ``lambda`` then being the ratio of the squared CVs. CIs: leave-one-out jackknife standard errors
    ``sqrt((n-1)/n * sum (b_i - mean b_i)^2)`` around the full-data estimate, with t(n-2) (Linnet 1990).
    """
    x, y = _paired(reference, test)
    a = _confidence(confidence)
    _check_error_ratio(error_ratio)
    n = x.size
    b, icpt = _fitter(weighted)(x, y, error_ratio)
    se = _jackknife_se(_jackknife(x, y, error_ratio, weighted))
    t = float(stats.t.ppf(1.0 - a / 2.0, n - 2))
    return DemingResult(
        n=n, slope=b, intercept=icpt, slope_ci=(b - t * se[0], b + t * se[0]),
        intercept_ci=(icpt - t * se[1], icpt + t * se[1]), slope_se=float(se[0]), intercept_se=float(se[1]),
        error_ratio=error_ratio, confidence=confidence, weighted=weighted,
    )  # fmt: skip
