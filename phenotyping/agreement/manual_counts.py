"""Manual (cytospin) differential counts: parsing, validation, counts <-> percent conversion, and saving them.

A manual count is one row per sample and class with either a ``count`` of cells or a ``percent`` (0-100), and
optionally the total number of cells counted for the sample. Rows are :class:`phenotyping.schemas.ManualCount`
(re-exported here). Validation errors name the sample and the row (1-based data row; CSV line = row + 1).
:func:`import_manual_counts` and :func:`save_manual_counts` validate counts and save them to the store.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from phenotyping.errors import NotFoundError
from phenotyping.schemas import ManualCount

__all__ = [
    "MANUAL_ONLY_CLASSES",
    "PERCENT_TOLERANCE",
    "ManualCount",
    "counts_to_percent",
    "manual_classes",
    "over_model_classes",
    "import_manual_counts",
    "parse_counts",
    "percent_to_counts",
    "read_counts_csv",
    "sample_percentages",
    "sample_totals",
    "save_manual_counts",
]

PERCENT_TOLERANCE = 0.5
"""Percentages of a sample must sum to 100 within this many points (rounding of reported values)."""

_TOTAL_KEYS = ("total_counted", "total")

MANUAL_ONLY_CLASSES: dict[str, tuple[str, ...]] = {
    "blood": ("basophil", "band neutrophil", "immature granulocyte", "blast", "atypical lymphocyte", "plasma cell",
              "erythroblast"),
    "balf": ("macrophage", "lymphocyte", "neutrophil", "eosinophil", "mast cell", "epithelial cell"),
}
"""Cell types a manual differential of each specimen may count although a model may not classify them (CLSI H20-A2
blood categories; BAL fluid cytology). Given as ``extra_classes``, they are accepted next to the model's classes and
shown in the comparison as classes the model lacks."""


def manual_classes(model_classes: Sequence[str], specimen: str | None) -> tuple[list[str], list[str]]:
    """``(model classes, the specimen's other manual classes)``: what a manual count of ``specimen`` may hold."""
    model = list(model_classes)
    known = {c.casefold() for c in model}
    extra = [c for c in MANUAL_ONLY_CLASSES.get(specimen or "", ()) if c.casefold() not in known]
    return model, extra


def over_model_classes(percent: Mapping[str, float], classes: Sequence[str]
                       ) -> tuple[dict[str, float], dict[str, float]]:
    """``(manual % over the model's classes only, manual % of the classes the model lacks)``.

    The model's percentages are of cells it can classify, so a manual count that also counted e.g. basophils is
    renormalised over the model's classes before the two are compared; the left-out classes keep their share of the
    whole manual count. Raises ValueError when the manual count holds no cell of the model's classes.
    """
    inside = {c: float(percent.get(c, 0.0)) for c in classes}
    outside = {c: float(v) for c, v in percent.items() if c not in classes}
    total = sum(inside.values())
    if total <= 0:
        raise ValueError(f"the manual count has no cell of the model's classes {list(classes)} (only {outside})")
    return ({c: 100.0 * v / total for c, v in inside.items()} if outside else inside), outside


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "") or (isinstance(v, float) and math.isnan(v))


def _number(v: Any, what: str, where: str, *, integer: bool) -> float | int | None:
    if _blank(v):
        return None
    try:
        f = float(str(v).strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} {v!r} is not a number") from None
    if not math.isfinite(f):
        raise ValueError(f"{where}: {what} {v!r} is not a finite number")
    if f < 0:
        raise ValueError(f"{where}: {what} is negative ({v!r}); counts and percentages must be >= 0")
    if integer:
        if f != int(f):
            raise ValueError(f"{where}: {what} {v!r} must be a whole number of cells")
        return int(f)
    return f


