"""One class's method comparison: every statistic of the model (test) against the manual count (reference), with
what a CLSI EP09 comparison adds (decision-level bias, outlier screening, acceptance, design warnings).

:func:`compare_class` is pure computation; :mod:`phenotyping.agreement.study` runs it per class over a study, and the
``agreement`` command over a paired CSV. :class:`EP09Options` carries the lab's choices (decision levels, allowable
differences, regression for the decision levels, bootstrap) to every caller in one object.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from phenotyping.agreement import stats as ag

__all__ = [
    "DEFAULT_MANUAL_CELLS",
    "SCALES",
    "ClassAgreement",
    "CountingError",
    "EP09Options",
    "ManualCountSpread",
    "compare_class",
    "options_from_specs",
    "parse_class_values",
]

Scale = Literal["percent", "absolute"]
SCALES: tuple[str, ...] = ("percent", "absolute")
"""What the values are: differential percentages (0-100; counting error applies) or absolute quantities such as
cells/uL from an analyser (no upper bound, no counting error)."""

DEFAULT_MANUAL_CELLS: tuple[int, ...] = (200, 400)
"""Manual differential sizes whose counting error is reported beside every class's limits of agreement."""

_UNITS = {"absolute": "percentage points", "percent": "% of the pair mean", "ratio": "natural log of test/reference"}


@dataclass(frozen=True)
class ManualCountSpread(ag.JsonResult):
    """What counting error alone would do if the manual differential were a count of ``n_cells`` cells.

    ``sd_difference`` is the SD of the difference a perfect model would show against such a count, in the units of
    the Bland-Altman SD (``CountingError.units``), and ``loa_halfwidth = z * sd_difference`` the half-width of its
    limits of agreement (for ``ratio`` on the log scale: the limits would be ``bias * exp(-/+ loa_halfwidth)``).
    ``spread`` is the Rümke spread of one such count at the class's mean manual percentage (percentage points).
    """

    n_cells: int
    sd_difference: float | None
    loa_halfwidth: float | None
    spread: ag.CountingSpread


@dataclass(frozen=True)
class CountingError(ag.JsonResult):
    """How much of the disagreement binomial counting error alone explains (Rümke 1979; CLSI H20-A2).

    Per pair i with mean percentage p_i, a percentage from n counted cells has variance ``p_i(100-p_i)/n``; the
    difference's variance is the sum over both methods, carried into the measure's units by the delta method
    (``percent``: times ``(100/p_i)^2``; ``ratio``: divided by ``p_i^2``, the variance of the log). ``sd_difference``
    is ``sqrt(mean_i var_i)`` in ``units`` and ``loa_halfwidth = z * sd_difference``.

    With the study's cell totals (``reference_cells``/``test_cells``, medians over samples; the test term is left out
    where the test's totals are unknown): ``sd_difference``, ``loa_halfwidth`` and ``spread`` (the Rümke spread of
    one manual count of ``reference_cells`` cells at the class's mean manual %); all ``None`` when the manual totals
    are unknown (percent-only data). ``manual_counts`` is always given: the same for hypothetical manual counts of
    200 and 400 cells (or the sizes asked for), the model taken as exact. ``None`` values with ``note`` where the
    measure is undefined (``percent``/``ratio`` when a pair's mean is 0).
    """

    units: str
    reference_cells: int | None
    test_cells: int | None
    sd_difference: float | None
    loa_halfwidth: float | None
    spread: ag.CountingSpread | None
    manual_counts: tuple[ManualCountSpread, ...]
    note: str | None


def _check_manual_cells(manual_cells: Sequence[int]) -> tuple[int, ...]:
    cells = tuple(manual_cells)
    bad = [c for c in cells if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1]
    if not cells or bad:
        raise ValueError(f"manual_cells must be positive whole numbers of cells (e.g. 200 400), got {list(cells)}")
    return tuple(int(c) for c in cells)


