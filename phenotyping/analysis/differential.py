"""The differential: per-class counts and percentages with exact CIs, prior-shift correction, marker expression.

Pure numpy/scipy; no torch, no store. Proportions are fractions 0–1 internally and percentages 0–100 in result
objects (as in :mod:`phenotyping.schemas`).

References:
    Clopper & Pearson 1934, Biometrika 26:404 — exact binomial interval.
    CLSI H20-A2 (2007), Reference leukocyte (WBC) differential count (proportional) and evaluation of instrumental
    methods — the reference manual differential counts 200 cells (two observers × 200 = 400).
    Forman 2008, Data Min. Knowl. Disc. 17:164 — "adjusted classify and count" (ACC); generalised here to K classes
    by solving ``C^T p = q`` under ``p >= 0, sum(p) = 1``.
    Saerens, Latinne & Decaestecker 2002, Neural Computation 14:21 — EM re-estimation of class priors from
    calibrated posteriors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.special import betaincinv  # beta.ppf's own routine, without importing scipy.stats (0.4-0.9 s)

from phenotyping.analysis._em import EM_LOGLIK_GAP, EMNotConverged, em_prior_shift  # re-exported
from phenotyping.analysis.correction_rule import ChosenCorrection, choose_correction, correction_refusal
from phenotyping.analysis.markers import MarkerSummary, marker_expression  # re-exported
from phenotyping.analysis.markers import check_classes as _check_classes, label_indices as _label_indices
from phenotyping.analysis.specimens import ApartCount, apart_counts

_EM_BATCH = 100  # bootstrap resamples solved together: (100, N) float64 weights

#: CLSI H20-A2 reference differential: 200 cells per observer (400 in all).
MIN_CELLS_FOR_DIFFERENTIAL = 200


def clopper_pearson(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) two-sided interval for a binomial proportion ``k / n``.

    Returns ``(low, high)`` as fractions in [0, 1]; ``low`` is 0 when ``k == 0`` and ``high`` is 1 when ``k == n``.
    """
    if n < 1:
        raise ValueError(f"n={n}: a binomial interval needs at least one trial")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in 0..n={n}")
    _check_confidence(confidence)
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))  # the beta distribution's quantiles
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return low, high


@dataclass(frozen=True)
class ClassCount:
    """One class of a differential. Percentages are 0–100."""

    label: str
    count: int
    percent: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Differential:
    """Classify-and-count differential over the counted (QC-passed) cells."""

    classes: tuple[ClassCount, ...]
    n_counted: int
    confidence: float
    warnings: tuple[str, ...] = ()

    def percent(self, label: str) -> float:
        """Percentage of ``label``; raises ``KeyError`` naming the known classes."""
        return self._row(label).percent

    def _row(self, label: str) -> ClassCount:
        for row in self.classes:
            if row.label == label:
                return row
        raise KeyError(f"unknown class {label!r}; this differential has {[r.label for r in self.classes]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_counted": self.n_counted,
            "confidence": self.confidence,
            "method": "classify and count; Clopper-Pearson exact CI",
            "classes": [asdict(r) for r in self.classes],
            "warnings": list(self.warnings),
        }


def differential(
    labels: Sequence[str],
    classes: Sequence[str],
    *,
    confidence: float = 0.95,
    min_cells: int = MIN_CELLS_FOR_DIFFERENTIAL,
) -> Differential:
    """Count ``labels`` (one per counted cell) into ``classes`` with a Clopper-Pearson CI per class.

    Args:
        labels: the class of each counted cell (QC-passed, reviewed label where a reviewer set one).
        classes: every class of the model, in report order; classes with no cell are reported as 0.
        confidence: two-sided confidence level of the intervals.
        min_cells: below this many counted cells a warning is added (CLSI H20-A2 counts 200–400 cells).

    Raises:
        ValueError: a label that is not one of ``classes``, or duplicate classes.
    """
    classes = _check_classes(classes)
    _check_confidence(confidence)
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros(len(classes), dtype=np.int64)
    for lab in labels:
        try:
            counts[index[lab]] += 1
        except KeyError:
            raise ValueError(f"label {lab!r} is not one of the model's classes {list(classes)}") from None
    n = int(counts.sum())
    warnings: list[str] = []
    if n == 0:
        warnings.append("no counted cells: the differential is empty")
        rows = tuple(ClassCount(c, 0, 0.0, 0.0, 100.0) for c in classes)
        return Differential(rows, 0, confidence, tuple(warnings))
    if n < min_cells:
        warnings.append(
            f"only {n} cells counted; a reference differential counts 200-400 (CLSI H20-A2), "
            "so these intervals are wide"
        )
    rows = []
    for c, k in zip(classes, counts):
        low, high = clopper_pearson(int(k), n, confidence=confidence)
        rows.append(ClassCount(c, int(k), 100.0 * k / n, 100.0 * low, 100.0 * high))
    return Differential(tuple(rows), n, confidence, tuple(warnings))


