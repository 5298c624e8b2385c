"""A sample's results computed in the store: counts, exclusions and marker statistics as SQL aggregations, the
gallery one page at a time, and the EM input as a NumPy matrix — no per-cell objects, so a 10^6-cell sample fits.

The rules which cells count are those of :mod:`phenotyping.analysis.results` (the store's SQL mirrors
``_cell_result``; ``tests/test_results_scale.py`` checks that both give the same differential, exclusions and marker
statistics on random samples). :func:`sample_results` stays for callers that need every cell as an object (a cells
CSV at small n); callers that need the differential, the QC summary or the markers use :func:`sample_summary`, and
the Review gallery :func:`gallery_page`::

    summary = sample_summary(store, sample_id, n_bootstrap=0)
    summary.group_sizes()            # {"queue": 12, "neutrophil": 4810, ..., "excluded": 97, "all": 10000}
    page = gallery_page(store, sample_id, show="class", label="neutrophil", order="confidence",
                        page=3, page_size=48, card=summary.card)
    page.cells                       # the page's CellResult objects; page.total, page.n_pages
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from phenotyping.analysis.differential import SampleDifferential, sample_differential
from phenotyping.analysis.markers import MarkerSummary
from phenotyping.analysis.results import (NOT_ANALYSED, UNIDENTIFIED, CellResult, _card_arrays, _em_gate,
                                          load_card_for)
from phenotyping.analysis.specimens import SpecimenCheck, specimen_check
from phenotyping.schemas import Sample

#: Gallery filters (``show``) and orders of :func:`gallery_page`.
SHOW = ("all", "queue", "excluded", "class")
ORDERS = ("confidence", "-confidence", "uncertainty", "id")


@dataclass(frozen=True)
class MarkerStats:
    """One regressed target among the counted cells of one class (finite values only; NaN when ``n`` is 0, ``sd``
    NaN when ``n`` < 2). Quantiles by linear interpolation."""

    label: str
    target: str
    n: int
    mean: float
    sd: float
    q1: float
    median: float
    q3: float


@dataclass(frozen=True)
class SampleSummary:
    """What :class:`~phenotyping.analysis.results.SampleResults` says about a sample, without its cells.

    ``counts`` are the counted cells per final label; ``exclusions`` the other cells per category (the reason's
    text before ':'), the unidentified queue and the not-analysed cells included, as in ``SampleResults``.
    """

    sample: Sample
    model_id: str | None
    card: Mapping[str, Any] | None
    n_cells: int
    counts: Mapping[str, int]
    exclusions: Mapping[str, int]
    differential: SampleDifferential | None
    specimen_check: SpecimenCheck | None = None
    marker_stats: tuple[MarkerStats, ...] = field(default=())

    @property
    def n_unidentified(self) -> int:
        """Cells still waiting in the unidentified queue (signing is blocked while this is > 0)."""
        return self.exclusions.get(UNIDENTIFIED, 0)

    @property
    def n_not_analysed(self) -> int:
        return self.exclusions.get(NOT_ANALYSED, 0)

    @property
    def n_excluded(self) -> int:
        """Cells not counted, the unidentified queue aside."""
        return sum(self.exclusions.values()) - self.n_unidentified

    def group_sizes(self) -> dict[str, int]:
        """Cells per gallery group: ``queue``, each class of the model (counted cells), ``excluded``, ``all``."""
        classes = list((self.card or {}).get("classes") or [])
        return {"queue": self.n_unidentified, **{c: int(self.counts.get(c, 0)) for c in classes},
                "excluded": self.n_excluded, "all": self.n_cells}

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`SampleResults.to_dict`."""
        return {
            "sample_id": self.sample.id,
            "specimen": self.sample.specimen.value,
            "model_id": self.model_id,
            "n_cells": self.n_cells,
            "n_unidentified": self.n_unidentified,
            "exclusions": dict(self.exclusions),
            "differential": None if self.differential is None else self.differential.to_dict(),
            "specimen_check": None if self.specimen_check is None else self.specimen_check.to_dict(),
        }


