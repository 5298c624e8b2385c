"""Agreement studies: manual differentials against the model's, per class, with the whole method-comparison set.

:func:`compute_study` (with :func:`compare_class` and :func:`classification_agreement`) is pure computation, no
storage. :func:`run_study` is the study workflow over the store: it reads the samples' manual counts and the model's
differentials (:func:`phenotyping.analysis.results.sample_results`), calls :func:`compute_study` and saves the result
with the model version used (``phenotyping.store`` persists studies). Percentages are 0-100; differences are
model (test) - manual (reference). A class missing from one sample's differential counts as 0 % in that sample
(differentials list the classes that were seen); pass ``classes`` to reject unknown class names instead of
silently adding them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from phenotyping.agreement import stats as ag
from phenotyping.agreement.manual_counts import sample_percentages, sample_totals
from phenotyping.analysis.results import SampleResults, load_card_for, sample_results
from phenotyping.schemas import ManualCount, QCState

__all__ = [
    "DEFAULT_MANUAL_CELLS",
    "ClassAgreement",
    "ClassificationAgreement",
    "CountingError",
    "ManualCountSpread",
    "StudyResult",
    "classification_agreement",
    "compare_class",
    "compute_study",
    "model_percentages",
    "reviewed_cells",
    "run_study",
]

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


_NONE_CI = (None, None)


@dataclass(frozen=True)
class ClassAgreement(ag.JsonResult):
    """All agreement statistics of one class. A statistic that cannot be computed for these data (too few samples,
    zeros with ``percent``/``ratio``, every value 0, ...) is ``None`` and ``errors`` says why; the other statistics
    of the class are unaffected.

    With replicates (a sample id appearing more than once) ``bland_altman`` is ``None`` and ``repeated`` holds the
    repeated-measures limits (Bland & Altman 2007); Passing-Bablok, Deming, CCC and Pearson then use each sample's
    mean of its replicates, and ``note`` says so. ``n`` counts pairs, ``n_samples`` distinct samples.
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
    counting_error: CountingError
    errors: Mapping[str, str]
    note: str | None = None

    @property
    def computed(self) -> bool:
        """Whether the class has limits of agreement (plain or repeated-measures)."""
        return self.bland_altman is not None or self.repeated is not None

    def summary(self) -> dict[str, Any]:
        """The command-line contract: ``n, bias, sd, loa_lower, loa_upper, bias_ci, loa_lower_ci, loa_upper_ci,
        proportional_bias{slope, p_value}, passing_bablok{slope, slope_ci, intercept, intercept_ci},
        deming{slope, intercept}, ccc, pearson`` plus extra keys; JSON-safe (no NaN). Every key is always present:
        what could not be computed is ``null`` (CIs ``[null, null]``; the nested objects keep their keys) and
        ``errors`` says why."""
        ba, rep = self.bland_altman, self.repeated
        pb, dm = self.passing_bablok, self.deming
        out: dict[str, Any] = {"n": self.n, "n_samples": self.n_samples, "measure": self.measure,
                               "replicates": self.n_samples < self.n}  # fmt: skip
        if ba is not None:
            out.update(bias=ba.bias, sd=ba.sd, loa_lower=ba.loa_lower, loa_upper=ba.loa_upper, bias_ci=ba.bias_ci,
                       loa_lower_ci=ba.loa_lower_ci, loa_upper_ci=ba.loa_upper_ci, loa_ci_method=ba.loa_ci_method,
                       bland_altman_method="Bland & Altman 1986/1999, one pair per sample")  # fmt: skip
        elif rep is not None:
            out.update(bias=rep.bias, sd=rep.sd, loa_lower=rep.loa_lower, loa_upper=rep.loa_upper, bias_ci=_NONE_CI,
                       loa_lower_ci=_NONE_CI, loa_upper_ci=_NONE_CI, loa_ci_method=None,
                       bland_altman_method="repeated measures, true value varies (Bland & Altman 2007)",
                       within_var=rep.within_var, between_var=rep.between_var)  # fmt: skip
        else:
            out.update(bias=None, sd=None, loa_lower=None, loa_upper=None, bias_ci=_NONE_CI, loa_lower_ci=_NONE_CI,
                       loa_upper_ci=_NONE_CI, loa_ci_method=None, bland_altman_method=None)  # fmt: skip
        prop = ba.proportional_bias if ba is not None else None
        out["proportional_bias"] = {
            "slope": None if prop is None else prop.slope,
            "p_value": None if prop is None else prop.p_value,
            "intercept": None if prop is None else prop.intercept,
        }
        out["regression_loa"] = None if ba is None else ba.regression_limits
        out["passing_bablok"] = {
            "slope": None if pb is None else pb.slope,
            "slope_ci": _NONE_CI if pb is None else pb.slope_ci,
            "intercept": None if pb is None else pb.intercept,
            "intercept_ci": _NONE_CI if pb is None else pb.intercept_ci,
            "cusum_p_value": None if pb is None else pb.cusum.p_value,
            "linear": None if pb is None else pb.cusum.linear,
        }
        out["deming"] = {
            "slope": None if dm is None else dm.slope,
            "intercept": None if dm is None else dm.intercept,
            "slope_ci": _NONE_CI if dm is None else dm.slope_ci,
            "intercept_ci": _NONE_CI if dm is None else dm.intercept_ci,
        }
        out["ccc"] = None if self.ccc is None else self.ccc.ccc
        out["ccc_ci"] = _NONE_CI if self.ccc is None else self.ccc.ci
        out["pearson"] = None if self.pearson is None else self.pearson.r
        out["counting_error"] = self.counting_error
        out["errors"] = dict(self.errors)
        out["note"] = self.note
        return ag.to_jsonable(out)


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
) -> ClassAgreement:
    """Bland-Altman, Passing-Bablok, Deming, CCC, Pearson and counting error for one class (percentages 0-100).

    Each statistic is independent: one that cannot be computed for these data is ``None`` with the reason in
    ``errors`` (keys ``bland_altman``, ``passing_bablok``, ``deming``, ``ccc``, ``pearson``). A sample id given more
    than once marks replicates: repeated-measures Bland-Altman (Bland & Altman 2007) for the class (see
    :class:`ClassAgreement`). Raises ``ValueError`` only for malformed input (lengths that do not match, a bad
    ``measure`` or ``manual_cells``).
    """
    ids = tuple(str(s) for s in sample_ids)
    x, y = np.asarray(reference, dtype=float), np.asarray(test, dtype=float)
    if not (len(ids) == x.size == y.size):
        raise ValueError(f"class {cell_type!r}: {len(ids)} sample ids, {x.size} reference and {y.size} test values; "
                         "give one of each per pair")  # fmt: skip
    if measure not in ag.MEASURES:
        raise ValueError(f"measure must be one of {ag.MEASURES}, got {measure!r}")
    cells = _check_manual_cells(manual_cells)
    for name, totals in (("reference_totals", reference_totals), ("test_totals", test_totals)):
        if totals is not None and len(totals) != x.size:
            raise ValueError(f"{name} has {len(totals)} entries for {x.size} pairs of {cell_type!r}")
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> Any:
        try:
            return fn()
        except ValueError as e:
            errors[name] = str(e)
            return None

    unique = tuple(dict.fromkeys(ids))
    ba, rep, note = None, None, None
    if len(unique) < len(ids):
        rep = attempt("bland_altman", lambda: ag.bland_altman_repeated(ids, x, y, measure=measure, z=z))
        index = {s: i for i, s in enumerate(unique)}
        k = np.asarray([index[s] for s in ids])
        m = np.bincount(k)
        xs, ys = np.bincount(k, weights=x) / m, np.bincount(k, weights=y) / m
        note = (f"replicates: {x.size} pairs from {len(unique)} samples ({int(np.sum(m > 1))} with more than one); "
                "limits of agreement from repeated-measures Bland-Altman (Bland & Altman 2007, true value varies; "
                "no CIs), Passing-Bablok, Deming, CCC and Pearson on each sample's mean of its replicates")
    else:
        ba = attempt("bland_altman", lambda: ag.bland_altman(x, y, measure=measure, z=z, confidence=confidence,
                                                             labels=ids))  # fmt: skip
        xs, ys = x, y
    pb = attempt("passing_bablok", lambda: ag.passing_bablok(xs, ys, confidence=confidence, labels=unique))
    dm = attempt("deming", lambda: ag.deming(xs, ys, confidence=confidence))
    cc = attempt("ccc", lambda: ag.ccc(xs, ys, confidence=confidence))
    pr = attempt("pearson", lambda: ag.pearson(xs, ys, confidence=confidence))
    ce = _counting_error(x, y, reference_totals, test_totals, z=z, measure=measure, manual_cells=cells)
    return ClassAgreement(
        cell_type=cell_type, n=x.size, n_samples=len(unique), measure=measure, sample_ids=ids,
        reference=tuple(x.tolist()), test=tuple(y.tolist()), bland_altman=ba, repeated=rep, passing_bablok=pb,
        deming=dm, ccc=cc, pearson=pr, counting_error=ce, errors=errors, note=note,
    )  # fmt: skip


