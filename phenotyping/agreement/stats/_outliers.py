"""Outlier screening of method-comparison differences: the generalised ESD test (Rosner 1983)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from phenotyping.agreement.stats._base import JsonResult, _labels, _vector


@dataclass(frozen=True)
class OutlierScreen(JsonResult):
    """Generalised extreme studentized deviate test for up to ``max_outliers`` outliers (Rosner 1983).

    ``statistics[i]`` is ``R_{i+1} = max |v - mean| / SD`` after removing the i most extreme values and
    ``critical[i]`` its critical value ``lambda_{i+1}``; ``n_outliers`` is the largest i with ``R_i > lambda_i``
    and ``indices`` (positions in the input, most extreme first) / ``labels`` the flagged values. Screening flags;
    it never removes anything: the caller shows results with and without the flagged samples.
    """

    n: int
    max_outliers: int
    alpha: float
    statistics: tuple[float, ...]
    critical: tuple[float, ...]
    n_outliers: int
    indices: tuple[int, ...]
    labels: tuple[str, ...] | None
    values: tuple[float, ...]


def default_max_outliers(n: int) -> int:
    """Up to 5 % of the samples, at least 1: the screening depth used unless one is given (our choice; CLSI EP09-A3
    suggests screening with the generalised ESD but leaves the number to the laboratory)."""
    return max(1, int(math.floor(0.05 * n)))


def generalized_esd(
    values: Sequence[float] | np.ndarray,
    *,
    max_outliers: int | None = None,
    alpha: float = 0.05,
    labels: Sequence[str] | None = None,
) -> OutlierScreen:
    """Rosner 1983 (Technometrics 25:165): for i = 1..r, ``R_i = max|v - mean|/SD`` over the values left after
    removing the previous extremes, against
    ``lambda_i = (n - i) t_{p, n-i-1} / sqrt((n - i - 1 + t^2)(n - i + 1))`` with ``p = 1 - alpha / (2(n - i + 1))``
    (two-sided). The number of outliers is the largest i with ``R_i > lambda_i``. Needs ``n >= max_outliers + 3``.
    """
    v = _vector(values, "values")
    n = v.size
    r = default_max_outliers(n) if max_outliers is None else int(max_outliers)
    if r < 1:
        raise ValueError(f"max_outliers must be at least 1, got {max_outliers!r}")
    if n < r + 3:
        raise ValueError(f"the generalised ESD test of up to {r} outlier(s) needs at least {r + 3} values, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (e.g. 0.05), got {alpha!r}")
    names = _labels(labels, n)
    left = np.arange(n)
    stat, crit, order = [], [], []
    for i in range(1, r + 1):
        w = v[left]
        sd = float(w.std(ddof=1))
        dev = np.abs(w - w.mean())
        j = int(np.argmax(dev))
        stat.append(float(dev[j] / sd) if sd > 0 else 0.0)
        m = n - i + 1  # values in this step
        t = float(stats.t.ppf(1.0 - alpha / (2.0 * m), m - 2))
        crit.append((m - 1) * t / math.sqrt((m - 2 + t * t) * m))
        order.append(int(left[j]))
        left = np.delete(left, j)
    found = max((i for i in range(1, r + 1) if stat[i - 1] > crit[i - 1]), default=0)
    idx = tuple(order[:found])
    return OutlierScreen(
        n=n, max_outliers=r, alpha=alpha, statistics=tuple(stat), critical=tuple(crit), n_outliers=found,
        indices=idx, labels=None if names is None else tuple(names[i] for i in idx),
        values=tuple(float(v[i]) for i in idx),
    )  # fmt: skip
