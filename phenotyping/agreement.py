"""Method-comparison statistics: pure functions that return frozen result objects.

Every function validates its numeric inputs (equal lengths, at least 3 pairs, no NaN/inf) and raises ``ValueError``
naming what is wrong. Results are frozen dataclasses with ``to_dict()``, which turns them into JSON-safe dicts
(non-finite numbers become ``None``). Plots take these results (``phenotyping.figures``); nothing here plots.

Conventions: ``reference`` is the comparison method (for the project: the manual cytospin count), ``test`` the new
method (the model); differences are always ``test - reference``. Only numpy and scipy are imported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

Measure = Literal["absolute", "percent", "ratio"]
MEASURES: tuple[str, ...] = ("absolute", "percent", "ratio")
X_AXIS: dict[str, str] = {"absolute": "mean of the two methods", "percent": "mean of the two methods",
                          "ratio": "geometric mean of the two methods"}  # fmt: skip
"""The Bland-Altman x-axis (``BlandAltmanResult.means``, ``RegressionLimits.at``) for each measure."""

__all__ = [
    "MEASURES",
    "X_AXIS",
    "BlandAltmanResult",
    "JsonResult",
    "ClassPerformance",
    "ConcordanceResult",
    "CorrelationResult",
    "CountingSpread",
    "CusumTest",
    "DemingResult",
    "ICCResult",
    "KappaResult",
    "PassingBablokResult",
    "ProportionalBias",
    "RegressionLimits",
    "RepeatedBlandAltmanResult",
    "bland_altman",
    "bland_altman_repeated",
    "ccc",
    "classification_performance",
    "clopper_pearson",
    "cohen_kappa",
    "counting_spread",
    "deming",
    "icc",
    "passing_bablok",
    "pearson",
    "spearman",
    "to_jsonable",
]


def to_jsonable(obj: Any) -> Any:
    """Convert results (dataclasses, mappings, tuples, numpy scalars) to JSON-safe values; NaN/inf become None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


class JsonResult:
    """Mixin: ``to_dict()`` for frozen result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of this result (NaN/inf as None, tuples as lists)."""
        return to_jsonable(self)


# ----------------------------------------------------------------------------------------------------------------
# input validation


def _vector(values: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of numbers: {e}") from e
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per sample), got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} missing or non-finite value(s) (NaN/inf) at position(s) {bad[:10].tolist()}; "
            "remove those samples from both methods or fill in the value"
        )
    return a


