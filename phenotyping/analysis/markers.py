"""Marker expression per class: median and IQR of each regressed target among a class's cells.

Marker values are *predicted* from the label-free image by the model's regression head, in the units of its training
targets: a target spec in the card's ``targets`` list may carry a ``unit`` (default :data:`DEFAULT_UNIT`), read by
:func:`target_units`. Displays round them with :func:`significant` (three significant figures: a regressed
intensity is not known to six digits).

Also the label helpers the differential shares (class list checks, label → index). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import math
from typing import Any

import numpy as np

#: The unit of a target whose spec in the card names none: arbitrary units (e.g. a fluorescence intensity).
DEFAULT_UNIT = "a.u."

#: Significant figures a marker value is shown with.
MARKER_SIGNIFICANT_FIGURES = 3


def target_units(card: Mapping[str, Any] | None) -> dict[str, str]:
    """Target name → unit from a card's ``targets`` list (``{"name", "unit"?, ...}`` specs); missing units are
    :data:`DEFAULT_UNIT`. A card without targets gives ``{}``."""
    out: dict[str, str] = {}
    for spec in (card or {}).get("targets") or []:
        if isinstance(spec, Mapping) and spec.get("name"):
            unit = spec.get("unit")
            out[str(spec["name"])] = str(unit).strip() if isinstance(unit, str) and unit.strip() else DEFAULT_UNIT
        elif isinstance(spec, str):
            out[spec] = DEFAULT_UNIT
    return out


def significant(x: float | None, figures: int = MARKER_SIGNIFICANT_FIGURES) -> float | None:
    """``x`` rounded to ``figures`` significant figures (296961.8047 → 297000.0); None and NaN give None."""
    if x is None or not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, figures - 1 - int(math.floor(math.log10(abs(x)))))


def format_marker(x: float | None) -> str:
    """A marker value as text to :data:`MARKER_SIGNIFICANT_FIGURES` significant figures: ``297,000``, ``12.3``,
    ``0.00123``; "—" for a missing value."""
    v = significant(x)
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 10 ** (MARKER_SIGNIFICANT_FIGURES - 1) else f"{v:.{MARKER_SIGNIFICANT_FIGURES}g}"


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The classes as a tuple; raises ValueError when empty or duplicated."""
    out = tuple(classes)
    if not out:
        raise ValueError("no classes given; pass the model's class names")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate class names in {list(out)}")
    return out


def label_indices(labels: Sequence[str], classes: tuple[str, ...]) -> np.ndarray:
    """Index of each label in ``classes``; raises ValueError naming a label that is not a class."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.fromiter((index[lab] for lab in labels), dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} is not one of the model's classes {list(classes)}") from None


@dataclass(frozen=True)
class MarkerSummary:
    """Distribution of one regressed target among the cells predicted as one class (NaNs skipped)."""

    label: str
    target: str
    n: int
    median: float
    q1: float
    q3: float


def marker_expression(
    predicted: Sequence[str],
    targets: Mapping[str, Sequence[float]],
    classes: Sequence[str],
) -> tuple[MarkerSummary, ...]:
    """Median and IQR (25th, 75th percentile, linear interpolation) of each target per predicted class.

    ``targets`` maps a target name to one value per cell, aligned with ``predicted``. A class with no finite value
    is reported with ``n = 0`` and NaN statistics.
    """
    classes = check_classes(classes)
    idx = label_indices(predicted, classes)
    out: list[MarkerSummary] = []
    for name, values in targets.items():
        v = np.asarray(values, dtype=float)
        if v.shape != idx.shape:
            raise ValueError(f"target {name!r} has {v.size} values for {idx.size} cells; give one value per cell")
        for i, c in enumerate(classes):
            sel = v[(idx == i) & np.isfinite(v)]
            if sel.size == 0:
                out.append(MarkerSummary(c, name, 0, float("nan"), float("nan"), float("nan")))
                continue
            q1, med, q3 = np.percentile(sel, [25, 50, 75])
            out.append(MarkerSummary(c, name, int(sel.size), float(med), float(q1), float(q3)))
    return tuple(out)
