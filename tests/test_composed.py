"""Composed-sample agreement: a perfect classifier agrees up to counting error; a biased one shows its bias."""

from __future__ import annotations

import numpy as np
import pytest

from phenotyping.agreement.composed import composed_study, markdown_table


def pool(n=600, flip=0.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    pred = y.copy()
    flips = (y == 0) & (rng.random(n) < flip)  # some class-0 cells predicted as class 1
    pred[flips] = 1
    probs = np.full((n, 3), 0.025)
    probs[np.arange(n), pred] = 0.95
    card = {"id": "toy", "validation": {"confusion": np.diag([100, 50, 20]).tolist()},
            "training": {"class_proportions": {"a": 0.6, "b": 0.3, "c": 0.1}},
            "calibration": {"unidentified_threshold": 0.5}}
    return {"classes": ["a", "b", "c"], "card": card, "y": y, "probs": probs}


def test_perfect_classifier_agrees_within_counting_error():
    r = composed_study(pool(), n_samples=30, cells_per_sample=400, manual_cells=200, seed=1)
    raw = r["comparisons"]["raw"]
    for c in ("a", "b", "c"):
        assert abs(raw[c]["bias"]) < 1.5
        halfwidth = (raw[c]["loa_upper"] - raw[c]["loa_lower"]) / 2
        # only the manual count's sampling error separates the two; LoA ~ the counting-only LoA
        assert halfwidth == pytest.approx(raw[c]["counting_loa_halfwidth"], rel=0.35)


def test_misclassification_shows_as_bias():
    r = composed_study(pool(flip=0.2), n_samples=30, seed=2)
    assert r["comparisons"]["raw"]["a"]["bias"] < -8  # 20 % of ~60 % moved to b
    assert r["comparisons"]["raw"]["b"]["bias"] > 8
    assert "| a | raw |" in markdown_table(r)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="manual_cells"):
        composed_study(pool(), cells_per_sample=100, manual_cells=200)
