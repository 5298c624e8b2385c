"""Paired model-vs-reference measurements per class, read from the ``agreement`` command's CSV.

One row per pair: ``sample_id, cell_type, reference, test`` as percentages (0-100), or cell counts with
``reference_total``/``test_total``; with ``scale='absolute'`` the values are quantities in any unit (e.g. cells/uL)
and totals are refused. Replicate pairs of a sample carry an explicit ``replicate`` column.
:func:`phenotyping.agreement.class_agreement.compare_class` takes a :class:`PairedClass`'s fields.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PairedClass", "paired_from_csv"]

_REQUIRED = ("sample_id", "cell_type", "reference", "test")
_EXPECTED = "sample_id, cell_type, reference, test[, replicate][, reference_total, test_total]"


@dataclass(frozen=True)
class PairedClass:
    """Paired values of one class from the command-line CSV, one entry per row: percentages (0-100) for
    ``scale='percent'``, the file's own units for ``scale='absolute'``. ``replicate_ids`` is the ``replicate``
    column's value per row (None when the file has no such column)."""

    cell_type: str
    sample_ids: tuple[str, ...]
    reference: tuple[float, ...]
    test: tuple[float, ...]
    reference_totals: tuple[int, ...] | None
    test_totals: tuple[int, ...] | None
    replicate_ids: tuple[str, ...] | None = None
    scale: str = "percent"

    @property
    def replicates(self) -> bool:
        """Whether a sample has several replicate rows (repeated-measures Bland-Altman is used)."""
        return len(set(self.sample_ids)) < len(self.sample_ids)


def _read(source: str | Path) -> tuple[str, str]:
    if isinstance(source, Path) or "\n" not in source:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"paired CSV not found: {path}")
        return path.read_text(encoding="utf-8-sig"), str(path)
    return source, "paired CSV"


def _rows(text: str, label: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [(h or "").strip() for h in (reader.fieldnames or [])]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{label} lacks column(s) {missing}; found {header}; expected {_EXPECTED}")
    rows = []
    for i, raw in enumerate(reader, start=1):
        row = {(k or "").strip(): (v.strip() if isinstance(v, str) else (v or "")) for k, v in raw.items()}
        if not row.get("sample_id") or not row.get("cell_type"):
            raise ValueError(f"{label}, row {i} (sample {row.get('sample_id')!r}, cell type {row.get('cell_type')!r}): "
                             "sample_id and cell_type must not be empty")  # fmt: skip
        rows.append((i, row))
    if not rows:
        raise ValueError(f"{label} has no data rows")
    return header, rows


def _rows_list(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:10])
    return shown + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")


def _check_totals(rows: list[tuple[int, dict[str, str]]], header: list[str], label: str, scale: str) -> None:
    """Totals on every row of a side or on none: a mix would put counts and percentages side by side."""
    for side in ("reference", "test"):
        col = f"{side}_total"
        if col not in header:
            continue
        given = [i for i, r in rows if r.get(col)]
        if scale == "absolute" and given:
            raise ValueError(f"{label}: rows {_rows_list(given)} give {col}, but --scale absolute means the values "
                             "are quantities (e.g. cells/uL), not counts out of a total; remove the column or use "
                             "--scale percent")  # fmt: skip
        lacking = [i for i, r in rows if not r.get(col)]
        if given and lacking:
            raise ValueError(f"{label}: {col} is given on rows {_rows_list(given)} but empty on rows "
                             f"{_rows_list(lacking)}; a file mixes counts and percentages that way. Give every row "
                             f"its {col} (values as counts), or none (values as percentages)")  # fmt: skip


