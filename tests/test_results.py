"""Which cells a sample's differential counts: QC exclusions, reviews, the unidentified queue."""

from __future__ import annotations

import json

import pytest

from phenotyping.errors import NotFoundError
from phenotyping.results import NOT_ANALYSED, UNIDENTIFIED, model_dir_for, sample_results
from phenotyping.schemas import Prediction, QCState
from tests.test_store import add_cells

CARD = {
    "id": "toy-1",
    "classes": ["neutrophil", "lymphocyte"],
    "calibration": {"temperature": 1.0, "unidentified_threshold": 0.6},
    "validation": {"confusion": [[45, 5], [10, 40]]},
    "training": {"class_proportions": {"neutrophil": 0.5, "lymphocyte": 0.5}},
}


def predict(store, ids, labels, confs):
    store.add_predictions([
        Prediction(cell_id=i, model_id="toy-1", model_version="1", predicted_class=lab, confidence=cf,
                   probabilities={"neutrophil": cf if lab == "neutrophil" else 1 - cf,
                                  "lymphocyte": cf if lab == "lymphocyte" else 1 - cf},
                   targets={"cd16": 10.0 if lab == "neutrophil" else 1.0})
        for i, lab, cf in zip(ids, labels, confs)], sample_id="S1", actor="model")


def test_counting_rules(store, sample):
    ids = add_cells(store, 8)
    predict(store, ids[:7], ["neutrophil"] * 4 + ["lymphocyte"] * 3, [0.9, 0.9, 0.9, 0.55, 0.9, 0.9, 0.9])
    store.set_qc([(ids[6], QCState.excluded, "out of focus")], sample_id="S1", actor="qc")
    store.reclassify([ids[4]], "neutrophil", actor="rev", model_id="toy-1")
    store.reclassify([ids[5]], "debris", actor="rev", model_id="toy-1")
    store.set_analysis_model("S1", "toy-1", actor="rev")
    r = sample_results(store, "S1", card=CARD, n_bootstrap=0)
    assert r.exclusions == {UNIDENTIFIED: 1, "reviewed as debris": 1, "out of focus": 1, NOT_ANALYSED: 1}
    assert r.n_unidentified == 1
    counts = {row.label: row.count for row in r.differential.raw.classes}
    assert counts == {"neutrophil": 4, "lymphocyte": 0}  # 3 predicted + 1 reviewed
    assert r.differential.raw.n_counted == 4
    # reviewing the unsure cell takes it out of the queue and into the count
    store.reclassify([ids[3]], "lymphocyte", actor="rev", model_id="toy-1")
    r = sample_results(store, "S1", card=CARD, n_bootstrap=0)
    assert r.n_unidentified == 0 and r.differential.raw.n_counted == 5
    assert r.differential.raw.percent("lymphocyte") == pytest.approx(20.0)
    assert json.dumps(r.to_dict())  # serialisable


def test_no_model_means_no_differential(store, sample):
    add_cells(store, 2)
    r = sample_results(store, "S1")
    assert r.differential is None and r.exclusions == {NOT_ANALYSED: 2}


def test_unknown_model_names_what_exists(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_card.json").write_text(json.dumps(CARD))
    assert model_dir_for("toy-1", search_path=[tmp_path]) == tmp_path / "m"
    with pytest.raises(NotFoundError, match="toy-1"):
        model_dir_for("nope", search_path=[tmp_path])


def test_exclusions_are_grouped_by_category(store, sample):
    ids = add_cells(store, 3)
    predict(store, ids, ["neutrophil"] * 3, [0.9, 0.9, 0.9])
    store.set_qc([(ids[0], QCState.excluded, "out of focus: focus 0.21 < 0.30"),
                  (ids[1], QCState.excluded, "out of focus: focus 0.12 < 0.30")], sample_id="S1", actor="qc")
    r = sample_results(store, "S1", model_id="toy-1", card=CARD, n_bootstrap=0)
    assert r.exclusions == {"out of focus": 2}
    assert r.cells[0].exclusion == "out of focus: focus 0.21 < 0.30"  # each cell keeps its full reason
