"""A sample's current results, read from the store: the one place that decides which cells are counted.

Used by the ``predict`` command, the review screens, agreement studies and reports, so that all of them show the same
differential. The rules:

- a cell excluded by image QC is not counted (its reason is kept), unless a reviewer overrode the exclusion with a
  reason (QC state ``overridden``): it is then counted under its reviewed label, with or without a prediction;
- a cell without a prediction from the sample's analysis model is "not analysed" and not counted;
- a reviewer's label overrides the prediction; a reviewed label that is not one of the model's classes (e.g.
  ``debris``, ``other``) excludes the cell with the reason "reviewed as <label>";
- an unreviewed cell that the model is unsure of (QC state ``unidentified``, or calibrated confidence below the
  card's ``calibration.unidentified_threshold``) waits in the "unidentified" queue and is not counted (and, while
  any cell waits, the corrected % is the adjusted count, not EM: see :func:`sample_results`);
- every other cell is counted under its final label;
- which of the counted cells' classes the differential's percentages count is the sample's specimen's rule in the
  model card (:mod:`phenotyping.analysis.specimens`): e.g. erythroblasts are reported per 100 leukocytes and
  platelets as a number, apart from the percentages; a specimen the card does not declare is stated in
  :attr:`SampleResults.specimen_check`, which every screen and report showing the results must show.

:func:`sample_results` builds one object per cell; :func:`phenotyping.analysis.aggregates.sample_summary` computes
the same differential, exclusions and marker statistics as SQL aggregations in the store (10^6 cells), and
:func:`~phenotyping.analysis.aggregates.gallery_page` reads one page of cells. Both follow these rules (the store's
SQL mirrors :func:`_cell_result`; change them together).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.analysis.differential import SampleDifferential, sample_differential
from phenotyping.analysis.specimens import SpecimenCheck, specimen_check
from phenotyping.errors import NotFoundError
from phenotyping.schemas import Cell, QCState, Sample

CARD = "model_card.json"
UNIDENTIFIED = "unidentified (awaiting review)"
NOT_ANALYSED = "not analysed"


@dataclass(frozen=True)
class CellResult:
    """One cell as the review screens show it."""

    cell: Cell
    predicted_class: str | None
    confidence: float | None
    probabilities: Mapping[str, float] | None
    targets: Mapping[str, float]
    final_label: str | None
    counted: bool
    exclusion: str | None

    @property
    def unidentified(self) -> bool:
        return self.exclusion == UNIDENTIFIED


@dataclass(frozen=True)
class SampleResults:
    sample: Sample
    model_id: str | None
    card: Mapping[str, Any] | None
    cells: tuple[CellResult, ...]
    differential: SampleDifferential | None
    exclusions: Mapping[str, int] = field(default_factory=dict)  # by category: the reason's text before ':'
    specimen_check: SpecimenCheck | None = None  # None without a model

    @property
    def n_unidentified(self) -> int:
        """Cells still waiting in the unidentified queue (signing is blocked while this is > 0)."""
        return sum(1 for c in self.cells if c.unidentified)

    @property
    def n_not_analysed(self) -> int:
        return self.exclusions.get(NOT_ANALYSED, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample.id,
            "specimen": self.sample.specimen.value,
            "model_id": self.model_id,
            "n_cells": len(self.cells),
            "n_unidentified": self.n_unidentified,
            "exclusions": dict(self.exclusions),
            "differential": None if self.differential is None else self.differential.to_dict(),
            "specimen_check": None if self.specimen_check is None else self.specimen_check.to_dict(),
        }


# -- models ----------------------------------------------------------------------------------------------------------
def find_model_dirs(search_path: list[Path]) -> dict[str, Path]:
    """Model id (from each card) -> folder, over the folders of ``search_path`` (first found wins)."""
    found: dict[str, Path] = {}
    for root in search_path:
        if not Path(root).is_dir():
            continue
        for card_path in sorted(Path(root).glob(f"*/{CARD}")):
            try:
                model_id = str(json.loads(card_path.read_text(encoding="utf-8"))["id"])
            except (OSError, ValueError, KeyError):
                continue
            found.setdefault(model_id, card_path.parent)
    return found


def model_dir_for(model_id: str, *, store: Any = None, search_path: list[Path] | None = None) -> Path:
    """The folder of a model: registered in the store, else found on the search path. Fails naming what exists."""
    if store is not None:
        for m in store.list_models():
            if m["id"] == model_id and Path(m["path"]).is_dir():
                return Path(m["path"])
    if search_path is None:
        from phenotyping.settings import get_settings

        search_path = get_settings().model_search_path()
    dirs = find_model_dirs(search_path)
    if model_id in dirs:
        return dirs[model_id]
    raise NotFoundError(f"model {model_id!r} not found; known models: {sorted(dirs) or '(none)'} "
                        f"in {[str(p) for p in search_path]}")


def load_card_for(model_id: str, *, store: Any = None, search_path: list[Path] | None = None) -> dict[str, Any]:
    path = model_dir_for(model_id, store=store, search_path=search_path) / CARD
    return json.loads(path.read_text(encoding="utf-8"))


# -- the sample ------------------------------------------------------------------------------------------------------
def _card_arrays(card: Mapping[str, Any], classes: list[str]
                 ) -> tuple[np.ndarray | None, np.ndarray | None, float, list[str]]:
    """``(confusion for the adjusted count, posterior prior for EM, unidentified threshold, notes)`` from a card.

    Nothing missing is silently dropped: each correction that cannot be computed gets a note saying why.

    Raises:
        ValueError: the card has no ``calibration.unidentified_threshold`` (the review queue would silently vanish).
    """
    from phenotyping.analysis.prior import card_posterior_prior

    notes: list[str] = []
    validation = card.get("validation") or {}

    def matrix(key: str) -> np.ndarray | None:
        m = validation.get(key)
        return None if m is None else np.asarray(m, dtype=float)

    confident, full = matrix("confusion_confident"), matrix("confusion")
    conf = confident
    if confident is None and full is not None:
        conf = full
        notes.append("adjusted count uses the confusion of all validation cells; the card has no confusion of the "
                     "cells above the unidentified threshold (run `python -m phenotyping calibrate` on the model)")
    elif confident is not None and full is not None and full.shape == confident.shape:
        # a rare class can have validation cells but none above the threshold: its row of the confident-cell
        # confusion is empty, so take that row from all its validation cells rather than drop the correction
        empty = (confident.sum(axis=1) == 0) & (full.sum(axis=1) > 0)
        if empty.any():
            conf = np.where(empty[:, None], full, confident)
            names = ", ".join(c for c, e in zip(classes, empty) if e)
            notes.append(f"adjusted count: no validation cell of {names} is above the unidentified threshold, "
                         "so the misclassification rates of that class come from all its validation cells")
    if conf is None:
        notes.append("adjusted count not computed: the model card has no validation confusion matrix")
    elif conf.shape != (len(classes), len(classes)):
        notes.append(f"adjusted count not computed: the card's confusion matrix is {conf.shape[0]}×{conf.shape[1]} "
                     f"but the model has {len(classes)} classes")
        conf = None
    elif (conf.sum(axis=1) == 0).any():
        empty = [c for c, row in zip(classes, conf) if row.sum() == 0]
        notes.append(f"adjusted count not computed: no validation cell of {empty} (above the unidentified "
                     "threshold), so their misclassification rates are unknown")
        conf = None
    prior, why = card_posterior_prior(card, classes)
    if why:
        notes.append(why)
    elif prior is not None and (prior <= 0).any():
        notes.append(f"EM correction not computed: classes {[c for c, p in zip(classes, prior) if p <= 0]} have no "
                     "training cells, so the model's probabilities say nothing about them")
        prior = None
    cal = card.get("calibration") or {}
    if "unidentified_threshold" not in cal:
        raise ValueError(f"model card {card.get('id', '?')!r} has no calibration.unidentified_threshold, so its "
                         "unsure cells cannot be queued for review; run `python -m phenotyping calibrate` on it")
    return conf, prior, float(cal["unidentified_threshold"]), notes


def sample_results(
    store: Any,
    sample_id: str,
    *,
    model_id: str | None = None,
    card: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> SampleResults:
    """Collect a sample's cells, predictions and reviews and compute its differential.

    Args:
        model_id: whose predictions to use (default: the sample's analysis model; none means no differential).
        card: that model's card (default: looked up by id in the store's registry, then the model folders).
        n_bootstrap: resamples for the corrected proportions' CIs (0 skips them).
    """
    sample = store.get_sample(sample_id)
    model_id = model_id or store.analysis_model(sample_id)
    cells = store.list_cells(sample_id)
    if model_id is None:
        out = tuple(CellResult(c, None, None, None, {}, c.reviewed_label, False,
                               (c.qc_reason or "excluded by image QC") if c.qc_state == QCState.excluded
                               else NOT_ANALYSED) for c in cells)
        ex: dict[str, int] = {}
        for c in out:
            category = (c.exclusion or "").split(":")[0]
            ex[category] = ex.get(category, 0) + 1
        return SampleResults(sample, None, None, out, None, ex)
    if card is None:
        card = load_card_for(model_id, store=store)
    classes = list(card["classes"])
    check = specimen_check(card, sample.specimen.value)
    conf, prior, threshold, notes = _card_arrays(card, classes)
    preds = {p.cell_id: p for p in store.list_predictions(sample_id, model_id)}
    results: list[CellResult] = []
    exclusions: dict[str, int] = {}
    for c in cells:
        r = _cell_result(c, preds.get(c.id), classes, threshold)
        if r.exclusion is not None:
            category = r.exclusion.split(":")[0]  # "out of focus: focus 0.21 < 0.30" counts as "out of focus"
            exclusions[category] = exclusions.get(category, 0) + 1
        results.append(r)
    counted = [r for r in results if r.counted]
    labels = [r.final_label for r in counted]
    reviewed = [r.cell.reviewed_label is not None for r in counted]
    probs = None
    prior = _em_gate(sum(1 for r in results if r.exclusion == UNIDENTIFIED), prior, notes)
    if counted and prior is not None:
        probs = _probability_rows(counted, classes)
    target_names = sorted({k for r in counted for k in r.targets})
    targets = {t: [float(r.targets.get(t, np.nan)) for r in counted] for t in target_names} or None
    diff = sample_differential(labels, classes, probabilities=probs, confusion=conf, training_prior=prior,
                               targets=targets, qc_counts=exclusions, n_cells=len(cells),
                               n_bootstrap=n_bootstrap, seed=seed, reviewed=reviewed, notes=notes, spec=check.spec)
    return SampleResults(sample, model_id, card, tuple(results), diff, exclusions, check)


def _em_gate(waiting: int, prior: np.ndarray | None, notes: list[str]) -> np.ndarray | None:
    """The EM prior, or None (with a note in ``notes``) while ``waiting`` cells are in the unidentified queue.

    EM assumes the counted cells are an unselected sample of the specimen; leaving out the cells the model is unsure
    of selects on the image, so EM is biased until the queue is reviewed (composed studies in docs/BENCHMARKS.md).
    The adjusted count uses the confusion of confident validation cells: it fits this selection, and is the
    corrected % meanwhile.
    """
    if waiting and prior is not None:
        notes.append(f"EM correction is computed once the {waiting} unidentified cell(s) are reviewed; until then "
                     "the corrected % is the adjusted count")
        return None
    return prior


def _cell_result(c: Cell, p: Any, classes: Sequence[str], threshold: float) -> CellResult:
    """One cell with its prediction ``p`` (or None): its final label (the review's, else the model's) and why the
    differential leaves it out (image QC, not analysed, reviewed as a label outside the model's classes, or
    unidentified: unreviewed and below ``threshold`` or queued), None when it is counted."""
    reason: str | None = None
    final = c.reviewed_label or (p.predicted_class if p else None)
    if c.qc_state == QCState.excluded or (c.qc_state == QCState.overridden and c.reviewed_label is None):
        reason = c.qc_reason or "excluded by image QC"
    elif c.qc_state == QCState.overridden:  # a reviewer looked at the cell and counted it: no prediction needed
        reason = None if c.reviewed_label in classes else f"reviewed as {c.reviewed_label}"
    elif p is None:
        reason = NOT_ANALYSED
    elif c.reviewed_label is not None and c.reviewed_label not in classes:
        reason = f"reviewed as {c.reviewed_label}"
    elif c.reviewed_label is None and (c.qc_state == QCState.unidentified or p.confidence < threshold):
        reason = UNIDENTIFIED
    return CellResult(
        cell=c, predicted_class=p.predicted_class if p else None, confidence=p.confidence if p else None,
        probabilities=p.probabilities if p else None, targets=p.targets if p else {},
        final_label=final, counted=reason is None, exclusion=reason)


def _probability_rows(counted: Sequence[CellResult], classes: Sequence[str]) -> np.ndarray:
    """The EM input, (n_counted, K): a reviewed cell is one-hot on its label, the others the model's probabilities."""
    rows = []
    for r in counted:
        if r.cell.reviewed_label is not None:  # a reviewer's decision is certain
            rows.append([1.0 if c == r.final_label else 0.0 for c in classes])
        else:
            rows.append([float(r.probabilities.get(c, 0.0)) for c in classes])  # type: ignore[union-attr]
    return np.asarray(rows)
