"""A complete, synthetic report context for previews, tests and the render + sign benchmark.

Every value is invented (patient "DEMO-0001"); the PDF says so nowhere, so never hand a demo report to anyone.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import numpy as np

from reports.context import (
    ClassAgreementRow,
    ComparisonRow,
    MarkerRow,
    MethodInfo,
    Person,
    QCSummary,
    ReportContext,
    ResultRow,
    StudyAgreement,
    text_svg,
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


@lru_cache(maxsize=1)
def _demo_study() -> tuple[StudyAgreement, tuple[tuple[str, str], ...]]:
    """A synthetic 20-sample method-comparison study (model - manual) and its Bland-Altman SVGs."""
    from phenotyping.agreement.figures import bland_altman_svg
    from phenotyping.agreement.study import compute_study

    rng = np.random.default_rng(7)
    labels = [row[0] for row in _BLOOD]
    base = np.array([row[2] for row in _BLOOD])
    manual, model = {}, {}
    for i in range(20):
        truth = rng.dirichlet(base * 2) * 100
        manual[f"D{i:02d}"] = dict(zip(labels, (rng.multinomial(200, truth / 100) / 2).tolist()))
        model[f"D{i:02d}"] = dict(zip(labels, (rng.multinomial(400, truth / 100) / 4).tolist()))
    result = compute_study("Demo cytospin comparison", manual, model, classes=labels, model_version="2025.03.1")
    rows = []
    for label, a in result.raw.items():
        ba = a.bland_altman
        rows.append(ClassAgreementRow(
            label=label, comparison="raw", n=ba.n, bias=ba.bias, bias_ci_low=ba.bias_ci[0],
            bias_ci_high=ba.bias_ci[1], loa_low=ba.loa_lower, loa_low_ci_low=ba.loa_lower_ci[0],
            loa_low_ci_high=ba.loa_lower_ci[1], loa_high=ba.loa_upper, loa_high_ci_low=ba.loa_upper_ci[0],
            loa_high_ci_high=ba.loa_upper_ci[1]))
    study = StudyAgreement(name=result.name, model_id="resnet18-qdpc-wbc", model_version="2025.03.1",
                           n_samples=len(manual), saved_at=datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc),
                           saved_by="Dr. Jonas Weber", rows=rows)
    figures = tuple((label, text_svg(bland_altman_svg, dataclasses.replace(a.bland_altman, labels=None),
                                     title=label, units="%"))
                    for label, a in result.raw.items())
    return study, figures


def demo_context(*, status: str = "final", gallery_per_class: int = 6) -> ReportContext:
    """A full blood report: every section filled (markers, QC, manual comparison, study with Bland-Altman figures,
    gallery)."""
    manual = {"neutrophil": 55.5, "lymphocyte": 31.5, "monocyte": 8.0, "eosinophil": 4.5, "basophil": 0.5}
    study, figures = _demo_study()
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
        replaces_signed_at=now - timedelta(days=1) if amended else None,
        replaces_signed_by="Dr. Jonas Weber" if amended else None,
        replaces_pdf_sha256=("9f2c" * 16) if amended else None,
        method=MethodInfo(model_name="resnet18-qdpc-wbc", model_version="2025.03.1",
                          validation={"balanced accuracy": 0.941, "macro F1": 0.927, "n cells": 12000},
                          validation_set="held-out donors, 5 classes",
                          correction_method="adjusted classify-and-count"),
        reference_source="reference-intervals.csv (sha256 3b9e0c41d2aa)",
        results=[ResultRow(label=lab, count=k, percent=p, ci_low=lo, ci_high=hi, corrected_percent=c,
                           corrected_ci_low=max(c - 2.5, 0), corrected_ci_high=min(c + 2.5, 100),
                           reference_low=ref[0], reference_high=ref[1])
                 for lab, k, p, lo, hi, c, ref in _BLOOD],
        markers=[MarkerRow(label=lab, target="CD16", n=k, median=m, q1=m * 0.8, q3=m * 1.2)
                 for (lab, k, *_), m in zip(_BLOOD, (812.0, 95.0, 210.0, 330.0, 150.0))],
        qc=QCSummary(total_cells=431, counted_cells=400,
                     excluded={"out of focus": 17, "debris or platelet clump": 9, "cell cut by image border": 5}),
        comparison=[ComparisonRow(label=lab, manual_percent=manual[lab], model_percent=p)
                    for lab, _, p, *_ in _BLOOD],
        study=study,
        bland_altman_figures=dict(figures),
        gallery={lab: [_cell_png(100 * i + j) for j in range(gallery_per_class)]
                 for i, (lab, *_) in enumerate(_BLOOD)},
        interpretation=("400 cells were imaged and counted after image quality control. Neutrophils 57.0% "
                        "(52.0–61.9), lymphocytes 30.0% (25.6–34.7). Monocytes 9.0% lie above the laboratory "
                        "reference interval (2.0–8.0%); the other classes lie inside theirs."),
        interpretation_source="template",
        interpretation_edited=True,
        reviewers=[Person(name="Dr. Alexandra Konstantinopoulou-Whitfield", role="reviewer")],
        drafted_by=Person(name="Dr. Alexandra Konstantinopoulou-Whitfield", role="reviewer"),
        signer=Person(name="Dr. Jonas Weber", role="consultant haematologist") if status != "preliminary" else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# A synthetic analysed store (benchmark and tests of the store path)

DEMO_MODEL = "demo-wbc"
DEMO_CLASSES = tuple(row[0] for row in _BLOOD)


def demo_card() -> dict:
    """A model card with everything the differential uses: classes, calibration threshold, validation confusion
    (92 % on the diagonal) and the prior the probabilities assume."""
    k = len(DEMO_CLASSES)
    confusion = [[92 if i == j else 2 for j in range(k)] for i in range(k)]
    prior = {c: round(1 / k, 6) for c in DEMO_CLASSES}
    return {"id": DEMO_MODEL, "version": "2025.03.1", "classes": list(DEMO_CLASSES),
            "calibration": {"unidentified_threshold": 0.5},
            "validation": {"confusion": confusion, "confusion_confident": confusion, "macro_f1": 0.92,
                           "balanced_accuracy": 0.92, "n": 100 * k},
            "training": {"posterior_prior": {"classes": prior}, "class_proportions": prior,
                         "class_weighting": "balanced"}}


def _add_demo_sample(store: Any, sample_id: str, n_cells: int, rng: np.random.Generator, *,
                     images: list[tuple[str, str]]) -> dict[str, float]:
    """Cells (cycling through ``images``: (sha256, blob path)), predictions, QC and a manual count; returns the
    true composition (%) the cells were drawn from."""
    from phenotyping.schemas import ManualCount, Prediction, QCState, Sample, Specimen

    store.create_sample(Sample(id=sample_id, specimen=Specimen.blood, patient_pseudonym=f"DEMO-{sample_id}",
                               collected_at=datetime(2025, 3, 14, 7, 30, tzinfo=timezone.utc)), actor="demo")
    base = np.array([row[2] for row in _BLOOD])
    truth = rng.dirichlet(base * 3)
    true_idx = rng.choice(len(DEMO_CLASSES), size=n_cells, p=truth)
    rows = [{"cell_key": f"{sample_id}-c{i}", "content_hash": images[i % len(images)][0],
             "source_file": f"cell{i:05d}.png", "blob_path": images[i % len(images)][1], "shape": (1, 32, 32),
             "dtype": "uint8"} for i in range(n_cells)]
    ids = store.add_cells(sample_id, rows, actor="demo")
    preds = []
    for cid, t in zip(ids, true_idx):
        pred = int(t) if rng.random() < 0.92 else int(rng.integers(len(DEMO_CLASSES)))
        top = float(rng.uniform(0.6, 0.99))
        rest = (1 - top) / (len(DEMO_CLASSES) - 1)
        probs = {c: (top if j == pred else rest) for j, c in enumerate(DEMO_CLASSES)}
        preds.append(Prediction(cell_id=cid, model_id=DEMO_MODEL, model_version="2025.03.1",
                                predicted_class=DEMO_CLASSES[pred], confidence=top, probabilities=probs,
                                targets={"CD16": float(rng.normal(800 if pred == 0 else 150, 60))}))
    store.add_predictions(preds, sample_id=sample_id, actor="demo")
    n_bad = max(1, n_cells // 30)
    store.set_qc([(cid, QCState.passed, None) for cid in ids[n_bad:]]
                 + [(cid, QCState.excluded, "out of focus") for cid in ids[:n_bad]], sample_id=sample_id,
                 actor="demo")
    store.set_analysis_model(sample_id, DEMO_MODEL, actor="demo")
    manual = rng.multinomial(200, truth)
    store.set_manual_counts(sample_id, [ManualCount(sample_id=sample_id, cell_type=c, count=int(n),
                                                    total_counted=200) for c, n in zip(DEMO_CLASSES, manual)],
                            actor="demo")
    return dict(zip(DEMO_CLASSES, (100 * truth).tolist()))


def demo_store(store: Any, model_dir: Any, *, n_cells: int = 1000, n_other: int = 2, other_cells: int = 300,
               seed: int = 0, study: bool = True) -> str:
    """Fill an empty ``phenotyping.store.Store`` with an analysed synthetic blood sample "DEMO-1" of ``n_cells``
    cells, ``n_other`` more analysed samples, manual counts for all, and (``study``) a saved agreement study over
    them. The model card is written to ``model_dir``. Returns the sample id "DEMO-1". Every value is invented."""
    import json
    from pathlib import Path

    from phenotyping.agreement.study import run_study

    rng = np.random.default_rng(seed)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    card = demo_card()
    (model_dir / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    store.register_model(DEMO_MODEL, path=str(model_dir), card=card, actor="demo", usable=True)
    images = []
    for i in range(64):
        data = base64.b64decode(_cell_png(i, size=32).split(",", 1)[1])
        images.append(store.put_blob(data, suffix=".png"))
    _add_demo_sample(store, "DEMO-1", n_cells, rng, images=images)
    for j in range(n_other):
        _add_demo_sample(store, f"DEMO-{j + 2}", other_cells, rng, images=images)
    if study:
        run_study(store, "Demo comparison", model_id=DEMO_MODEL, actor="demo", card=card)
    return "DEMO-1"