# --------------------------------------------------------------------------------------------------------------
# Prior-shift correction


@dataclass(frozen=True)
class CorrectedComposition:
    """A prior-shift-corrected composition with percentile bootstrap CIs. Percentages are 0–100."""

    method: str
    labels: tuple[str, ...]
    percent: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    n_cells: int
    n_bootstrap: int
    seed: int
    confidence: float
    notes: tuple[str, ...] = field(default=())
    #: ``(label, per 100 counted cells, CI low, CI high)`` of the classes reported per 100 leukocytes
    per_100_leukocytes: tuple[tuple[str, float, float, float], ...] = ()

    def as_mapping(self) -> dict[str, float]:
        """Class → corrected percentage."""
        return dict(zip(self.labels, self.percent))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_cells": self.n_cells,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "confidence": self.confidence,
            "classes": [  # CIs are null when no bootstrap was run (JSON has no NaN)
                _nan_to_none({"label": lab, "percent": p, "ci_low": lo, "ci_high": hi})
                for lab, p, lo, hi in zip(self.labels, self.percent, self.ci_low, self.ci_high)
            ],
            "notes": list(self.notes),
            "per_100_leukocytes": [_nan_to_none({"label": lab, "per_100": v, "ci_low": lo, "ci_high": hi})
                                   for lab, v, lo, hi in self.per_100_leukocytes],
        }


def conditional_confusion(confusion: np.ndarray) -> np.ndarray:
    """Row-normalise a validation confusion matrix of counts: ``C[i, j] = P(predicted j | true i)``.

    Rows are true classes, columns predicted classes (the scikit-learn convention).
    """
    confusion = np.asarray(confusion, dtype=float)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {confusion.shape}")
    if (confusion < 0).any() or not np.isfinite(confusion).all():
        raise ValueError("confusion matrix must hold finite, non-negative counts")
    rows = confusion.sum(axis=1)
    empty = np.flatnonzero(rows == 0)
    if empty.size:
        raise ValueError(
            f"confusion matrix rows {empty.tolist()} are empty: those classes were absent from the validation split, "
            "so their misclassification rates are unknown; recalibrate on a split that contains every class"
        )
    return confusion / rows[:, None]


def adjusted_count_proportions(predicted_fraction: np.ndarray, conditional: np.ndarray) -> np.ndarray:
    """Solve ``C^T p = q`` for the true composition ``p`` (K classes) under ``p >= 0, sum(p) = 1``.

    ``q`` is the observed fraction of cells predicted as each class and ``C`` the conditional confusion
    (:func:`conditional_confusion`). The sum constraint is appended as a heavily weighted equation and the
    non-negative least-squares problem solved with Lawson-Hanson NNLS; the result is renormalised to sum to 1.
    """
    q = np.asarray(predicted_fraction, dtype=float)
    c = np.asarray(conditional, dtype=float)
    k = c.shape[0]
    if q.shape != (k,):
        raise ValueError(f"predicted fractions have shape {q.shape}, expected ({k},) to match the confusion matrix")
    from scipy.optimize import nnls  # only where a correction is computed (scipy.optimize takes 0.2-0.5 s)

    weight = 1e3
    a = np.vstack([c.T, weight * np.ones((1, k))])
    b = np.concatenate([q, [weight]])
    p, _ = nnls(a, b)
    total = p.sum()
    assert total > 0, "NNLS with the sum row cannot return all zeros"
    return p / total


