"""A complete, synthetic report context for previews, tests and the render + sign benchmark.

Every value is invented (patient "DEMO-0001"); the PDF says so nowhere, so never hand a demo report to anyone.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timedelta, timezone

import numpy as np

from reports.context import (
    AgreementSummary,
    ComparisonRow,
    MarkerRow,
    MethodInfo,
    Person,
    QCSummary,
    ReportContext,
    ResultRow,
)

_BLOOD = (  # label, count, %, CI lo, CI hi (Clopper-Pearson, n = 400), corrected %, reference interval
    ("neutrophil", 228, 57.0, 52.0, 61.9, 58.1, (40.0, 75.0)),
    ("lymphocyte", 120, 30.0, 25.6, 34.7, 29.2, (20.0, 45.0)),
    ("monocyte", 36, 9.0, 6.4, 12.2, 8.6, (2.0, 8.0)),
    ("eosinophil", 14, 3.5, 1.9, 5.8, 3.6, (1.0, 6.0)),
    ("basophil", 2, 0.5, 0.1, 1.8, 0.5, (0.0, 2.0)),
)


def _cell_png(seed: int, size: int = 48) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + rng.normal(0, 2), xx - size / 2 + rng.normal(0, 2))
    img = 40 + 150 * np.exp(-(r / (size / 4)) ** 2) + rng.normal(0, 8, (size, size))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bland_altman_svg(pairs: list[tuple[float, float]], bias: float, lo: float, hi: float) -> str:
    """A minimal Bland-Altman SVG (mean on x, difference on y) for the demo."""
    w, h, pad = 400, 220, 36
    xs = [(a + b) / 2 for a, b in pairs]
    ds = [b - a for a, b in pairs]
    xmax = max(xs) * 1.1 or 1
    ymax = max(abs(lo), abs(hi), *map(abs, ds)) * 1.3 or 1

    def px(x: float) -> float:
        return pad + x / xmax * (w - 2 * pad)

    def py(d: float) -> float:
        return h / 2 - d / ymax * (h / 2 - pad / 2)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             'font-family="DejaVu Sans" font-size="10">',
             f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{py(0)}" x2="{w - pad}" y2="{py(0)}" stroke="#999"/>']
    for val, dash, name in ((bias, "", "bias"), (lo, "4 3", "−1.96 SD"), (hi, "4 3", "+1.96 SD")):
        parts.append(f'<line x1="{pad}" y1="{py(val):.1f}" x2="{w - pad}" y2="{py(val):.1f}" stroke="#1f3a5f" '
                     f'stroke-dasharray="{dash}"/><text x="{w - pad + 2}" y="{py(val) + 3:.1f}">{name}</text>')
    parts += [f'<circle cx="{px(x):.1f}" cy="{py(d):.1f}" r="3.5" fill="#a11d1d"/>' for x, d in zip(xs, ds)]
    parts.append(f'<text x="{w / 2}" y="{h - 4}" text-anchor="middle">mean of manual and model (%)</text>')
    parts.append(f'<text x="10" y="{h / 2}" transform="rotate(-90 10 {h / 2})" text-anchor="middle">'
                 'model − manual (pp)</text></svg>')
    return "".join(parts)


def demo_context(*, status: str = "final", gallery_per_class: int = 6) -> ReportContext:
    """A full blood report: every section filled (markers, QC, manual comparison, Bland-Altman, gallery)."""
    manual = {"neutrophil": 55.5, "lymphocyte": 31.5, "monocyte": 8.0, "eosinophil": 4.5, "basophil": 0.5}
    pairs = [(manual[lab], pct) for lab, _, pct, *_ in _BLOOD]
    diffs = np.array([b - a for a, b in pairs])
    bias, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    now = datetime(2025, 3, 14, 10, 30, tzinfo=timezone.utc)
    amended = status == "amended"
    return ReportContext(
        lab_name="Research haematology laboratory, Department of Laboratory Medicine",
        lab_id="LAB-001",
        report_id="RPT-DEMO-0001",
        version=2 if amended else 1,
        status=status,  # type: ignore[arg-type]
        amendment_reason="Two basophils reclassified as eosinophils after review" if amended else None,
        replaces_version=1 if amended else None,
        patient_pseudonym="DEMO-0001",
        sample_id="S-2025-0314-01",
        specimen="blood",
        collected_at=now - timedelta(hours=3),
        reported_at=now,
        method=MethodInfo(model_name="resnet18-qdpc-wbc", model_version="2025.03.1",
                          validation={"balanced accuracy": 0.941, "macro F1": 0.927, "n cells": 12000},
                          validation_set="held-out donors, 5 classes",
                          correction_method="adjusted classify-and-count"),
        results=[ResultRow(label=lab, count=k, percent=p, ci_low=lo, ci_high=hi, corrected_percent=c,
                           corrected_ci_low=max(c - 2.5, 0), corrected_ci_high=min(c + 2.5, 100),
                           reference_low=ref[0], reference_high=ref[1])
                 for lab, k, p, lo, hi, c, ref in _BLOOD],
        markers=[MarkerRow(label=lab, target="CD16 (a.u.)", n=k, median=m, q1=m * 0.8, q3=m * 1.2)
                 for (lab, k, *_), m in zip(_BLOOD, (812.0, 95.0, 210.0, 330.0, 150.0))],
        qc=QCSummary(total_cells=431, counted_cells=400,
                     excluded={"out of focus": 17, "debris or platelet clump": 9, "cell cut by image border": 5}),
        comparison=[ComparisonRow(label=lab, manual_percent=manual[lab], model_percent=p)
                    for lab, _, p, *_ in _BLOOD],
        agreement=AgreementSummary(n_pairs=len(pairs), bias=bias, loa_low=bias - 1.96 * sd,
                                   loa_high=bias + 1.96 * sd),
        bland_altman_svg=_bland_altman_svg(pairs, bias, bias - 1.96 * sd, bias + 1.96 * sd),
        gallery={lab: [_cell_png(100 * i + j) for j in range(gallery_per_class)]
                 for i, (lab, *_) in enumerate(_BLOOD)},
        interpretation=("400 cells were imaged and counted after image quality control. Neutrophils 57.0% "
                        "(52.0–61.9), lymphocytes 30.0% (25.6–34.7). Monocytes 9.0% lie above the laboratory "
                        "reference interval (2.0–8.0%); the other classes lie inside theirs."),
        interpretation_source="template",
        interpretation_edited=True,
        reviewer=Person(name="Dr. Alexandra Konstantinopoulou-Whitfield", role="reviewer"),
        signer=Person(name="Dr. Jonas Weber", role="consultant haematologist") if status != "preliminary" else None,
    )