def _counting_error(
    ref: np.ndarray,
    test: np.ndarray,
    ref_n: Sequence[int | None] | None,
    test_n: Sequence[int | None] | None,
    *,
    z: float,
    measure: str,
    manual_cells: tuple[int, ...],
) -> CountingError:
    p = np.clip((ref + test) / 2.0, 0.0, 100.0)
    binom = p * (100.0 - p)  # n * variance of a percentage from n cells
    note = None
    if measure == "absolute":
        scale = np.ones_like(p)
    elif np.any(p <= 0):
        scale, note = None, (f"counting error in {_UNITS[measure]} is undefined where both methods are 0 % "
                             f"({int(np.sum(p <= 0))} pair(s)); use measure='absolute'")
    else:
        scale = (100.0 / p) ** 2 if measure == "percent" else 1.0 / p**2

    def sd(inv: np.ndarray | float) -> float | None:
        return None if scale is None else math.sqrt(float(np.mean(binom * scale * inv)))

    mean_ref = float(np.clip(ref.mean(), 0.0, 100.0))
    hypothetical = []
    for n in manual_cells:
        s = sd(1.0 / n)
        hypothetical.append(ManualCountSpread(n_cells=n, sd_difference=s, loa_halfwidth=None if s is None else z * s,
                                              spread=ag.counting_spread(mean_ref, n)))  # fmt: skip
    known = ref_n is not None and all(v is not None for v in ref_n)
    if not known:
        return CountingError(units=_UNITS[measure], reference_cells=None, test_cells=None, sd_difference=None,
                             loa_halfwidth=None, spread=None, manual_counts=tuple(hypothetical), note=note)  # fmt: skip
    rn = np.asarray(ref_n, dtype=float)
    tn = None if test_n is None or any(v is None for v in test_n) else np.asarray(test_n, dtype=float)
    actual = sd(1.0 / rn + (1.0 / tn if tn is not None else 0.0))
    cells = int(round(float(np.median(rn))))
    return CountingError(
        units=_UNITS[measure], reference_cells=cells,
        test_cells=None if tn is None else int(round(float(np.median(tn)))), sd_difference=actual,
        loa_halfwidth=None if actual is None else z * actual, spread=ag.counting_spread(mean_ref, cells),
        manual_counts=tuple(hypothetical), note=note,
    )  # fmt: skip



@dataclass(frozen=True)
class EP09Options(ag.JsonResult):
    """The laboratory's choices for a CLSI EP09 comparison, per class (key ``"*"``: every class not named).

    ``decision_levels``: medical decision levels (reference scale, the units of the values) at which the predicted
    bias is reported, from ``regression`` (``deming`` - weighted for constant CV with ``weighted_deming`` - or
    ``passing_bablok``). ``allowable``: the allowable difference in the units of the measure (see
    :class:`phenotyping.agreement.stats.Acceptance`); no verdict for a class without one. ``bootstrap``: number of
    bootstrap resamples (0: none) for percentile CIs of Passing-Bablok and Deming and of the decision-level bias,
    drawn from ``seed``. ``screen_outliers``: generalised ESD on the differences (flagged, never dropped).
    """

    decision_levels: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    allowable: Mapping[str, float] = field(default_factory=dict)
    regression: ag.RegressionMethod = "deming"
    weighted_deming: bool = False
    bootstrap: int = 0
    seed: int = 0
    screen_outliers: bool = True

    def __post_init__(self) -> None:
        if self.regression not in ag.REGRESSION_METHODS:
            raise ValueError(f"regression must be one of {ag.REGRESSION_METHODS}, got {self.regression!r}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or not (
                self.bootstrap == 0 or self.bootstrap >= 100):
            raise ValueError(f"bootstrap must be 0 (none) or at least 100 resamples, got {self.bootstrap!r}")
        levels = {}
        for c, v in dict(self.decision_levels).items():
            vals = tuple(float(x) for x in v)
            if not vals or not all(math.isfinite(x) for x in vals):
                raise ValueError(f"decision levels of {c!r} must be finite numbers, got {list(v)}")
            levels[str(c)] = vals
        allow = {}
        for c, v in dict(self.allowable).items():
            f = float(v)
            if not (f > 0 and math.isfinite(f)):
                raise ValueError(f"allowable difference of {c!r} must be a positive number, got {v!r}")
            allow[str(c)] = f
        object.__setattr__(self, "decision_levels", levels)
        object.__setattr__(self, "allowable", allow)

    def levels_for(self, cell_type: str) -> tuple[float, ...]:
        """Decision levels of ``cell_type`` (its own, else those under ``"*"``, else none)."""
        return tuple(self.decision_levels.get(cell_type, self.decision_levels.get("*", ())))

    def allowable_for(self, cell_type: str) -> float | None:
        """Allowable difference of ``cell_type`` (its own, else the one under ``"*"``, else None)."""
        return self.allowable.get(cell_type, self.allowable.get("*"))