def adjusted_count(
    predicted: Sequence[str],
    classes: Sequence[str],
    confusion: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_validation: bool = True,
    fixed: Sequence[str] = (),
    counted: Sequence[str] | None = None,
    per_100: Sequence[str] = (),
) -> CorrectedComposition:
    """Adjusted classify-and-count (Forman 2008, K classes) with a percentile bootstrap CI.

    Args:
        predicted: predicted class of each counted cell whose class comes from the model.
        classes: the model's classes, in the order of ``confusion``'s rows and columns.
        confusion: validation confusion matrix of counts, rows = true class, columns = predicted class.
        n_bootstrap: bootstrap resamples (cells resampled with replacement).
        seed: seed of the bootstrap generator.
        confidence: two-sided level of the percentile interval.
        resample_validation: also resample each confusion row (multinomial with its own count) so that the
            interval includes the uncertainty of the validation estimate, not only of this sample's cells.
        fixed: the class of each counted cell whose class a reviewer set; these are certain and are added to the
            corrected model-classified cells, not corrected themselves.
        counted, per_100: report only these classes, renormalised to 100 %, and these per 100 of them (see
            :func:`_corrected`); default: every class.
    """
    classes = _check_classes(classes)
    _check_confidence(confidence)
    _check_bootstrap(n_bootstrap)
    conf = np.asarray(confusion, dtype=float)
    k = len(classes)
    if conf.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {conf.shape}, expected ({k}, {k}) for classes {list(classes)}")
    cond = conditional_confusion(conf)
    idx = _label_indices(predicted, classes)
    fixed_idx = _label_indices(fixed, classes)
    n = idx.size + fixed_idx.size
    if n == 0:
        raise ValueError("no counted cells: nothing to correct")
    # one multinomial over 2K categories: model-classified cells by predicted class, then reviewed cells by class
    cells = np.concatenate([np.bincount(idx, minlength=k), np.bincount(fixed_idx, minlength=k)])

    def combine(c: np.ndarray, cond_b: np.ndarray) -> np.ndarray:
        n_model = c[:k].sum()
        model = adjusted_count_proportions(c[:k] / n_model, cond_b) * n_model if n_model else np.zeros(k)
        return (model + c[k:]) / c.sum()

    point = combine(cells, cond)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_bootstrap, k))
    row_totals = conf.sum(axis=1).round().astype(np.int64)
    for b in range(n_bootstrap):
        c_cells = rng.multinomial(n, cells / n)
        if resample_validation:
            c_b = np.vstack([rng.multinomial(t, r) for t, r in zip(row_totals, cond)]).astype(float)
            c_b = c_b / c_b.sum(axis=1, keepdims=True)
        else:
            c_b = cond
        boots[b] = combine(c_cells, c_b)
    notes = ["confusion matrix treated as exact" if not resample_validation else "CI includes validation resampling"]
    if fixed_idx.size:
        notes.append(f"{fixed_idx.size} reviewed cell(s) counted as reviewed, not corrected")
    return _corrected("adjusted count (Forman 2008)", classes, point, boots, n, n_bootstrap, seed, confidence, notes,
                      counted=counted, per_100=per_100)


def em_corrected(
    probabilities: np.ndarray,
    classes: Sequence[str],
    training_prior: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    tol: float = 1e-8,
    bootstrap_tol: float = 1e-6,
    max_iter: int = 20000,
    counted: Sequence[str] | None = None,
    per_100: Sequence[str] = (),
) -> CorrectedComposition:
    """EM prior-shift correction (Saerens et al. 2002) with a percentile bootstrap CI over cells.

    ``probabilities`` must be calibrated (temperature-scaled) posteriors, ``(N, K)`` in the order of ``classes``.
    The point estimate converges to ``tol``; bootstrap replicates start from it and converge to ``bootstrap_tol``
    (1e-6 is 1e-4 percentage points, far below any interval width), run in batches of resamples. ``counted`` and
    ``per_100`` as in :func:`adjusted_count`.
    """
    classes = _check_classes(classes)
    _check_confidence(confidence)
    _check_bootstrap(n_bootstrap)
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probabilities have shape {p.shape}, expected (N, {len(classes)}) for {list(classes)}")
    n = p.shape[0]
    if n == 0:
        raise ValueError("no counted cells: nothing to correct")
    point, _ = em_prior_shift(p, training_prior, tol=tol, max_iter=max_iter)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_bootstrap, len(classes)))
    for start in range(0, n_bootstrap, _EM_BATCH):
        b = min(_EM_BATCH, n_bootstrap - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float)  # (b, N) resample counts
        boots[start : start + b], _ = em_prior_shift(
            p, training_prior, tol=bootstrap_tol, max_iter=max_iter, init=point, weights=w, strict=False
        )
    notes = ["assumes calibrated posteriors and a pure prior shift (p(x|y) unchanged)"]
    unsettled = int(np.isnan(boots).any(axis=1).sum())
    if unsettled:  # the point estimate stands; only the interval rests on fewer resamples
        notes.append(f"{unsettled} of {n_bootstrap} bootstrap resamples did not settle and are left out of the CI")
    return _corrected("EM (Saerens et al. 2002)", classes, point, boots, n, n_bootstrap, seed, confidence, notes,
                      counted=counted, per_100=per_100)


