"""Model vs manual pairs per sample and class (the Agreement screen's table and paired-data download)."""

from __future__ import annotations

import csv
import io

import pytest

from phenotyping.agreement.comparison import CSV_COLUMNS, comparison_csv, sample_comparison, study_comparison
from phenotyping.schemas import ManualCount, Prediction, Sample, Specimen
from tests.conftest import cell_array, png_bytes

CLASSES = ["neutrophil", "lymphocyte"]
CARD = {"id": "toy-1", "classes": CLASSES, "targets": [], "calibration": {"unidentified_threshold": 0.6},
        "training": {"class_proportions": {"neutrophil": 0.5, "lymphocyte": 0.5}, "n_cells": 100}}


def _analysed(store, tmp_path, sample_id: str, n_neutro: int, n_lympho: int) -> None:
    """A sample whose cells the toy model predicted confidently: n_neutro neutrophils, n_lympho lymphocytes."""
    from phenotyping.ingest import ingest_set

    store.create_sample(Sample(id=sample_id, specimen=Specimen.blood), actor="rev")
    folder = tmp_path / sample_id
    folder.mkdir()
    n = n_neutro + n_lympho
    for i in range(n):
        (folder / f"c{i:02d}.png").write_bytes(png_bytes(cell_array(seed=i)))
    ids = ingest_set(store, folder, sample_id, actor="rev").cell_ids
    assert len(ids) == n
    preds = [Prediction(cell_id=cid, model_id="toy-1", model_version="1",
                        predicted_class=CLASSES[0] if k < n_neutro else CLASSES[1], confidence=0.95,
                        probabilities={c: 0.95 if c == (CLASSES[0] if k < n_neutro else CLASSES[1]) else 0.05
                                       for c in CLASSES}) for k, cid in enumerate(ids)]
    store.add_predictions(preds, sample_id=sample_id, actor="rev")
    store.set_analysis_model(sample_id, "toy-1", actor="rev")


def test_sample_comparison_pairs_manual_and_model_percentages(store, tmp_path):
    _analysed(store, tmp_path, "S1", 6, 4)
    with pytest.raises(ValueError, match="no manual counts"):
        sample_comparison(store, "S1", card=CARD)
    store.set_manual_counts("S1", [ManualCount(sample_id="S1", cell_type="neutrophil", count=140),
                                   ManualCount(sample_id="S1", cell_type="lymphocyte", count=60)], actor="rev")
    rows = sample_comparison(store, "S1", card=CARD)
    assert [r.cell_type for r in rows] == CLASSES
    neu, lym = rows
    assert neu.manual_percent == pytest.approx(70.0) and lym.manual_percent == pytest.approx(30.0)
    assert neu.model_raw_percent == pytest.approx(60.0) and lym.model_raw_percent == pytest.approx(40.0)
    assert neu.raw_minus_manual == pytest.approx(-10.0)
    assert neu.manual_total == 200 and neu.model_counted == 10
    assert (neu.model_corrected_percent is None) == (neu.correction is None)


def test_study_comparison_csv_has_one_row_per_sample_and_class(store, tmp_path):
    for sid, (a, b) in {"S1": (6, 4), "S2": (3, 7)}.items():
        _analysed(store, tmp_path, sid, a, b)
        store.set_manual_counts(sid, [ManualCount(sample_id=sid, cell_type="neutrophil", percent=50.0),
                                      ManualCount(sample_id=sid, cell_type="lymphocyte", percent=50.0)], actor="rev")
    with pytest.raises(ValueError, match="has not been analysed"):
        store.create_sample(Sample(id="S3", specimen=Specimen.blood), actor="rev")
        sample_comparison(store, "S3", card=CARD)
    rows = study_comparison(store, ["S2", "S1"], model_id="toy-1", card=CARD)
    parsed = list(csv.DictReader(io.StringIO(comparison_csv(rows))))
    assert tuple(parsed[0]) == CSV_COLUMNS
    assert [(r["sample"], r["class"]) for r in parsed] == [("S2", "neutrophil"), ("S2", "lymphocyte"),
                                                         ("S1", "neutrophil"), ("S1", "lymphocyte")]
    assert float(parsed[0]["model raw %"]) == pytest.approx(30.0) and float(parsed[0]["manual %"]) == 50.0
    assert parsed[0]["manual total"] == "" and parsed[0]["model counted"] == "10"  # percentages without a total
