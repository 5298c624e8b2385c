"""Result plumbing and input checks shared by the statistics: ``JsonResult``, ``to_jsonable``, the measures."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any, Literal

import numpy as np

Measure = Literal["absolute", "percent", "ratio"]
MEASURES: tuple[str, ...] = ("absolute", "percent", "ratio")
X_AXIS: dict[str, str] = {"absolute": "mean of the two methods", "percent": "mean of the two methods",
                          "ratio": "geometric mean of the two methods"}  # fmt: skip
"""The Bland-Altman x-axis (``BlandAltmanResult.means``, ``RegressionLimits.at``) for each measure."""


def to_jsonable(obj: Any) -> Any:
    """Convert results (dataclasses, mappings, tuples, numpy scalars) to JSON-safe values; NaN/inf become None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


class JsonResult:
    """Mixin: ``to_dict()`` for frozen result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of this result (NaN/inf as None, tuples as lists)."""
        return to_jsonable(self)


# ----------------------------------------------------------------------------------------------------------------
# input validation


def _vector(values: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of numbers: {e}") from e
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per sample), got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} missing or non-finite value(s) (NaN/inf) at position(s) {bad[:10].tolist()}; "
            "remove those samples from both methods or fill in the value"
        )
    return a


def _paired(
    reference: Any, test: Any, *, names: tuple[str, str] = ("reference", "test"), min_n: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    x = _vector(reference, names[0])
    y = _vector(test, names[1])
    if x.size != y.size:
        raise ValueError(
            f"length mismatch: {names[0]} has {x.size} values but {names[1]} has {y.size}; "
            "pass exactly one value per sample to each method, in the same order"
        )
    if x.size < min_n:
        raise ValueError(f"need at least {min_n} paired values, got n={x.size}")
    return x, y


def _confidence(confidence: float) -> float:
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
    return 1.0 - confidence


def _labels(labels: Sequence[str] | None, n: int) -> tuple[str, ...] | None:
    if labels is None:
        return None
    out = tuple(str(v) for v in labels)
    if len(out) != n:
        raise ValueError(f"labels has {len(out)} entries but there are {n} pairs; give one label per sample")
    return out
