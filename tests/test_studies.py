"""The study workflow over the store: manual counts in, agreement per class out, saved with the model version."""

from __future__ import annotations

import pytest

from phenotyping.errors import NotFoundError
from phenotyping.schemas import Prediction, Sample, Specimen
from phenotyping.studies import import_manual_counts, run_study, save_manual_counts
from tests.test_results import CARD
from tests.test_store import add_cells


def make_sample(store, sid, n_neut, n_lymph):
    store.create_sample(Sample(id=sid, specimen=Specimen.balf), actor="t")
    n = n_neut + n_lymph
    ids = add_cells(store, n, sample_id=sid)
    labels = ["neutrophil"] * n_neut + ["lymphocyte"] * n_lymph
    store.add_predictions([
        Prediction(cell_id=i, model_id="toy-1", model_version="1", predicted_class=lab, confidence=0.95,
                   probabilities={"neutrophil": 0.95 if lab == "neutrophil" else 0.05,
                                  "lymphocyte": 0.95 if lab == "lymphocyte" else 0.05})
        for i, lab in zip(ids, labels)], sample_id=sid, actor="model")
    store.set_analysis_model(sid, "toy-1", actor="t")


def test_import_validate_and_run_study(store):
    compositions = {"A": (12, 8), "B": (5, 15), "C": (10, 10), "D": (16, 4)}
    for sid, (a, b) in compositions.items():
        make_sample(store, sid, a, b)
    csv_text = "sample_id,cell_type,count,total_counted\n" + "".join(
        f"{sid},neutrophil,{a * 10 + 3},200\n{sid},lymphocyte,{200 - a * 10 - 3},200\n"
        for sid, (a, _) in compositions.items())
    saved = import_manual_counts(store, csv_text, actor="tech", allowed_classes=CARD["classes"])
    assert saved == {"A": 2, "B": 2, "C": 2, "D": 2}
    result = run_study(store, "pilot", model_id="toy-1", actor="tech", card=CARD)
    # model: a/20 = 5a %, manual: (10a + 3)/200 = 5a + 1.5 % -> model - manual = -1.5 points for neutrophils
    assert result.raw["neutrophil"].bland_altman.bias == pytest.approx(-1.5)
    assert result.raw["lymphocyte"].bland_altman.bias == pytest.approx(1.5)
    stored = store.get_study("pilot")
    assert stored["model_id"] == "toy-1" and stored["sample_ids"] == ["A", "B", "C", "D"]
    assert stored["per_class"]["neutrophil|raw"]["bias"] == pytest.approx(-1.5)
    assert store.list_audit(action="study.save")[0].actor == "tech"


def test_counts_for_unknown_sample_or_class_are_refused(store):
    make_sample(store, "A", 1, 1)
    with pytest.raises(NotFoundError, match="ZZ"):
        import_manual_counts(store, "sample_id,cell_type,percent\nZZ,neutrophil,100\n", actor="t")
    with pytest.raises(ValueError, match="basophil"):
        save_manual_counts(store, "A", [{"cell_type": "basophil", "count": 3, "total_counted": 3}], actor="t",
                           allowed_classes=CARD["classes"])
    assert store.get_manual_counts("A") == []
    saved = save_manual_counts(store, "A", [{"cell_type": "neutrophil", "percent": 60.0},
                                            {"cell_type": "lymphocyte", "percent": 40.0},
                                            {"cell_type": "", "count": None, "percent": None}],
                               actor="t", allowed_classes=CARD["classes"])
    assert {c.cell_type for c in saved} == {"neutrophil", "lymphocyte"}


def test_study_needs_analysed_samples(store):
    store.create_sample(Sample(id="X", specimen=Specimen.blood), actor="t")
    save_manual_counts(store, "X", [{"cell_type": "neutrophil", "percent": 100}], actor="t")
    with pytest.raises(ValueError, match="analyse it first"):
        run_study(store, "s", model_id="toy-1", actor="t", card=CARD)