def _corrected(
    method: str,
    classes: tuple[str, ...],
    point: np.ndarray,
    boots: np.ndarray,
    n: int,
    n_bootstrap: int,
    seed: int,
    confidence: float,
    notes: list[str],
    *,
    counted: Sequence[str] | None = None,
    per_100: Sequence[str] = (),
) -> CorrectedComposition:
    """The result object: point and percentile CIs from the bootstrap replicates ``boots`` (B, K), fractions.

    With ``counted`` (a specimen's differential classes), the correction has been solved over all K classes, since
    the confusion and the prior describe all of them (a platelet taken for a lymphocyte is an error the adjusted
    count must undo); the counted classes are then renormalised to sum to 1, in the point estimate and in each
    replicate (so the CI is that of the renormalised share), and each ``per_100`` class is reported as its corrected
    share per 100 counted cells. A replicate with no counted mass is left out of the CIs.

    Raises:
        ValueError: the corrected composition holds no counted cell at all.
    """
    alpha = 1.0 - confidence
    per_100_rows: list[tuple[str, float, float, float]] = []
    if counted is not None:
        index = [classes.index(c) for c in counted]
        mass, boot_mass = float(point[index].sum()), boots[:, index].sum(axis=1, keepdims=True)  # (B, 1)
        if mass <= 0:
            raise ValueError(f"the corrected composition holds no cell of the counted classes {list(counted)}")
        share, boot_share = point / mass, boots / np.where(boot_mass > 0, boot_mass, np.nan)  # per counted cell
        for c in per_100:
            i = classes.index(c)
            lo, hi = _percentile_ci(boot_share[:, i], alpha) if n_bootstrap > 0 else (np.nan, np.nan)
            per_100_rows.append((c, float(100 * share[i]), float(100 * lo), float(100 * hi)))
        point, boots, classes = share[index], boot_share[:, index], tuple(counted)
        notes = [*notes, "solved over all the model's classes; the counted classes renormalised to 100 %"]
    if n_bootstrap > 0:
        low, high = _percentile_ci(boots, alpha)
    else:
        low = high = np.full(len(classes), np.nan)
        notes = [*notes, "no bootstrap requested: CIs are NaN"]
    return CorrectedComposition(
        method=method,
        labels=classes,
        percent=tuple(float(100 * x) for x in point),
        ci_low=tuple(float(100 * x) for x in low),
        ci_high=tuple(float(100 * x) for x in high),
        n_cells=n,
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
        notes=tuple(notes),
        per_100_leukocytes=tuple(per_100_rows),
    )


def _percentile_ci(boots: np.ndarray, alpha: float) -> tuple[Any, Any]:
    """Percentile interval over the replicates (axis 0), ignoring NaN replicates."""
    return np.nanquantile(boots, alpha / 2, axis=0), np.nanquantile(boots, 1 - alpha / 2, axis=0)


# --------------------------------------------------------------------------------------------------------------
# The whole sample


@dataclass(frozen=True)
class SampleDifferential:
    """What the ``predict`` command prints and a report shows: raw, corrected, QC exclusions and markers."""

    raw: Differential
    adjusted_count: CorrectedComposition | None
    em: CorrectedComposition | None
    qc_counts: Mapping[str, int]
    markers: tuple[MarkerSummary, ...]
    n_cells: int
    notes: tuple[str, ...] = ()
    apart: tuple[ApartCount, ...] = ()  # classes the specimen reports outside the differential
    #: the rule's decision (:mod:`phenotyping.analysis.correction_rule`); default: EM, else the adjusted count
    chosen: ChosenCorrection | None = None

    @property
    def shown(self) -> ChosenCorrection:
        """Which correction "corrected %" shows, and the reader's note when it is not EM or none is shown."""
        return self.chosen if self.chosen is not None else choose_correction(self.em, self.adjusted_count)

    @property
    def corrected(self) -> CorrectedComposition | None:
        """The prior-shift-corrected composition that screens, studies, reports and FHIR show as "corrected %".

        The one rule (:func:`phenotyping.analysis.correction_rule.choose_correction`), so that a reviewer signs the
        numbers they reviewed: none when the card's validation cannot support a correction, else EM (Saerens et
        al. 2002) when its point estimate could be computed, else the adjusted count (Forman 2008), else ``None``.
        :func:`phenotyping.analysis.results.sample_results` computes EM only once no cell waits in the unidentified
        queue (before that the counted cells are a confidence-selected subset, which EM's model does not fit).
        """
        return self.shown.composition

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_cells": self.n_cells,
            "notes": list(self.notes),
            "qc_excluded": dict(self.qc_counts),
            "raw": self.raw.to_dict(),
            "corrected": {
                "adjusted_count": None if self.adjusted_count is None else self.adjusted_count.to_dict(),
                "em": None if self.em is None else self.em.to_dict(),
                "shown": {"method": self.shown.method, "note": self.shown.note},
            },
            "markers": [_nan_to_none(asdict(m)) for m in self.markers],
            "apart": [asdict(a) for a in self.apart],
        }


