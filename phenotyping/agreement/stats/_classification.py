"""Classification agreement over cells (exact CIs, per-class performance, Cohen's kappa) and the counting error
of a manual differential."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import JsonResult, _confidence


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
    """Cohen's kappa with observed/expected agreement and two large-sample SEs, side by side.

    ``se``/``ci``: Cohen 1960's SE ``sqrt(p_o (1 - p_o) / (n (1 - p_e)^2))``. ``se_fleiss``/``ci_fleiss``: the
    asymptotic SE of Fleiss, Cohen & Everitt 1969 (Psychol Bull 72:323), the one SAS PROC FREQ prints as "ASE";
    ``se_null``: its value under kappa = 0 (for the test of no agreement). CIs are ``kappa -/+ z * SE``.
    """

    n: int
    kappa: float
    ci: tuple[float, float]
    observed_agreement: float
    expected_agreement: float
    se: float
    confidence: float
    se_fleiss: float
    ci_fleiss: tuple[float, float]
    se_null: float


def _fleiss_se(table: np.ndarray, kappa: float) -> tuple[float, float]:
    """``(SE, SE under kappa = 0)`` of Fleiss, Cohen & Everitt 1969 from a table of counts (rows reference)."""
    n = float(table.sum())
    p = table / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    pe = float(rows @ cols)
    diag = np.diag(p)
    term1 = float(np.sum(diag * (1.0 - (rows + cols) * (1.0 - kappa)) ** 2))
    off = p.copy()
    np.fill_diagonal(off, 0.0)
    term2 = (1.0 - kappa) ** 2 * float(np.sum(off * (cols[:, None] + rows[None, :]) ** 2))
    term3 = (kappa - pe * (1.0 - kappa)) ** 2
    var = (term1 + term2 - term3) / (n * (1.0 - pe) ** 2)
    var0 = (pe + pe * pe - float(np.sum(rows * cols * (rows + cols)))) / (n * (1.0 - pe) ** 2)
    return math.sqrt(max(var, 0.0)), math.sqrt(max(var0, 0.0))


def cohen_kappa(
    reference: Sequence[str], predicted: Sequence[str], *, confidence: float = 0.95
) -> KappaResult:
    """Cohen's kappa ``(p_o - p_e)/(1 - p_e)`` (Cohen 1960, Educ Psychol Meas 20:37) between two labellings
    of the same cells, with Cohen's and Fleiss-Cohen-Everitt's SEs (see :class:`KappaResult`)."""
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
    se_f, se0 = _fleiss_se(table, kappa)
    q = float(stats.norm.ppf(1 - a / 2))
    return KappaResult(n=n, kappa=kappa, ci=(kappa - q * se, kappa + q * se), observed_agreement=po,
                       expected_agreement=pe, se=se, confidence=confidence, se_fleiss=se_f,
                       ci_fleiss=(kappa - q * se_f, kappa + q * se_f), se_null=se0)  # fmt: skip


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
    lo = 100.0 * float(stats.binom.ppf(0.025, n_cells, q)) / n_cells  # 100*k/n: 29 of 200 is 14.5, not 14.4999...
    hi = 100.0 * float(stats.binom.ppf(0.975, n_cells, q)) / n_cells
    k = int(round(q * n_cells))
    ci = clopper_pearson(k, int(n_cells))
    return CountingSpread(percent=p, n_cells=int(n_cells), sd=sd, range95=(lo, hi), ci95=(100 * ci[0], 100 * ci[1]))
