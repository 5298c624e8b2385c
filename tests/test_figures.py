"""Figures take agreement results and draw them; they compute nothing themselves."""

from __future__ import annotations

import numpy as np

from phenotyping import agreement as ag
from phenotyping import figures


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
