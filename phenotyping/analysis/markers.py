"""Marker expression per class: median and IQR of each regressed target among a class's cells.

Also the label helpers the differential shares (class list checks, label → index). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


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
