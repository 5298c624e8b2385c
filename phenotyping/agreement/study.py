"""Agreement studies: manual differentials against the model's, per class, with the whole method-comparison set.

The per-class comparison (:func:`compare_class`, :class:`ClassAgreement`, :class:`EP09Options`) lives in
:mod:`phenotyping.agreement.class_agreement` and is re-exported here.

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

from phenotyping.agreement import stats as ag
from phenotyping.agreement.class_agreement import (
    DEFAULT_MANUAL_CELLS,
    ClassAgreement,
    CountingError,
    EP09Options,
    ManualCountSpread,
    _check_manual_cells,
    compare_class,
)
from phenotyping.agreement.manual_counts import over_model_classes, sample_percentages, sample_totals
from phenotyping.analysis.results import SampleResults, load_card_for, sample_results
from phenotyping.schemas import ManualCount, QCState

__all__ = [
    "DEFAULT_MANUAL_CELLS",
    "ClassAgreement",
    "ClassificationAgreement",
    "CountingError",
    "EP09Options",
    "ManualCountSpread",
    "StudyResult",
    "classification_agreement",
    "compare_class",
    "compute_study",
    "model_percentages",
    "reviewed_cells",
    "run_study",
]

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
    options: EP09Options | None = None,
) -> StudyResult:
    """Compare per-sample differentials ``{sample_id: {cell_type: percent}}`` of the manual count (reference) with
    the model's raw and (optionally) corrected differentials (test), class by class.

    ``manual_totals``/``model_totals`` are cells counted per sample (for the counting-error spread); the spread of
    manual counts of ``manual_cells`` cells is reported either way. The samples are those of ``manual``; each must be
    present in the model's differentials. A class whose statistics cannot be computed keeps ``None`` values and its
    reasons (see :class:`ClassAgreement`); ``ValueError`` only when no class has limits of agreement at all.
    ``classification`` (cell-level agreement, from :func:`classification_agreement`) is attached as given.
    ``options``: the EP09 choices (decision levels, allowable differences, bootstrap; :class:`EP09Options`).
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
                                   measure=measure, z=z, confidence=confidence, manual_cells=cells,
                                   options=options)  # fmt: skip
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
    """The model's raw and corrected percentages for one sample, the correction used, and the cells counted
    (from the store's aggregations, :func:`phenotyping.analysis.aggregates.sample_summary`)."""
    from phenotyping.analysis.aggregates import sample_summary

    res = sample_summary(store, sample_id, model_id=model_id, card=card, n_bootstrap=n_bootstrap)
    return _percentages(res, sample_id, model_id)


def _percentages(res: Any, sample_id: str, model_id: str
                 ) -> tuple[dict[str, float], dict[str, float] | None, str | None, int]:
    d = res.differential
    if d is None or d.raw.n_counted == 0:
        raise ValueError(f"sample {sample_id!r} has no counted cells for model {model_id!r}; analyse it first")
    raw = {c.label: c.percent for c in d.raw.classes}
    comp = d.corrected  # the same correction the screens and the report show
    if comp is None:
        return raw, None, None, d.raw.n_counted
    return raw, comp.as_mapping(), d.shown.method, d.raw.n_counted


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


def study_candidates(store: Any, model_id: str) -> list[str]:
    """The samples a study of ``model_id`` can compare: those with manual counts whose analysis model it is."""
    return [s for s in store.samples_with_manual_counts() if store.analysis_model(s) == model_id]


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
    options: EP09Options | None = None,
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
        options: the EP09 choices (decision levels, allowable differences, bootstrap); saved with the study.
    """
    card = card or load_card_for(model_id, store=store)
    classes = list(card["classes"])
    ids = list(sample_ids) if sample_ids is not None else store.samples_with_manual_counts()
    if not ids:
        raise ValueError("no samples with manual counts; enter or import manual counts first")
    other = {s: m for s in ids if (m := store.analysis_model(s)) not in (None, model_id)}
    if other:
        raise ValueError(f"sample(s) {sorted(other)} were analysed with {sorted(set(other.values()))}, "
                         f"not with model {model_id!r}; leave them out of this study or analyse them with it")
    manual_rows: list[ManualCount] = []
    for s in ids:
        rows = store.get_manual_counts(s)
        if not rows:
            raise ValueError(f"sample {s!r} has no manual counts; enter them or leave it out of the study")
        manual_rows.extend(rows)
    manual, left_out = {}, {}
    for s, percent in sample_percentages(manual_rows).items():  # compared over the classes the model has
        manual[s], outside = over_model_classes(percent, classes)
        left_out.update({c: left_out.get(c, 0) + 1 for c in outside})
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
        manual_cells=manual_cells, classification=cls, options=options,
    )
    per_class = {f"{c}|raw": a.summary() for c, a in result.raw.items()}
    if result.corrected is not None:
        per_class.update({f"{c}|corrected": a.summary() for c, a in result.corrected.items()})
    per_class.update({f"{c}|classification": p.to_dict() for c, p in cls.per_class.items()})
    summary = result.summary()
    summary["correction_method"] = next(iter(methods)) if use_corrected is not None else None
    summary["manual_classes_not_in_model"] = left_out  # class -> samples whose manual count had it
    summary["options"] = (options or EP09Options()).to_dict()
    store.save_study(name, sample_ids=ids, model_id=model_id, model_version=version, result=summary,
                     per_class=per_class, actor=actor)
    return result
