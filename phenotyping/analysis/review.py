"""A reviewer's decisions on a sample's cells: reclassify, confirm the model's class, list the unidentified queue
in the order a reviewer chooses (least confident first, or most informative first: :func:`uncertainty`).

The Review screen and ``python -m phenotyping review`` call these; each checks that the acting account may review
(:func:`phenotyping.auth.require_actor`, permission ``review``), that the label is one the sample's analysis model
knows (or :data:`EXTRA_LABELS`, which exclude a cell from the count), and that every cell belongs to the sample.
The store then refuses the change while the sample's latest report version is signed (``SampleLocked``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from phenotyping.analysis.results import CellResult, SampleResults, load_card_for, sample_results
from phenotyping.auth import require_actor
from phenotyping.analysis.inference import UNREADABLE
from phenotyping.errors import NotFoundError
from phenotyping.schemas import QCState

#: Reviewed labels outside the model's classes: the cell is then not counted ("reviewed as debris").
EXTRA_LABELS = ("debris", "other")

#: The orders a review queue can be shown in (:func:`order_cells`), with the words the screens use.
REVIEW_ORDERS = {
    "confidence": "least confident first",
    "margin": "most informative first (margin)",
    "entropy": "most informative first (entropy)",
    "confidence_desc": "most confident first",
    "cell_id": "cell id",
}


def uncertainty(probabilities: Mapping[str, float] | None, method: str = "margin") -> float | None:
    """How much a reviewer's label would teach the model about a cell, from its calibrated class probabilities:
    higher is more informative, in [0, 1]. None for a cell without probabilities.

    ``margin``: 1 − (p₁ − p₂), the gap between the two most probable classes (margin sampling, Scheffer et al.
    2001). ``entropy``: the Shannon entropy of the probabilities divided by log K, K the number of classes.
    """
    if method not in ("margin", "entropy"):
        raise ValueError(f"unknown uncertainty method {method!r}; use 'margin' or 'entropy'")
    if not probabilities:
        return None
    p = sorted((max(float(v), 0.0) for v in probabilities.values()), reverse=True)
    total = sum(p)
    if total <= 0:
        return None
    p = [v / total for v in p]
    if method == "margin":
        return 1.0 - (p[0] - (p[1] if len(p) > 1 else 0.0))
    if len(p) < 2:
        return 0.0
    return -sum(v * math.log(v) for v in p if v > 0) / math.log(len(p))


def order_cells(cells: Sequence[CellResult], order: str) -> list[CellResult]:
    """``cells`` in one of the :data:`REVIEW_ORDERS`; ties (and cells without a prediction, always last) by cell id.
    """
    if order not in REVIEW_ORDERS:
        raise ValueError(f"unknown review order {order!r}; use one of {list(REVIEW_ORDERS)}")
    if order == "cell_id":
        return sorted(cells, key=lambda r: r.cell.id)
    if order in ("margin", "entropy"):
        scores = {r.cell.id: uncertainty(r.probabilities, order) for r in cells}
        return sorted(cells, key=lambda r: (scores[r.cell.id] is None, -(scores[r.cell.id] or 0.0), r.cell.id))
    sign = -1.0 if order == "confidence_desc" else 1.0
    return sorted(cells, key=lambda r: (r.confidence is None, sign * (r.confidence or 0.0), r.cell.id))


def review_labels(store: Any, sample_id: str) -> list[str]:
    """The labels a reviewer may give the sample's cells: its analysis model's classes, then :data:`EXTRA_LABELS`.

    Raises:
        ValueError: the sample has no analysis model yet.
    """
    model_id = store.analysis_model(sample_id)
    if model_id is None:
        raise ValueError(f"sample {sample_id!r} has not been analysed; run a model on it first (predict)")
    classes = list(load_card_for(model_id, store=store)["classes"])
    return [*classes, *(x for x in EXTRA_LABELS if x not in classes)]


def _check_cells(store: Any, sample_id: str, cell_ids: Sequence[int]) -> list[int]:
    if not cell_ids:
        raise ValueError("no cells given; name at least one cell id")
    ids = [int(c) for c in cell_ids]
    known = {c.id for c in store.list_cells(sample_id)}
    foreign = [c for c in ids if c not in known]
    if foreign:
        raise NotFoundError(f"cell(s) {foreign[:10]} are not cells of sample {sample_id!r}; the ids are in its "
                            "cell table (predict --out, or review queue)")
    return ids


def qc_excluded(store: Any, sample_id: str, cell_ids: Sequence[int]) -> list[Any]:
    """The cells among ``cell_ids`` that image QC excluded (and no reviewer has overridden)."""
    wanted = {int(c) for c in cell_ids}
    return [c for c in store.list_cells(sample_id) if c.id in wanted and c.qc_state == QCState.excluded]


def reclassify_cells(store: Any, sample_id: str, cell_ids: Sequence[int], label: str, *, actor: str,
                     note: str = "") -> int:
    """Give ``cell_ids`` (cells of ``sample_id``) the reviewed ``label``; returns how many changed.

    A cell that image QC excluded is counted under a class of the model only when the reviewer overrides the
    exclusion: ``note`` is then the reason, recorded with the override (``cell.qc_override``). Labelling such a cell
    :data:`EXTRA_LABELS` keeps it excluded and needs no reason. A cell whose file could not be decoded cannot be
    counted.

    Raises:
        phenotyping.auth.PermissionDenied: ``actor`` may not review.
        ValueError: ``label`` is not one of :func:`review_labels` (the message lists them); a QC-excluded cell
            given a class without a reason, or an undecodable one.
        NotFoundError: a cell id that is not the sample's.
        phenotyping.errors.SampleLocked: the sample's report is signed.
    """
    user = require_actor(store, actor, "review")
    allowed = review_labels(store, sample_id)
    if label not in allowed:
        hint = [a for a in allowed if a.lower() == str(label).strip().lower()]
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown label {label!r}{extra}; sample {sample_id!r} takes one of {allowed}")
    ids = _check_cells(store, sample_id, cell_ids)
    excluded = qc_excluded(store, sample_id, ids) if label not in EXTRA_LABELS else []
    unreadable = [c.id for c in excluded if (c.qc_reason or "").startswith(UNREADABLE)]
    if unreadable:
        raise ValueError(f"cell(s) {unreadable[:10]} cannot be counted: their image file could not be decoded, so "
                         "nobody can check the class; untick them, or label them 'other'")
    if excluded and not note.strip():
        shown = ", ".join(f"#{c.id} ({c.qc_reason or 'excluded by image QC'})" for c in excluded[:5])
        raise ValueError(f"{len(excluded)} selected cell(s) are excluded by image QC: {shown}. To count them as "
                         f"{label}, give a reason for overriding the exclusion (e.g. 'in focus on inspection')")
    return store.reclassify(ids, label, actor=user.username, note=note, model_id=store.analysis_model(sample_id),
                            override_qc=bool(excluded))


def unidentified_queue(results: SampleResults, *, order: str | None = None) -> list[dict[str, Any]]:
    """The cells awaiting review (the unidentified queue): id, file, the model's class and calibrated confidence
    (None for a cell the image QC flagged before any prediction). Default order: those without a confidence, then
    least confident first; ``order`` (one of :data:`REVIEW_ORDERS`) chooses another, e.g. ``"margin"``."""
    cells = [r for r in results.cells if r.unidentified]
    if order is not None:
        cells = order_cells(cells, order)
    rows = [{"cell_id": r.cell.id, "cell_key": r.cell.cell_key, "source_file": r.cell.source_file,
             "predicted_class": r.predicted_class,
             "confidence": None if r.confidence is None else round(float(r.confidence), 4)}
            for r in cells]
    if order is not None:
        return rows
    return sorted(rows, key=lambda r: (r["confidence"] is not None, r["confidence"] or 0.0, r["cell_id"]))


def confirm_cells(store: Any, sample_id: str, cell_ids: Sequence[int] | None, *, actor: str,
                  note: str = "") -> dict[str, Any]:
    """Confirm the analysis model's class of each cell as its reviewed label (``None``: every cell of the
    unidentified queue, as it stands now). Returns ``{"confirmed": {cell_id: label}, "changed": n}``.

    Raises:
        phenotyping.auth.PermissionDenied: ``actor`` may not review.
        ValueError: a cell without a prediction of the analysis model (nothing to confirm: reclassify it).
        NotFoundError: a cell id that is not the sample's.
        phenotyping.errors.SampleLocked: the sample's report is signed.
    """
    user = require_actor(store, actor, "review")
    review_labels(store, sample_id)  # analysed at all
    res = sample_results(store, sample_id, n_bootstrap=0)
    by_id = {r.cell.id: r for r in res.cells}
    ids = [r["cell_id"] for r in unidentified_queue(res)] if cell_ids is None else _check_cells(
        store, sample_id, cell_ids)
    missing = [c for c in ids if by_id[c].predicted_class is None]
    if missing:
        raise ValueError(f"cell(s) {missing[:10]} have no prediction by {res.model_id} to confirm; give each a "
                         "label with reclassify")
    store.ensure_unlocked(sample_id, "confirming cells")  # before the first group: all or none
    groups: dict[str, list[int]] = {}
    for c in ids:
        groups.setdefault(str(by_id[c].predicted_class), []).append(c)
    changed = sum(store.reclassify(group, label, actor=user.username, note=note, model_id=res.model_id)
                  for label, group in groups.items())
    return {"confirmed": {c: str(by_id[c].predicted_class) for c in ids}, "changed": changed}
