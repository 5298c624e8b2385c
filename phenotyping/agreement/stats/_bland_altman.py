"""Bland-Altman limits of agreement: one pair per sample (1986/1999) and replicates per subject (2007)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import (
    MEASURES,
    X_AXIS,
    JsonResult,
    Measure,
    _confidence,
    _labels,
    _paired,
)


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


def differences(
    reference: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray, *, measure: Measure = "absolute"
) -> np.ndarray:
    """The differences the statistics of ``measure`` use, test - reference: ``y - x``, ``100 (y - x) / mean`` or
    ``log(y) - log(x)`` (natural log, for ``ratio``); raises ``ValueError`` where the measure is undefined."""
    x, y = _paired(reference, test, min_n=1)
    return _differences(x, y, measure, None)[0]


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
    lower_ci, upper_ci, method = _loa_cis(dbar, sd, n, z=z, a=a, t=t, loa_ci=loa_ci)

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


def _loa_cis(
    dbar: float, sd: float, n: int, *, z: float, a: float, t: float, loa_ci: str
) -> tuple[tuple[float, float], tuple[float, float], str]:
    """``(lower limit CI, upper limit CI, method)`` of the limits ``dbar -/+ z*sd`` at level ``1 - a``; ``t`` is the
    t(n-1) quantile. ``loa_ci`` as in :func:`bland_altman`."""
    lo, hi = dbar - z * sd, dbar + z * sd
    if loa_ci == "exact":
        nc = z * math.sqrt(n)
        g_lo = float(stats.nct.ppf(a / 2.0, n - 1, nc)) / math.sqrt(n)
        g_hi = float(stats.nct.ppf(1.0 - a / 2.0, n - 1, nc)) / math.sqrt(n)
        upper_ci = (dbar + g_lo * sd, dbar + g_hi * sd)
        lower_ci = (dbar - g_hi * sd, dbar - g_lo * sd)
        return lower_ci, upper_ci, "exact (non-central t; Carkeet 2015)"
    se_loa = sd * math.sqrt(1.0 / n + z * z / (2.0 * (n - 1)))
    lower_ci = (lo - t * se_loa, lo + t * se_loa)
    upper_ci = (hi - t * se_loa, hi + t * se_loa)
    return lower_ci, upper_ci, "approximate (Bland & Altman 1999, SE = SD*sqrt(1/n + z^2/(2(n-1))))"


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
class MoverLimits(JsonResult):
    """Limits of agreement with several pairs per subject and their CIs by MOVER (Zou 2013, Stat Methods Med Res
    22:630, the true value varying within subject).

    Zou's estimates: ``bias`` the mean of the subject means of the differences, with the normal CI
    ``bias -/+ z * sqrt(s_m^2 / n)`` (``s_m^2`` the variance of the subject means); the variance of one difference
    ``s_m^2 + (1 - 1/m_h) * MS_within`` (``m_h`` the harmonic mean of the pairs per subject), its CI from the
    chi-square CIs of the two components combined by MOVER, and the limits' CIs from MOVER on the bias and SD. With
    the same number of pairs per subject they equal the Bland & Altman 2007 estimates. Units as in
    :class:`RepeatedBlandAltmanResult` (``ratio``: back-transformed ratios, ``sd`` on the log scale).
    """

    bias: float
    bias_ci: tuple[float, float]
    sd: float
    sd_ci: tuple[float, float]
    loa_lower: float
    loa_lower_ci: tuple[float, float]
    loa_upper: float
    loa_upper_ci: tuple[float, float]
    confidence: float
    method: str = "MOVER (Zou 2013)"


def _mover(d: np.ndarray, inverse: np.ndarray, m: np.ndarray, *, z: float, a: float, ratio: bool) -> MoverLimits:
    """Zou 2013's MOVER limits of the differences ``d`` grouped by ``inverse`` (``m`` pairs per subject)."""
    k, big_n = m.size, d.size
    means = np.bincount(inverse, weights=d) / m
    bias = float(means.mean())
    var_m = float(means.var(ddof=1))
    msw = float(np.sum((d - means[inverse]) ** 2)) / (big_n - k)
    c = 1.0 - 1.0 / (k / float(np.sum(1.0 / m)))
    var = var_m + c * msw
    chi = stats.chi2.ppf
    lo_var = var - math.hypot(var_m * (1 - (k - 1) / chi(1 - a / 2, k - 1)),
                              c * msw * (1 - (big_n - k) / chi(1 - a / 2, big_n - k)))
    hi_var = var + math.hypot(var_m * ((k - 1) / chi(a / 2, k - 1) - 1),
                              c * msw * ((big_n - k) / chi(a / 2, big_n - k) - 1))
    sd, sd_lo, sd_hi = math.sqrt(var), math.sqrt(max(lo_var, 0.0)), math.sqrt(hi_var)
    q = float(stats.norm.ppf(1 - a / 2))
    half_bias = q * math.sqrt(var_m / k)
    below = math.hypot(half_bias, z * (sd - sd_lo))  # how far the SD can fall
    above = math.hypot(half_bias, z * (sd_hi - sd))  # how far it can rise
    lower, upper = bias - z * sd, bias + z * sd
    vals = [(bias - half_bias, bias + half_bias), (lower - above, lower + below), (upper - below, upper + above)]
    if ratio:
        bias, lower, upper = math.exp(bias), math.exp(lower), math.exp(upper)
        vals = [(math.exp(lo), math.exp(hi)) for lo, hi in vals]
    return MoverLimits(bias=bias, bias_ci=vals[0], sd=sd, sd_ci=(sd_lo, sd_hi), loa_lower=lower, loa_lower_ci=vals[1],
                       loa_upper=upper, loa_upper_ci=vals[2], confidence=1.0 - a)  # fmt: skip