@dataclass(frozen=True)
class ClassificationAgreement(ag.JsonResult):
    """The model's pre-classification of single cells against the reviewer's verified class.

    Over ``n_cells`` cells that carry a reviewer's label from the model's classes and a prediction of the model:
    per-class sensitivity, specificity and efficiency with Clopper-Pearson CIs (``per_class``; see
    :func:`phenotyping.agreement.stats.classification_performance`) and Cohen's kappa. ``excluded`` counts the reviewed
    cells left out, by reason (a reviewed label outside the model's classes such as ``debris``; no prediction by
    this model; excluded by image QC). Reviewed cells are the reference only where a reviewer looked: when review
    targets the unsure queue they are not a random sample of all cells, and the estimates describe them, not the
    whole slide. ``errors`` holds a statistic that could not be computed (e.g. kappa when one class is used
    throughout).
    """

    n_reviewed: int
    n_cells: int
    excluded: Mapping[str, int]
    per_class: Mapping[str, ag.ClassPerformance]
    kappa: ag.KappaResult | None
    errors: Mapping[str, str]


def classification_agreement(
    reference: Sequence[str],
    predicted: Sequence[str],
    *,
    classes: Sequence[str],
    excluded: Mapping[str, int] | None = None,
    confidence: float = 0.95,
) -> ClassificationAgreement:
    """Per-class sensitivity/specificity/efficiency and Cohen's kappa of ``predicted`` (the model's class of each
    cell) against ``reference`` (the reviewer's verified class), over cells whose reference is one of ``classes``.

    Cells whose reference label is not one of ``classes`` are left out and counted under
    ``"reviewed as <label>"`` in ``excluded`` (added to the counts given). A predicted label outside ``classes`` is
    an error (the model cannot predict it)."""
    ref, pred = [str(v) for v in reference], [str(v) for v in predicted]
    if len(ref) != len(pred):
        raise ValueError(f"{len(ref)} reference labels but {len(pred)} predicted labels; give one of each per cell")
    allowed = list(classes)
    out_of_model = sorted({p for p in pred if p not in allowed})
    if out_of_model:
        raise ValueError(f"predicted classes {out_of_model} are not among the model's classes {allowed}")
    left: dict[str, int] = dict(excluded or {})
    keep_ref, keep_pred = [], []
    for r, p in zip(ref, pred):
        if r in allowed:
            keep_ref.append(r)
            keep_pred.append(p)
        else:
            left[f"reviewed as {r}"] = left.get(f"reviewed as {r}", 0) + 1
    errors: dict[str, str] = {}
    per_class: dict[str, ag.ClassPerformance] = {}
    kappa = None
    if keep_ref:
        per_class = ag.classification_performance(keep_ref, keep_pred, classes=allowed, confidence=confidence)
        try:
            kappa = ag.cohen_kappa(keep_ref, keep_pred, confidence=confidence)
        except ValueError as e:
            errors["kappa"] = str(e)
    else:
        errors["classification"] = "no reviewed cell with a label from the model's classes"
    return ClassificationAgreement(n_reviewed=len(ref) + sum((excluded or {}).values()), n_cells=len(keep_ref),
                                   excluded=left, per_class=per_class, kappa=kappa, errors=errors)  # fmt: skip


