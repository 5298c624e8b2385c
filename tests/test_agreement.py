"""Agreement statistics against published worked examples and their defining properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from phenotyping.agreement import stats as ag

# Bland & Altman 1986, Lancet i:307-310, Table 1: peak expiratory flow rate (l/min) of 17 subjects, first reading
# with the Wright peak flow meter and first reading with the mini Wright meter.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI_WRIGHT = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]

# Shrout & Fleiss 1979, Psychol Bull 86:420, Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_bland_altman_1986_peak_flow():
    # Differences Wright - mini Wright (the paper's direction): test=Wright, reference=mini Wright.
    r = ag.bland_altman(MINI_WRIGHT, WRIGHT, z=2.0)
    assert r.n == 17
    assert round(r.bias, 1) == -2.1  # printed: mean difference -2.1 l/min
    assert round(r.sd, 1) == 38.8  # printed: s = 38.8 l/min
    # printed limits -79.7 and 75.5 come from the rounded -2.1 -/+ 2 x 38.8; unrounded they are -79.6 and 75.4
    assert r.loa_lower == pytest.approx(-79.7, abs=0.1)
    assert r.loa_upper == pytest.approx(75.5, abs=0.1)
    # printed: SE of the bias 9.4 l/min, t(16) = 2.12, so the bias CI is -2.1 -/+ 2.12 x 9.4
    se = (r.bias_ci[1] - r.bias_ci[0]) / 2 / 2.12
    assert se == pytest.approx(9.4, abs=0.05)
    assert r.bias_ci[0] == pytest.approx(-2.1 - 2.12 * 9.4, abs=0.1)
    assert r.bias_ci[1] == pytest.approx(-2.1 + 2.12 * 9.4, abs=0.1)


def test_bland_altman_approximate_limit_ci_follows_1999_formula():
    r = ag.bland_altman(MINI_WRIGHT, WRIGHT, z=2.0, loa_ci="approximate")
    t = 2.1199  # t(0.975, 16)
    se = (r.loa_lower_ci[1] - r.loa_lower_ci[0]) / 2 / t
    assert se == pytest.approx(r.sd * math.sqrt(1 / 17 + 4 / 32), rel=1e-3)
    # the 1986 paper's cruder SE sqrt(3 s^2 / n) = 16.3 l/min differs by the n vs n-1 term only
    assert se == pytest.approx(16.3, abs=0.4)
    assert r.loa_lower_ci[0] < r.loa_lower < r.loa_lower_ci[1]
    assert r.loa_upper_ci[0] < r.loa_upper < r.loa_upper_ci[1]


@pytest.mark.parametrize("n, k", [(10, 2.911), (20, 2.396)])
def test_exact_limit_ci_equals_one_sided_tolerance_factor(n, k):
    # The upper end of a two-sided 90 % CI of mean + 1.645 SD is the one-sided 95 %/95 % normal tolerance limit;
    # tabulated factors k(n=10) = 2.911, k(n=20) = 2.396 (Odeh & Owen 1980; NIST/SEMATECH e-Handbook 7.2.6.3).
    rng = np.random.default_rng(0)
    ref = rng.normal(50, 5, n)
    test = ref + rng.normal(1, 2, n)
    r = ag.bland_altman(ref, test, z=1.6449, confidence=0.90)
    assert (r.loa_upper_ci[1] - r.bias) / r.sd == pytest.approx(k, abs=1e-3)
    assert (r.bias - r.loa_lower_ci[0]) / r.sd == pytest.approx(k, abs=1e-3)


def test_swapping_methods_negates_bias():
    a = ag.bland_altman(MINI_WRIGHT, WRIGHT)
    b = ag.bland_altman(WRIGHT, MINI_WRIGHT)
    assert b.bias == pytest.approx(-a.bias)
    assert b.sd == pytest.approx(a.sd)
    assert b.loa_lower == pytest.approx(-a.loa_upper)
    assert b.bias_ci == pytest.approx((-a.bias_ci[1], -a.bias_ci[0]))
    assert b.proportional_bias.slope == pytest.approx(-a.proportional_bias.slope)


def test_constant_offset_moves_only_the_bias():
    ref = np.array(MINI_WRIGHT, dtype=float)
    a = ag.bland_altman(ref, WRIGHT)
    b = ag.bland_altman(ref, np.array(WRIGHT) + 25.0)
    assert b.bias == pytest.approx(a.bias + 25.0)
    assert b.sd == pytest.approx(a.sd)
    assert b.loa_upper - b.loa_lower == pytest.approx(a.loa_upper - a.loa_lower)
    assert b.loa_upper_ci[1] - b.loa_upper_ci[0] == pytest.approx(a.loa_upper_ci[1] - a.loa_upper_ci[0])


def test_scale_factor_shows_as_proportional_bias():
    rng = np.random.default_rng(1)
    ref = rng.uniform(5, 60, 40)
    test = 1.3 * ref + rng.normal(0, 1.0, 40)
    r = ag.bland_altman(ref, test)
    assert r.proportional_bias.p_value < 1e-6
    # D = 0.3 A_ref and A = 1.15 A_ref, so D = (0.3 / 1.15) A
    assert r.proportional_bias.slope == pytest.approx(0.3 / 1.15, abs=0.03)
    assert r.regression_limits is not None
    lo, mid, hi = r.regression_limits.at([10.0, 50.0])
    assert mid[1] > mid[0] and (hi - lo)[0] > 0
    # a constant offset with noise unrelated to the level: no proportional bias, no regression limits in 'auto'
    grid = np.linspace(5, 60, 40)
    flat = ag.bland_altman(grid, grid + 2.0 + np.tile([1.0, -1.0, -1.0, 1.0], 10))
    assert flat.proportional_bias.p_value > 0.5
    assert flat.regression_limits is None


def test_ratio_and_percent_measures():
    rng = np.random.default_rng(2)
    ref = rng.uniform(10, 100, 30)
    r = ag.bland_altman(ref, ref * 1.1, measure="ratio")
    assert r.bias == pytest.approx(1.1)
    assert r.loa_lower == pytest.approx(1.1) and r.sd == pytest.approx(0.0, abs=1e-12)
    p = ag.bland_altman([10, 20, 40], [11, 22, 44], measure="percent")
    assert p.bias == pytest.approx(100 * 0.1 / 1.05)
    with pytest.raises(ValueError, match="positive"):
        ag.bland_altman([0, 1, 2], [1, 2, 3], measure="ratio")
    with pytest.raises(ValueError, match="both methods are 0"):
        ag.bland_altman([0, 1, 2], [0, 2, 3], measure="percent")


@pytest.mark.parametrize(
    "ref, test, match",
    [
        ([1, 2, 3], [1, 2], "length mismatch"),
        ([1, 2], [1, 2], "at least 3"),
        ([1, float("nan"), 3], [1, 2, 3], "NaN"),
        ([1, "x", 3], [1, 2, 3], "numbers"),
    ],
)
def test_input_validation(ref, test, match):
    for fn in (ag.bland_altman, ag.passing_bablok, ag.deming, ag.ccc):
        with pytest.raises(ValueError, match=match):
            fn(ref, test)


def test_repeated_measures_variance_components():
    rng = np.random.default_rng(3)
    subjects, ref, test = [], [], []
    for s in range(40):
        offset = rng.normal(0, 2.0)  # between-subject SD of the difference: 2
        for _ in range(int(rng.integers(2, 5))):
            x = rng.uniform(10, 50)
            subjects.append(f"s{s}")
            ref.append(x)
            test.append(x + 1.0 + offset + rng.normal(0, 1.0))  # within SD 1, bias 1
    r = ag.bland_altman_repeated(subjects, ref, test)
    assert r.n_subjects == 40
    assert r.bias == pytest.approx(np.mean(np.subtract(test, ref)))
    assert r.within_var == pytest.approx(1.0, rel=0.35)
    assert r.between_var == pytest.approx(4.0, rel=0.5)
    assert r.sd == pytest.approx(math.sqrt(r.within_var + r.between_var))
    with pytest.raises(ValueError, match="single pair"):
        ag.bland_altman_repeated(["a", "b", "c"], [1, 2, 3], [1, 2, 4])


def test_passing_bablok_hand_worked_example():
    # Pairwise slopes of (1,1),(2,3),(3,2),(3,4),(4,4) by Passing & Bablok 1983's rules: 2, 0.5, 1.5, 1, [-1 dropped],
    # 1, 0.5, +inf (vertical, dy > 0), 2, 0 -> sorted 0, .5, .5, 1, 1, 1.5, 2, 2, inf; N = 9, K = 0, b = S_(5) = 1;
    # a = median(y - x) = 0. With n = 5, C = 1.96 sqrt(5*4*15/18) = 8.0 > N - 1, so no CI rank exists.
    r = ag.passing_bablok([1, 2, 3, 3, 4], [1, 3, 2, 4, 4])
    assert (r.n_slopes, r.shift, r.slope, r.intercept) == (9, 0, 1.0, 0.0)
    assert all(math.isnan(v) for v in r.slope_ci + r.intercept_ci)
    assert json.loads(json.dumps(r.to_dict(), allow_nan=False))["slope_ci"] == [None, None]


def test_passing_bablok_shifted_median():
    # slopes of (1,3),(2,1),(3,3),(4,4): -2, 0, 1/3, 2, 1.5, 1 -> sorted -2, 0, 1/3, 1, 1.5, 2; K = 1 slope below -1,
    # N = 6 even: b = (S_(3+1) + S_(4+1)) / 2 = (1 + 1.5) / 2 = 1.25; a = median(1.75, -1.5, -0.75, -1) = -0.875.
    r = ag.passing_bablok([1, 2, 3, 4], [3, 1, 3, 4])
    assert r.shift == 1
    assert r.slope == pytest.approx(1.25)
    assert r.intercept == pytest.approx(-0.875)


def test_passing_bablok_ci_symmetry_and_linearity():
    rng = np.random.default_rng(4)
    x = rng.uniform(1, 100, 61)
    xt = x + rng.normal(0, 2, 61)
    y = 2.0 + 1.1 * x + rng.normal(0, 2, 61)
    r = ag.passing_bablok(xt, y)
    assert r.slope_ci[0] < 1.1 < r.slope_ci[1]
    assert r.intercept_ci[0] < r.intercept < r.intercept_ci[1]
    assert r.cusum.linear
    # the method is symmetric in the two methods: regressing x on y gives the reciprocal slope
    s = ag.passing_bablok(y, xt)
    assert s.slope == pytest.approx(1 / r.slope, rel=0.02)
    curved = ag.passing_bablok(x, x**2 / 50 + rng.normal(0, 0.5, 61))
    assert not curved.cusum.linear and curved.cusum.p_value < 0.05


def test_passing_bablok_with_a_vanishing_slope_still_runs_the_cusum_test():
    """A model that reports a class at nearly 0 % in every sample gives a tiny positive slope; the cusum ordering
    divided by slope² and failed with ZeroDivisionError once slope² underflowed (composed cross-site study)."""
    x = np.array([1.0, 2, 3, 4, 5, 6])
    r = ag.passing_bablok(x, 1e-200 * x)
    assert r.slope == pytest.approx(1e-200) and 0.0 <= r.cusum.p_value <= 1.0
    # an ordinary fit: the statistic equals the textbook form (Passing & Bablok 1983), points ordered by
    # (y + x/b - a) / sqrt(1 + 1/b²) and residual scores sqrt(n-/n+) above, -sqrt(n+/n-) below the line
    rng = np.random.default_rng(7)
    x = rng.uniform(1, 50, 40)
    y = 1.0 + 0.9 * x + rng.normal(0, 2, 40)
    fit = ag.passing_bablok(x, y)
    b, a = fit.slope, fit.intercept
    res = y - (a + b * x)
    up, down = int((res > 0).sum()), int((res < 0).sum())
    score = np.where(res > 0, np.sqrt(down / up), np.where(res < 0, -np.sqrt(up / down), 0.0))
    order = np.argsort((y + x / b - a) / np.sqrt(1 + 1 / b**2), kind="stable")
    assert fit.cusum.statistic == pytest.approx(np.max(np.abs(np.cumsum(score[order]))) / np.sqrt(down + 1))


def test_deming_closed_form_and_limits():
    x = np.array([1.0, 2, 3, 4, 5, 6])
    r = ag.deming(x, 3 + 2 * x)
    assert (r.slope, r.intercept) == pytest.approx((2.0, 3.0))
    rng = np.random.default_rng(5)
    xs = rng.uniform(0, 50, 30)
    ys = 1.0 + 0.9 * xs + rng.normal(0, 3, 30)
    sxx, syy = np.var(xs), np.var(ys)
    sxy = np.cov(xs, ys, ddof=0)[0, 1]
    # error_ratio -> inf: all error in the test method, OLS of y on x; -> 0: OLS of x on y
    assert ag.deming(xs, ys, error_ratio=1e9).slope == pytest.approx(sxy / sxx, rel=1e-4)
    assert ag.deming(xs, ys, error_ratio=1e-9).slope == pytest.approx(syy / sxy, rel=1e-4)
    d = ag.deming(xs, ys, error_ratio=2.0)
    assert ag.deming(ys, xs, error_ratio=0.5).slope == pytest.approx(1 / d.slope)
    assert d.slope_ci[0] < 0.9 < d.slope_ci[1]


def test_ccc_hand_example_and_identities():
    # x = 1,2,3; y = 2,3,4: s_x^2 = s_y^2 = s_xy = 2/3 (1/n moments), (mean difference)^2 = 1 -> 2(2/3)/(4/3 + 1) = 4/7
    r = ag.ccc([1, 2, 3], [2, 3, 4])
    assert r.ccc == pytest.approx(4 / 7)
    assert r.pearson == pytest.approx(1.0)
    rng = np.random.default_rng(6)
    x = rng.normal(30, 8, 50)
    y = 1.05 * x + 2 + rng.normal(0, 3, 50)
    c = ag.ccc(x, y)
    assert c.ccc == pytest.approx(c.pearson * c.bias_correction)
    assert c.ccc == pytest.approx(2 * np.cov(x, y, ddof=0)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))
    assert c.ci[0] < c.ccc < c.ci[1] < 1
    assert ag.ccc(x, x + 1e-9 * rng.normal(size=50)).ccc == pytest.approx(1.0)


def test_icc_shrout_fleiss_1979():
    # printed in Shrout & Fleiss 1979, Table 4: ICC(2,1) = .29, ICC(3,1) = .71
    assert round(ag.icc(SHROUT_FLEISS, kind="ICC(2,1)").icc, 2) == 0.29
    r3 = ag.icc(SHROUT_FLEISS, kind="ICC(3,1)")
    assert round(r3.icc, 2) == 0.71
    assert r3.ci[0] < r3.icc < r3.ci[1]


def test_correlations():
    x = [1, 2, 3, 4, 5, 6]
    assert ag.pearson(x, [2, 4, 6, 8, 10, 12]).r == pytest.approx(1.0)
    s = ag.spearman(x, [1, 4, 9, 16, 25, 36])
    assert s.r == pytest.approx(1.0)
    p = ag.pearson(x, [2, 1, 4, 3, 6, 5])
    assert p.ci[0] < p.r < p.ci[1]


def test_cohen_kappa_two_by_two():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> p_o = 0.70, p_e = 0.25*... = 0.50, kappa 0.40
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    k = ag.cohen_kappa(a, b)
    assert (k.observed_agreement, k.expected_agreement) == pytest.approx((0.7, 0.5))
    assert k.kappa == pytest.approx(0.4)
    with pytest.raises(ValueError, match="length mismatch"):
        ag.cohen_kappa(a, b[:-1])


def test_classification_performance():
    ref = ["neu", "neu", "neu", "lym", "lym", "mono"]
    pred = ["neu", "neu", "lym", "lym", "lym", "neu"]
    perf = ag.classification_performance(ref, pred, classes=["neu", "lym", "mono"])
    neu = perf["neu"]
    assert (neu.tp, neu.fn, neu.fp, neu.tn) == (2, 1, 1, 2)
    assert neu.sensitivity == pytest.approx(2 / 3) and neu.specificity == pytest.approx(2 / 3)
    assert neu.efficiency == pytest.approx(4 / 6)
    assert perf["mono"].sensitivity == 0.0 and perf["mono"].specificity == 1.0
    assert neu.sensitivity_ci[0] < neu.sensitivity < neu.sensitivity_ci[1]


def test_counting_spread_rumke():
    # binomial error of a 200-cell differential at 50 %: SD 3.5 points; the 95 % limits tabulated by Rümke
    # (CLSI H20-A2 Table) for an observed 50 % of 200 cells are 43-57 %.
    s = ag.counting_spread(50.0, 200)
    assert s.sd == pytest.approx(100 * math.sqrt(0.25 / 200))
    assert tuple(round(v) for v in s.ci95) == (43, 57)
    assert s.range95 == pytest.approx((43.0, 57.0))
    assert ag.counting_spread(5.0, 400).sd < ag.counting_spread(5.0, 200).sd
    with pytest.raises(ValueError, match="0-100"):
        ag.counting_spread(120.0, 200)


def test_results_are_frozen_and_json_safe():
    r = ag.bland_altman(MINI_WRIGHT, WRIGHT)
    with pytest.raises(AttributeError):
        r.bias = 0.0  # type: ignore[misc]
    json.dumps(r.to_dict(), allow_nan=False)
    json.dumps(ag.ccc(MINI_WRIGHT, WRIGHT).to_dict(), allow_nan=False)


def test_ratio_regression_limits_use_the_geometric_mean_axis():
    # log(test) - log(ref) = 0.2 log(ref) + noise: proportional bias on the log scale
    rng = np.random.default_rng(7)
    ref = rng.uniform(2, 60, 40)
    test = ref**1.2 * np.exp(rng.normal(0, 0.05, 40))
    r = ag.bland_altman(ref, test, measure="ratio", regression_loa="always")
    reg = r.regression_limits
    assert reg is not None and reg.log_scale and r.x_axis == reg.x_axis == "geometric mean of the two methods"
    g = np.sqrt(ref * test)
    assert r.means == pytest.approx(tuple(g))  # the plotted x is the geometric mean, the axis at() takes
    mean_log = (np.log(ref) + np.log(test)) / 2
    b1, b0 = np.polyfit(mean_log, np.log(test / ref), 1)
    lo, mid, hi = reg.at(g)
    assert mid == pytest.approx(np.exp(b0 + b1 * mean_log))
    assert np.all(lo < mid) and np.all(mid < hi)
    # the arithmetic mean is a different x: passing it would shift the line, which is why the axis is explicit
    assert not np.allclose(reg.at((ref + test) / 2)[1], mid)
    with pytest.raises(ValueError, match="positive"):
        reg.at([0.0])
    a = ag.bland_altman(ref, test, regression_loa="always")
    assert a.x_axis == a.regression_limits.x_axis == "mean of the two methods"
    assert a.means == pytest.approx(tuple((ref + test) / 2))


def test_repeated_measures_measures_and_validation():
    subjects = ["a", "a", "b", "b", "c", "c"]
    ref = [10.0, 20.0, 5.0, 8.0, 30.0, 12.0]
    r = ag.bland_altman_repeated(subjects, ref, [1.5 * v for v in ref], measure="ratio")
    assert r.measure == "ratio" and r.bias == pytest.approx(1.5) and r.sd == pytest.approx(0.0, abs=1e-12)
    p = ag.bland_altman_repeated(subjects, ref, [v + 2 for v in ref], measure="percent")
    assert p.bias == pytest.approx(np.mean([100 * 2 / (v + 1) for v in ref]))
    with pytest.raises(ValueError, match="positive"):
        ag.bland_altman_repeated(subjects, [0.0] + ref[1:], ref, measure="ratio")
    with pytest.raises(ValueError, match="at least 2 subjects"):
        ag.bland_altman_repeated(["a"] * 3, [1, 2, 3], [1, 2, 4])


@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_passing_bablok_does_not_depend_on_the_units(scale):
    """Issue 18: on the PEFR data (Bland & Altman 1986) slopes of -1 were dropped, and slopes below -1 counted,
    with an exact floating-point test, so l/min gave slope 1.0648 and l/min / 10 gave 1.0715."""
    ref, test = np.array(WRIGHT, dtype=float), np.array(MINI_WRIGHT, dtype=float)
    base = ag.passing_bablok(ref, test)
    scaled = ag.passing_bablok(ref / scale, test / scale)
    assert (scaled.n_slopes, scaled.shift) == (base.n_slopes, base.shift)
    assert scaled.slope == pytest.approx(base.slope, rel=1e-12)
    assert scaled.slope_ci == pytest.approx(base.slope_ci, rel=1e-12)
    assert scaled.intercept * scale == pytest.approx(base.intercept, rel=1e-9)
    assert tuple(v * scale for v in scaled.intercept_ci) == pytest.approx(base.intercept_ci, rel=1e-9)


def test_ccc_shifts_follow_test_minus_reference():
    ref = np.array([10.0, 20, 30, 40, 50])
    test = 2.0 * ref + 5.0  # reads higher and spreads twice as much
    c = ag.ccc(ref, test)
    assert c.location_shift > 0
    assert c.location_shift == pytest.approx((test.mean() - ref.mean()) / math.sqrt(ref.std() * test.std()))
    assert c.scale_shift == pytest.approx(2.0)
    assert "mean test - mean reference" in c.to_dict()["shifts"] and "s_test / s_reference" in c.shifts
    swapped = ag.ccc(test, ref)
    assert swapped.location_shift == pytest.approx(-c.location_shift) and swapped.scale_shift == pytest.approx(0.5)


def test_counting_spread_percentages_are_100k_over_n():
    # 29 of 200 cells: 100*29/200 is 14.5; 29/200*100 was 14.499999999999998
    s = ag.counting_spread(20.0, 200)
    k_lo, k_hi = stats.binom.ppf([0.025, 0.975], 200, 0.2)
    assert s.range95 == (100.0 * k_lo / 200, 100.0 * k_hi / 200)
    assert ag.counting_spread(14.5, 200).range95[0] == 10.0
    assert any(ag.counting_spread(p, 200).range95[1] == 14.5 for p in np.arange(9.0, 11.0, 0.1))