def parse_class_values(specs: Sequence[str], what: str) -> dict[str, tuple[float, ...]]:
    """Parse ``CLASS=V1,V2`` (one class) or ``V1,V2`` (every class: key ``"*"``) items, as typed on the command
    line; raises ``ValueError`` naming the item that is not of that form."""
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, sep, values = str(spec).rpartition("=")
        key = name.strip() if sep else "*"
        if sep and not key:
            raise ValueError(f"{what} {spec!r}: the class name before '=' is empty; write CLASS=VALUE[,VALUE...]")
        try:
            vals = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{what} {spec!r} is not CLASS=VALUE[,VALUE...] or VALUE[,VALUE...] with numbers "
                             "(e.g. neutrophil=40,70)") from None  # fmt: skip
        if not vals:
            raise ValueError(f"{what} {spec!r} gives no value")
        out[key] = vals
    return out


def options_from_specs(
    decision_levels: Sequence[str] | None,
    allowable: Sequence[str] | None,
    *,
    default_levels: Mapping[str, Sequence[float]] | None = None,
    default_allowable: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> EP09Options:
    """:class:`EP09Options` from typed specs (``CLASS=X[,X...]`` or ``X[,X...]``, see :func:`parse_class_values`),
    falling back to the lab's settings (``default_*``) where no spec is given; ``kwargs`` go to the options."""
    levels = (parse_class_values(decision_levels, "decision levels") if decision_levels
              else {k: tuple(v) for k, v in (default_levels or {}).items()})  # fmt: skip
    if allowable:
        parsed = parse_class_values(allowable, "allowable difference")
        several = sorted(k for k, v in parsed.items() if len(v) != 1)
        if several:
            raise ValueError(f"give one allowable difference per class; {several} have several")
        allow = {k: v[0] for k, v in parsed.items()}
    else:
        allow = dict(default_allowable or {})
    return EP09Options(decision_levels=levels, allowable=allow, **kwargs)


_NONE_CI = (None, None)


@dataclass(frozen=True)
class ClassAgreement(ag.JsonResult):
    """All agreement statistics of one class. A statistic that cannot be computed for these data (too few samples,
    zeros with ``percent``/``ratio``, every value 0, ...) is ``None`` and ``errors`` says why; the other statistics
    of the class are unaffected.

    With replicates (a sample id appearing more than once) ``bland_altman`` is ``None`` and ``repeated`` holds the
    repeated-measures limits (Bland & Altman 2007, CIs by MOVER, Zou 2013); Passing-Bablok, Deming, CCC, Pearson,
    ICC and the decision-level bias then use each sample's mean of its replicates, and ``note`` says so. ``n``
    counts pairs, ``n_samples`` distinct samples.

    EP09 additions: ``icc`` (ICC(2,1), absolute agreement), ``decision_levels`` (predicted bias at the lab's levels),
    ``bootstrap`` (percentile CIs by method, when asked), ``outliers`` (generalised ESD of the differences) with
    ``without_outliers`` (the same comparison without the flagged pairs; None when none was flagged),
    ``acceptance`` (verdict against the allowable difference) and ``warnings`` (design: n < 40, n < 10, ties).
    ``counting_error`` is None for ``scale='absolute'`` (values are not differential percentages).
    """

    cell_type: str
    n: int
    n_samples: int
    measure: str
    sample_ids: tuple[str, ...]
    reference: tuple[float, ...]
    test: tuple[float, ...]
    bland_altman: ag.BlandAltmanResult | None
    repeated: ag.RepeatedBlandAltmanResult | None
    passing_bablok: ag.PassingBablokResult | None
    deming: ag.DemingResult | None
    ccc: ag.ConcordanceResult | None
    pearson: ag.CorrelationResult | None
    counting_error: CountingError | None
    errors: Mapping[str, str]
    note: str | None = None
    scale: str = "percent"
    icc: ag.ICCResult | None = None
    decision_levels: ag.DecisionLevelBias | None = None
    bootstrap: Mapping[str, ag.BootstrapCI] = field(default_factory=dict)
    outliers: ag.OutlierScreen | None = None
    without_outliers: ClassAgreement | None = None
    acceptance: ag.Acceptance | None = None
    warnings: tuple[str, ...] = ()

    @property
    def computed(self) -> bool:
        """Whether the class has limits of agreement (plain or repeated-measures)."""
        return self.bland_altman is not None or self.repeated is not None

    def limits(self) -> dict[str, Any]:
        """``bias, sd, loa_lower, loa_upper`` and their CIs from whichever Bland-Altman was computed (None where
        none was), with ``loa_ci_method`` and ``bland_altman_method``."""
        ba, rep = self.bland_altman, self.repeated
        if ba is not None:
            return dict(bias=ba.bias, sd=ba.sd, loa_lower=ba.loa_lower, loa_upper=ba.loa_upper, bias_ci=ba.bias_ci,
                        loa_lower_ci=ba.loa_lower_ci, loa_upper_ci=ba.loa_upper_ci, loa_ci_method=ba.loa_ci_method,
                        bland_altman_method="Bland & Altman 1986/1999, one pair per sample")  # fmt: skip
        if rep is not None:
            mv = rep.mover
            return dict(bias=rep.bias, sd=rep.sd, loa_lower=rep.loa_lower, loa_upper=rep.loa_upper,
                        bias_ci=mv.bias_ci, loa_lower_ci=mv.loa_lower_ci, loa_upper_ci=mv.loa_upper_ci,
                        loa_ci_method="MOVER (Zou 2013), around Zou's estimates (mean of sample means; equal to the "
                                      "limits here when every sample has the same number of replicates)",
                        bland_altman_method="repeated measures, true value varies (Bland & Altman 2007)",
                        within_var=rep.within_var, between_var=rep.between_var)  # fmt: skip
        return dict(bias=None, sd=None, loa_lower=None, loa_upper=None, bias_ci=_NONE_CI, loa_lower_ci=_NONE_CI,
                    loa_upper_ci=_NONE_CI, loa_ci_method=None, bland_altman_method=None)  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The command-line contract: ``n, bias, sd, loa_lower, loa_upper, bias_ci, loa_lower_ci, loa_upper_ci,
        proportional_bias{slope, p_value}, passing_bablok{slope, slope_ci, intercept, intercept_ci},
        deming{slope, intercept}, ccc, pearson`` plus extra keys (EP09: ``icc``, ``decision_levels``, ``outliers``,
        ``without_outliers``, ``acceptance``, ``verdict``, ``warnings``); JSON-safe (no NaN). Every key is always
        present: what could not be computed is ``null`` (CIs ``[null, null]``; the nested objects keep their keys)
        and ``errors`` says why."""
        out: dict[str, Any] = {"n": self.n, "n_samples": self.n_samples, "measure": self.measure,
                               "scale": self.scale, "replicates": self.n_samples < self.n}  # fmt: skip
        out.update(self.limits())
        ba = self.bland_altman
        prop = ba.proportional_bias if ba is not None else None
        out["proportional_bias"] = {
            "slope": None if prop is None else prop.slope,
            "p_value": None if prop is None else prop.p_value,
            "intercept": None if prop is None else prop.intercept,
        }
        out["regression_loa"] = None if ba is None else ba.regression_limits
        out.update(_regression_keys(self))
        cc = self.ccc
        out["ccc"] = None if cc is None else cc.ccc
        out["ccc_ci"] = _NONE_CI if cc is None else cc.ci
        out["ccc_shifts"] = {"location_shift": None if cc is None else cc.location_shift,
                             "scale_shift": None if cc is None else cc.scale_shift, "convention": ag.CCC_SHIFTS}
        out["pearson"] = None if self.pearson is None else self.pearson.r
        out["icc"] = {"kind": "ICC(2,1)", "icc": None if self.icc is None else self.icc.icc,
                      "ci": _NONE_CI if self.icc is None else self.icc.ci}  # fmt: skip
        out["counting_error"] = self.counting_error
        out.update(_ep09_keys(self))
        out["errors"] = dict(self.errors)
        out["note"] = self.note
        return ag.to_jsonable(out)


def _regression_keys(a: ClassAgreement) -> dict[str, Any]:
    pb, dm = a.passing_bablok, a.deming
    boot_pb, boot_dm = a.bootstrap.get("passing_bablok"), a.bootstrap.get("deming")
    return {
        "passing_bablok": {
            "slope": None if pb is None else pb.slope,
            "slope_ci": _NONE_CI if pb is None else pb.slope_ci,
            "intercept": None if pb is None else pb.intercept,
            "intercept_ci": _NONE_CI if pb is None else pb.intercept_ci,
            "cusum_p_value": None if pb is None else pb.cusum.p_value,
            "linear": None if pb is None else pb.cusum.linear,
            "bootstrap": boot_pb,
        },
        "deming": {
            "slope": None if dm is None else dm.slope,
            "intercept": None if dm is None else dm.intercept,
            "slope_ci": _NONE_CI if dm is None else dm.slope_ci,
            "intercept_ci": _NONE_CI if dm is None else dm.intercept_ci,
            "weighted": None if dm is None else dm.weighted,
            "bootstrap": boot_dm,
        },
    }


def _ep09_keys(a: ClassAgreement) -> dict[str, Any]:
    acc = a.acceptance
    screen = a.outliers
    return {
        "decision_levels": a.decision_levels,
        "outliers": None if screen is None else {
            "method": "generalised ESD (Rosner 1983) of the differences", "max_outliers": screen.max_outliers,
            "alpha": screen.alpha, "n_outliers": screen.n_outliers, "samples": screen.labels or (),
            "differences": screen.values},
        "without_outliers": None if a.without_outliers is None else a.without_outliers.summary(),
        "acceptance": acc,
        "verdict": None if acc is None else ("accepted" if acc.accepted else "not accepted"),
        "warnings": list(a.warnings),
    }  # fmt: skip


def _check_inputs(
    cell_type: str, sample_ids: Sequence[str], reference: Sequence[float], test: Sequence[float], *,
    totals: tuple[Sequence[int | None] | None, Sequence[int | None] | None], measure: str, confidence: float,
    scale: str,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    ids = tuple(str(s) for s in sample_ids)
    x, y = np.asarray(reference, dtype=float), np.asarray(test, dtype=float)
    if not (len(ids) == x.size == y.size):
        raise ValueError(f"class {cell_type!r}: {len(ids)} sample ids, {x.size} reference and {y.size} test values; "
                         "give one of each per pair")  # fmt: skip
    if measure not in ag.MEASURES:
        raise ValueError(f"measure must be one of {ag.MEASURES}, got {measure!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if isinstance(confidence, bool) or not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95 for 95 %), got {confidence!r}")
    for name, t in zip(("reference_totals", "test_totals"), totals):
        if t is not None and len(t) != x.size:
            raise ValueError(f"{name} has {len(t)} entries for {x.size} pairs of {cell_type!r}")
    return ids, x, y


def _sample_means(ids: tuple[str, ...], x: np.ndarray, y: np.ndarray) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    unique = tuple(dict.fromkeys(ids))
    index = {s: i for i, s in enumerate(unique)}
    k = np.asarray([index[s] for s in ids])
    m = np.bincount(k)
    return unique, np.bincount(k, weights=x) / m, np.bincount(k, weights=y) / m


def _fit_all(cell_type: str, ids: tuple[str, ...], x: np.ndarray, y: np.ndarray, *, measure: Any, z: float,
             confidence: float, options: EP09Options, attempt: Any) -> dict[str, Any]:
    """Every statistic of one class as :class:`ClassAgreement` fields (outlier screening aside)."""
    out: dict[str, Any] = {"bland_altman": None, "repeated": None, "note": None}
    unique, xs, ys = _sample_means(ids, x, y)
    if len(unique) < len(ids):
        out["repeated"] = attempt("bland_altman", lambda: ag.bland_altman_repeated(
            ids, x, y, measure=measure, z=z, confidence=confidence))  # fmt: skip
        several = sum(1 for c in Counter(ids).values() if c > 1)
        out["note"] = (f"replicates: {x.size} pairs from {len(unique)} samples ({several} with more than one); "
                       "limits of agreement "
                       "from repeated-measures Bland-Altman (Bland & Altman 2007, true value varies; CIs by MOVER, "
                       "Zou 2013), Passing-Bablok, Deming, CCC, Pearson, ICC and decision-level bias on each "
                       "sample's mean of its replicates")  # fmt: skip
    else:
        out["bland_altman"] = attempt("bland_altman", lambda: ag.bland_altman(
            x, y, measure=measure, z=z, confidence=confidence, labels=ids))  # fmt: skip
    out["passing_bablok"] = attempt("passing_bablok", lambda: ag.passing_bablok(
        xs, ys, confidence=confidence, labels=unique))  # fmt: skip
    out["deming"] = attempt("deming", lambda: ag.deming(xs, ys, confidence=confidence,
                                                        weighted=options.weighted_deming))  # fmt: skip
    out["ccc"] = attempt("ccc", lambda: ag.ccc(xs, ys, confidence=confidence))
    out["pearson"] = attempt("pearson", lambda: ag.pearson(xs, ys, confidence=confidence))
    out["icc"] = attempt("icc", lambda: ag.icc(np.column_stack([xs, ys]), kind="ICC(2,1)", confidence=confidence))
    boot = {}
    if options.bootstrap:
        for method in ag.REGRESSION_METHODS:
            r = attempt(f"bootstrap_{method}", lambda m=method: ag.regression_bootstrap(
                xs, ys, method=m, n_bootstrap=options.bootstrap, seed=options.seed, confidence=confidence,
                weighted=options.weighted_deming))  # fmt: skip
            if r is not None:
                boot[method] = r
    out["bootstrap"] = boot
    levels = options.levels_for(cell_type)
    out["decision_levels"] = None if not levels else attempt("decision_levels", lambda: ag.decision_level_bias(
        xs, ys, levels, method=options.regression, ci="bootstrap" if options.bootstrap else "analytic",
        n_bootstrap=options.bootstrap or 2000, seed=options.seed, confidence=confidence,
        weighted=options.weighted_deming))  # fmt: skip
    out["warnings"] = ag.design_warnings(xs, ys)
    return out


def _acceptance(a: ClassAgreement, allowable: float | None, errors: dict[str, str]) -> ag.Acceptance | None:
    if allowable is None:
        return None
    lim = a.limits()
    if lim["bias"] is None:
        errors["acceptance"] = "no verdict: the class has no limits of agreement"
        return None
    try:
        return ag.acceptance(lim["bias"], lim["loa_lower"], lim["loa_upper"], allowable, measure=a.measure,
                             loa_lower_ci=lim["loa_lower_ci"], loa_upper_ci=lim["loa_upper_ci"])  # fmt: skip
    except ValueError as e:
        errors["acceptance"] = str(e)
        return None


def _screen(a: ClassAgreement, rerun: Any, errors: dict[str, str]) -> ClassAgreement:
    """Flag outlying differences (generalised ESD) and attach the comparison without them (``rerun(keep)``)."""
    x, y = np.asarray(a.reference), np.asarray(a.test)
    try:
        screen = ag.generalized_esd(ag.differences(x, y, measure=a.measure), labels=a.sample_ids)  # type: ignore
    except ValueError as e:
        errors["outliers"] = f"no outlier screening: {e}"
        return a
    if not screen.n_outliers:
        return replace(a, outliers=screen)
    keep = np.ones(x.size, dtype=bool)
    keep[list(screen.indices)] = False
    try:
        without = rerun(keep)
    except ValueError as e:
        errors["without_outliers"] = str(e)
        without = None
    flagged = ", ".join(screen.labels or ())
    warning = (f"{screen.n_outliers} outlying difference(s) flagged by the generalised ESD test (samples {flagged}); "
               "kept in these results, see without_outliers for the comparison without them")  # fmt: skip
    return replace(a, outliers=screen, without_outliers=without, warnings=(*a.warnings, warning))


def compare_class(
    cell_type: str,
    sample_ids: Sequence[str],
    reference: Sequence[float],
    test: Sequence[float],
    *,
    reference_totals: Sequence[int | None] | None = None,
    test_totals: Sequence[int | None] | None = None,
    measure: ag.Measure = "absolute",
    z: float = 1.96,
    confidence: float = 0.95,
    manual_cells: Sequence[int] = DEFAULT_MANUAL_CELLS,
    scale: Scale = "percent",
    options: EP09Options | None = None,
) -> ClassAgreement:
    """Bland-Altman, Passing-Bablok, Deming, CCC, Pearson, ICC, counting error and the EP09 additions (see
    :class:`ClassAgreement`) for one class; values are percentages 0-100, or absolute quantities with
    ``scale='absolute'``.

    Each statistic is independent: one that cannot be computed for these data is ``None`` with the reason in
    ``errors`` (keys ``bland_altman``, ``passing_bablok``, ``deming``, ``ccc``, ``pearson``, ``icc``, ...). A
    sample id given more than once marks replicates: repeated-measures Bland-Altman (Bland & Altman 2007) for the
    class. Raises ``ValueError`` only for malformed input (lengths that do not match, a bad ``measure``, ``scale``,
    ``confidence`` or ``manual_cells``).
    """
    ids, x, y = _check_inputs(cell_type, sample_ids, reference, test, totals=(reference_totals, test_totals),
                              measure=measure, confidence=confidence, scale=scale)  # fmt: skip
    cells = _check_manual_cells(manual_cells)
    opts = options or EP09Options()
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> Any:
        try:
            return fn()
        except ValueError as e:
            errors[name] = str(e)
            return None

    fits = _fit_all(cell_type, ids, x, y, measure=measure, z=z, confidence=confidence, options=opts, attempt=attempt)
    ce = None if scale == "absolute" else _counting_error(x, y, reference_totals, test_totals, z=z, measure=measure,
                                                          manual_cells=cells)  # fmt: skip
    result = ClassAgreement(cell_type=cell_type, n=x.size, n_samples=len(set(ids)), measure=measure, sample_ids=ids,
                            reference=tuple(x.tolist()), test=tuple(y.tolist()), counting_error=ce, errors=errors,
                            scale=scale, **fits)  # fmt: skip
    result = replace(result, acceptance=_acceptance(result, opts.allowable_for(cell_type), errors))
    if not opts.screen_outliers:
        return result

    def rerun(keep: np.ndarray) -> ClassAgreement:
        def pick(t: Sequence[int | None] | None) -> list[int | None] | None:
            return None if t is None else [v for v, k in zip(t, keep) if k]
        return compare_class(cell_type, [s for s, k in zip(ids, keep) if k], x[keep], y[keep],
                             reference_totals=pick(reference_totals), test_totals=pick(test_totals),
                             measure=measure, z=z, confidence=confidence, manual_cells=cells, scale=scale,
                             options=replace(opts, screen_outliers=False))  # fmt: skip

    return _screen(result, rerun, errors)
