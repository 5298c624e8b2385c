"""The screens of issue 20 (items 4, 14, 15, 16): the corrected % and its refusal on Review, predicted markers with
units, manual counts with classes the model lacks, and studies over one model's samples."""

from __future__ import annotations

import json

from phenotyping.schemas import Prediction
from tests.test_app import CARD, CLASSES, _analysed_sample, app, app_env, errors, lab, table  # noqa: F401


def _rewrite_card(app_env, **changes) -> None:
    (app_env / "toy-model" / "model_card.json").write_text(json.dumps({**CARD, **changes}))


def test_review_says_why_no_correction_is_shown(lab, app_env):
    """A card with 10 validation cells per class cannot support a correction: Review shows the raw counts and a
    note naming the classes and the reason, and no corrected column."""
    _rewrite_card(app_env, validation={**CARD["validation"], "confusion": [[9, 1], [2, 8]]})
    at = app("rev", "review")
    assert not at.exception, at.exception
    notes = [i.value for i in at.info]
    assert any("Correction not applied for neutrophil, lymphocyte" in n and "only 10 validation cells" in n
               and "raw counts shown" in n for n in notes), notes
    diff = table(at, "raw %")
    assert not any(c.startswith("corrected") for c in diff.columns)


def test_review_names_the_correction_it_shows(lab):
    at = app("rev", "review")
    assert not at.exception, at.exception
    assert any("the correction the report shows" in c.value and "adjusted count" in c.value for c in at.caption)


def test_review_markers_are_labelled_predicted_with_the_card_unit_and_three_figures(lab, app_env):
    store, ids = lab
    _rewrite_card(app_env, targets=[{"name": "cd16", "log": False, "mean": 0.0, "std": 1.0, "unit": "MFI"}])
    store.delete_predictions("S1", "toy-1", actor="rev")
    store.add_predictions([Prediction(cell_id=cid, model_id="toy-1", model_version="1", predicted_class=CLASSES[k % 2],
                                      confidence=0.9, probabilities={c: 0.9 if c == CLASSES[k % 2] else 0.1
                                                                     for c in CLASSES},
                                      targets={"cd16": 296961.8047}) for k, cid in enumerate(ids)],
                          sample_id="S1", actor="rev")
    at = app("rev", "review")
    at.session_state["review_tab"] = "Marker expression"  # only the open tab runs
    at.run()
    assert not at.exception, at.exception
    markers = table(at, "predicted median (MFI)")
    assert set(markers["predicted median (MFI)"]) == {"297,000"}
    assert any("predicted by the model" in c.value and "MFI" in c.value for c in at.caption)


def test_manual_count_may_include_basophils_the_model_lacks(lab):
    """Issue 20.14: 6 + 4 cells of the model's classes and 1 basophil make an 11-cell total, saved as such."""
    store, _ = lab
    at = app("rev", "agreement")
    assert not at.exception, at.exception
    assert "basophil" in list(at.data_editor[1].value["cell_type"])
    at.session_state["counts_S1"] = {"edited_rows": {0: {"count": 6}, 1: {"count": 4}}, "added_rows": [],
                                     "deleted_rows": []}
    baso = list(at.data_editor[1].value["cell_type"]).index("basophil")
    at.session_state["extra_counts_S1"] = {"edited_rows": {baso: {"count": 1}}, "added_rows": [], "deleted_rows": []}
    at.run()
    next(n for n in at.number_input if n.label.startswith("Total cells")).set_value(11)
    next(b for b in at.button if b.label == "Save manual count").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    assert {c.cell_type: c.count for c in store.get_manual_counts("S1")} == {"neutrophil": 6, "lymphocyte": 4,
                                                                            "basophil": 1}
    paired = table(at, "manual %")
    assert "basophil (not in the model)" in list(paired["class"])
    assert "flag" in paired.columns


def test_study_offers_only_the_chosen_models_samples_and_explains_its_table(lab, app_env):
    """Issue 20.15: a sample analysed with another model is not pre-selected (the study ran into an error);
    "Pearson r: None" becomes a reason; three samples carry the Bland-Altman caveat."""
    from phenotyping.agreement.manual_counts import save_manual_counts
    from phenotyping.schemas import Sample, Specimen

    store, _ = lab
    _analysed_sample(store, app_env / "s2", "S2", ["neutrophil"] * 7 + ["lymphocyte"] * 3)
    _analysed_sample(store, app_env / "s3", "S3", ["neutrophil"] * 3 + ["lymphocyte"] * 7)
    store.create_sample(Sample(id="S4", specimen=Specimen.blood), actor="rev")
    store.set_analysis_model("S4", "toy-2", actor="rev")
    for sid, neu in (("S1", 55), ("S2", 72), ("S3", 28), ("S4", 50)):
        save_manual_counts(store, sid, [{"cell_type": "neutrophil", "count": neu},
                                        {"cell_type": "lymphocyte", "count": 100 - neu}], actor="rev")
    at = app("rev", "agreement")
    assert not at.exception, at.exception
    samples = next(m for m in at.multiselect if m.label.startswith("Samples"))
    assert list(samples.value) == ["S1", "S2", "S3"]
    next(b for b in at.button if b.label == "Run study").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    rows = table(at, "Pearson r")
    assert set(rows["Pearson r"]) == {"not computable (n = 3 < 4)"}
    assert any("LoA: limits of agreement" in c.value and "CCC" in c.value for c in at.caption)
    assert any("Only 3 samples" in w.value for w in at.warning)