def _parse_row(
    i: int, row: Mapping[str, Any], allowed: list[str] | None, extra: Sequence[str] = ()
) -> tuple[str, str, str, int | None, float | None, int | None]:
    """``(sample, cell_type, where, count, percent, total)`` of data row ``i`` (1-based), checked on its own: ids
    present, class allowed, exactly one of count/percent, percent at most 100, total at least 1."""
    sample = "" if _blank(row.get("sample_id")) else str(row.get("sample_id")).strip()
    cell_type = "" if _blank(row.get("cell_type")) else str(row.get("cell_type")).strip()
    where = f"row {i} (sample {sample!r})" if sample else f"row {i}"
    if not sample:
        raise ValueError(f"{where}: sample_id is empty")
    if not cell_type:
        raise ValueError(f"{where}: cell_type is empty")
    if allowed is not None and cell_type not in allowed and cell_type not in extra:
        hint = [a for a in (*allowed, *extra) if a.lower() == cell_type.lower()]
        also = f" and, not in the model, {list(extra)}" if extra else ""
        raise ValueError(f"{where}: unknown cell type {cell_type!r}"
                         + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; allowed classes: {allowed}{also}")
    count = _number(row.get("count"), "count", where, integer=True)
    percent = _number(row.get("percent"), "percent", where, integer=False)
    total_raw = next((row.get(k) for k in _TOTAL_KEYS if not _blank(row.get(k))), None)
    total = _number(total_raw, "total counted", where, integer=True)
    if count is None and percent is None:
        raise ValueError(f"{where}: give either a count or a percent for {cell_type!r}")
    if count is not None and percent is not None:
        raise ValueError(f"{where}: give a count or a percent for {cell_type!r}, not both")
    if percent is not None and percent > 100:
        raise ValueError(f"{where}: percent {percent} is above 100")
    if total is not None and total < 1:
        raise ValueError(f"{where}: total counted must be at least 1, got {total}")
    return sample, cell_type, where, count, percent, total


def parse_counts(
    rows: Iterable[Mapping[str, Any]],
    *,
    allowed_classes: Sequence[str] | None = None,
    entered_by: str = "system",
    tolerance: float = PERCENT_TOLERANCE,
    extra_classes: Sequence[str] = (),
) -> list[ManualCount]:
    """Validate manual-count rows (dicts with ``sample_id, cell_type`` and ``count`` or ``percent``, optional
    ``total_counted``/``total``) and return them as ``ManualCount``.

    Checks: class names in ``allowed_classes`` (when given) or ``extra_classes`` (cell types counted by hand that
    the model lacks, e.g. :data:`MANUAL_ONLY_CLASSES`; they count towards the total); no negative or non-numeric values; one of count/percent
    per row and the same kind throughout a sample; no duplicate (sample, class); percentages of a sample sum to 100
    within ``tolerance``; counts of a sample sum to its total when a total is given; one total per sample.
    Raises ``ValueError`` naming the sample and row.
    """
    allowed = list(allowed_classes) if allowed_classes is not None else None
    out: list[ManualCount] = []
    seen: dict[tuple[str, str], int] = {}
    kinds: dict[str, str] = {}
    totals: dict[str, int | None] = {}
    first_row: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        sample, cell_type, where, count, percent, total = _parse_row(i, row, allowed, extra_classes)
        kind = "count" if count is not None else "percent"
        if kinds.setdefault(sample, kind) != kind:
            raise ValueError(
                f"{where}: sample {sample!r} mixes counts and percentages (row {first_row[sample]} has "
                f"{kinds[sample]}s); use one kind per sample"
            )
        first_row.setdefault(sample, i)
        key = (sample, cell_type)
        if key in seen:
            raise ValueError(f"{where}: duplicate entry for {cell_type!r} in sample {sample!r} (also row {seen[key]})")
        seen[key] = i
        if sample in totals and total is not None and totals[sample] is not None and totals[sample] != total:
            raise ValueError(
                f"{where}: sample {sample!r} has total counted {total} here but {totals[sample]} in an earlier row"
            )
        if total is not None or sample not in totals:
            totals[sample] = total if total is not None else totals.get(sample)
        try:
            out.append(
                ManualCount(sample_id=sample, cell_type=cell_type, count=count, percent=percent,
                            total_counted=None, entered_by=entered_by)  # fmt: skip
            )
        except ValidationError as e:
            raise ValueError(f"{where}: {e.errors()[0]['msg']}") from None
    if not out:
        raise ValueError("no manual counts given: the table has no rows")

    result = [m.model_copy(update={"total_counted": totals.get(m.sample_id)}) for m in out]
    for sample, kind in kinds.items():
        mine = [m for m in result if m.sample_id == sample]
        where = f"sample {sample!r} (rows from {first_row[sample]})"
        if kind == "percent":
            s = sum(m.percent or 0.0 for m in mine)
            if abs(s - 100.0) > tolerance:
                raise ValueError(
                    f"{where}: percentages sum to {s:g}, expected 100 +/- {tolerance:g}; check for a missing or "
                    "mistyped class"
                )
        else:
            s_count = sum(m.count or 0 for m in mine)
            total = totals.get(sample)
            if total is not None and s_count != total:
                raise ValueError(
                    f"{where}: counts sum to {s_count} but the total counted is {total}; check for a missing class"
                )
            if s_count == 0:
                raise ValueError(f"{where}: all counts are 0; a differential needs at least one counted cell")
    return result


def read_counts_csv(
    source: str | Path | io.TextIOBase,
    *,
    allowed_classes: Sequence[str] | None = None,
    entered_by: str = "system",
    tolerance: float = PERCENT_TOLERANCE,
    extra_classes: Sequence[str] = (),
) -> list[ManualCount]:
    """Parse manual counts from CSV text, a path, or an open text file.

    Columns: ``sample_id, cell_type`` and ``count`` or ``percent``; optional ``total_counted`` (or ``total``).
    A ``str`` containing a newline is read as CSV text; otherwise a ``str``/``Path`` is a file path.
    """
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"manual-count CSV not found: {path}")
        text = path.read_text(encoding="utf-8-sig")
    elif isinstance(source, str):
        text = source
    else:
        text = source.read()
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("sample_id", "cell_type") if c not in header]
    if missing:
        raise ValueError(f"manual-count CSV lacks column(s) {missing}; found {header}")
    if "count" not in header and "percent" not in header:
        raise ValueError(f"manual-count CSV needs a 'count' or a 'percent' column; found {header}")
    rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    return parse_counts(rows, allowed_classes=allowed_classes, entered_by=entered_by, tolerance=tolerance,
                        extra_classes=extra_classes)