@dataclass(frozen=True)
class StudyResult(ag.JsonResult):
    """Agreement of the model's differentials (raw and prior-shift-corrected) with manual counts, per class, and
    (where reviewers verified cells) of the model's cell-level classification with the reviewers' labels."""

    name: str
    measure: str
    model_version: str
    sample_ids: tuple[str, ...]
    classes: tuple[str, ...]
    raw: Mapping[str, ClassAgreement]
    corrected: Mapping[str, ClassAgreement] | None
    classification: ClassificationAgreement | None = None

    def summary(self) -> dict[str, Any]:
        """Per-class contract summaries (see ``ClassAgreement.summary``) for ``raw`` and ``corrected``, and the
        cell-level ``classification`` (``None`` when not computed)."""
        return {
            "name": self.name,
            "measure": self.measure,
            "model_version": self.model_version,
            "n_samples": len(self.sample_ids),
            "raw": {c: a.summary() for c, a in self.raw.items()},
            "corrected": None if self.corrected is None else {c: a.summary() for c, a in self.corrected.items()},
            "classification": None if self.classification is None else self.classification.to_dict(),
        }


def _check_differentials(
    what: str, data: Mapping[str, Mapping[str, float]], samples: Sequence[str], classes: Sequence[str] | None
) -> None:
    missing = [s for s in samples if s not in data]
    if missing:
        raise ValueError(f"{what} lacks sample(s) {missing[:10]}; every study sample needs a manual and a model value")
    for s in samples:
        for c, v in data[s].items():
            if classes is not None and c not in classes:
                raise ValueError(f"{what}, sample {s!r}: unknown class {c!r}; allowed classes: {list(classes)}")
            f = float(v)
            if not (math.isfinite(f) and 0.0 <= f <= 100.0):
                raise ValueError(f"{what}, sample {s!r}, class {c!r}: percentage {v!r} is not within 0-100")