def sample_differential(
    predicted: Sequence[str],
    classes: Sequence[str],
    *,
    probabilities: np.ndarray | None = None,
    confusion: np.ndarray | None = None,
    training_prior: np.ndarray | None = None,
    targets: Mapping[str, Sequence[float]] | None = None,
    qc_counts: Mapping[str, int] | None = None,
    n_cells: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    reviewed: Sequence[bool] | None = None,
    notes: Sequence[str] = (),
    spec: Any = None,
) -> SampleDifferential:
    """Assemble a sample's differential from its counted cells.

    ``predicted``, ``probabilities`` rows, ``reviewed`` and ``targets`` values describe the counted (QC-passed) cells
    only; ``predicted`` holds each cell's final class (the reviewer's where there is one). The adjusted count needs
    ``confusion`` and corrects only cells not ``reviewed``; EM needs ``probabilities`` (one-hot rows for reviewed
    cells, which EM leaves unchanged) and ``training_prior``, the prior the probabilities were fitted under (see
    :mod:`phenotyping.training.postfit`). Each correction is ``None`` in the result when its inputs are missing or no cell was
    counted. ``qc_counts`` maps an exclusion reason to its number of cells; ``n_cells`` is every cell of the sample
    (default: classified + excluded); ``notes`` are carried into the result (e.g. why a correction is missing).

    ``spec`` (a :class:`phenotyping.analysis.specimens.SpecimenSpec`; default: every class counted) is the
    specimen's rule: the raw differential counts only ``spec.counted``; the corrections are solved over every
    class and reported over the counted ones (:func:`_corrected`); the other classes go to ``apart``.
    """
    counted = tuple(spec.counted) if spec is not None else None
    apart_set = set(spec.apart) if spec is not None else set()
    raw = differential([p for p in predicted if p not in apart_set], counted or classes, confidence=confidence)
    report = {"counted": counted, "per_100": tuple(spec.per_100_leukocytes) if spec is not None else ()}
    acc = em = None
    notes = list(notes)
    if reviewed is not None and len(reviewed) != len(predicted):
        raise ValueError(f"reviewed has {len(reviewed)} flags for {len(predicted)} counted cells")
    if raw.n_counted and confusion is not None:
        flags = list(reviewed) if reviewed is not None else [False] * len(predicted)
        acc = adjusted_count([p for p, r in zip(predicted, flags) if not r], classes, confusion,
                             n_bootstrap=n_bootstrap, seed=seed, confidence=confidence,
                             fixed=[p for p, r in zip(predicted, flags) if r], **report)
    em_failure = None
    if raw.n_counted and probabilities is not None and training_prior is not None:
        try:
            em = em_corrected(probabilities, classes, training_prior, n_bootstrap=n_bootstrap, seed=seed,
                              confidence=confidence, **report)
        except EMNotConverged:  # one correction failing must not cost the raw differential
            em_failure = ("Corrected % by EM not available: the estimate of this sample's class shares did not "
                          "settle, which happens when a class is nearly absent and the model's probabilities "
                          "cannot tell how much of it there is.")
    chosen = choose_correction(em, acc, refusal=correction_refusal(confusion, classes) if acc or em else None,
                               em_failure=em_failure)
    if chosen.note:
        notes.append(chosen.note)
    qc = dict(qc_counts or {})
    markers = marker_expression(predicted, targets, classes) if targets else ()
    total = n_cells if n_cells is not None else len(predicted) + sum(qc.values())
    apart = apart_counts(predicted, spec, confidence=confidence) if apart_set else ()
    return SampleDifferential(raw, acc, em, qc, markers, total, tuple(notes), apart, chosen)


# --------------------------------------------------------------------------------------------------------------


def _check_bootstrap(n_bootstrap: int) -> None:
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap} must be >= 0 (0 skips the bootstrap; 1000 is usual)")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must lie strictly between 0 and 1 (e.g. 0.95)")


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}