def sample_summary(
    store: Any,
    sample_id: str,
    *,
    model_id: str | None = None,
    card: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> SampleSummary:
    """The sample's differential, exclusions and marker statistics from SQL aggregations over the store.

    The same rules and arguments as :func:`phenotyping.analysis.results.sample_results`, and the same
    differential (the EM input is fetched as a matrix in cell-id order, so its bootstrap draws the same resamples).
    """
    sample = store.get_sample(sample_id)
    model_id = model_id or store.analysis_model(sample_id)
    if model_id is None:
        rows = store.predictions.result_counts(sample_id, None, (), 0.0)
        return SampleSummary(sample, None, None, sum(n for *_, n in rows), {}, _exclusions(rows), None)
    if card is None:
        card = load_card_for(model_id, store=store)
    classes = list(card["classes"])
    check = specimen_check(card, sample.specimen.value)
    conf, prior, threshold, notes = _card_arrays(card, classes)
    rows = store.predictions.result_counts(sample_id, model_id, classes, threshold)
    exclusions = _exclusions(rows)
    labels: list[str] = []
    reviewed: list[bool] = []
    counts: dict[str, int] = {}
    for label, is_reviewed, category, n in rows:
        if category is None:  # counted: the differential needs only how many of each label, reviewed or not
            labels += [str(label)] * n
            reviewed += [is_reviewed] * n
            counts[str(label)] = counts.get(str(label), 0) + n
    prior = _em_gate(exclusions.get(UNIDENTIFIED, 0), prior, notes)
    probs = None
    if labels and prior is not None:
        probs = store.predictions.counted_probabilities(sample_id, model_id, classes, threshold)
    stats = _marker_stats(store.predictions.result_markers(sample_id, model_id, classes, threshold), classes)
    diff = sample_differential(labels, classes, probabilities=probs, confusion=conf, training_prior=prior,
                               targets=None, qc_counts=exclusions, n_cells=sum(n for *_, n in rows),
                               n_bootstrap=n_bootstrap, seed=seed, reviewed=reviewed, notes=notes, spec=check.spec)
    diff = dataclasses.replace(diff, markers=tuple(
        MarkerSummary(s.label, s.target, s.n, s.median, s.q1, s.q3) for s in stats))
    return SampleSummary(sample, model_id, card, sum(n for *_, n in rows), counts, exclusions, diff, check, stats)


def _exclusions(rows: list[tuple[str | None, bool, str | None, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, _, category, n in rows:
        if category is not None:
            out[category] = out.get(category, 0) + n
    return out


def _marker_stats(rows: list[tuple[str, str, int, float | None, float | None, list[float] | None]],
                  classes: list[str]) -> tuple[MarkerStats, ...]:
    """Every (target, class) pair, targets sorted and classes in the model's order, as ``marker_expression``."""
    nan = float("nan")
    by_key = {(t, lab): (n, mean, sd, q) for t, lab, n, mean, sd, q in rows}
    out = []
    for t in sorted({r[0] for r in rows}):
        for c in classes:
            n, mean, sd, q = by_key.get((t, c), (0, None, None, None))
            if not n:
                out.append(MarkerStats(c, t, 0, nan, nan, nan, nan, nan))
                continue
            q1, med, q3 = (float(x) for x in q)  # type: ignore[union-attr]
            out.append(MarkerStats(c, t, int(n), float(mean), nan if sd is None or math.isnan(sd) else float(sd),
                                   q1, med, q3))
    return tuple(out)


@dataclass(frozen=True)
class GalleryPage:
    """One page of a gallery group: its cells (as the review screens show them) and the group's size."""

    cells: tuple[CellResult, ...]
    total: int
    page: int
    page_size: int

    @property
    def n_pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def gallery_page(
    store: Any,
    sample_id: str,
    *,
    show: str = "all",
    label: str | None = None,
    order: str = "confidence",
    page: int = 1,
    page_size: int = 48,
    model_id: str | None = None,
    card: Mapping[str, Any] | None = None,
) -> GalleryPage:
    """Page ``page`` (from 1) of the sample's cells in one gallery group, read from the store alone.

    Args:
        show: ``all``; ``queue`` (the unidentified queue); ``excluded`` (not counted, the queue aside); ``class``
            (the counted cells whose final label is ``label``).
        order: ``confidence`` (lowest first; cells without a prediction last), ``-confidence`` (highest first;
            those cells first), ``uncertainty`` (most uncertain first, as ``confidence``) or ``id``; ties by id.
        model_id, card: as in :func:`sample_summary` (pass the summary's ``card`` so a page change reads no file).

    Raises:
        ValueError: an unknown ``show`` or ``order``, ``class`` without a label, ``page`` < 1 or ``page_size`` < 1.
    """
    if page < 1 or page_size < 1:
        raise ValueError(f"page={page} and page_size={page_size} must be >= 1")
    model_id = model_id or store.analysis_model(sample_id)
    classes: list[str] = []
    threshold = 0.0
    if model_id is not None:
        if card is None:
            card = load_card_for(model_id, store=store)
        classes = list(card["classes"])
        threshold = _card_arrays(card, classes)[2]
    rows, total = store.predictions.result_page(sample_id, model_id, classes, threshold, show=show, label=label,
                                                order=order, limit=page_size, offset=(page - 1) * page_size)
    cells = tuple(CellResult(cell, f["predicted_class"], f["confidence"], f["probabilities"], f["targets"],
                             f["final_label"], f["exclusion"] is None, f["exclusion"]) for cell, f in rows)
    return GalleryPage(cells, total, page, page_size)