def compute_study(
    name: str,
    manual: Mapping[str, Mapping[str, float]],
    model_raw: Mapping[str, Mapping[str, float]],
    *,
    model_corrected: Mapping[str, Mapping[str, float]] | None = None,
    manual_totals: Mapping[str, int] | None = None,
    model_totals: Mapping[str, int] | None = None,
    classes: Sequence[str] | None = None,
    measure: ag.Measure = "absolute",
    model_version: str = "",
    z: float = 1.96,
    confidence: float = 0.95,
    manual_cells: Sequence[int] = DEFAULT_MANUAL_CELLS,
    classification: ClassificationAgreement | None = None,
) -> StudyResult:
    """Compare per-sample differentials ``{sample_id: {cell_type: percent}}`` of the manual count (reference) with
    the model's raw and (optionally) corrected differentials (test), class by class.

    ``manual_totals``/``model_totals`` are cells counted per sample (for the counting-error spread); the spread of
    manual counts of ``manual_cells`` cells is reported either way. The samples are those of ``manual``; each must be
    present in the model's differentials. A class whose statistics cannot be computed keeps ``None`` values and its
    reasons (see :class:`ClassAgreement`); ``ValueError`` only when no class has limits of agreement at all.
    ``classification`` (cell-level agreement, from :func:`classification_agreement`) is attached as given.
    """
    samples = sorted(manual)
    if len(samples) < 3:
        raise ValueError(f"a study needs at least 3 samples with manual counts, got {len(samples)}")
    _check_differentials("manual", manual, samples, classes)
    _check_differentials("model (raw)", model_raw, samples, classes)
    if model_corrected is not None:
        _check_differentials("model (corrected)", model_corrected, samples, classes)
    cells = _check_manual_cells(manual_cells)
    names = tuple(classes) if classes is not None else tuple(
        sorted({c for d in (manual, model_raw, model_corrected or {}) for s in samples if s in d for c in d[s]})
    )  # fmt: skip
    for what, totals in (("manual_totals", manual_totals), ("model_totals", model_totals)):
        if totals is not None:
            lacking = [s for s in samples if s not in totals]
            if lacking:
                raise ValueError(f"{what} lacks sample(s) {lacking[:10]}")
    ref_n = [manual_totals[s] for s in samples] if manual_totals is not None else None
    test_n = [model_totals[s] for s in samples] if model_totals is not None else None

    def per_class(what: str, model: Mapping[str, Mapping[str, float]]) -> dict[str, ClassAgreement]:
        out = {}
        for c in names:
            ref = [float(manual[s].get(c, 0.0)) for s in samples]
            tst = [float(model[s].get(c, 0.0)) for s in samples]
            out[c] = compare_class(c, samples, ref, tst, reference_totals=ref_n, test_totals=test_n,
                                   measure=measure, z=z, confidence=confidence, manual_cells=cells)  # fmt: skip
        if not any(a.computed for a in out.values()):
            why = "; ".join(f"{c}: {a.errors.get('bland_altman')}" for c, a in out.items())
            raise ValueError(f"study {name!r}: no class of the {what} differential has limits of agreement ({why})")
        return out

    return StudyResult(
        name=name, measure=measure, model_version=model_version, sample_ids=tuple(samples), classes=names,
        raw=per_class("raw", model_raw),
        corrected=None if model_corrected is None else per_class("corrected", model_corrected),
        classification=classification,
    )  # fmt: skip


def model_percentages(store: Any, sample_id: str, *, model_id: str, card: Mapping[str, Any],
                      n_bootstrap: int = 0) -> tuple[dict[str, float], dict[str, float] | None, str | None, int]:
    """The model's raw and corrected percentages for one sample, the correction used, and the cells counted."""
    res = sample_results(store, sample_id, model_id=model_id, card=card, n_bootstrap=n_bootstrap)
    return _percentages(res, sample_id, model_id)