@dataclass(frozen=True)
class RepeatedBlandAltmanResult(JsonResult):
    """Limits of agreement with several paired replicates per subject (Bland & Altman 2007, §4: true value varies).

    ``sd`` is the SD of a single difference, ``sqrt(between_var + within_var)``; ``between_var`` is set to 0 (and
    ``between_var_truncated`` is True) when the ANOVA estimate is negative, as that paper prescribes. Units as in
    :class:`BlandAltmanResult`: for ``ratio`` the variances and ``sd`` are on the natural-log scale and ``bias`` and
    the limits are back-transformed ratios test/reference. ``divisor`` is the ANOVA's lambda (below). ``mover``
    holds the CIs of the bias and limits by MOVER (Zou 2013; its estimates equal these for balanced designs).
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
    mover: MoverLimits


def bland_altman_repeated(
    subject: Sequence[str] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    test: Sequence[float] | np.ndarray,
    *,
    measure: Measure = "absolute",
    z: float = 1.96,
    confidence: float = 0.95,
) -> RepeatedBlandAltmanResult:
    """Bland-Altman for several paired (reference, test) replicates per subject (Bland & Altman 2007,
    J Biopharm Stat 17:571, the case where the true value varies between replicates).

    One-way ANOVA of the differences by subject: ``within_var = MS_within``;
    ``between_var = (MS_between - MS_within) / lambda`` with ``lambda = ((sum m)^2 - sum m^2) / ((n-1) sum m)``
    for m_i pairs of subject i and n subjects. The bias is the mean of all differences. ``measure`` transforms the
    differences as :func:`bland_altman` does (``percent`` of the pair mean, or log ratios). CIs at ``confidence``:
    MOVER (Zou 2013; :class:`MoverLimits`).
    """
    x, y = _paired(reference, test)
    a = _confidence(confidence)
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
    mover = _mover(d, inverse, m, z=z, a=a, ratio=measure == "ratio")
    if measure == "ratio":
        grand, lo, hi = math.exp(grand), math.exp(lo), math.exp(hi)
    return RepeatedBlandAltmanResult(
        measure=measure, n_subjects=int(k), n_pairs=int(big_n), bias=grand, sd=sd, within_var=ms_within,
        between_var=between, between_var_truncated=bool(truncated), divisor=float(lam), loa_lower=lo, loa_upper=hi,
        z=z, mover=mover,
    )  # fmt: skip
