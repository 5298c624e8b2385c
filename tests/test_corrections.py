"""The one rule for the corrected %, corrections that refuse to extrapolate, and EM on reviewed (one-hot) cells."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from phenotyping.analysis.differential import em_corrected, em_prior_shift, sample_differential

CLASSES = ("neutrophil", "lymphocyte", "eosinophil")
GOOD = np.array([[90, 8, 2], [6, 92, 2], [3, 2, 25]])  # every class >= 20 validation cells, well separated


def _reviewed_rare_cell_sample(seed: int = 0) -> np.ndarray:
    """30 model-classified cells with no eosinophil probability and one reviewed (one-hot) eosinophil."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([5, 5, 0.01], size=30)
    p[:, 2] = 0.0
    p /= p.sum(axis=1, keepdims=True)
    return np.vstack([p, [0.0, 0.0, 1.0]])


def test_em_bootstrap_of_a_reviewed_rare_cell_does_not_divide_zero_by_zero():
    """A resample that leaves out the only (reviewed, one-hot) eosinophil drives that prior to exactly 0; the left-out
    cell then gave 0/0 ("invalid value in divide"), NaN, and "did not converge". It now takes no part."""
    p = _reviewed_rare_cell_sample()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = em_corrected(p, CLASSES, np.ones(3) / 3, n_bootstrap=200, seed=0)
    assert all(np.isfinite(res.ci_low)) and all(np.isfinite(res.ci_high))
    assert res.ci_low[2] <= res.percent[2] <= res.ci_high[2]
    assert res.ci_low[2] == pytest.approx(0.0, abs=1e-6)  # resamples without the eosinophil estimate none


def test_em_names_a_probability_row_it_cannot_use():
    p = _reviewed_rare_cell_sample()
    p[4] = 0.0
    with pytest.raises(ValueError, match=r"probability rows \[4\]"):
        em_prior_shift(p, np.ones(3) / 3)


def test_the_method_shown_does_not_depend_on_the_bootstrap():
    """Bootstrap off and on show the same correction with the same point estimate (issue 20.4: EM without the
    bootstrap, the adjusted count with it)."""
    p = _reviewed_rare_cell_sample()
    predicted = [CLASSES[i] for i in p.argmax(axis=1)]
    kw = dict(probabilities=p, confusion=GOOD, training_prior=np.ones(3) / 3, seed=0)
    off = sample_differential(predicted, CLASSES, n_bootstrap=0, **kw)
    on = sample_differential(predicted, CLASSES, n_bootstrap=100, **kw)
    assert on.corrected.method == off.corrected.method
    assert off.shown.method == on.shown.method == "em"
    assert on.corrected.percent == pytest.approx(off.corrected.percent)
    assert not any("converge" in n for n in on.notes)


def test_a_class_with_few_validation_cells_refuses_the_correction_and_says_why():
    few = GOOD.copy()
    few[2] = [1, 1, 2]  # 4 eosinophils in the validation split
    predicted = ["neutrophil"] * 50 + ["lymphocyte"] * 45 + ["eosinophil"] * 5
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=100)
    d = sample_differential(predicted, CLASSES, probabilities=p, confusion=few, training_prior=np.ones(3) / 3,
                            n_bootstrap=0)
    assert d.adjusted_count is not None and d.em is not None  # computed, but not shown
    assert d.corrected is None and d.shown.method is None
    from phenotyping.analysis.correction_rule import MIN_VALIDATION_CELLS

    note = d.shown.note
    assert "eosinophil" in note and "only 4 validation cells" in note and f"≥ {MIN_VALIDATION_CELLS}" in note
    assert "raw counts shown" in note and note in d.notes
    assert d.to_dict()["corrected"]["shown"] == {"method": None, "note": note}


def test_an_ill_conditioned_confusion_refuses_rather_than_turn_0_into_100_percent():
    """Two classes the model cannot tell apart: the adjusted count would move every cell to the one never
    predicted. It is refused, naming the pair."""
    confusion = np.array([[50, 50], [48, 52]])
    predicted = ["neutrophil"] * 60 + ["lymphocyte"] * 40
    d = sample_differential(predicted, CLASSES[:2], confusion=confusion, n_bootstrap=20)
    assert d.adjusted_count is not None
    assert d.corrected is None
    assert "neutrophil and lymphocyte" in d.shown.note and "condition number" in d.shown.note
    from phenotyping.analysis.correction_rule import MAX_CONFUSION_CONDITION

    assert np.linalg.cond(confusion / confusion.sum(1, keepdims=True)) > MAX_CONFUSION_CONDITION


def test_a_well_validated_card_is_not_refused():
    from phenotyping.analysis.correction_rule import correction_refusal

    assert correction_refusal(GOOD, CLASSES) is None
    assert correction_refusal(None, CLASSES) is None
