"""The study workflow over the store: manual counts in, model differentials out, agreement saved.

Pure statistics live in :mod:`phenotyping.study` and :mod:`phenotyping.agreement`; this module reads the store,
calls them and saves the results with the model version used.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from phenotyping.counts import parse_counts, read_counts_csv, sample_percentages, sample_totals
from phenotyping.errors import NotFoundError
from phenotyping.results import SampleResults, load_card_for, sample_results
from phenotyping.schemas import ManualCount, QCState
from phenotyping.study import DEFAULT_MANUAL_CELLS, StudyResult, classification_agreement, compute_study


def import_manual_counts(
    store: Any,
    source: str | Path | io.TextIOBase,
    *,
    actor: str,
    allowed_classes: Sequence[str] | None = None,
) -> dict[str, int]:
    """Validate a manual-count CSV and save it, replacing each listed sample's previous counts.

    All rows are validated before anything is saved; a sample id not in the store is an error naming it.
    Returns ``{sample_id: classes saved}``.
    """
    counts = read_counts_csv(source, allowed_classes=allowed_classes, entered_by=actor)
    return _save(store, counts, actor=actor)


def save_manual_counts(
    store: Any,
    sample_id: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    actor: str,
    allowed_classes: Sequence[str] | None = None,
) -> list[ManualCount]:
    """Validate and save one sample's counts given as dicts (``cell_type`` and ``count`` or ``percent``, optional
    ``total_counted``); rows with neither a count nor a percent are dropped first (an empty editor row)."""
    kept = []
    for r in rows:
        if str(r.get("cell_type") or "").strip() == "" and all(
                r.get(k) in (None, "") for k in ("count", "percent")):
            continue
        kept.append({**r, "sample_id": sample_id})
    counts = parse_counts(kept, allowed_classes=allowed_classes, entered_by=actor)
    _save(store, counts, actor=actor)
    return counts


def _save(store: Any, counts: list[ManualCount], *, actor: str) -> dict[str, int]:
    by_sample: dict[str, list[ManualCount]] = {}
    for c in counts:
        by_sample.setdefault(c.sample_id, []).append(c)
    unknown = [s for s in by_sample if not store.sample_exists(s)]
    if unknown:
        raise NotFoundError(f"manual counts name sample(s) not in the database: {unknown[:10]}; create them first")
    for sample_id, rows in by_sample.items():
        store.set_manual_counts(sample_id, rows, actor=actor)
    return {s: len(r) for s, r in by_sample.items()}


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
    and left out by :func:`phenotyping.study.classification_agreement`.
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
    counts (:func:`phenotyping.study.compute_study`), with the counting error of the manual counts and of manual
    counts of ``manual_cells`` cells. Over the samples' reviewed cells: the model's pre-classification against the
    reviewers' labels (sensitivity, specificity, efficiency per class, Cohen's kappa;
    :func:`phenotyping.study.classification_agreement`). Everything comes from
    :func:`phenotyping.results.sample_results`. Saved with the model version (``card["version"]``, else its id).

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
