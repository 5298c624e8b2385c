"""Manual counts with classes the model lacks, flagged model-manual gaps, and studies over one model's samples."""

from __future__ import annotations

import pytest

from phenotyping.agreement import manual_counts as mc
from phenotyping.agreement.comparison import comparison_csv, sample_comparison
from phenotyping.agreement.study import run_study
from phenotyping.schemas import Sample, Specimen
from tests.test_results import CARD
from tests.test_studies import make_sample


def _basophil_rows():
    return [{"cell_type": "neutrophil", "count": 210, "total_counted": 351},
            {"cell_type": "lymphocyte", "count": 140, "total_counted": 351},
            {"cell_type": "basophil", "count": 1, "total_counted": 351}]


def test_a_manual_count_may_hold_a_class_the_model_lacks(store):
    """Issue 20.14: 350 model-class cells and one basophil make a 351-cell total, which was refused."""
    make_sample(store, "A", 6, 4)
    model, extra = mc.manual_classes(CARD["classes"], "blood")
    assert model == CARD["classes"] and "basophil" in extra and "neutrophil" not in extra
    saved = mc.save_manual_counts(store, "A", _basophil_rows(), actor="t", allowed_classes=model, extra_classes=extra)
    assert sum(m.count for m in saved) == 351 and {m.total_counted for m in saved} == {351}
    with pytest.raises(ValueError, match=r"unknown cell type 'blasts'.*not in the model"):
        mc.save_manual_counts(store, "A", [{"cell_type": "blasts", "count": 3}], actor="t", allowed_classes=model,
                              extra_classes=extra)


def test_the_comparison_shows_a_manual_only_class_as_such_and_flags_large_gaps(store):
    make_sample(store, "A", 9, 1)  # model: 90 % neutrophils
    mc.save_manual_counts(store, "A", _basophil_rows(), actor="t", allowed_classes=CARD["classes"],
                          extra_classes=["basophil"])
    rows = {r.cell_type: r for r in sample_comparison(store, "A", card=CARD)}
    assert list(rows) == ["neutrophil", "lymphocyte", "basophil"]
    baso = rows["basophil"]
    assert not baso.in_model and baso.model_raw_percent is None and baso.flag == "class not in the model"
    assert baso.manual_percent == pytest.approx(100 / 351)
    neu = rows["neutrophil"]
    assert neu.manual_percent == pytest.approx(60.0)  # 210 of the 350 cells of the model's classes
    assert neu.raw_minus_manual == pytest.approx(30.0)
    assert neu.flag.startswith("raw +30.0 points vs manual")
    assert "class not in the model" in comparison_csv(list(rows.values()))


def test_a_small_gap_is_not_flagged(store):
    make_sample(store, "A", 6, 4)
    mc.save_manual_counts(store, "A", [{"cell_type": "neutrophil", "count": 130},
                                       {"cell_type": "lymphocyte", "count": 70}], actor="t")
    rows = sample_comparison(store, "A", card=CARD)
    assert all(r.flag == "" for r in rows)


def test_a_study_compares_the_model_classes_and_refuses_samples_of_another_model(store):
    from phenotyping.agreement.study import study_candidates

    for sid, (a, b) in {"A": (6, 4), "B": (5, 5), "C": (7, 3)}.items():
        make_sample(store, sid, a, b)
        mc.save_manual_counts(store, sid, _basophil_rows(), actor="t", allowed_classes=CARD["classes"],
                              extra_classes=["basophil"])
    result = run_study(store, "s", model_id="toy-1", actor="t", card=CARD)
    assert result.raw["neutrophil"].bland_altman is not None
    saved = store.list_studies()[0]
    assert saved["name"] == "s"
    store.create_sample(Sample(id="D", specimen=Specimen.blood), actor="t")
    mc.save_manual_counts(store, "D", [{"cell_type": "neutrophil", "percent": 100}], actor="t")
    store.set_analysis_model("D", "other-model", actor="t")
    assert study_candidates(store, "toy-1") == ["A", "B", "C"]
    with pytest.raises(ValueError, match=r"\['D'\] were analysed with \['other-model'\], not with model 'toy-1'"):
        run_study(store, "s2", model_id="toy-1", actor="t", card=CARD, sample_ids=["A", "B", "C", "D"])