def counts_to_percent(counts: Mapping[str, int]) -> dict[str, float]:
    """Class counts -> percentages (0-100) of their sum."""
    bad = {k: v for k, v in counts.items() if v < 0}
    if bad:
        raise ValueError(f"negative counts: {bad}")
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("cannot convert counts to percentages: the counts sum to 0")
    return {k: 100.0 * v / total for k, v in counts.items()}


def percent_to_counts(percent: Mapping[str, float], total: int) -> dict[str, int]:
    """Percentages -> whole cell counts summing exactly to ``total`` (largest-remainder rounding, Hamilton's method).

    The percentages are rescaled to their own sum first, so reported values that sum to 99.9 still give ``total``.
    """
    if total < 1:
        raise ValueError(f"total must be at least 1 cell, got {total}")
    bad = {k: v for k, v in percent.items() if not (v >= 0)}
    if bad:
        raise ValueError(f"percentages must be >= 0: {bad}")
    s = sum(percent.values())
    if s <= 0:
        raise ValueError("cannot convert percentages to counts: they sum to 0")
    exact = {k: v / s * total for k, v in percent.items()}
    out = {k: int(math.floor(v)) for k, v in exact.items()}
    left = total - sum(out.values())
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[:left]:
        out[k] += 1
    return out


def sample_percentages(counts: Iterable[ManualCount]) -> dict[str, dict[str, float]]:
    """``{sample_id: {cell_type: percent}}`` from validated manual counts (counts converted to percent)."""
    by_sample: dict[str, list[ManualCount]] = {}
    for m in counts:
        by_sample.setdefault(m.sample_id, []).append(m)
    out: dict[str, dict[str, float]] = {}
    for sample, rows in by_sample.items():
        if all(m.count is not None for m in rows):
            out[sample] = counts_to_percent({m.cell_type: int(m.count or 0) for m in rows})
        elif all(m.percent is not None for m in rows):
            out[sample] = {m.cell_type: float(m.percent or 0.0) for m in rows}
        else:
            raise ValueError(f"sample {sample!r} mixes counts and percentages; parse it with parse_counts() first")
    return out


def sample_totals(counts: Iterable[ManualCount]) -> dict[str, int]:
    """``{sample_id: cells counted}``: the given total, else the sum of the counts; samples without either
    (percentages without a total) are left out."""
    out: dict[str, int] = {}
    sums: dict[str, int] = {}
    has_pct: set[str] = set()
    for m in counts:
        if m.total_counted is not None:
            out[m.sample_id] = int(m.total_counted)
        if m.count is not None:
            sums[m.sample_id] = sums.get(m.sample_id, 0) + int(m.count)
        else:
            has_pct.add(m.sample_id)
    for sample, s in sums.items():
        if sample not in has_pct:
            out.setdefault(sample, s)
    return out


def import_manual_counts(
    store: Any,
    source: str | Path | io.TextIOBase,
    *,
    actor: str,
    allowed_classes: Sequence[str] | None = None,
    extra_classes: Sequence[str] = (),
) -> dict[str, int]:
    """Validate a manual-count CSV and save it, replacing each listed sample's previous counts.

    All rows are validated before anything is saved; a sample id not in the store is an error naming it.
    Returns ``{sample_id: classes saved}``.
    """
    counts = read_counts_csv(source, allowed_classes=allowed_classes, entered_by=actor, extra_classes=extra_classes)
    return _save(store, counts, actor=actor)


def save_manual_counts(
    store: Any,
    sample_id: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    actor: str,
    allowed_classes: Sequence[str] | None = None,
    extra_classes: Sequence[str] = (),
) -> list[ManualCount]:
    """Validate and save one sample's counts given as dicts (``cell_type`` and ``count`` or ``percent``, optional
    ``total_counted``); rows with neither a count nor a percent are dropped first (an empty editor row)."""
    kept = []
    for r in rows:
        if str(r.get("cell_type") or "").strip() == "" and all(
                r.get(k) in (None, "") for k in ("count", "percent")):
            continue
        kept.append({**r, "sample_id": sample_id})
    counts = parse_counts(kept, allowed_classes=allowed_classes, entered_by=actor, extra_classes=extra_classes)
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
