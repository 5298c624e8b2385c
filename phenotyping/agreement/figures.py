"""Figures of agreement results: plotly for the app, matplotlib SVG (as a string) for PDF reports.

Every function takes a result object from ``phenotyping.agreement.stats``; none computes statistics. plotly and
matplotlib are imported inside the functions, so importing this module is cheap. The SVG functions draw on a
``matplotlib.figure.Figure`` rendered by its own canvas (no pyplot, no global backend switch), which is safe in the
Streamlit server's threads.
"""

from __future__ import annotations

import io
import math
from typing import Any

from phenotyping.agreement.stats import BlandAltmanResult, PassingBablokResult

__all__ = ["LABEL_ALL_UP_TO", "MIN_SAMPLES_FOR_LIMITS", "bland_altman_caveat", "bland_altman_figure", "bland_altman_svg",
           "labelled_points", "passing_bablok_figure", "passing_bablok_svg"]

LABEL_ALL_UP_TO = 30
"""SVG Bland-Altman plots label every point up to this many samples, beyond it only those outside the limits."""

MIN_SAMPLES_FOR_LIMITS = 20
"""Below this many samples a Bland-Altman plot carries a caveat: the SE of a limit of agreement is about
``sqrt(3/n)·SD`` (Bland & Altman 1986), so under 20 samples each limit's 95 % CI is wider than ±0.76 SD of the
differences, more than a third of the distance from the bias to the limit (at n = 3 it is ±2 SD). CLSI EP09 asks
for at least 40."""

