"""The one rule for which prior-shift correction a sample shows as "corrected %", and when none may be shown.

Review, the report context, the PDF, FHIR and studies all read :attr:`SampleDifferential.corrected`, which is
:func:`choose_correction` applied once, when the differential is computed. The choice depends only on the point
estimates (never on whether bootstrap CIs were requested), so switching the bootstrap on cannot change the method:

1. refused (raw counts shown) when the model card's validation cannot support a correction:
   a class with fewer than :data:`MIN_VALIDATION_CELLS` validation cells, or a conditional confusion matrix whose
   condition number exceeds :data:`MAX_CONFUSION_CONDITION`;
2. else EM (Saerens et al. 2002) when its point estimate was computed;
3. else the adjusted count (Forman 2008);
4. else none (raw counts shown).

Every case but EM gives a clinician-readable note naming the class and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: A class needs this many validation cells before its misclassification rates may correct a count: with fewer,
#: even an error-free validation leaves the 95 % Clopper-Pearson upper bound of its error rate above 1 in 6
#: (0 errors in 20 cells: 16.8 %), so the correction would rest on rates that are not known.
MIN_VALIDATION_CELLS = 20

#: The adjusted count solves ``C^T p = q``; a relative error in the observed fractions ``q`` (sampling error of a
#: 200-cell count is ~10-30 % of a small class) is amplified up to ``cond(C)`` times in ``p``. Above 10 the amplified
#: error exceeds the quantity itself, and classes the model cannot tell apart swap their shares (a raw 0 % becoming
#: 100 %). EM fits the same mixture and is refused with it.
MAX_CONFUSION_CONDITION = 10.0

EM = "em"
ADJUSTED_COUNT = "adjusted_count"


@dataclass(frozen=True)
class ChosenCorrection:
    """What "corrected %" shows: ``method`` ("em", "adjusted_count", or None when the raw counts are shown), the
    composition (a :class:`phenotyping.analysis.differential.CorrectedComposition`, or None) and a note for the
    reader (None when EM is shown without caveat)."""

    method: str | None
    composition: Any | None
    note: str | None = None


def correction_refusal(confusion: np.ndarray | None, classes: Sequence[str]) -> str | None:
    """Why the card's validation confusion (rows = true class, counts) cannot support a correction, or None.

    Checks every class the correction is solved over; the first reason found is returned, worded for a clinician.
    """
    if confusion is None:
        return None
    conf = np.asarray(confusion, dtype=float)
    if conf.shape != (len(classes), len(classes)):
        return None  # a shape mismatch is reported where the matrix is read (no correction is computed)
    cells = conf.sum(axis=1)
    few = [(c, int(round(n))) for c, n in zip(classes, cells) if n < MIN_VALIDATION_CELLS]
    if few:
        detail = ", ".join(f"{c}: only {n} validation cell{'s' if n != 1 else ''}" for c, n in few)
        return (f"Correction not applied for {', '.join(c for c, _ in few)} ({detail} in the model card; need "
                f"≥ {MIN_VALIDATION_CELLS}): the model's error rates for that class are not known well enough to "
                "correct the count; raw counts shown.")
    cond = float(np.linalg.cond(conf / cells[:, None]))
    if not np.isfinite(cond) or cond > MAX_CONFUSION_CONDITION:
        pair = _most_confused(conf / cells[:, None], classes)
        return (f"Correction not applied: the model confuses {pair} too often in its validation (confusion "
                f"matrix condition number {'∞' if not np.isfinite(cond) else f'{cond:.0f}'} > "
                f"{MAX_CONFUSION_CONDITION:g}), so a correction would trade cells between them arbitrarily; raw "
                "counts shown.")
    return None


def _most_confused(cond: np.ndarray, classes: Sequence[str]) -> str:
    """The two classes whose rows of the conditional confusion are closest (the least separable pair)."""
    best, pair = np.inf, (0, 1)
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            d = float(np.abs(cond[i] - cond[j]).sum())
            if d < best:
                best, pair = d, (i, j)
    return f"{classes[pair[0]]} and {classes[pair[1]]}"


def choose_correction(em: Any | None, adjusted_count: Any | None, *, refusal: str | None = None,
                      em_failure: str | None = None) -> ChosenCorrection:
    """Apply the rule of this module's docstring. ``em_failure`` is why EM could not be computed (clinician
    wording), which becomes the note when the adjusted count or the raw counts are shown instead."""
    if refusal is not None:
        return ChosenCorrection(None, None, refusal)
    if em is not None:
        return ChosenCorrection(EM, em, None)
    if adjusted_count is not None:
        note = None if em_failure is None else f"{em_failure} The adjusted count is shown as the corrected %."
        return ChosenCorrection(ADJUSTED_COUNT, adjusted_count, note)
    return ChosenCorrection(None, None, None if em_failure is None else f"{em_failure} Raw counts shown.")
