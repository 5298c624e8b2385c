"""Differential counts, exact intervals, prior-shift correction and marker summaries on known inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from phenotyping.analysis.differential import (
    EMNotConverged,
    MIN_CELLS_FOR_DIFFERENTIAL,
    adjusted_count,
    adjusted_count_proportions,
    clopper_pearson,
    conditional_confusion,
    differential,
    em_corrected,
    em_prior_shift,
    marker_expression,
    sample_differential,
)

CLASSES = ("neutrophil", "lymphocyte", "monocyte")


# Newcombe 1998, Stat. Med. 17:857, Table I, method 5 (Clopper-Pearson exact), to 4 decimals.
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(81, 263, 0.2527, 0.3676), (15, 148, 0.0578, 0.1617), (0, 20, 0.0, 0.1684), (1, 29, 0.0009, 0.1776)],
)
def test_clopper_pearson_matches_newcombe_1998(k, n, low, high):
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


@pytest.mark.parametrize("n", [1, 10, 200])
def test_clopper_pearson_edges_have_closed_form(n):
    # 0/n: upper = 1 - (alpha/2)^(1/n); n/n is its mirror image.
    upper = 1 - 0.025 ** (1 / n)
    assert clopper_pearson(0, n) == (0.0, pytest.approx(upper))
    assert clopper_pearson(n, n) == (pytest.approx(1 - upper), 1.0)


def test_clopper_pearson_rejects_bad_input():
    with pytest.raises(ValueError, match="k=5"):
        clopper_pearson(5, 3)
    with pytest.raises(ValueError, match="n=0"):
        clopper_pearson(0, 0)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 3, confidence=95)


def test_differential_counts_percentages_and_intervals():
    labels = ["neutrophil"] * 130 + ["lymphocyte"] * 60 + ["monocyte"] * 10
    d = differential(labels, CLASSES)
    assert d.n_counted == 200
    assert [r.count for r in d.classes] == [130, 60, 10]
    assert sum(r.percent for r in d.classes) == pytest.approx(100.0)
    assert d.percent("monocyte") == pytest.approx(5.0)
    for r in d.classes:
        assert r.ci_low < r.percent < r.ci_high
        lo, hi = clopper_pearson(r.count, 200)
        assert (r.ci_low, r.ci_high) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
    assert d.warnings == ()
    json.dumps(d.to_dict())  # serialisable as is


def test_differential_warns_below_200_cells_and_reports_absent_classes():
    d = differential(["neutrophil"] * 50, CLASSES)
    assert MIN_CELLS_FOR_DIFFERENTIAL == 200
    assert any("CLSI H20-A2" in w for w in d.warnings)
    mono = d.classes[2]
    assert (mono.count, mono.percent, mono.ci_low) == (0, 0.0, 0.0)
    assert mono.ci_high > 5.0  # 0/50 cannot exclude a few percent


def test_differential_rejects_unknown_label_and_names_classes():
    with pytest.raises(ValueError, match="basophil.*neutrophil"):
        differential(["basophil"], CLASSES)
    with pytest.raises(KeyError, match="eosinophil"):
        differential(["neutrophil"], CLASSES).percent("eosinophil")


def test_empty_differential_is_explicit():
    d = differential([], CLASSES)
    assert d.n_counted == 0 and any("empty" in w for w in d.warnings)


# ---- prior shift ----------------------------------------------------------------------------------------------

CONFUSION = np.array([[90, 8, 2], [10, 85, 5], [15, 5, 80]])  # rows: true, columns: predicted


def test_adjusted_count_recovers_known_composition_exactly_in_expectation():
    cond = conditional_confusion(CONFUSION)
    truth = np.array([0.2, 0.7, 0.1])
    observed = cond.T @ truth  # what classify-and-count would see
    assert not np.allclose(observed, truth)  # the raw count is biased
    assert adjusted_count_proportions(observed, cond) == pytest.approx(truth, abs=1e-9)


def test_adjusted_count_clips_to_simplex():
    cond = conditional_confusion(CONFUSION)
    # A predicted fraction outside the image of C^T (no monocyte predictions at all).
    p = adjusted_count_proportions(np.array([0.3, 0.7, 0.0]), cond)
    assert (p >= 0).all() and p.sum() == pytest.approx(1.0)


def test_adjusted_count_on_a_simulated_sample_covers_the_truth():
    rng = np.random.default_rng(1)
    cond = conditional_confusion(CONFUSION)
    truth = np.array([0.2, 0.7, 0.1])
    true_idx = rng.choice(3, size=4000, p=truth)
    pred_idx = np.array([rng.choice(3, p=cond[t]) for t in true_idx])
    predicted = [CLASSES[i] for i in pred_idx]
    res = adjusted_count(predicted, CLASSES, CONFUSION * 10, n_bootstrap=200, seed=3)
    raw = np.bincount(pred_idx, minlength=3) / pred_idx.size
    est = np.array(res.percent) / 100
    assert np.abs(est - truth).max() < np.abs(raw - truth).max()
    for t, lo, hi in zip(truth * 100, res.ci_low, res.ci_high):
        assert lo <= t <= hi
    again = adjusted_count(predicted, CLASSES, CONFUSION * 10, n_bootstrap=200, seed=3)
    assert again.ci_low == res.ci_low  # seeded


def test_conditional_confusion_rejects_empty_row():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        conditional_confusion(np.array([[5, 0], [0, 0]]))


def _calibrated_posteriors(rng, prior_train, prior_test, n, sep=1.5):
    """Posteriors that are exactly calibrated under ``prior_train`` for 1-D Gaussian classes."""
    means = np.arange(len(prior_train)) * sep
    y = rng.choice(len(prior_test), size=n, p=prior_test)
    x = rng.normal(means[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)  # (N, K), p(x|y) up to a constant
    post = lik * prior_train
    return post / post.sum(axis=1, keepdims=True), y


def test_em_recovers_a_shifted_prior():
    rng = np.random.default_rng(0)
    train = np.array([1 / 3, 1 / 3, 1 / 3])
    test = np.array([0.6, 0.3, 0.1])
    post, y = _calibrated_posteriors(rng, train, test, 20000)
    naive = np.bincount(post.argmax(axis=1), minlength=3) / len(y)
    prior, iters = em_prior_shift(post, train)
    assert prior.sum() == pytest.approx(1.0)
    assert prior == pytest.approx(test, abs=0.02)
    assert np.abs(prior - test).max() < np.abs(naive - test).max()
    assert iters > 1


def test_em_is_identity_when_no_shift():
    rng = np.random.default_rng(2)
    train = np.array([0.5, 0.3, 0.2])
    post, _ = _calibrated_posteriors(rng, train, train, 20000)
    prior, _ = em_prior_shift(post, train)
    assert prior == pytest.approx(train, abs=0.02)


def test_em_corrected_bootstrap_interval_covers_truth():
    rng = np.random.default_rng(4)
    train = np.array([1 / 3, 1 / 3, 1 / 3])
    test = np.array([0.15, 0.25, 0.6])
    post, _ = _calibrated_posteriors(rng, train, test, 3000, sep=2.5)
    res = em_corrected(post, CLASSES, train, n_bootstrap=100, seed=0)
    for t, p, lo, hi in zip(test * 100, res.percent, res.ci_low, res.ci_high):
        assert lo <= p <= hi
        assert lo <= t <= hi
    assert res.to_dict()["method"].startswith("EM")


def test_em_raises_when_not_converged():
    rng = np.random.default_rng(0)
    post, _ = _calibrated_posteriors(rng, np.ones(3) / 3, np.array([0.8, 0.1, 0.1]), 500)
    with pytest.raises(EMNotConverged, match="did not converge in 1 iterations"):
        em_prior_shift(post, np.ones(3) / 3, max_iter=1)


def test_sample_differential_keeps_raw_when_em_fails():
    rng = np.random.default_rng(0)
    post, _ = _calibrated_posteriors(rng, np.ones(3) / 3, np.array([0.8, 0.1, 0.1]), 300)
    predicted = [CLASSES[i] for i in post.argmax(1)]
    from unittest import mock

    with mock.patch("phenotyping.analysis.differential.em_corrected", side_effect=EMNotConverged("slow")):
        s = sample_differential(predicted, CLASSES, probabilities=post, training_prior=np.ones(3) / 3, n_bootstrap=5)
    assert s.em is None and s.raw.n_counted == 300
    assert any("Corrected % by EM not available" in n and "did not" in n for n in s.notes)
    assert not any("max_iter" in n or "iterations" in n for n in s.notes)  # a finding, not a solver message


# ---- markers and the whole sample ------------------------------------------------------------------------------


def test_marker_expression_median_iqr_per_class():
    predicted = ["neutrophil"] * 5 + ["lymphocyte"] * 3
    cd16 = [1, 2, 3, 4, 5, 10, float("nan"), 30]
    m = {(s.label, s.target): s for s in marker_expression(predicted, {"CD16": cd16}, CLASSES)}
    n = m[("neutrophil", "CD16")]
    assert (n.n, n.median, n.q1, n.q3) == (5, 3.0, 2.0, 4.0)
    ly = m[("lymphocyte", "CD16")]
    assert (ly.n, ly.median) == (2, 20.0)  # the NaN is skipped
    mono = m[("monocyte", "CD16")]
    assert mono.n == 0 and math.isnan(mono.median)


def test_marker_expression_rejects_misaligned_values():
    with pytest.raises(ValueError, match="2 values for 3 cells"):
        marker_expression(["neutrophil"] * 3, {"CD16": [1.0, 2.0]}, CLASSES)


def test_sample_differential_to_dict_is_json():
    rng = np.random.default_rng(0)
    predicted = list(rng.choice(CLASSES, size=60))
    probs = rng.dirichlet(np.ones(3), size=60)
    s = sample_differential(
        predicted,
        CLASSES,
        probabilities=probs,
        confusion=CONFUSION,
        training_prior=np.ones(3) / 3,
        targets={"CD16": rng.normal(size=60)},
        qc_counts={"empty": 2, "unidentified": 5},
        n_bootstrap=20,
    )
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["n_cells"] == 67
    assert d["qc_excluded"] == {"empty": 2, "unidentified": 5}
    assert d["corrected"]["adjusted_count"]["n_bootstrap"] == 20
    assert len(d["markers"]) == 3


def test_em_batched_weights_match_single_runs():
    rng = np.random.default_rng(5)
    post, _ = _calibrated_posteriors(rng, np.ones(3) / 3, np.array([0.5, 0.2, 0.3]), 400)
    w = rng.multinomial(400, np.full(400, 1 / 400), size=2).astype(float)
    both, _ = em_prior_shift(post, np.ones(3) / 3, weights=w)
    for b in range(2):
        one, _ = em_prior_shift(post, np.ones(3) / 3, weights=w[b])
        assert both[b] == pytest.approx(one, abs=1e-6)


def test_marker_units_come_from_the_card_and_values_keep_three_figures():
    from phenotyping.analysis.markers import format_marker, significant, target_units
    from reports._format import marker_rows

    card = {"targets": [{"name": "CD16", "log": False, "mean": 0, "std": 1, "unit": "MFI"},
                        {"name": "CD3", "log": False, "mean": 0, "std": 1}]}
    assert target_units(card) == {"CD16": "MFI", "CD3": "a.u."} and target_units({"targets": []}) == {}
    assert significant(296961.8047) == 297000.0 and significant(0.0012345) == pytest.approx(0.00123)
    assert format_marker(296961.8047) == "297,000" and format_marker(float("nan")) == "—"
    s = sample_differential(["neutrophil"] * 3, CLASSES, targets={"CD16": [296961.8047] * 3, "CD3": [1.23456] * 3},
                            n_bootstrap=0)
    rows = {(r.label, r.target): r for r in marker_rows(s, card)}
    assert rows[("neutrophil", "CD16")].unit == "MFI" and rows[("neutrophil", "CD16")].median == 297000.0
    assert rows[("neutrophil", "CD3")].unit == "a.u." and rows[("neutrophil", "CD3")].median == pytest.approx(1.23)


def test_clopper_pearson_is_the_beta_quantiles_bit_for_bit():
    """The interval from scipy.special.betaincinv is scipy.stats.beta.ppf's, number for number (small and large n,
    both confidences the reports use)."""
    from scipy.stats import beta

    from phenotyping.analysis.differential import clopper_pearson

    for n in [*range(1, 60), 200, 1000, 4500, 10**6]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for conf in (0.95, 0.99):
                a = 1 - conf
                want = (0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1)),
                        1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k)))
                assert clopper_pearson(k, n, confidence=conf) == want


def test_a_sample_report_without_apart_classes_imports_no_scipy_stats():
    """predict's report path (results, differential, specimens) loads without scipy.stats and scipy.optimize
    (0.5-1.5 s of imports here), which only the corrections and apart-reported classes need."""
    import subprocess
    import sys

    code = ("import sys, phenotyping.analysis.results; "
            "print(sorted(m for m in ('scipy.stats', 'scipy.optimize') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