def _check_duplicates(rows: list[tuple[int, dict[str, str]]], header: list[str], label: str) -> None:
    """Identical rows are an error; replicates need distinct values in a ``replicate`` column."""
    seen: dict[tuple[str, str, str], tuple[int, dict[str, str]]] = {}
    has_rep = "replicate" in header
    for i, row in rows:
        key = (row["cell_type"], row["sample_id"], row.get("replicate", ""))
        if key not in seen:
            seen[key] = (i, row)
            continue
        first, other = seen[key]
        what = f"sample {key[1]!r}, cell type {key[0]!r}" + (f", replicate {key[2]!r}" if has_rep else "")
        if other == row:
            raise ValueError(f"{label}: rows {first} and {i} are identical ({what}); a row given twice is not a "
                             "replicate. Remove the duplicate; replicate pairs need their own values in a "
                             "'replicate' column (1, 2, ...)")  # fmt: skip
        hint = ("give each replicate its own value in the 'replicate' column" if has_rep else
                "replicate pairs of a sample need a 'replicate' column (1, 2, ...); otherwise remove one row")
        raise ValueError(f"{label}: rows {first} and {i} both give {what}; {hint}")


def paired_from_csv(source: str | Path, *, scale: str = "percent") -> dict[str, PairedClass]:
    """Read the ``agreement`` command's CSV: ``sample_id, cell_type, reference, test``, optional ``replicate``
    and ``reference_total, test_total``. ``source`` is a path, or CSV text when it contains a newline.

    ``scale='percent'``: values are percentages (0-100); where a side has totals (on every row, or none: a mix is
    refused, naming the rows), its values are cell counts converted to percentages of the totals.
    ``scale='absolute'``: values are quantities in the file's unit (no upper bound; totals refused). Rows of one
    (sample_id, cell_type) are replicate pairs only with distinct values in a ``replicate`` column; identical
    rows, and repeated rows without that column, are refused naming the rows. Returns ``{cell_type: PairedClass}``
    in order of first appearance.
    """
    if scale not in ("percent", "absolute"):
        raise ValueError(f"scale must be 'percent' or 'absolute', got {scale!r}")
    text, label = _read(source)
    header, rows = _rows(text, label)
    _check_totals(rows, header, label, scale)
    _check_duplicates(rows, header, label)
    out: dict[str, dict[str, list[Any]]] = {}
    for i, row in rows:
        where = f"{label}, row {i} (sample {row['sample_id']!r}, cell type {row['cell_type']!r})"
        e = out.setdefault(row["cell_type"], {"ids": [], "rep": [], "reference": [], "test": [],
                                              "reference_n": [], "test_n": []})  # fmt: skip
        e["ids"].append(row["sample_id"])
        e["rep"].append(row.get("replicate", ""))
        for side in ("reference", "test"):
            value, total = _value(row, side, where, scale)
            e[side].append(value)
            e[f"{side}_n"].append(total)
    has_rep = "replicate" in header
    return {
        c: PairedClass(
            cell_type=c, sample_ids=tuple(e["ids"]), reference=tuple(e["reference"]), test=tuple(e["test"]),
            reference_totals=tuple(e["reference_n"]) if all(v is not None for v in e["reference_n"]) else None,
            test_totals=tuple(e["test_n"]) if all(v is not None for v in e["test_n"]) else None,
            replicate_ids=tuple(e["rep"]) if has_rep else None, scale=scale,
        )  # fmt: skip
        for c, e in out.items()
    }


def _value(row: dict[str, str], side: str, where: str, scale: str) -> tuple[float, int | None]:
    """``(value, total)`` of one side of a row; counts become percentages of their total."""
    value = _float(row.get(side), side, where)
    total_raw = row.get(f"{side}_total")
    if total_raw:
        t = _float(total_raw, f"{side}_total", where)
        if t < 1 or t != int(t):
            raise ValueError(f"{where}: {side}_total must be a whole number of cells >= 1, got {total_raw!r}")
        if value > t:
            raise ValueError(f"{where}: {side} count {value:g} exceeds {side}_total {int(t)}")
        return 100.0 * value / t, int(t)
    if scale == "percent" and value > 100:
        raise ValueError(f"{where}: {side} {value:g} is above 100 %; give {side}_total if it is a count, or "
                         "--scale absolute if it is a quantity such as cells/uL")  # fmt: skip
    return value, None


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
