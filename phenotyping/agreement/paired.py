"""Paired model-vs-reference measurements per class, read from the ``agreement`` command's CSV.

One row per pair: ``sample_id, cell_type, reference, test`` as percentages (0-100), or cell counts with
``reference_total``/``test_total``. :func:`phenotyping.agreement.study.compare_class` takes a :class:`PairedClass`'s
fields.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PairedClass", "paired_from_csv"]


@dataclass(frozen=True)
class PairedClass:
    """Paired values of one class from the command-line CSV, as percentages (0-100), one entry per row."""

    cell_type: str
    sample_ids: tuple[str, ...]
    reference: tuple[float, ...]
    test: tuple[float, ...]
    reference_totals: tuple[int, ...] | None
    test_totals: tuple[int, ...] | None

    @property
    def replicates(self) -> bool:
        """Whether a sample has several rows (replicate pairs; repeated-measures Bland-Altman is used)."""
        return len(set(self.sample_ids)) < len(self.sample_ids)


def paired_from_csv(source: str | Path) -> dict[str, PairedClass]:
    """Read the ``agreement`` command's CSV: ``sample_id, cell_type, reference, test`` (percentages), optional
    ``reference_total, test_total``. Where a row has a total, its value is a cell count and is converted to a
    percentage of that total. ``source`` is a path, or CSV text when it contains a newline.
    Several rows of one (sample_id, cell_type) are replicate pairs (see :attr:`PairedClass.replicates`).
    Returns ``{cell_type: PairedClass}`` in order of first appearance.
    """
    if isinstance(source, Path) or "\n" not in source:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"paired CSV not found: {path}")
        text, label = path.read_text(encoding="utf-8-sig"), str(path)
    else:
        text, label = source, "paired CSV"
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [(h or "").strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("sample_id", "cell_type", "reference", "test") if c not in header]
    if missing:
        raise ValueError(f"{label} lacks column(s) {missing}; found {header}; "
                         "expected sample_id, cell_type, reference, test[, reference_total, test_total]")  # fmt: skip
    rows: dict[str, dict[str, list[Any]]] = {}
    for i, raw in enumerate(reader, start=1):
        row = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items()}
        sample, ctype = row.get("sample_id") or "", row.get("cell_type") or ""
        where = f"{label}, row {i} (sample {sample!r}, cell type {ctype!r})"
        if not sample or not ctype:
            raise ValueError(f"{where}: sample_id and cell_type must not be empty")
        entry = rows.setdefault(ctype, {"ids": [], "ref": [], "test": [], "ref_n": [], "test_n": []})
        entry["ids"].append(sample)
        for side in ("reference", "test"):
            value = _float(row.get(side), side, where)
            total_raw = row.get(f"{side}_total")
            total = None
            if total_raw not in (None, ""):
                t = _float(total_raw, f"{side}_total", where)
                if t < 1 or t != int(t):
                    raise ValueError(f"{where}: {side}_total must be a whole number of cells >= 1, got {total_raw!r}")
                total = int(t)
                if value > total:
                    raise ValueError(f"{where}: {side} count {value:g} exceeds {side}_total {total}")
                value = 100.0 * value / total
            elif value > 100:
                raise ValueError(f"{where}: {side} {value:g} is above 100 %; give {side}_total if it is a count")
            key = "ref" if side == "reference" else "test"
            entry[key].append(value)
            entry[f"{key}_n"].append(total)
    if not rows:
        raise ValueError(f"{label} has no data rows")
    return {
        c: PairedClass(
            cell_type=c, sample_ids=tuple(e["ids"]), reference=tuple(e["ref"]), test=tuple(e["test"]),
            reference_totals=tuple(e["ref_n"]) if all(v is not None for v in e["ref_n"]) else None,
            test_totals=tuple(e["test_n"]) if all(v is not None for v in e["test_n"]) else None,
        )  # fmt: skip
        for c, e in rows.items()
    }


def _float(v: Any, what: str, where: str) -> float:
    if v is None or v == "":
        raise ValueError(f"{where}: {what} is empty")
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"{where}: {what} {v!r} is not a number") from None
    if not math.isfinite(f):
        raise ValueError(f"{where}: {what} {v!r} is not finite")
    if f < 0:
        raise ValueError(f"{where}: {what} {v!r} is negative")
    return f
