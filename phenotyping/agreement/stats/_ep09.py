"""What a CLSI EP09 method comparison adds to the statistics: acceptance against an allowable difference, and
warnings about the design (too few samples, many ties)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phenotyping.agreement.stats._base import MEASURES, JsonResult, _paired

EP09_MIN_SAMPLES = 40
"""CLSI EP09-A3's minimum number of samples for a method comparison."""
MIN_SAMPLES_FOR_CI = 10
"""Below this many samples the cusum linearity test and the CIs mean little (our threshold)."""
TIED_FRACTION_WARNING = 0.10
"""Warn when more than this fraction of the sample pairs tie in the reference or the test value (our threshold)."""


@dataclass(frozen=True)
class Acceptance(JsonResult):
    """Verdict of one class against the allowable difference ``allowable`` in the units of ``measure``.

    ``absolute``/``percent``: the bias and both limits of agreement must lie within ``[-allowable, +allowable]``;
    ``ratio``: ``allowable`` is a factor above 1 and they must lie within ``[1/allowable, allowable]``.
    ``accepted`` is ``bias_within and limits_within``. Point estimates are judged; ``limits_ci_within`` adds
    whether the outer CI bounds of the limits are inside too (None where the limits have no CI).
    """

    allowable: float
    measure: str
    interval: tuple[float, float]
    bias_within: bool
    limits_within: bool
    limits_ci_within: bool | None
    accepted: bool
    rule: str


def acceptance(
    bias: float,
    loa_lower: float,
    loa_upper: float,
    allowable: float,
    *,
    measure: str = "absolute",
    loa_lower_ci: tuple[float, float] | None = None,
    loa_upper_ci: tuple[float, float] | None = None,
) -> Acceptance:
    """Whether the bias and the limits of agreement lie within the allowable difference (see :class:`Acceptance`)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    a = float(allowable)
    if measure == "ratio":
        if not (a > 1 and math.isfinite(a)):
            raise ValueError(f"with measure='ratio' the allowable difference is a factor above 1 (e.g. 1.2), "
                             f"got {allowable!r}")  # fmt: skip
        lo, hi = 1.0 / a, a
    else:
        if not (a > 0 and math.isfinite(a)):
            raise ValueError(f"the allowable difference must be a positive number, got {allowable!r}")
        lo, hi = -a, a

    def inside(v: float) -> bool:
        return lo <= v <= hi

    bias_in = inside(bias)
    limits_in = inside(loa_lower) and inside(loa_upper)
    ci_in = None
    if loa_lower_ci is not None and loa_upper_ci is not None:
        outer = (loa_lower_ci[0], loa_upper_ci[1])
        if all(v is not None and math.isfinite(v) for v in outer):
            ci_in = inside(outer[0]) and inside(outer[1])
    return Acceptance(allowable=a, measure=measure, interval=(lo, hi), bias_within=bool(bias_in),
                      limits_within=bool(limits_in), limits_ci_within=ci_in, accepted=bool(bias_in and limits_in),
                      rule=f"bias and both limits of agreement within [{lo:g}, {hi:g}]")  # fmt: skip


def tied_fraction(reference: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray) -> float:
    """Fraction of the n(n-1)/2 sample pairs whose reference values or test values are equal (ties make
    Passing-Bablok's pairwise slopes 0, infinite or undefined)."""
    x, y = _paired(reference, test, min_n=2)
    i, j = np.triu_indices(x.size, 1)
    return float(np.mean((x[i] == x[j]) | (y[i] == y[j])))


def design_warnings(reference: Sequence[float] | np.ndarray, test: Sequence[float] | np.ndarray) -> tuple[str, ...]:
    """Warnings about one class's design (one value per sample): fewer than :data:`EP09_MIN_SAMPLES` samples,
    fewer than :data:`MIN_SAMPLES_FOR_CI`, and more than :data:`TIED_FRACTION_WARNING` tied sample pairs."""
    x, y = np.asarray(reference, dtype=float), np.asarray(test, dtype=float)
    n = x.size
    out = []
    if n < MIN_SAMPLES_FOR_CI:
        out.append(f"only {n} samples (< {MIN_SAMPLES_FOR_CI}): the cusum linearity test and the confidence "
                   "intervals mean little")  # fmt: skip
    if n < EP09_MIN_SAMPLES:
        out.append(f"{n} samples: fewer than the {EP09_MIN_SAMPLES} CLSI EP09 requires for a method comparison")
    if n >= 2:
        ties = tied_fraction(x, y)
        if ties > TIED_FRACTION_WARNING:
            out.append(f"{100 * ties:.0f} % of the sample pairs tie in the reference or the test value (> "
                       f"{100 * TIED_FRACTION_WARNING:.0f} %): Passing-Bablok and its CI are unreliable; report more "
                       "digits or count more cells")  # fmt: skip
    return tuple(out)
