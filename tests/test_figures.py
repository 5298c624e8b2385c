"""Figures take agreement results and draw them; they compute nothing themselves."""

from __future__ import annotations

import numpy as np
import pytest

from phenotyping.agreement import stats as ag
from phenotyping.agreement import figures


def _ba(**kw):
    rng = np.random.default_rng(0)
    ref = rng.uniform(10, 60, 12)
    return ag.bland_altman(ref, ref * 1.2 + rng.normal(0, 1, 12), labels=[f"S{i}" for i in range(12)], **kw)


def test_plotly_bland_altman_has_points_lines_and_ci_bands():
    res = _ba()
    fig = figures.bland_altman_figure(res, units="%")
    points = fig.data[0]
    assert list(points.text) == [f"S{i}" for i in range(12)]
    assert "sample %{text}" in points.hovertemplate
    assert list(points.y) == list(res.differences)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(rects) == 3 and len(lines) == 3
    assert sorted(round(s.y0, 9) for s in lines) == sorted(round(v, 9) for v in (res.loa_lower, res.bias, res.loa_upper))
    assert {(round(r.y0, 9), round(r.y1, 9)) for r in rects} == {
        tuple(round(v, 9) for v in ci) for ci in (res.bias_ci, res.loa_lower_ci, res.loa_upper_ci)
    }
    # proportional bias present -> regression-based limits drawn
    assert res.regression_limits is not None and any("regression" in (t.name or "") for t in fig.data)


def test_plotly_passing_bablok_has_fit_identity_and_band():
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 50, 40)
    res = ag.passing_bablok(x, 1.1 * x + rng.normal(0, 1, 40), labels=[f"S{i}" for i in range(40)])
    fig = figures.passing_bablok_figure(res)
    names = [t.name for t in fig.data]
    assert "identity" in names and "slope/intercept CI" in names
    fit = next(t for t in fig.data if (t.name or "").startswith("y = "))
    assert np.isclose(fit.y[1] - fit.y[0], res.slope * (fit.x[1] - fit.x[0]))
    assert np.isclose(fit.y[0], res.intercept + res.slope * fit.x[0])


def test_passing_bablok_without_ci_has_no_band():
    res = ag.passing_bablok([1, 2, 3, 3, 4], [1, 3, 2, 4, 4])
    assert "slope/intercept CI" not in [t.name for t in figures.passing_bablok_figure(res).data]


def test_svg_strings():
    svg = figures.bland_altman_svg(_ba(), title="Neutrophils")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "Neutrophils" in svg
    res = ag.passing_bablok(*(np.arange(1.0, 21.0), np.arange(1.0, 21.0) * 1.05 + np.sin(np.arange(20))))
    svg2 = figures.passing_bablok_svg(res)
    assert "<svg" in svg2 and "identity" in svg2
    ratio = ag.bland_altman([10, 20, 30, 40], [11, 21, 33, 41], measure="ratio")
    assert "<svg" in figures.bland_altman_svg(ratio)


def test_svg_labels_every_point_up_to_30_samples():
    res = _ba()
    assert figures.labelled_points(res) == list(range(12))
    svg = figures.bland_altman_svg(res)
    for i in range(12):
        assert f"<!-- S{i} -->" in svg  # matplotlib writes each text's string beside its glyphs
    unlabelled = ag.bland_altman([1, 2, 3, 4], [1.1, 2.2, 2.9, 4.3])
    assert figures.labelled_points(unlabelled) == []


def test_svg_labels_only_outliers_beyond_30_samples():
    rng = np.random.default_rng(3)
    ref = rng.uniform(10, 60, 40)
    test = ref + rng.normal(0, 1, 40)
    test[[5, 17]] += [15.0, -15.0]  # two points far outside the limits
    res = ag.bland_altman(ref, test, labels=[f"P{i:02d}" for i in range(40)])
    outside = [i for i, d in enumerate(res.differences) if not res.loa_lower <= d <= res.loa_upper]
    assert figures.labelled_points(res) == outside and {5, 17} <= set(outside)
    svg = figures.bland_altman_svg(res)
    assert "<!-- P05 -->" in svg and "<!-- P17 -->" in svg
    inside = next(i for i in range(40) if i not in outside)
    assert f"<!-- P{inside:02d} -->" not in svg


def test_ratio_regression_lines_use_the_plotted_axis():
    rng = np.random.default_rng(4)
    ref = rng.uniform(2, 60, 30)
    res = ag.bland_altman(ref, ref**1.2 * np.exp(rng.normal(0, 0.05, 30)), measure="ratio", regression_loa="always")
    fig = figures.bland_altman_figure(res)
    line = next(t for t in fig.data if t.name == "regression bias")
    assert min(line.x) == pytest.approx(min(res.means)) and max(line.x) == pytest.approx(max(res.means))
    assert list(line.y) == pytest.approx(list(res.regression_limits.at(np.asarray(line.x))[1]))
    assert fig.layout.xaxis.title.text == "geometric mean of the two methods"
    assert "geometric mean of the two methods" in figures.bland_altman_svg(res)


def test_bland_altman_legend_names_the_bias_the_limits_and_what_the_bands_are():
    res = _ba()
    names = [t.name for t in figures.bland_altman_figure(res, units="%").data]
    assert any(n.startswith("bias (mean difference)") for n in names)
    assert any(n.startswith("limits of agreement (bias ± 1.96 SD)") for n in names)
    assert "95 % CI of the bias" in names and "95 % CI of each limit" in names
    svg = figures.bland_altman_svg(res)
    assert "95 % CI of the bias" in svg or "CI of the bias" in svg.replace("\u00a0", " ")


def test_bland_altman_of_few_samples_carries_a_caveat():
    few = ag.bland_altman([10.0, 20.0, 30.0], [12.0, 19.0, 35.0])
    caveat = figures.bland_altman_caveat(few)
    assert caveat is not None and "Only 3 samples" in caveat and str(figures.MIN_SAMPLES_FOR_LIMITS) in caveat
    assert "Only 3 samples" in figures.bland_altman_figure(few).layout.title.text
    many = ag.bland_altman(np.arange(1.0, 26.0), np.arange(1.0, 26.0) + np.linspace(-1, 1, 25))
    assert figures.bland_altman_caveat(many) is None
    assert "Only" not in figures.bland_altman_figure(many).layout.title.text