_UNITS = {"absolute": "test − reference", "percent": "(test − reference) / mean, %", "ratio": "test / reference"}


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _x_range(values: tuple[float, ...]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def bland_altman_caveat(result: BlandAltmanResult) -> str | None:
    """The caveat a plot of fewer than :data:`MIN_SAMPLES_FOR_LIMITS` samples carries, else None."""
    if result.n >= MIN_SAMPLES_FOR_LIMITS:
        return None
    return (f"Only {result.n} sample{'s' if result.n != 1 else ''} (< {MIN_SAMPLES_FOR_LIMITS}): the limits of "
            "agreement are very uncertain; read the shaded confidence intervals, not the lines.")


def _legend_names(result: BlandAltmanResult) -> dict[str, str]:
    level = f"{100 * result.confidence:g} %"
    return {"bias": f"bias (mean difference) {result.bias:.3g}",
            "limits": f"limits of agreement (bias ± {result.z:.2f} SD) {result.loa_lower:.3g} to "
                      f"{result.loa_upper:.3g}",
            "bias_ci": f"{level} CI of the bias", "limits_ci": f"{level} CI of each limit"}


def bland_altman_figure(result: BlandAltmanResult, *, title: str = "Bland-Altman", units: str = "") -> Any:
    """plotly Bland-Altman plot: points (hover shows the sample id), bias and limits of agreement as lines, and
    their confidence intervals as shaded bands, each named in the legend; regression-based limits as dashed lines
    when present; the caveat of :func:`bland_altman_caveat` under the title for few samples."""
    import plotly.graph_objects as go

    x0, x1 = _x_range(result.means)
    fig = go.Figure()
    labels = list(result.labels) if result.labels else [str(i + 1) for i in range(result.n)]
    fig.add_trace(go.Scatter(
        x=list(result.means), y=list(result.differences), mode="markers", name="samples", text=labels,
        hovertemplate="sample %{text}<br>mean %{x:.3g}<br>difference %{y:.3g}<extra></extra>",
    ))  # fmt: skip
    lines = (("bias", result.bias, result.bias_ci, "#1f77b4"),
             ("lower LoA", result.loa_lower, result.loa_lower_ci, "#d62728"),
             ("upper LoA", result.loa_upper, result.loa_upper_ci, "#d62728"))  # fmt: skip
    for name, value, ci, colour in lines:
        if _finite(*ci):
            fig.add_hrect(y0=ci[0], y1=ci[1], fillcolor=colour, opacity=0.15, line_width=0, layer="below")
        fig.add_hline(y=value, line_color=colour, line_dash="solid" if name == "bias" else "dash",
                      annotation_text=f"{name} {value:.3g}", annotation_position="right")  # fmt: skip
    names = _legend_names(result)
    legend = [(names["bias"], "lines", {"color": "#1f77b4"}), (names["limits"], "lines",
                                                                {"color": "#d62728", "dash": "dash"})]
    if _finite(*result.bias_ci):
        legend.append((names["bias_ci"], "markers", {"color": "rgba(31,119,180,0.3)"}))
    if _finite(*result.loa_lower_ci, *result.loa_upper_ci):
        legend.append((names["limits_ci"], "markers", {"color": "rgba(214,39,40,0.3)"}))
    for name, mode, style in legend:  # legend-only entries: the lines and bands are shapes, which have none
        kw = {"line": style} if mode == "lines" else {"marker": {"symbol": "square", "size": 12, **style}}
        fig.add_trace(go.Scatter(x=[None], y=[None], mode=mode, name=name, hoverinfo="skip", **kw))
    caveat = bland_altman_caveat(result)
    if caveat:
        title = f"{title}<br><sup>⚠ {caveat}</sup>"
    if result.regression_limits is not None:
        import numpy as np

        # result.means is the regression's own x-axis (for ratio: geometric means), as RegressionLimits.at expects
        xs = np.linspace(min(result.means), max(result.means), 50)
        lo, mid, hi = result.regression_limits.at(xs)
        for name, ys in (("regression bias", mid), ("regression LoA", lo), ("regression LoA ", hi)):
            fig.add_trace(go.Scatter(x=xs.tolist(), y=ys.tolist(), mode="lines", name=name.strip(),
                                     line={"dash": "dot", "color": "#7f7f7f"}, showlegend=name != "regression LoA "))
    ylab = _UNITS[result.measure] + (f" ({units})" if units and result.measure == "absolute" else "")
    fig.update_layout(title=title, xaxis_title=result.x_axis + (f" ({units})" if units else ""),
                      yaxis_title=ylab, xaxis_range=[x0, x1], template="plotly_white")  # fmt: skip
    if result.measure == "ratio":
        fig.update_yaxes(type="log")
    return fig


def passing_bablok_figure(
    result: PassingBablokResult, *, title: str = "Passing-Bablok", x_label: str = "reference", y_label: str = "test"
) -> Any:
    """plotly scatter with the Passing-Bablok line, the identity line, and the band between the lines drawn with
    the CI limits of slope and intercept (``a_U + b_L x`` to ``a_L + b_U x``) where both CIs exist - a guide to the
    parameter uncertainty, not a pointwise confidence band."""
    import plotly.graph_objects as go

    x0, x1 = _x_range(result.x + result.y)
    fig = go.Figure()
    labels = list(result.labels) if result.labels else [str(i + 1) for i in range(result.n)]
    fig.add_trace(go.Scatter(
        x=list(result.x), y=list(result.y), mode="markers", name="samples", text=labels,
        hovertemplate="sample %{text}<br>" + x_label + " %{x:.3g}<br>" + y_label + " %{y:.3g}<extra></extra>",
    ))  # fmt: skip
    band = _pb_band(result, x0, x1)
    if band is not None:
        xs, lo, hi = band
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor="rgba(31,119,180,0.15)",
                                 line={"width": 0}, name="slope/intercept CI", hoverinfo="skip"))  # fmt: skip
    fit = [result.intercept + result.slope * v for v in (x0, x1)]
    fig.add_trace(go.Scatter(x=[x0, x1], y=fit, mode="lines", line={"color": "#1f77b4"},
                             name=f"y = {result.intercept:.3g} + {result.slope:.3g} x"))  # fmt: skip
    fig.add_trace(go.Scatter(x=[x0, x1], y=[x0, x1], mode="lines", line={"color": "#7f7f7f", "dash": "dash"},
                             name="identity"))  # fmt: skip
    fig.update_layout(title=title, xaxis_title=x_label, yaxis_title=y_label, template="plotly_white")
    return fig


def _pb_band(result: PassingBablokResult, x0: float, x1: float) -> tuple[list[float], list[float], list[float]] | None:
    (b_lo, b_hi), (a_lo, a_hi) = result.slope_ci, result.intercept_ci
    if not _finite(b_lo, b_hi, a_lo, a_hi):
        return None
    xs = [x0 + (x1 - x0) * i / 49 for i in range(50)]
    lines = [(a_hi + b_lo * v, a_lo + b_hi * v) for v in xs]
    lo = [min(p) for p in lines]
    hi = [max(p) for p in lines]
    return xs, lo, hi


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def labelled_points(result: BlandAltmanResult, *, label_all_up_to: int = LABEL_ALL_UP_TO) -> list[int]:
    """Indices of the points the SVG plot labels with their sample id: all of them for up to ``label_all_up_to``
    samples, otherwise only those outside the limits of agreement (none without ``result.labels``)."""
    if not result.labels:
        return []
    if result.n <= label_all_up_to:
        return list(range(result.n))
    return [i for i, d in enumerate(result.differences) if d < result.loa_lower or d > result.loa_upper]


