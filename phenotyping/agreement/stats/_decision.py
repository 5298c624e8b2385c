"""Predicted bias at medical decision levels from a method-comparison regression, and bootstrap CIs of the fits."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import JsonResult, _confidence, _paired, _vector
from phenotyping.agreement.stats._deming import (
    _check_error_ratio,
    _fitter,
    _jackknife,
    _jackknife_se,
)
from phenotyping.agreement.stats._regression import passing_bablok

RegressionMethod = Literal["deming", "passing_bablok"]
REGRESSION_METHODS: tuple[str, ...] = ("deming", "passing_bablok")


@dataclass(frozen=True)
class BootstrapCI(JsonResult):
    """Percentile bootstrap CIs of a regression's slope and intercept: ``n_bootstrap`` resamples of the pairs with
    replacement from ``numpy.random.default_rng(seed)`` (reproducible); resamples on which the fit is undefined
    (e.g. all points identical) are left out and counted in ``n_failed``."""

    method: str
    n_bootstrap: int
    n_failed: int
    seed: int
    confidence: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]


@dataclass(frozen=True)
class LevelBias(JsonResult):
    """The predicted bias at one decision level ``X_c`` (reference scale): ``bias = intercept + (slope - 1) X_c``;
    ``relative_bias`` is ``100 * bias / X_c`` (% of the level; NaN at 0). CI bounds NaN where none is available."""

    level: float
    predicted: float
    bias: float
    bias_ci: tuple[float, float]
    relative_bias: float


@dataclass(frozen=True)
class DecisionLevelBias(JsonResult):
    """Predicted bias at medical decision levels (CLSI EP09-A3 §9) from ``method``'s line; ``ci_method`` says how
    the CIs were made."""

    method: str
    weighted: bool
    ci_method: str
    confidence: float
    slope: float
    intercept: float
    levels: tuple[LevelBias, ...]


def _line(method: str, error_ratio: float, weighted: bool) -> Callable[[np.ndarray, np.ndarray], tuple[float, float]]:
    if method == "deming":
        fit = _fitter(weighted)
        return lambda x, y: fit(x, y, error_ratio)
    if method == "passing_bablok":
        def pb(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
            r = passing_bablok(x, y)
            return r.slope, r.intercept
        return pb
    raise ValueError(f"method must be one of {REGRESSION_METHODS}, got {method!r}")


def _resample(x: np.ndarray, y: np.ndarray, fit: Callable, n_bootstrap: int, seed: int) -> tuple[np.ndarray, int]:
    """``((slope, intercept) per successful resample, failures)``; the indices are drawn as
    ``rng.integers(0, n, (n_bootstrap, n))``, so results are reproducible for a seed."""
    if not (isinstance(n_bootstrap, (int, np.integer)) and n_bootstrap >= 100):
        raise ValueError(f"n_bootstrap must be a whole number >= 100 (e.g. 2000), got {n_bootstrap!r}")
    idx = np.random.default_rng(seed).integers(0, x.size, (int(n_bootstrap), x.size))
    out, failed = [], 0
    for row in idx:
        try:
            out.append(fit(x[row], y[row]))
        except (ValueError, ZeroDivisionError, FloatingPointError):
            failed += 1
    if len(out) < n_bootstrap / 2:
        raise ValueError(f"the fit failed on {failed} of {n_bootstrap} bootstrap resamples; too few distinct points")
    return np.asarray(out, dtype=float), failed


def _percentile_ci(values: np.ndarray, a: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [a / 2.0, 1.0 - a / 2.0], axis=0)
    return float(lo), float(hi)


def regression_bootstrap(
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    *,
    method: RegressionMethod = "passing_bablok",
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    error_ratio: float = 1.0,
    weighted: bool = False,
) -> BootstrapCI:
    """Percentile bootstrap CIs of Passing-Bablok's or Deming's slope and intercept (Efron & Tibshirani 1993 §13;
    CLSI EP09-A3 allows them for both); see :class:`BootstrapCI`."""
    x, y = _paired(reference, test)
    a = _confidence(confidence)
    _check_error_ratio(error_ratio)
    params, failed = _resample(x, y, _line(method, error_ratio, weighted), n_bootstrap, seed)
    return BootstrapCI(method=method, n_bootstrap=int(n_bootstrap), n_failed=failed, seed=int(seed),
                       confidence=confidence, slope_ci=_percentile_ci(params[:, 0], a),
                       intercept_ci=_percentile_ci(params[:, 1], a))  # fmt: skip


def decision_level_bias(
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    levels: Sequence[float],
    *,
    method: RegressionMethod = "deming",
    ci: Literal["analytic", "bootstrap"] = "analytic",
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    error_ratio: float = 1.0,
    weighted: bool = False,
) -> DecisionLevelBias:
    """Predicted bias ``a + (b - 1) X_c`` at each decision level ``X_c`` (CLSI EP09-A3 §9.2) from Deming or
    Passing-Bablok.

    CIs: ``analytic`` - for Deming the jackknife (Linnet 1990): pseudo-estimates of the bias from the leave-one-out
    fits, ``SE = sqrt((n-1)/n * sum (B_i - mean B)^2)``, ``bias -/+ t(n-2) SE``; Passing-Bablok has no closed-form
    CI of a predicted value, so its CIs are NaN unless ``ci='bootstrap'``. ``bootstrap`` - percentile CIs of
    ``a* + (b* - 1) X_c`` over the resampled fits (see :func:`regression_bootstrap`).
    """
    x, y = _paired(reference, test)
    a = _confidence(confidence)
    _check_error_ratio(error_ratio)
    xc = _vector(levels, "decision levels")
    if xc.size == 0:
        raise ValueError("give at least one decision level")
    if ci not in ("analytic", "bootstrap"):
        raise ValueError(f"ci must be 'analytic' or 'bootstrap', got {ci!r}")
    slope, icpt = _line(method, error_ratio, weighted)(x, y)
    bias = icpt + (slope - 1.0) * xc
    if ci == "bootstrap":
        params, failed = _resample(x, y, _line(method, error_ratio, weighted), n_bootstrap, seed)
        boot = params[:, 1:2] + (params[:, 0:1] - 1.0) * xc[None, :]  # (B, levels)
        bounds = np.quantile(boot, [a / 2.0, 1.0 - a / 2.0], axis=0)
        cis = [(float(lo), float(hi)) for lo, hi in bounds.T]
        how = f"bootstrap percentile, {n_bootstrap} resamples (seed {seed}, {failed} failed)"
    elif method == "deming":
        loo = _jackknife(x, y, error_ratio, weighted)
        se = _jackknife_se(loo[:, 1:2] + (loo[:, 0:1] - 1.0) * xc[None, :])
        t = float(stats.t.ppf(1.0 - a / 2.0, x.size - 2))
        cis = [(float(b - t * s), float(b + t * s)) for b, s in zip(bias, se)]
        how = "jackknife (Linnet 1990), t(n-2)"
    else:
        cis = [(math.nan, math.nan)] * xc.size
        how = "none: Passing-Bablok has no closed-form CI of a predicted bias; use the bootstrap"
    rows = tuple(LevelBias(level=float(v), predicted=float(icpt + slope * v), bias=float(b), bias_ci=c,
                           relative_bias=100.0 * float(b) / float(v) if v != 0 else math.nan)
                 for v, b, c in zip(xc, bias, cis))  # fmt: skip
    return DecisionLevelBias(method=method, weighted=weighted and method == "deming", ci_method=how,
                             confidence=confidence, slope=float(slope), intercept=float(icpt), levels=rows)
