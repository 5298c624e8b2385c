"""Model vs manual count per sample and class: the paired values an agreement study compares, for the Agreement
screen and its download.

The manual percentages come from :func:`phenotyping.agreement.manual_counts.sample_percentages` and the model's from
:func:`phenotyping.agreement.study.model_percentages` (which calls :func:`phenotyping.analysis.results.sample_results`),
the same functions :func:`phenotyping.agreement.study.run_study` uses, so a row here is exactly a pair the study
analysed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from phenotyping.agreement.manual_counts import over_model_classes, sample_percentages, sample_totals
from phenotyping.agreement.study import model_percentages
from phenotyping.analysis.results import load_card_for

#: CSV header of :func:`comparison_csv`, in order (percentages of counted cells, 0-100).
CSV_COLUMNS = ("sample", "class", "manual %", "model raw %", "model corrected %", "correction", "manual total",
               "model counted", "in model", "flag")

FLAG_DIFFERENCE_POINTS = 10.0
"""A per-sample difference (model − manual) of at least this many percentage points is flagged for a look at the
slides. A 200-cell manual count of a class at 50 % has a binomial 95 % CI of about ±7 points (CLSI H20-A2), so 10
points is beyond counting error even for the commonest class; smaller classes have narrower intervals."""


@dataclass(frozen=True)
class ComparisonRow:
    """One class of one sample. Percentages are of the counted cells (0-100); None where that side has no value
    (a class the manual count lacks, or no prior-shift correction for this model)."""

    sample_id: str
    cell_type: str
    manual_percent: float | None
    model_raw_percent: float | None
    model_corrected_percent: float | None
    correction: str | None  # "em" or "adjusted_count"; None without a correction
    manual_total: int | None  # cells counted by hand (given, else the sum of the counts); None for bare percentages
    model_counted: int  # cells the model's differential counts
    in_model: bool = True  # False for a class the manual count has and the model cannot classify (e.g. basophils)

    @property
    def raw_minus_manual(self) -> float | None:
        """Model raw % minus manual %, in percentage points."""
        if self.manual_percent is None or self.model_raw_percent is None:
            return None
        return self.model_raw_percent - self.manual_percent

    @property
    def corrected_minus_manual(self) -> float | None:
        """Model corrected % minus manual %, in percentage points."""
        if self.manual_percent is None or self.model_corrected_percent is None:
            return None
        return self.model_corrected_percent - self.manual_percent

    @property
    def flag(self) -> str:
        """Why this pair deserves a look ("" when nothing stands out): a class the model lacks, or a difference of
        at least :data:`FLAG_DIFFERENCE_POINTS` points between the model (raw or corrected) and the manual count."""
        if not self.in_model:
            return "class not in the model"
        gaps = [(what, d) for what, d in (("raw", self.raw_minus_manual), ("corrected", self.corrected_minus_manual))
                if d is not None and abs(d) >= FLAG_DIFFERENCE_POINTS]
        return "; ".join(f"{what} {d:+.1f} points vs manual" for what, d in gaps)

    def as_csv_row(self) -> dict[str, Any]:
        d = asdict(self)
        return dict(zip(CSV_COLUMNS, (d["sample_id"], d["cell_type"], d["manual_percent"], d["model_raw_percent"],
                                      d["model_corrected_percent"], d["correction"], d["manual_total"],
                                      d["model_counted"], d["in_model"], self.flag)))


def sample_comparison(store: Any, sample_id: str, *, model_id: str | None = None,
                      card: Mapping[str, Any] | None = None) -> list[ComparisonRow]:
    """The sample's manual and model percentages per class: the model's classes in card order, then any manual
    class the model lacks (``in_model`` False, its share of the whole manual count). When the manual count holds
    such classes, its percentages of the model's classes are renormalised over those classes (the model's
    percentages are of the cells it can classify), as :func:`phenotyping.agreement.study.run_study` compares them.

    Args:
        model_id: default: the sample's analysis model.
        card: the model's card (default: looked up by ``model_id``).

    Raises:
        ValueError: the sample has no analysis model, no manual counts, or no counted cells.
    """
    model_id = model_id or store.analysis_model(sample_id)
    if not model_id:
        raise ValueError(f"sample {sample_id!r} has not been analysed; run a model on it first")
    manual_rows = store.get_manual_counts(sample_id)
    if not manual_rows:
        raise ValueError(f"sample {sample_id!r} has no manual counts; enter or import them first")
    card = card or load_card_for(model_id, store=store)
    inside, outside = over_model_classes(sample_percentages(manual_rows)[sample_id], card["classes"])
    manual = {**inside, **outside}  # model classes renormalised over themselves, as the study compares them
    manual_total = sample_totals(manual_rows).get(sample_id)
    raw, corrected, method, counted = model_percentages(store, sample_id, model_id=model_id, card=card)
    classes = [*card["classes"], *sorted(c for c in manual if c not in card["classes"])]
    return [ComparisonRow(sample_id=sample_id, cell_type=c, manual_percent=manual.get(c),
                          model_raw_percent=raw.get(c),
                          model_corrected_percent=None if corrected is None else corrected.get(c),
                          correction=method, manual_total=manual_total, model_counted=counted,
                          in_model=c in card["classes"])
            for c in classes]


def study_comparison(store: Any, sample_ids: Sequence[str], *, model_id: str,
                     card: Mapping[str, Any] | None = None) -> list[ComparisonRow]:
    """:func:`sample_comparison` of each sample with the same model, concatenated in the order given."""
    card = card or load_card_for(model_id, store=store)
    return [row for s in sample_ids for row in sample_comparison(store, s, model_id=model_id, card=card)]


def comparison_csv(rows: Sequence[ComparisonRow]) -> str:
    """The rows as CSV text with the header :data:`CSV_COLUMNS` (empty cells for None)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(r.as_csv_row() for r in rows)
    return buf.getvalue()