def bland_altman_svg(result: BlandAltmanResult, *, title: str = "Bland-Altman", units: str = "") -> str:
    """The Bland-Altman plot of :func:`bland_altman_figure` as an SVG document (matplotlib, no pyplot); points are
    labelled with their sample id in a small font (see :func:`labelled_points`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(result.means, result.differences, s=18, color="#333333", zorder=3)
    for i in labelled_points(result):
        ax.annotate(result.labels[i], (result.means[i], result.differences[i]), xytext=(3, 3),  # type: ignore[index]
                    textcoords="offset points", fontsize=6, color="#333333", zorder=4)
    x0, x1 = _x_range(result.means)
    names = _legend_names(result)
    for name, value, ci, colour, style in (
        ("bias", result.bias, result.bias_ci, "#1f77b4", "-"),
        ("lower LoA", result.loa_lower, result.loa_lower_ci, "#d62728", "--"),
        ("upper LoA", result.loa_upper, result.loa_upper_ci, "#d62728", "--"),
    ):
        if _finite(*ci):
            ax.axhspan(ci[0], ci[1], color=colour, alpha=0.15, lw=0)
        legend_key = {"bias": "bias", "lower LoA": "limits"}.get(name)  # one legend entry for both limits
        ax.axhline(value, color=colour, ls=style, lw=1.2, label=names[legend_key] if legend_key else None)
        ax.annotate(f"{name} {value:.3g}", (x1, value), xytext=(3, 2), textcoords="offset points", fontsize=8)
    from matplotlib.patches import Patch

    handles, _ = ax.get_legend_handles_labels()
    if _finite(*result.bias_ci):
        handles.append(Patch(color="#1f77b4", alpha=0.15, label=names["bias_ci"]))
    if _finite(*result.loa_lower_ci, *result.loa_upper_ci):
        handles.append(Patch(color="#d62728", alpha=0.15, label=names["limits_ci"]))
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    caveat = bland_altman_caveat(result)
    if caveat:
        import textwrap

        title = title + "\n" + textwrap.fill(f"⚠ {caveat}", 80)
    if result.regression_limits is not None:
        import numpy as np

        # result.means is the regression's own x-axis (for ratio: geometric means), as RegressionLimits.at expects
        xs = np.linspace(min(result.means), max(result.means), 50)
        for ys in result.regression_limits.at(xs):
            ax.plot(xs, ys, color="#7f7f7f", ls=":", lw=1)
    if result.measure == "ratio":
        ax.set_yscale("log")
    ax.set_xlim(x0, x1)
    ax.set_xlabel(result.x_axis + (f" ({units})" if units else ""))
    ax.set_ylabel(_UNITS[result.measure])
    ax.set_title(title, fontsize=9 if caveat else None)
    return _svg(fig)


def passing_bablok_svg(
    result: PassingBablokResult, *, title: str = "Passing-Bablok", x_label: str = "reference", y_label: str = "test"
) -> str:
    """The Passing-Bablok plot of :func:`passing_bablok_figure` as an SVG document (matplotlib, no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    x0, x1 = _x_range(result.x + result.y)
    band = _pb_band(result, x0, x1)
    if band is not None:
        ax.fill_between(band[0], band[1], band[2], color="#1f77b4", alpha=0.15, lw=0, label="slope/intercept CI")
    ax.scatter(result.x, result.y, s=18, color="#333333", zorder=3)
    ax.plot([x0, x1], [result.intercept + result.slope * v for v in (x0, x1)], color="#1f77b4",
            label=f"y = {result.intercept:.3g} + {result.slope:.3g} x")  # fmt: skip
    ax.plot([x0, x1], [x0, x1], color="#7f7f7f", ls="--", label="identity")
    ax.set_xlim(x0, x1)
    ax.set_ylim(x0, x1)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return _svg(fig)
