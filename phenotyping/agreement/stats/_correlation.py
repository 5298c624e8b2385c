"""Correlation and concordance: Lin's CCC, Pearson, Spearman and the intraclass correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import JsonResult, _confidence, _paired

CCC_SHIFTS = ("location_shift = (mean test - mean reference) / sqrt(s_reference * s_test); "
              "scale_shift = s_test / s_reference (Lin 1989 section 2, oriented test - reference)")


@dataclass(frozen=True)
class ConcordanceResult(JsonResult):
    """Lin's concordance correlation ``ccc = pearson * bias_correction`` with a CI from Fisher's z.

    The shifts follow the package's test - reference rule (``shifts`` says so in the output): ``location_shift`` is
    ``(mean test - mean reference) / sqrt(s_reference * s_test)`` (positive when the test reads higher) and
    ``scale_shift`` is ``s_test / s_reference`` (above 1 when the test spreads more).
    """

    n: int
    ccc: float
    ci: tuple[float, float]
    pearson: float
    bias_correction: float
    location_shift: float
    scale_shift: float
    confidence: float
    shifts: str = CCC_SHIFTS


def ccc(
    reference: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> ConcordanceResult:
    """Lin's concordance correlation coefficient (Lin 1989, Biometrics 45:255; correction Lin 2000, 56:324).

    ``ccc = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` with 1/n moments. CI: ``tanh(z -/+ z_{a/2} * se)`` of
    ``z = atanh(ccc)`` with Lin's asymptotic variance
    ``[(1-r^2) c^2/((1-c^2) r^2) + 2 c^3 (1-c) u^2/(r (1-c^2)^2) - c^4 u^4/(2 r^2 (1-c^2)^2)] / (n-2)``,
    ``u = (mean_y - mean_x)/sqrt(s_x s_y)`` (x reference, y test; the variance depends on u^2 only).
    ``location_shift`` is u and ``scale_shift`` is ``s_y/s_x``: Lin 1989 §2's quantities, oriented test - reference
    like every difference here.
    """
    x, y = _paired(reference, test)
    a = _confidence(confidence)
    n = x.size
    mx, my = x.mean(), y.mean()
    sx2, sy2 = float(np.mean((x - mx) ** 2)), float(np.mean((y - my) ** 2))
    if sx2 == 0 or sy2 == 0:
        raise ValueError("CCC is undefined when one method has no spread (all values equal)")
    sxy = float(np.mean((x - mx) * (y - my)))
    c = 2.0 * sxy / (sx2 + sy2 + (mx - my) ** 2)
    r = sxy / math.sqrt(sx2 * sy2)
    sx, sy = math.sqrt(sx2), math.sqrt(sy2)
    u = float(my - mx) / math.sqrt(sx * sy)
    cb = c / r if r != 0 else math.nan
    if abs(c) < 1 and r != 0:
        var_z = (
            (1 - r * r) * c * c / ((1 - c * c) * r * r)
            + 2 * c**3 * (1 - c) * u * u / (r * (1 - c * c) ** 2)
            - c**4 * u**4 / (2 * r * r * (1 - c * c) ** 2)
        ) / (n - 2)
        zq = float(stats.norm.ppf(1.0 - a / 2.0))
        z = math.atanh(c)
        se = math.sqrt(var_z) if var_z > 0 else 0.0
        ci = (math.tanh(z - zq * se), math.tanh(z + zq * se))
    else:
        ci = (c, c)
    return ConcordanceResult(
        n=n, ccc=c, ci=ci, pearson=r, bias_correction=cb, location_shift=u, scale_shift=sy / sx, confidence=confidence
    )


@dataclass(frozen=True)
class CorrelationResult(JsonResult):
    """A correlation coefficient with its two-sided p-value and Fisher-z CI."""

    method: str
    n: int
    r: float
    ci: tuple[float, float]
    p_value: float
    confidence: float


def _fisher_ci(r: float, n: int, a: float, se: float) -> tuple[float, float]:
    if abs(r) >= 1:
        return (r, r)
    z = math.atanh(r)
    q = float(stats.norm.ppf(1.0 - a / 2.0))
    return (math.tanh(z - q * se), math.tanh(z + q * se))


def pearson(
    reference: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> CorrelationResult:
    """Pearson's r with the Fisher-z CI (SE ``1/sqrt(n-3)``; Fisher 1921)."""
    x, y = _paired(reference, test, min_n=4)
    a = _confidence(confidence)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("Pearson's r is undefined when one method has no spread (all values equal)")
    res = stats.pearsonr(x, y)
    r = float(res.statistic)
    return CorrelationResult("pearson", x.size, r, _fisher_ci(r, x.size, a, 1 / math.sqrt(x.size - 3)),
                             float(res.pvalue), confidence)  # fmt: skip


def spearman(
    reference: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> CorrelationResult:
    """Spearman's rho with the Fisher-z CI using the Bonett & Wright 2000 SE ``sqrt((1 + rho^2/2)/(n-3))``."""
    x, y = _paired(reference, test, min_n=4)
    a = _confidence(confidence)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("Spearman's rho is undefined when one method has no spread (all values equal)")
    res = stats.spearmanr(x, y)
    r = float(res.statistic)
    se = math.sqrt((1 + r * r / 2) / (x.size - 3))
    return CorrelationResult("spearman", x.size, r, _fisher_ci(r, x.size, a, se), float(res.pvalue), confidence)


@dataclass(frozen=True)
class ICCResult(JsonResult):
    """An intraclass correlation (Shrout & Fleiss 1979) with its F-based CI (McGraw & Wong 1996)."""

    kind: str
    n_subjects: int
    n_raters: int
    icc: float
    ci: tuple[float, float]
    f: float
    p_value: float
    confidence: float


def icc(
    ratings: Sequence[Sequence[float]] | np.ndarray,
    *,
    kind: Literal["ICC(2,1)", "ICC(3,1)"] = "ICC(2,1)",
    confidence: float = 0.95,
) -> ICCResult:
    """ICC(2,1) (two-way random, absolute agreement) or ICC(3,1) (two-way mixed, consistency), single measures.

    ``ratings`` is ``(n_subjects, k_methods)``. Shrout & Fleiss 1979, Psychol Bull 86:420, from the two-way ANOVA
    mean squares: ICC(2,1) = (BMS - EMS)/(BMS + (k-1)EMS + k(JMS - EMS)/n); ICC(3,1) = (BMS - EMS)/(BMS + (k-1)EMS).
    CIs follow McGraw & Wong 1996 (Psychol Methods 1:30), cases 2A and 3C.
    """
    r = np.asarray(ratings, dtype=float)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"ratings must be (n_subjects, k_methods) with k >= 2, got shape {r.shape}")
    if r.shape[0] < 3:
        raise ValueError(f"need at least 3 subjects, got {r.shape[0]}")
    if not np.all(np.isfinite(r)):
        bad = np.argwhere(~np.isfinite(r))[:5].tolist()
        raise ValueError(f"ratings has missing or non-finite values at (subject, method) {bad}; complete or drop them")
    if kind not in ("ICC(2,1)", "ICC(3,1)"):
        raise ValueError(f"kind must be 'ICC(2,1)' or 'ICC(3,1)', got {kind!r}")
    a = _confidence(confidence)
    n, k = r.shape
    grand = r.mean()
    ss_rows = k * float(np.sum((r.mean(axis=1) - grand) ** 2))
    ss_cols = n * float(np.sum((r.mean(axis=0) - grand) ** 2))
    ss_err = float(np.sum((r - grand) ** 2)) - ss_rows - ss_cols
    bms, jms = ss_rows / (n - 1), ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    df1, df2 = n - 1, (n - 1) * (k - 1)
    if not ems > 0:
        raise ValueError("ICC is undefined without residual variance (the methods differ by the same amount in "
                         "every subject, or every value is equal); its F-based CI needs some disagreement")
    f_obs = bms / ems
    p = float(stats.f.sf(f_obs, df1, df2))
    if kind == "ICC(3,1)":
        value = (bms - ems) / (bms + (k - 1) * ems)
        fl = f_obs / float(stats.f.ppf(1 - a / 2, df1, df2))
        fu = f_obs * float(stats.f.ppf(1 - a / 2, df2, df1))
        ci = ((fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1))
    else:
        value = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
        fj = jms / ems
        vn = (k - 1) * (n - 1) * (k * value * fj + n * (1 + (k - 1) * value) - k * value) ** 2
        vd = (n - 1) * k**2 * value**2 * fj**2 + (n * (1 + (k - 1) * value) - k * value) ** 2
        v = vn / vd
        fs = float(stats.f.ppf(1 - a / 2, n - 1, v))
        fs2 = float(stats.f.ppf(1 - a / 2, v, n - 1))
        lo = n * (bms - fs * ems) / (fs * (k * jms + (k * n - k - n) * ems) + n * bms)
        hi = n * (fs2 * bms - ems) / (k * jms + (k * n - k - n) * ems + n * fs2 * bms)
        ci = (lo, hi)
    return ICCResult(kind, n, k, float(value), (float(ci[0]), float(ci[1])), float(f_obs), p, confidence)
