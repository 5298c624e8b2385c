"""The study workflow over the store: manual counts in, agreement per class out, saved with the model version."""

from __future__ import annotations

import pytest

from phenotyping.agreement.stats import clopper_pearson
from phenotyping.errors import NotFoundError
from phenotyping.analysis.results import sample_results
from phenotyping.schemas import Prediction, Sample, Specimen
from phenotyping.agreement.manual_counts import import_manual_counts, save_manual_counts
from phenotyping.agreement.study import run_study
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
    card = {**CARD, "version": "toy-1@2024-05"}
    result = run_study(store, "pilot", model_id="toy-1", actor="tech", card=card)
    # model: a/20 = 5a %, manual: (10a + 3)/200 = 5a + 1.5 % -> model - manual = -1.5 points for neutrophils
    assert result.raw["neutrophil"].bland_altman.bias == pytest.approx(-1.5)
    assert result.raw["lymphocyte"].bland_altman.bias == pytest.approx(1.5)
    stored = store.get_study("pilot")
    assert stored["model_id"] == "toy-1" and stored["sample_ids"] == ["A", "B", "C", "D"]
    assert stored["model_version"] == result.model_version == "toy-1@2024-05"
    assert stored["result"]["model_version"] == "toy-1@2024-05"
    assert [s["model_version"] for s in store.list_studies()] == ["toy-1@2024-05"]
    assert stored["per_class"]["neutrophil|raw"]["bias"] == pytest.approx(-1.5)
    # the corrected differential (the card has a confusion matrix and a training prior) is saved beside the raw one,
    # with the correction used, and agrees with the result returned
    assert result.corrected is not None
    method = stored["result"]["correction_method"]
    assert method in ("em", "adjusted_count")
    for c in CARD["classes"]:
        saved_corrected = stored["per_class"][f"{c}|corrected"]
        assert saved_corrected["bias"] == pytest.approx(result.corrected[c].bland_altman.bias)
        assert stored["result"]["corrected"][c]["bias"] == pytest.approx(saved_corrected["bias"])
    diff = sample_results(store, "A", card=card, n_bootstrap=0).differential  # "A" is the first sample
    assert result.corrected["neutrophil"].test[0] == pytest.approx(diff.corrected.as_mapping()["neutrophil"])
    # counting error: the manual totals (200 cells) and the 200/400-cell spreads are saved
    ce = stored["per_class"]["neutrophil|raw"]["counting_error"]
    assert ce["reference_cells"] == 200 and [m["n_cells"] for m in ce["manual_counts"]] == [200, 400]
    assert store.list_audit(action="study.save")[0].actor == "tech"


def test_study_reports_classification_against_reviewed_cells(store):
    for sid, (a, b) in {"A": (6, 4), "B": (3, 7), "C": (5, 5)}.items():
        make_sample(store, sid, a, b)
        save_manual_counts(store, sid, [{"cell_type": "neutrophil", "count": a}, {"cell_type": "lymphocyte",
                                                                                 "count": b}], actor="t")
    a_cells = [c.id for c in store.list_cells("A")]  # predicted: 6 neutrophils, then 4 lymphocytes
    b_cells = [c.id for c in store.list_cells("B")]  # predicted: 3 neutrophils, then 7 lymphocytes
    store.reclassify(a_cells[:2], "neutrophil", actor="rev", model_id="toy-1")  # confirmed
    store.reclassify([a_cells[2]], "lymphocyte", actor="rev", model_id="toy-1")  # the model was wrong
    store.reclassify([a_cells[6]], "lymphocyte", actor="rev", model_id="toy-1")  # confirmed
    store.reclassify([b_cells[3]], "neutrophil", actor="rev", model_id="toy-1")  # the model was wrong
    store.reclassify([b_cells[4]], "lymphocyte", actor="rev", model_id="toy-1")  # confirmed
    store.reclassify([b_cells[5]], "debris", actor="rev", model_id="toy-1")  # not a model class: left out
    result = run_study(store, "cells", model_id="toy-1", actor="rev", card=CARD)
    cls = result.classification
    assert (cls.n_reviewed, cls.n_cells) == (7, 6) and dict(cls.excluded) == {"reviewed as debris": 1}
    # reviewer (reference) vs model (test): neutrophil TP 2, FN 1 (B's cell), FP 1 (A's third cell), TN 2
    neu, lym = cls.per_class["neutrophil"], cls.per_class["lymphocyte"]
    assert (neu.tp, neu.fn, neu.fp, neu.tn) == (2, 1, 1, 2)
    assert neu.sensitivity == pytest.approx(2 / 3) and neu.specificity == pytest.approx(2 / 3)
    assert neu.efficiency == pytest.approx(4 / 6) and neu.sensitivity_ci[0] < 2 / 3 < neu.sensitivity_ci[1]
    assert (lym.tp, lym.fn, lym.fp, lym.tn) == (2, 1, 1, 2)
    assert cls.kappa.observed_agreement == pytest.approx(4 / 6) and cls.kappa.kappa == pytest.approx(1 / 3)
    stored = store.get_study("cells")
    saved = stored["result"]["classification"]
    assert saved["n_cells"] == 6 and saved["excluded"] == {"reviewed as debris": 1}
    assert saved["kappa"]["kappa"] == pytest.approx(1 / 3)
    assert stored["per_class"]["neutrophil|classification"]["sensitivity"] == pytest.approx(2 / 3)
    assert stored["per_class"]["neutrophil|classification"]["sensitivity_ci"] == pytest.approx(
        list(clopper_pearson(2, 3)))


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