def _percentages(res: SampleResults, sample_id: str, model_id: str
                 ) -> tuple[dict[str, float], dict[str, float] | None, str | None, int]:
    d = res.differential
    if d is None or d.raw.n_counted == 0:
        raise ValueError(f"sample {sample_id!r} has no counted cells for model {model_id!r}; analyse it first")
    raw = {c.label: c.percent for c in d.raw.classes}
    comp = d.corrected  # the same correction the screens and the report show
    if comp is None:
        return raw, None, None, d.raw.n_counted
    method = "em" if comp is d.em else "adjusted_count"
    return raw, comp.as_mapping(), method, d.raw.n_counted


def reviewed_cells(results: Iterable[SampleResults]) -> tuple[list[str], list[str], dict[str, int]]:
    """``(reviewer's labels, the model's predicted classes, excluded)`` over the reviewed cells of the samples.

    A reviewed cell pairs its ``reviewed_label`` (the reference) with the analysis model's ``predicted_class`` (the
    test). Reviewed cells without a prediction by the model, and cells excluded by image QC (the model is not meant
    to classify them), are left out and counted in ``excluded``; labels outside the model's classes are kept here
    and left out by :func:`classification_agreement`.
    """
    ref: list[str] = []
    pred: list[str] = []
    excluded: dict[str, int] = {}
    for res in results:
        for r in res.cells:
            if r.cell.reviewed_label is None:
                continue
            if r.predicted_class is None:
                why = "no prediction by this model"
            elif r.cell.qc_state == QCState.excluded:
                why = "excluded by image QC"
            else:
                ref.append(r.cell.reviewed_label)
                pred.append(r.predicted_class)
                continue
            excluded[why] = excluded.get(why, 0) + 1
    return ref, pred, excluded


def run_study(
    store: Any,
    name: str,
    *,
    model_id: str,
    actor: str,
    sample_ids: Sequence[str] | None = None,
    measure: str = "absolute",
    card: Mapping[str, Any] | None = None,
    manual_cells: Sequence[int] = DEFAULT_MANUAL_CELLS,
) -> StudyResult:
    """Compare manual counts with the model's differentials over samples and save the study.

    Per class: the method-comparison statistics of the model's raw and corrected differentials against the manual
    counts (:func:`compute_study`), with the counting error of the manual counts and of manual counts of
    ``manual_cells`` cells. Over the samples' reviewed cells: the model's pre-classification against the reviewers'
    labels (sensitivity, specificity, efficiency per class, Cohen's kappa; :func:`classification_agreement`).
    Everything comes from :func:`phenotyping.analysis.results.sample_results`. Saved with the model version
    (``card["version"]``, else its id).

    Args:
        sample_ids: default: every sample with manual counts.
        card: the model's card (default: looked up by ``model_id``).
    """
    card = card or load_card_for(model_id, store=store)
    classes = list(card["classes"])
    ids = list(sample_ids) if sample_ids is not None else store.samples_with_manual_counts()
    if not ids:
        raise ValueError("no samples with manual counts; enter or import manual counts first")
    manual_rows: list[ManualCount] = []
    for s in ids:
        rows = store.get_manual_counts(s)
        if not rows:
            raise ValueError(f"sample {s!r} has no manual counts; enter them or leave it out of the study")
        manual_rows.extend(rows)
    manual = sample_percentages(manual_rows)
    manual_n = sample_totals(manual_rows)
    raw, corrected, model_n, methods = {}, {}, {}, set()
    results = []
    for s in ids:
        res = sample_results(store, s, model_id=model_id, card=card, n_bootstrap=0)
        results.append(res)
        r, c, method, n = _percentages(res, s, model_id)
        raw[s], model_n[s] = r, n
        if c is not None:
            corrected[s] = c
            methods.add(method)
    use_corrected = corrected if len(corrected) == len(ids) and len(methods) == 1 else None
    ref_labels, pred_labels, excluded = reviewed_cells(results)
    cls = classification_agreement(ref_labels, pred_labels, classes=classes, excluded=excluded)
    version = str(card.get("version") or card["id"])
    result = compute_study(
        name, manual, raw, model_corrected=use_corrected,
        manual_totals=manual_n if len(manual_n) == len(ids) else None, model_totals=model_n,
        classes=classes, measure=measure, model_version=version,  # type: ignore[arg-type]
        manual_cells=manual_cells, classification=cls,
    )
    per_class = {f"{c}|raw": a.summary() for c, a in result.raw.items()}
    if result.corrected is not None:
        per_class.update({f"{c}|corrected": a.summary() for c, a in result.corrected.items()})
    per_class.update({f"{c}|classification": p.to_dict() for c, p in cls.per_class.items()})
    summary = result.summary()
    summary["correction_method"] = next(iter(methods)) if use_corrected is not None else None
    store.save_study(name, sample_ids=ids, model_id=model_id, model_version=version, result=summary,
                     per_class=per_class, actor=actor)
    return result
