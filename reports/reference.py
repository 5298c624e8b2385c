"""The laboratory's reference intervals for the differential, read from the file named by the
``LEUKO_REFERENCE_INTERVALS`` setting (``Settings.reference_intervals``).

File formats (one row per specimen and class; values 0–100 in the unit the report gives the class: % of the
specimen's counted cells for a class its differential counts — leukocytes in blood, BAL cells in BALF, as the model
card's ``specimens`` rule says —, cells per 100 counted cells for a class it reports per 100 leukocytes, e.g.
erythroblasts, and % of counted and noted cells for a noted class, e.g. BALF epithelial cells; a class reported only
as a number of cells, e.g. platelets, takes no interval):

* CSV with the header ``specimen,class,low,high``::

      specimen,class,low,high
      blood,neutrophil,40,75
      balf,macrophage,80,95

* JSON: a list of objects with the same four keys, ``[{"specimen": "blood", "class": "neutrophil", "low": 40,
  "high": 75}, …]``.

``specimen`` is ``blood`` or ``balf``. A class name matches the model's class label ignoring case and surrounding
spaces; a class without a row has no interval (the report says so). Every problem is an error naming the file and
the row: a lab that configured intervals must never get a report silently without them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPECIMENS = ("blood", "balf")
COLUMNS = ("specimen", "class", "low", "high")


class ReferenceIntervalError(ValueError):
    """The reference-interval file cannot be used; the message names the file, the row and the fix."""


@dataclass(frozen=True)
class ReferenceIntervals:
    """Validated intervals: ``intervals[specimen][class key] = (low %, high %)``; keys are casefolded labels."""

    path: str
    sha256: str
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # class key -> the name as the file writes it

    def for_specimen(self, specimen: str) -> dict[str, tuple[float, float]]:
        """``{class key: (low, high)}`` for one specimen (empty when the file has no row for it)."""
        return dict(self.intervals.get(specimen, {}))

    def lookup(self, specimen: str, label: str) -> tuple[float, float] | None:
        return self.intervals.get(specimen, {}).get(class_key(label))

    def unmatched(self, specimen: str, labels: list[str]) -> list[str]:
        """Class names of the file (for ``specimen``) that match none of ``labels`` (as written in the file)."""
        keys = {class_key(lab) for lab in labels}
        return [self.names[specimen][k] for k in self.intervals.get(specimen, {}) if k not in keys]

    @property
    def source(self) -> str:
        """What the report prints about where the intervals come from: file name and the start of its sha256."""
        return f"{Path(self.path).name} (sha256 {self.sha256[:12]})"


def class_key(label: str) -> str:
    return " ".join(label.split()).casefold()


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise ReferenceIntervalError(f"{where}: {what} is empty; give a percentage between 0 and 100")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ReferenceIntervalError(f"{where}: {what} {value!r} is not a number; give a percentage between 0 and "
                                     "100 (no % sign)") from None
    if not math.isfinite(x) or not 0.0 <= x <= 100.0:
        raise ReferenceIntervalError(f"{where}: {what} {value!r} is outside 0–100; intervals are percentages of "
                                     "counted cells (or cells per 100 counted cells)")
    return x


def _rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` pairs from CSV or JSON text; ``where`` names the file and the row for error messages."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ReferenceIntervalError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected a list of "
                                         '{"specimen", "class", "low", "high"} objects') from e
        if not isinstance(data, list):
            raise ReferenceIntervalError(f"{path}: expected a JSON list of {{\"specimen\", \"class\", \"low\", "
                                         f"\"high\"}} objects, got a {type(data).__name__}")
        out = []
        for i, row in enumerate(data, 1):
            where = f"{path}, entry {i}"
            if not isinstance(row, dict):
                raise ReferenceIntervalError(f"{where}: expected an object with keys {list(COLUMNS)}, got {row!r}")
            out.append((where, row))
        return out
    if path.suffix.lower() != ".csv":
        raise ReferenceIntervalError(f"{path}: unknown file type {path.suffix!r}; use a .csv or .json file")
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [(h or "").strip().lower() for h in reader.fieldnames or []]
    if sorted(header) != sorted(COLUMNS):
        raise ReferenceIntervalError(f"{path}: the header must be exactly {','.join(COLUMNS)}; found "
                                     f"{','.join(header) or '(empty file)'}")
    out = []
    for i, raw in enumerate(reader, 2):  # line 1 is the header
        if None in raw:
            raise ReferenceIntervalError(f"{path}, line {i}: more values than the {len(COLUMNS)} columns")
        out.append((f"{path}, line {i}", {(k or "").strip().lower(): v for k, v in raw.items()}))
    return out


def parse_reference_intervals(path: Path, data: bytes) -> ReferenceIntervals:
    """Validate the bytes of a reference-interval file (see the module docstring for the formats)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReferenceIntervalError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    names: dict[str, dict[str, str]] = {}
    seen: dict[tuple[str, str], str] = {}
    rows = _rows(path, text)
    for where, row in rows:
        extra = sorted(set(row) - set(COLUMNS))
        missing = [c for c in COLUMNS if c not in row]
        if extra or missing:
            raise ReferenceIntervalError(f"{where}: " + "; ".join(
                ([f"unknown key(s) {extra}"] if extra else []) + ([f"missing {missing}"] if missing else []))
                + f"; each row has exactly {list(COLUMNS)}")
        specimen = str(row["specimen"] or "").strip().lower()
        if specimen not in SPECIMENS:
            raise ReferenceIntervalError(f"{where}: specimen {row['specimen']!r} is not one of {list(SPECIMENS)}")
        name = " ".join(str(row["class"] or "").split())
        if not name:
            raise ReferenceIntervalError(f"{where}: class is empty; give the model's class name, e.g. 'neutrophil'")
        low, high = _number(row["low"], "low", where), _number(row["high"], "high", where)
        if low > high:
            raise ReferenceIntervalError(f"{where}: low {low:g} is above high {high:g}; swap them")
        key = class_key(name)
        if (specimen, key) in seen:
            raise ReferenceIntervalError(f"{where}: a second interval for {specimen} {name!r} (first at "
                                         f"{seen[(specimen, key)].rsplit(', ', 1)[-1]}); keep one")
        seen[(specimen, key)] = where
        intervals.setdefault(specimen, {})[key] = (low, high)
        names.setdefault(specimen, {})[key] = name
    if not rows:
        raise ReferenceIntervalError(f"{path}: no intervals in the file; add rows, or unset "
                                     "LEUKO_REFERENCE_INTERVALS to report without reference intervals")
    return ReferenceIntervals(path=str(path), sha256=hashlib.sha256(data).hexdigest(), intervals=intervals,
                              names=names)


def load_reference_intervals(path: str | Path) -> ReferenceIntervals:
    """Read and validate the reference-interval file at ``path``.

    Raises:
        ReferenceIntervalError: missing file, wrong format or a bad row (the message names file and row).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReferenceIntervalError(f"reference-interval file {path} (setting LEUKO_REFERENCE_INTERVALS) does not "
                                     "exist; fix the path or unset the setting") from None
    except OSError as e:
        raise ReferenceIntervalError(f"cannot read reference-interval file {path}: {e.strerror}") from e
    return parse_reference_intervals(path, data)


def configured_intervals(settings: Any) -> ReferenceIntervals | None:
    """The intervals named by ``settings.reference_intervals``, or None when the setting is empty."""
    path = getattr(settings, "reference_intervals", None)
    if path is None or str(path).strip() == "":
        return None
    return load_reference_intervals(path)