def _paired(
    reference: Any, test: Any, *, names: tuple[str, str] = ("reference", "test"), min_n: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    x = _vector(reference, names[0])
    y = _vector(test, names[1])
    if x.size != y.size:
        raise ValueError(
            f"length mismatch: {names[0]} has {x.size} values but {names[1]} has {y.size}; "
            "pass exactly one value per sample to each method, in the same order"
        )
    if x.size < min_n:
        raise ValueError(f"need at least {min_n} paired values, got n={x.size}")
    return x, y


def _confidence(confidence: float) -> float:
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
    return 1.0 - confidence


def _labels(labels: Sequence[str] | None, n: int) -> tuple[str, ...] | None:
    if labels is None:
        return None
    out = tuple(str(v) for v in labels)
    if len(out) != n:
        raise ValueError(f"labels has {len(out)} entries but there are {n} pairs; give one label per sample")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Bland-Altman


@dataclass(frozen=True)
class ProportionalBias(JsonResult):
    """OLS regression of the difference on the mean (Bland & Altman 1999, §3.1): ``D = intercept + slope * A``.

    For ``measure='ratio'`` both D and A are on the natural-log scale.
    """

    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    p_value: float


@dataclass(frozen=True)
class RegressionLimits(JsonResult):
    """Regression-based limits of agreement (Bland & Altman 1999, §3.2).

    ``bias(A) = b0 + b1*A``; the absolute residuals are regressed on A, ``|R| = c0 + c1*A``; since
    ``E|R| = sigma * sqrt(2/pi)`` for normal residuals, the limits are ``bias(A) -/+ z*sqrt(pi/2)*(c0 + c1*A)``.

    The x-axis is ``x_axis``, the same axis as ``BlandAltmanResult.means``: for ``absolute``/``percent`` A is the
    arithmetic mean of the two methods; for ``ratio`` (``log_scale``) the fit is on the log scale against the mean of
    the two logs, ``A = log(sqrt(reference * test))``, so :meth:`at` takes the *geometric* mean of the two methods,
    takes its log, and back-transforms the results to ratios.
    """

    b0: float
    b1: float
    c0: float
    c1: float
    z: float
    log_scale: bool
    x_axis: str

    def at(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lower, bias, upper)`` at ``x`` on :attr:`x_axis` (the axis of ``BlandAltmanResult.means``: the mean of
        the two methods, or for ``ratio`` their geometric mean ``sqrt(reference * test)``), in the result's units."""
        a = np.asarray(x, dtype=float)
        if self.log_scale:
            if np.any(a <= 0):
                raise ValueError("ratio regression limits are defined at positive geometric means only; got "
                                 f"{a[a <= 0][:5].tolist()}")
            a = np.log(a)
        bias = self.b0 + self.b1 * a
        half = self.z * math.sqrt(math.pi / 2.0) * (self.c0 + self.c1 * a)
        lo, hi = bias - half, bias + half
        if self.log_scale:
            return np.exp(lo), np.exp(bias), np.exp(hi)
        return lo, bias, hi


@dataclass(frozen=True)
class BlandAltmanResult(JsonResult):
    """Bland-Altman agreement of ``test`` against ``reference`` (differences test - reference).

    Units: ``absolute`` - the input units; ``percent`` - 100*(test-reference)/mean of the two, in %; ``ratio`` -
    ``bias``, limits and their CIs are ratios test/reference (back-transformed from natural logs) and ``sd`` is the
    SD of the log ratios. ``means``/``differences`` are the plotted points on the axis named by ``x_axis``: the mean
    of the two methods and the difference, or for ``ratio`` the geometric mean ``sqrt(reference * test)`` (the
    back-transformed mean of the logs the statistics use) and the ratio. CIs: ``bias_ci`` is the exact t interval;
    ``loa_ci_method`` says how the limits' CIs were made.
    """

    measure: str
    n: int
    bias: float
    sd: float
    loa_lower: float
    loa_upper: float
    bias_ci: tuple[float, float]
    loa_lower_ci: tuple[float, float]
    loa_upper_ci: tuple[float, float]
    z: float
    confidence: float
    loa_ci_method: str
    proportional_bias: ProportionalBias
    regression_limits: RegressionLimits | None
    means: tuple[float, ...]
    differences: tuple[float, ...]
    labels: tuple[str, ...] | None
    x_axis: str


def _differences(
    x: np.ndarray, y: np.ndarray, measure: str, names: tuple[str, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(differences, x-axis values)`` of the statistics for ``measure``: ``y - x`` and the mean; 100*(y - x)/mean
    and the mean; or ``log(y) - log(x)`` and the mean of the logs."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    mean_xy = (x + y) / 2.0
    if measure == "absolute":
        return y - x, mean_xy
    if measure == "percent":
        zero = np.flatnonzero(mean_xy == 0)
        if zero.size:
            which = [names[i] for i in zero] if names else zero.tolist()
            raise ValueError(
                f"percent differences are undefined where both methods are 0 (samples {which[:10]}); "
                "use measure='absolute' or leave those samples out"
            )
        return 100.0 * (y - x) / mean_xy, mean_xy
    nonpos = np.flatnonzero((x <= 0) | (y <= 0))
    if nonpos.size:
        which = [names[i] for i in nonpos] if names else nonpos.tolist()
        raise ValueError(
            f"measure='ratio' needs positive values in both methods; samples {which[:10]} have a value <= 0; "
            "use measure='absolute' or 'percent'"
        )
    return np.log(y) - np.log(x), (np.log(x) + np.log(y)) / 2.0


def bland_altman(
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    *,
    measure: Measure = "absolute",
    z: float = 1.96,
    confidence: float = 0.95,
    loa_ci: Literal["exact", "approximate"] = "exact",
    regression_loa: Literal["auto", "always", "never"] = "auto",
    alpha: float = 0.05,
    labels: Sequence[str] | None = None,
) -> BlandAltmanResult:
    """Bias and limits of agreement ``bias -/+ z*SD`` (Bland & Altman 1986, Lancet i:307; 1999, SMMR 8:135).

    Args:
        reference, test: paired measurements, one per sample.
        measure: ``absolute`` differences; ``percent`` of the pair mean (Bland & Altman 1999, §3); or ``ratio``
            (log-transformed, back-transformed to ratios; Bland & Altman 1999, §3.1). ``ratio`` needs positive values;
            ``percent`` needs a non-zero pair mean.
        z: limit multiplier (1.96; Bland & Altman 1986 used 2).
        confidence: level of all CIs.
        loa_ci: ``exact`` - CIs of the limits from the non-central t distribution (the limits are normal quantiles
            estimated by ``mean + z*SD``; Carkeet 2015, Optom Vis Sci 92:e71); ``approximate`` - Bland & Altman 1999
            §2: ``SE = SD*sqrt(1/n + z^2/(2(n-1)))`` with t(n-1) (the 1986 paper's ``sqrt(3 SD^2/n)`` is this with z=2
            and n-1 replaced by n). The bias CI is always the exact t interval (Bland & Altman 1986).
        regression_loa: add regression-based limits (Bland & Altman 1999 §3.2): ``auto`` when the proportional-bias
            slope differs from 0 at level ``alpha``, ``always`` or ``never``.
        alpha: significance level for ``regression_loa='auto'``.
        labels: sample ids for the points (kept for plots).
    """
    x, y = _paired(reference, test)
    a = _confidence(confidence)
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if loa_ci not in ("exact", "approximate"):
        raise ValueError(f"loa_ci must be 'exact' or 'approximate', got {loa_ci!r}")
    if regression_loa not in ("auto", "always", "never"):
        raise ValueError(f"regression_loa must be 'auto', 'always' or 'never', got {regression_loa!r}")
    if not z > 0:
        raise ValueError(f"z must be positive, got {z!r}")
    names = _labels(labels, x.size)

    d, a_reg = _differences(x, y, measure, names)

    n = d.size
    dbar = float(d.mean())
    sd = float(d.std(ddof=1))
    t = float(stats.t.ppf(1.0 - a / 2.0, n - 1))
    se_bias = sd / math.sqrt(n)
    bias_ci = (dbar - t * se_bias, dbar + t * se_bias)
    lo, hi = dbar - z * sd, dbar + z * sd
    if loa_ci == "exact":
        nc = z * math.sqrt(n)
        g_lo = float(stats.nct.ppf(a / 2.0, n - 1, nc)) / math.sqrt(n)
        g_hi = float(stats.nct.ppf(1.0 - a / 2.0, n - 1, nc)) / math.sqrt(n)
        upper_ci = (dbar + g_lo * sd, dbar + g_hi * sd)
        lower_ci = (dbar - g_hi * sd, dbar - g_lo * sd)
        method = "exact (non-central t; Carkeet 2015)"
    else:
        se_loa = sd * math.sqrt(1.0 / n + z * z / (2.0 * (n - 1)))
        lower_ci = (lo - t * se_loa, lo + t * se_loa)
        upper_ci = (hi - t * se_loa, hi + t * se_loa)
        method = "approximate (Bland & Altman 1999, SE = SD*sqrt(1/n + z^2/(2(n-1))))"

    prop = _proportional_bias(a_reg, d, confidence)
    reg: RegressionLimits | None = None
    if regression_loa == "always" or (regression_loa == "auto" and prop.p_value < alpha):
        reg = _regression_limits(a_reg, d, z=z, measure=measure)

    if measure == "ratio":
        ex = math.exp
        return BlandAltmanResult(
            measure=measure, n=n, bias=ex(dbar), sd=sd, loa_lower=ex(lo), loa_upper=ex(hi),
            bias_ci=(ex(bias_ci[0]), ex(bias_ci[1])),
            loa_lower_ci=(ex(lower_ci[0]), ex(lower_ci[1])), loa_upper_ci=(ex(upper_ci[0]), ex(upper_ci[1])),
            z=z, confidence=confidence, loa_ci_method=method, proportional_bias=prop, regression_limits=reg,
            means=tuple(np.exp(a_reg).tolist()), differences=tuple(np.exp(d).tolist()), labels=names,
            x_axis=X_AXIS[measure],
        )  # fmt: skip
    return BlandAltmanResult(
        measure=measure, n=n, bias=dbar, sd=sd, loa_lower=lo, loa_upper=hi, bias_ci=bias_ci,
        loa_lower_ci=lower_ci, loa_upper_ci=upper_ci, z=z, confidence=confidence, loa_ci_method=method,
        proportional_bias=prop, regression_limits=reg, means=tuple(a_reg.tolist()), differences=tuple(d.tolist()),
        labels=names, x_axis=X_AXIS[measure],
    )  # fmt: skip


def _proportional_bias(a: np.ndarray, d: np.ndarray, confidence: float) -> ProportionalBias:
    if np.ptp(a) == 0:
        return ProportionalBias(slope=math.nan, intercept=math.nan, slope_ci=(math.nan, math.nan), p_value=math.nan)
    fit = stats.linregress(a, d)
    t = float(stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, a.size - 2))
    slope, se = float(fit.slope), float(fit.stderr)
    return ProportionalBias(
        slope=slope, intercept=float(fit.intercept), slope_ci=(slope - t * se, slope + t * se), p_value=float(fit.pvalue)
    )


def _regression_limits(a: np.ndarray, d: np.ndarray, *, z: float, measure: str) -> RegressionLimits | None:
    if np.ptp(a) == 0:
        return None
    b1, b0 = np.polyfit(a, d, 1)
    r = np.abs(d - (b0 + b1 * a))
    c1, c0 = np.polyfit(a, r, 1)
    return RegressionLimits(b0=float(b0), b1=float(b1), c0=float(c0), c1=float(c1), z=z,
                            log_scale=measure == "ratio", x_axis=X_AXIS[measure])


@dataclass(frozen=True)
class RepeatedBlandAltmanResult(JsonResult):
    """Limits of agreement with several paired replicates per subject (Bland & Altman 2007, §4: true value varies).

    ``sd`` is the SD of a single difference, ``sqrt(between_var + within_var)``; ``between_var`` is set to 0 (and
    ``between_var_truncated`` is True) when the ANOVA estimate is negative, as that paper prescribes. Units as in
    :class:`BlandAltmanResult`: for ``ratio`` the variances and ``sd`` are on the natural-log scale and ``bias`` and
    the limits are back-transformed ratios test/reference. ``divisor`` is the ANOVA's lambda (below).
    """

    measure: str
    n_subjects: int
    n_pairs: int
    bias: float
    sd: float
    within_var: float
    between_var: float
    between_var_truncated: bool
    divisor: float
    loa_lower: float
    loa_upper: float
    z: float


def bland_altman_repeated(
    subject: Sequence[str] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    *,
    measure: Measure = "absolute",
    z: float = 1.96,
) -> RepeatedBlandAltmanResult:
    """Bland-Altman for several paired (reference, test) replicates per subject (Bland & Altman 2007,
    J Biopharm Stat 17:571, the case where the true value varies between replicates).

    One-way ANOVA of the differences by subject: ``within_var = MS_within``;
    ``between_var = (MS_between - MS_within) / lambda`` with ``lambda = ((sum m)^2 - sum m^2) / ((n-1) sum m)``
    for m_i pairs of subject i and n subjects. The bias is the mean of all differences. ``measure`` transforms the
    differences as :func:`bland_altman` does (``percent`` of the pair mean, or log ratios).
    """
    x, y = _paired(reference, test)
    subj = np.asarray([str(s) for s in subject])
    if subj.size != x.size:
        raise ValueError(f"subject has {subj.size} entries but there are {x.size} pairs; give one subject id per pair")
    if not z > 0:
        raise ValueError(f"z must be positive, got {z!r}")
    d, _ = _differences(x, y, measure, tuple(subj.tolist()))
    ids, inverse, m = np.unique(subj, return_inverse=True, return_counts=True)
    k, big_n = ids.size, d.size
    if k < 2:
        raise ValueError(f"need at least 2 subjects, got {k}")
    if big_n == k:
        raise ValueError("every subject has a single pair; use bland_altman() for one pair per subject")
    sums = np.bincount(inverse, weights=d)
    means = sums / m
    grand = float(d.mean())
    ss_between = float(np.sum(m * (means - grand) ** 2))
    ss_within = float(np.sum((d - means[inverse]) ** 2))
    ms_between = ss_between / (k - 1)
    ms_within = ss_within / (big_n - k)
    lam = (big_n**2 - float(np.sum(m**2))) / ((k - 1) * big_n)
    between = (ms_between - ms_within) / lam
    truncated = between < 0
    between = max(between, 0.0)
    sd = math.sqrt(between + ms_within)
    lo, hi = grand - z * sd, grand + z * sd
    if measure == "ratio":
        grand, lo, hi = math.exp(grand), math.exp(lo), math.exp(hi)
    return RepeatedBlandAltmanResult(
        measure=measure, n_subjects=int(k), n_pairs=int(big_n), bias=grand, sd=sd, within_var=ms_within,
        between_var=between, between_var_truncated=bool(truncated), divisor=float(lam), loa_lower=lo, loa_upper=hi,
        z=z,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# regression


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


# ----------------------------------------------------------------------------------------------------------------
# correlation and concordance


@dataclass(frozen=True)
class ConcordanceResult(JsonResult):
    """Lin's concordance correlation ``ccc = pearson * bias_correction`` with a CI from Fisher's z."""

    n: int
    ccc: float
    ci: tuple[float, float]
    pearson: float
    bias_correction: float
    location_shift: float
    scale_shift: float
    confidence: float


def ccc(
    reference: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> ConcordanceResult:
    """Lin's concordance correlation coefficient (Lin 1989, Biometrics 45:255; correction Lin 2000, 56:324).

    ``ccc = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` with 1/n moments. CI: ``tanh(z -/+ z_{a/2} * se)`` of
    ``z = atanh(ccc)`` with Lin's asymptotic variance
    ``[(1-r^2) c^2/((1-c^2) r^2) + 2 c^3 (1-c) u^2/(r (1-c^2)^2) - c^4 u^4/(2 r^2 (1-c^2)^2)] / (n-2)``,
    ``u = (mean_x - mean_y)/sqrt(s_x s_y)``. ``location_shift`` is u, ``scale_shift`` is ``s_x/s_y`` (Lin 1989 §2).
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
    u = float(mx - my) / math.sqrt(sx * sy)
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
        n=n, ccc=c, ci=ci, pearson=r, bias_correction=cb, location_shift=u, scale_shift=sx / sy, confidence=confidence
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


# ----------------------------------------------------------------------------------------------------------------
# classification agreement over cells


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial CI of a proportion (Clopper & Pearson 1934); ``(nan, nan)`` when ``trials == 0``."""
    a = _confidence(confidence)
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got successes={successes}, trials={trials}")
    if trials == 0:
        return (math.nan, math.nan)
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(a / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(stats.beta.ppf(1 - a / 2, successes + 1, trials - successes))
    return (lo, hi)


@dataclass(frozen=True)
class ClassPerformance(JsonResult):
    """One-vs-rest performance of one class over cells with a reference label; proportions 0-1, exact CIs.

    ``efficiency`` is the fraction of cells correctly called in or out of the class, ``(TP + TN) / N``
    (Galen & Gambino 1975). Undefined values (no positives/negatives) are NaN.
    """

    cell_type: str
    tp: int
    fp: int
    fn: int
    tn: int
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    efficiency: float
    efficiency_ci: tuple[float, float]


def _check_labels(reference: Sequence[str], predicted: Sequence[str]) -> tuple[list[str], list[str]]:
    ref, pred = [str(v) for v in reference], [str(v) for v in predicted]
    if len(ref) != len(pred):
        raise ValueError(
            f"length mismatch: {len(ref)} reference labels but {len(pred)} predicted labels; one of each per cell"
        )
    if not ref:
        raise ValueError("no cells with a reference label")
    return ref, pred


def classification_performance(
    reference: Sequence[str],
    predicted: Sequence[str],
    *,
    classes: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> dict[str, ClassPerformance]:
    """Per-class sensitivity, specificity and efficiency (one class against the rest) over cells that carry a
    reference label (e.g. the reviewer's verified class) and a predicted label (the model's pre-classification).

    Sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), efficiency = (TP+TN)/N, each with a Clopper-Pearson CI
    (as reported in digital-morphology evaluations, e.g. Kratz et al. 2005, Am J Clin Pathol 124:770).
    """
    ref, pred = _check_labels(reference, predicted)
    names = list(classes) if classes is not None else sorted(set(ref) | set(pred))
    r, p = np.asarray(ref), np.asarray(pred)
    n = r.size
    out: dict[str, ClassPerformance] = {}
    for c in names:
        tp = int(np.sum((r == c) & (p == c)))
        fn = int(np.sum((r == c) & (p != c)))
        fp = int(np.sum((r != c) & (p == c)))
        tn = n - tp - fn - fp
        pos, neg = tp + fn, tn + fp
        out[c] = ClassPerformance(
            cell_type=c, tp=tp, fp=fp, fn=fn, tn=tn,
            sensitivity=tp / pos if pos else math.nan, sensitivity_ci=clopper_pearson(tp, pos, confidence=confidence),
            specificity=tn / neg if neg else math.nan, specificity_ci=clopper_pearson(tn, neg, confidence=confidence),
            efficiency=(tp + tn) / n, efficiency_ci=clopper_pearson(tp + tn, n, confidence=confidence),
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class KappaResult(JsonResult):
    """Cohen's kappa with observed/expected agreement and an asymptotic CI."""

    n: int
    kappa: float
    ci: tuple[float, float]
    observed_agreement: float
    expected_agreement: float
    se: float
    confidence: float


def cohen_kappa(
    reference: Sequence[str], predicted: Sequence[str], *, confidence: float = 0.95
) -> KappaResult:
    """Cohen's kappa ``(p_o - p_e)/(1 - p_e)`` (Cohen 1960, Educ Psychol Meas 20:37) between two labellings
    of the same cells. CI: ``kappa -/+ z * sqrt(p_o (1 - p_o) / (n (1 - p_e)^2))`` (Cohen 1960's large-sample SE)."""
    ref, pred = _check_labels(reference, predicted)
    a = _confidence(confidence)
    n = len(ref)
    cats = sorted(set(ref) | set(pred))
    idx = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)))
    for u, v in zip(ref, pred):
        table[idx[u], idx[v]] += 1
    po = float(np.trace(table)) / n
    pe = float(np.sum(table.sum(axis=0) * table.sum(axis=1))) / n**2
    if pe == 1.0:
        raise ValueError("kappa is undefined: both labellings use a single, identical class for every cell")
    kappa = (po - pe) / (1.0 - pe)
    se = math.sqrt(po * (1 - po) / (n * (1 - pe) ** 2))
    q = float(stats.norm.ppf(1 - a / 2))
    return KappaResult(n, kappa, (kappa - q * se, kappa + q * se), po, pe, se, confidence)


# ----------------------------------------------------------------------------------------------------------------
# counting error of a manual differential


@dataclass(frozen=True)
class CountingSpread(JsonResult):
    """Binomial spread of a differential percentage from ``n_cells`` counted cells at true percentage ``percent``.

    ``sd`` is ``100*sqrt(p(1-p)/n)`` percentage points; ``range95`` is the central 95 % range of the observed
    percentage (binomial 2.5 % and 97.5 % quantiles of the count, as percentages); ``ci95`` is the exact
    (Clopper-Pearson) CI that a reader would attach to an observed ``percent`` of ``n_cells`` - the Rümke table.
    """

    percent: float
    n_cells: int
    sd: float
    range95: tuple[float, float]
    ci95: tuple[float, float]


def counting_spread(percent: float, n_cells: int = 200) -> CountingSpread:
    """Expected spread of a manual ``n_cells``-cell differential at ``percent`` (Rümke 1979/1985: the imprecision of
    differential counts is binomial; CLSI H20-A2 tabulates these limits for 100-1000 cells)."""
    if not (isinstance(n_cells, (int, np.integer)) and n_cells >= 1):
        raise ValueError(f"n_cells must be a positive integer (e.g. 200 or 400), got {n_cells!r}")
    p = float(percent)
    if not (0.0 <= p <= 100.0) or not math.isfinite(p):
        raise ValueError(f"percent must be within 0-100, got {percent!r}")
    q = p / 100.0
    sd = 100.0 * math.sqrt(q * (1 - q) / n_cells)
    lo = float(stats.binom.ppf(0.025, n_cells, q)) / n_cells * 100.0
    hi = float(stats.binom.ppf(0.975, n_cells, q)) / n_cells * 100.0
    k = int(round(q * n_cells))
    ci = clopper_pearson(k, int(n_cells))
    return CountingSpread(percent=p, n_cells=int(n_cells), sd=sd, range95=(lo, hi), ci95=(100 * ci[0], 100 * ci[1]))
