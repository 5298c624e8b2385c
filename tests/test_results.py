"""Which cells a sample's differential counts: QC exclusions, reviews, the unidentified queue."""

from __future__ import annotations

import json

import pytest

from phenotyping.errors import NotFoundError
from phenotyping.analysis.results import NOT_ANALYSED, UNIDENTIFIED, model_dir_for, sample_results
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


def test_card_gaps_are_notes_not_silent(store, sample):
    """A card without the pieces a correction needs says so in the differential's notes."""
    ids = add_cells(store, 4)
    predict(store, ids, ["neutrophil", "lymphocyte"] * 2, [0.9] * 4)
    store.set_analysis_model("S1", "toy-1", actor="rev")
    bare = {"id": "toy-1", "classes": CARD["classes"], "calibration": CARD["calibration"]}
    r = sample_results(store, "S1", card=bare, n_bootstrap=0)
    assert r.differential.adjusted_count is None and r.differential.em is None
    notes = " ".join(r.differential.notes)
    assert "no validation confusion matrix" in notes and "posterior_prior" in notes
    with pytest.raises(ValueError, match="unidentified_threshold"):
        sample_results(store, "S1", card={**bare, "calibration": {}}, n_bootstrap=0)


def test_em_uses_the_prior_the_probabilities_assume():
    """Balanced class weights fit posteriors under a uniform prior: EM must divide by that, not by the frequencies.

    The cells' posteriors below are exactly Bayes posteriors under a uniform prior (two 1-D Gaussian classes), the
    sample's true composition equals the training frequencies (no shift at all); EM with the right prior recovers it,
    EM with the training frequencies drifts.
    """
    import numpy as np

    from phenotyping.analysis.differential import em_prior_shift
    from phenotyping.analysis.prior import card_posterior_prior

    rng = np.random.default_rng(0)
    y = (rng.random(20000) < 0.2).astype(int)  # 80 % class 0, 20 % class 1
    x = rng.normal(np.where(y == 1, 1.5, 0.0), 1.0)
    lik = np.stack([np.exp(-0.5 * x**2), np.exp(-0.5 * (x - 1.5) ** 2)], axis=1)
    post_uniform = lik / lik.sum(1, keepdims=True)
    card = {"training": {"class_weighting": "balanced class weights n/(K·n_k) in the cross-entropy",
                         "class_proportions": {"a": 0.8, "b": 0.2}}}
    prior, why = card_posterior_prior(card, ["a", "b"])
    assert why is None and prior.tolist() == [0.5, 0.5]
    right, _ = em_prior_shift(post_uniform, prior)
    wrong, _ = em_prior_shift(post_uniform, np.array([0.8, 0.2]))
    assert right[1] == pytest.approx(0.2, abs=0.02)
    assert abs(wrong[1] - 0.2) > 0.05
    knn = {"training": {"class_weighting": "none (kNN)", "class_proportions": {"a": 0.8, "b": 0.2}}}
    assert card_posterior_prior(knn, ["a", "b"])[0].tolist() == pytest.approx([0.8, 0.2])
    stored = {"training": {"posterior_prior": {"classes": {"a": 0.3, "b": 0.7}}}}
    assert card_posterior_prior(stored, ["a", "b"])[0].tolist() == pytest.approx([0.3, 0.7])


def test_reviewed_cells_are_not_corrected_by_the_adjusted_count(store, sample):
    """Cells a reviewer labelled are certain: only model-classified cells go through the confusion matrix."""
    ids = add_cells(store, 6)
    predict(store, ids, ["neutrophil"] * 6, [0.9] * 6)
    store.set_analysis_model("S1", "toy-1", actor="rev")
    card = {**CARD, "validation": {"confusion_confident": [[40, 10], [10, 40]]}}
    before = sample_results(store, "S1", card=card, n_bootstrap=0).differential
    assert before.adjusted_count.as_mapping()["neutrophil"] == pytest.approx(100.0)  # 6/6 predicted → clipped at 1
    store.reclassify(ids, "neutrophil", actor="rev", model_id="toy-1")  # a reviewer confirms every cell
    after = sample_results(store, "S1", card=card, n_bootstrap=20).differential
    assert after.adjusted_count.as_mapping() == pytest.approx({"neutrophil": 100.0, "lymphocyte": 0.0})
    assert after.adjusted_count.ci_low[0] == pytest.approx(100.0)  # nothing uncertain is left
    store.reclassify(ids[:3], "lymphocyte", actor="rev", model_id="toy-1")
    mixed = sample_results(store, "S1", card=card, n_bootstrap=0).differential
    assert mixed.adjusted_count.as_mapping()["lymphocyte"] == pytest.approx(50.0)
    assert not any("all validation cells" in n for n in mixed.notes)  # the confident confusion was used


def test_a_class_with_no_confident_validation_cell_borrows_its_row_from_all_validation_cells(store, sample):
    """A rare class whose few validation cells all fell below the threshold leaves an empty row in the confident
    confusion; the adjusted count still runs, with that row from all validation cells, and says so."""
    ids = add_cells(store, 10)
    predict(store, ids, ["neutrophil"] * 6 + ["lymphocyte"] * 4, [0.9] * 10)
    store.set_analysis_model("S1", "toy-1", actor="rev")
    card = {**CARD, "validation": {"confusion_confident": [[40, 10], [0, 0]], "confusion": [[45, 5], [2, 8]]}}
    d = sample_results(store, "S1", card=card, n_bootstrap=0).differential
    assert d.adjusted_count is not None
    # by hand: P(pred | true) rows [0.8, 0.2] and [0.2, 0.8]; observed [0.6, 0.4] → true neutrophil share 2/3
    assert d.adjusted_count.as_mapping()["neutrophil"] == pytest.approx(100 * 2 / 3)
    assert any("no validation cell of lymphocyte is above" in n for n in d.notes)
    neither = {**CARD, "validation": {"confusion_confident": [[40, 10], [0, 0]], "confusion": [[45, 5], [0, 0]]}}
    d = sample_results(store, "S1", card=neither, n_bootstrap=0).differential
    assert d.adjusted_count is None and any("adjusted count not computed" in n for n in d.notes)


def test_em_waits_for_the_unidentified_queue(store, sample):
    """Counting only confident cells selects on the image, which EM cannot model: the corrected % is the adjusted
    count until the queue is reviewed, then EM."""
    ids = add_cells(store, 6)
    predict(store, ids, ["neutrophil", "lymphocyte"] * 3, [0.9, 0.9, 0.9, 0.9, 0.9, 0.55])  # last one is unsure
    store.set_analysis_model("S1", "toy-1", actor="rev")
    card = {**CARD, "training": {**CARD["training"], "class_weighting": "balanced class weights n/(K·n_k)"}}
    d = sample_results(store, "S1", card=card, n_bootstrap=0).differential
    assert d.em is None and d.corrected is d.adjusted_count
    assert any("once the 1 unidentified cell(s) are reviewed" in n for n in d.notes)
    store.reclassify([ids[5]], "lymphocyte", actor="rev", model_id="toy-1")
    d = sample_results(store, "S1", card=card, n_bootstrap=0).differential
    assert d.em is not None and d.corrected is d.em
