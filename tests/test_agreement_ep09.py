"""The CLSI EP09 additions to the statistics, each against a published worked example or an independent
implementation named in the test: generalised ESD (Rosner 1983 via the NIST/SEMATECH e-Handbook), MOVER limits
(SimplyAgree's printed output), Fleiss-Cohen-Everitt kappa SE (SAS PROC FREQ printout), Deming and weighted Deming
(scipy.odr, i.e. ODRPACK), bootstrap CIs (scipy.stats.bootstrap), decision-level bias, acceptance and warnings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from phenotyping.agreement import stats as ag

# SimplyAgree data set `reps` (x, y, id), as in tests/test_agreement_published.py: subjects 1-4 of the Bland & Altman
# 2007 cardiac data with 4, 3, 6 and 5 pairs.
REPS_X = [7.83, 7.42, 7.89, 7.12, 6.16, 7.26, 6.71, 4.75, 5.24, 4.86, 4.78, 6.05, 5.42, 4.21, 3.61, 3.72, 3.87, 3.92]
REPS_Y = [6.57, 5.62, 6.90, 6.57, 4.06, 4.29, 4.26, 4.71, 5.50, 5.08, 5.02, 6.01, 5.67, 4.14, 4.20, 4.61, 4.68, 5.04]
REPS_ID = ["1"] * 4 + ["2"] * 3 + ["3"] * 6 + ["4"] * 5

# Rosner 1983 (Technometrics 25:165) example as given in the NIST/SEMATECH e-Handbook of Statistical Methods,
# section 1.3.5.17.3 "Generalized ESD Test for Outliers": 54 values, up to 10 outliers, alpha 0.05.
ROSNER = [-0.25, 0.68, 0.94, 1.15, 1.20, 1.26, 1.26, 1.34, 1.38, 1.43, 1.49, 1.49, 1.55, 1.56, 1.58, 1.65, 1.69, 1.70,
          1.76, 1.77, 1.81, 1.91, 1.94, 1.96, 1.99, 2.06, 2.09, 2.10, 2.14, 2.15, 2.23, 2.24, 2.26, 2.35, 2.37, 2.40,
          2.47, 2.54, 2.62, 2.64, 2.90, 2.92, 2.92, 2.93, 3.21, 3.26, 3.30, 3.59, 3.68, 4.30, 4.64, 5.34, 5.42, 6.01]
# the handbook's table, printed truncated to 3 decimals: test statistics R_i and 5 % critical values lambda_i
ROSNER_R = [3.118, 2.942, 3.179, 2.810, 2.815, 2.848, 2.279, 2.310, 2.101, 2.067]
ROSNER_LAMBDA = [3.158, 3.151, 3.143, 3.136, 3.128, 3.120, 3.111, 3.103, 3.094, 3.085]


def _truncate3(v: float) -> float:
    return math.floor(v * 1000) / 1000


def test_generalized_esd_rosner_nist_example():
    r = ag.generalized_esd(ROSNER, max_outliers=10, alpha=0.05)
    assert [_truncate3(v) for v in r.statistics] == ROSNER_R
    assert [_truncate3(v) for v in r.critical] == ROSNER_LAMBDA
    assert r.n_outliers == 3  # the handbook: "there are 3 outliers" (R_3 > lambda_3 although R_1, R_2 are not)
    assert sorted(r.values) == [5.34, 5.42, 6.01]
    assert [ROSNER[i] for i in r.indices] == list(r.values)
    labelled = ag.generalized_esd(ROSNER, max_outliers=10, labels=[f"S{i}" for i in range(54)])
    assert labelled.labels == ("S53", "S52", "S51")
    assert ag.generalized_esd(ROSNER).max_outliers == 2  # default: 5 % of 54
    with pytest.raises(ValueError, match="at least"):
        ag.generalized_esd([1.0, 2.0, 3.0], max_outliers=1)


def test_mover_limits_simplyagree_agree_nest():
    """SimplyAgree reference/agree_nest.md prints for agree_nest(x, y, id, data = reps, delta = 2) (x - y, 95 %
    limits): Bias 0.7101 (-0.6824, 2.1026) at 95 %; Lower LoA -2.1540 (-7.5771, -0.6064) and Upper LoA 3.5742
    (2.0266, 8.9973) at 90 % (its default TOST uses two one-sided 95 % bounds, a two-sided 90 % CI)."""
    z = float(stats.norm.ppf(0.975))
    r95 = ag.bland_altman_repeated(REPS_ID, REPS_Y, REPS_X, z=z, confidence=0.95).mover
    assert round(r95.bias, 4) == 0.7101
    assert tuple(round(v, 4) for v in r95.bias_ci) == (-0.6824, 2.1026)
    r90 = ag.bland_altman_repeated(REPS_ID, REPS_Y, REPS_X, z=z, confidence=0.90).mover
    assert (round(r90.loa_lower, 4), round(r90.loa_upper, 4)) == (-2.1540, 3.5742)
    assert tuple(round(v, 4) for v in r90.loa_lower_ci) == (-7.5771, -0.6064)
    assert tuple(round(v, 4) for v in r90.loa_upper_ci) == (2.0266, 8.9973)
    # balanced replicates: Zou's estimates equal Bland & Altman 2007's
    ids = [s for s in "abcdef" for _ in range(3)]
    rng = np.random.default_rng(1)
    ref = rng.uniform(10, 50, 18)
    bal = ag.bland_altman_repeated(ids, ref, ref + rng.normal(1, 2, 18))
    assert bal.mover.bias == pytest.approx(bal.bias) and bal.mover.loa_upper == pytest.approx(bal.loa_upper)
    assert bal.mover.loa_lower_ci[0] < bal.loa_lower < bal.mover.loa_lower_ci[1]


def test_kappa_fleiss_se_matches_sas_printout():
    """SAS PROC FREQ simple kappa of the table [[0, 4, 1], [0, 8, 0], [0, 1, 5]] (the printout reproduced in
    statsmodels' stats/tests/test_inter_rater.py): kappa 0.4842, ASE 0.1380, 95 % CI 0.2137-0.7547, ASE under H0
    0.1484."""
    table = [[0, 4, 1], [0, 8, 0], [0, 1, 5]]
    ref, pred = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            ref += [f"c{i}"] * count
            pred += [f"c{j}"] * count
    k = ag.cohen_kappa(ref, pred)
    assert round(k.kappa, 4) == 0.4842
    assert round(k.se_fleiss, 4) == 0.1380
    assert tuple(round(v, 4) for v in k.ci_fleiss) == (0.2137, 0.7547)
    assert round(k.se_null, 4) == 0.1484
    assert k.se == pytest.approx(math.sqrt(k.observed_agreement * (1 - k.observed_agreement)
                                           / (19 * (1 - k.expected_agreement) ** 2)))  # Cohen 1960, unchanged


def _odr(x: np.ndarray, y: np.ndarray, wd: np.ndarray, we: np.ndarray, beta0: list[float]) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        odr = pytest.importorskip("scipy.odr")
        out = odr.ODR(odr.Data(x, y, wd=wd, we=we), odr.unilinear, beta0=beta0, sstol=1e-15, partol=1e-15).run()
    return float(out.beta[0]), float(out.beta[1])  # slope, intercept


def test_deming_and_weighted_deming_match_odrpack():
    rng = np.random.default_rng(11)
    true = rng.uniform(5, 80, 40)
    x = true * (1 + rng.normal(0, 0.05, 40))
    y = (1.0 + 1.08 * true) * (1 + rng.normal(0, 0.05, 40))
    lam = 1.5
    d = ag.deming(x, y, error_ratio=lam)
    b, a = _odr(x, y, np.ones(40), np.ones(40) / lam, [1.0, 0.0])
    assert (d.slope, d.intercept) == pytest.approx((b, a), rel=1e-5)  # ODRPACK converges to ~1e-7
    w = ag.deming(x, y, error_ratio=lam, weighted=True)
    assert w.weighted and w.slope != pytest.approx(d.slope, rel=1e-4)
    # at the fixed point the weights are 1/((X_i + Y_i)/2)^2 of the estimated true values; ODRPACK minimising
    # sum w_i (delta_i^2 + eps_i^2 / lambda) with those weights lands on the same line
    big_x = x + w.slope * (y - w.intercept - w.slope * x) / (lam + w.slope**2)
    wt = 1.0 / ((big_x + w.intercept + w.slope * big_x) / 2) ** 2
    b, a = _odr(x, y, wt, wt / lam, [1.0, 0.0])
    assert (w.slope, w.intercept) == pytest.approx((b, a), rel=1e-5)
    assert w.slope_ci[0] < w.slope < w.slope_ci[1]
    exact = ag.deming(true, 1.1 * true, weighted=True)
    assert (exact.slope, exact.intercept) == pytest.approx((1.1, 0.0), abs=1e-9)
    with pytest.raises(ValueError, match="positive"):
        ag.deming([-5.0, -4, -3, 1], [-5.0, -4, -3, 2], weighted=True)


def test_bootstrap_matches_scipy_bootstrap():
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 60, 30)
    y = 0.5 + 1.05 * x + rng.normal(0, 2, 30)
    for method, slope in (("passing_bablok", lambda u, v: ag.passing_bablok(u, v).slope),
                          ("deming", lambda u, v: ag.deming(u, v).slope)):
        ours = ag.regression_bootstrap(x, y, method=method, n_bootstrap=300, seed=7)
        ref = stats.bootstrap((x, y), slope, paired=True, vectorized=False, n_resamples=300, method="percentile",
                              rng=np.random.default_rng(7))
        assert ours.slope_ci == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high),
                                              rel=1e-12), method
        assert ours.n_failed == 0
    again = ag.regression_bootstrap(x, y, method="passing_bablok", n_bootstrap=300, seed=7)
    assert again == ag.regression_bootstrap(x, y, method="passing_bablok", n_bootstrap=300, seed=7)  # reproducible
    assert again.slope_ci != ag.regression_bootstrap(x, y, method="passing_bablok", n_bootstrap=300, seed=8).slope_ci


def test_decision_level_bias():
    rng = np.random.default_rng(5)
    x = rng.uniform(2, 70, 40)
    y = 1.5 + 0.95 * x + rng.normal(0, 1.5, 40)
    r = ag.decision_level_bias(x, y, [0.0, 1.0, 10.0, 50.0])
    dm = ag.deming(x, y)
    at0, _, at10, at50 = r.levels
    assert at10.bias == pytest.approx(dm.intercept + (dm.slope - 1) * 10)
    assert at10.predicted == pytest.approx(dm.intercept + dm.slope * 10)
    assert at10.relative_bias == pytest.approx(10 * at10.bias)
    # at X_c = 0 the predicted bias is the intercept, and its jackknife CI is Deming's intercept CI
    assert at0.bias_ci == pytest.approx(dm.intercept_ci) and math.isnan(at0.relative_bias)
    # the bias changes sign between the levels where the line crosses the identity
    assert at10.bias > 0 > at50.bias
    assert at50.bias_ci[0] < at50.bias < at50.bias_ci[1]
    pb = ag.decision_level_bias(x, y, [10.0], method="passing_bablok")
    assert all(math.isnan(v) for v in pb.levels[0].bias_ci) and "bootstrap" in pb.ci_method
    boot = ag.decision_level_bias(x, y, [10.0], method="passing_bablok", ci="bootstrap", n_bootstrap=200, seed=1)
    p = ag.passing_bablok(x, y)
    assert boot.levels[0].bias == pytest.approx(p.intercept + (p.slope - 1) * 10)
    assert boot.levels[0].bias_ci[0] < boot.levels[0].bias < boot.levels[0].bias_ci[1]


def test_acceptance_and_design_warnings():
    ok = ag.acceptance(0.5, -3.0, 4.0, 5.0)
    assert ok.accepted and ok.bias_within and ok.limits_within
    wide = ag.acceptance(0.5, -6.0, 4.0, 5.0, loa_lower_ci=(-7.0, -5.0), loa_upper_ci=(3.0, 5.0))
    assert not wide.accepted and wide.bias_within and not wide.limits_within and wide.limits_ci_within is False
    ratio = ag.acceptance(1.02, 0.85, 1.15, 1.2, measure="ratio")
    assert ratio.accepted and ratio.interval == pytest.approx((1 / 1.2, 1.2))
    with pytest.raises(ValueError, match="factor above 1"):
        ag.acceptance(1.0, 0.9, 1.1, 0.1, measure="ratio")
    with pytest.raises(ValueError, match="positive"):
        ag.acceptance(1.0, 0.9, 1.1, -2)
    few = ag.design_warnings([1.0, 2, 3, 4, 5], [1.0, 2, 3, 4, 6])
    assert any("< 10" in w for w in few) and any("40" in w for w in few)
    x = np.arange(50, dtype=float)
    assert ag.design_warnings(x, x + 1) == ()
    tied = ag.design_warnings(np.repeat([0.0, 1.0], 25), np.tile([0.0, 0.5], 25))
    assert len(tied) == 1 and "tie" in tied[0]
    assert ag.tied_fraction([1.0, 1, 2], [3.0, 4, 4]) == pytest.approx(2 / 3)
