"""Specimen-aware differentials: the model card's ``specimens`` rule (which classes a blood or BALF differential
counts, which are reported apart and how), applied by sample_results, the report, its PDF and FHIR export."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from scipy.stats import beta

from phenotyping.analysis.results import sample_results
from phenotyping.analysis.specimens import build_section, default_specimens, parse_section, specimen_check
from phenotyping.schemas import Prediction, Sample, Specimen
from phenotyping.settings import Settings
from tests.test_store import add_cells

BLOOD = ["neutrophil", "lymphocyte", "erythroblast", "platelet"]
BLOOD_CARD = {
    "id": "blood-1", "classes": BLOOD,
    "calibration": {"temperature": 1.0, "unidentified_threshold": 0.5},
    "validation": {"confusion_confident": [[40, 2, 0, 0], [2, 40, 1, 1], [0, 1, 20, 0], [0, 2, 0, 30]]},
    "training": {"class_proportions": dict.fromkeys(BLOOD, 0.25), "class_weighting": "balanced class weights"},
    "specimens": {"blood": {"counted": ["neutrophil", "lymphocyte"], "per_100_leukocytes": ["erythroblast"],
                            "counted_apart": ["platelet"]}},
}
BALF = ["macrophage", "lymphocyte", "neutrophil", "eosinophil", "epithelial"]
BALF_CARD = {
    "id": "balf-1", "classes": BALF,
    "calibration": {"temperature": 1.0, "unidentified_threshold": 0.5},
    "validation": {"confusion_confident": (np.eye(5, dtype=int) * 30 + 1).tolist()},
    "training": {"class_proportions": dict.fromkeys(BALF, 0.2)},
    "specimens": {"balf": {"counted": ["macrophage", "lymphocyte", "neutrophil", "eosinophil"],
                           "noted": ["epithelial"]}},
}
# 6 neutrophils, 4 lymphocytes (10 leukocytes), 2 erythroblasts, 3 platelets
BLOOD_LABELS = ["neutrophil"] * 6 + ["lymphocyte"] * 4 + ["erythroblast"] * 2 + ["platelet"] * 3
# 14 macrophages, 3 lymphocytes, 2 neutrophils, 1 eosinophil (20 counted), 5 epithelial cells
BALF_LABELS = ["macrophage"] * 14 + ["lymphocyte"] * 3 + ["neutrophil"] * 2 + ["eosinophil"] * 1 + ["epithelial"] * 5


def _predict(store, sample_id: str, card: dict, labels: list[str]) -> None:
    ids = add_cells(store, len(labels), sample_id=sample_id)
    classes = card["classes"]
    store.add_predictions([
        Prediction(cell_id=i, model_id=card["id"], model_version="1", predicted_class=lab, confidence=0.9,
                   probabilities={c: 0.9 if c == lab else 0.1 / (len(classes) - 1) for c in classes})
        for i, lab in zip(ids, labels)], sample_id=sample_id, actor="model")
    store.set_analysis_model(sample_id, card["id"], actor="rev")


def _sample(store, sample_id: str, specimen: Specimen) -> None:
    store.create_sample(Sample(id=sample_id, specimen=specimen, patient_pseudonym="P-9"), actor="tester")


# -- the card section -------------------------------------------------------------------------------------------------
def test_defaults_from_class_names_and_errors_name_the_class():
    assert default_specimens(["Neutrophils", "lymphocyte", "monocyte", "eosinophil"]) == ["blood"]
    assert default_specimens(["G1", "S", "G2", "Metaphase"]) == []
    assert default_specimens(["macrophage", "lymphocyte", "neutrophil", "eosinophil", "epithelial"]) == ["balf"]
    pbc = ["neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte", "ig", "erythroblast", "platelet"]
    assert build_section(pbc) == {"blood": {
        "counted": ["neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte", "ig"],
        "per_100_leukocytes": ["erythroblast"], "counted_apart": ["platelet"]}}
    assert build_section(BALF, specimens=["balf"]) == BALF_CARD["specimens"]
    with pytest.raises(ValueError, match="'monocyte', which is not one of the model's classes"):
        build_section(BLOOD, given={"blood": {"counted": ["neutrophil", "lymphocyte", "monocyte"],
                                              "counted_apart": ["platelet", "erythroblast"]}})
    with pytest.raises(ValueError, match=r"does not place class\(es\) \['platelet'\]"):
        parse_section({"blood": {"counted": ["neutrophil", "lymphocyte", "erythroblast"]}}, BLOOD)
    with pytest.raises(ValueError, match="specimen 'urine' is not one of"):
        parse_section({"urine": {"counted": BLOOD}}, BLOOD)
    with pytest.raises(ValueError, match="not both"):
        build_section(BLOOD, specimens=["blood"], given=BLOOD_CARD["specimens"])


def test_calibrate_adds_the_section_to_an_older_card(tmp_path, capsys):
    from phenotyping.__main__ import main

    card = {k: v for k, v in BLOOD_CARD.items() if k != "specimens"}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    assert main(["calibrate", "--model", str(tmp_path), "--specimens-only"]) == 0
    written = json.loads((tmp_path / "model_card.json").read_text())
    assert written["specimens"] == BLOOD_CARD["specimens"]  # defaults from the class names
    assert {k: v for k, v in written.items() if k != "specimens"} == card  # nothing else changed
    bad = json.dumps({"blood": {"counted": ["neutrophil", "basophil"]}})
    assert main(["calibrate", "--model", str(tmp_path), "--specimens-only", "--specimen-classes", bad]) == 2
    assert "'basophil', which is not one of the model's classes" in capsys.readouterr().err


# -- the differential -------------------------------------------------------------------------------------------------
def test_blood_percentages_count_leukocytes_only_and_report_the_rest_apart(store):
    _sample(store, "B1", Specimen.blood)
    _predict(store, "B1", BLOOD_CARD, BLOOD_LABELS)
    res = sample_results(store, "B1", n_bootstrap=0, card=BLOOD_CARD)
    d = res.differential
    assert res.specimen_check.declared and res.specimen_check.message is None
    assert [c.label for c in d.raw.classes] == ["neutrophil", "lymphocyte"]
    assert d.raw.n_counted == 10 and sum(c.percent for c in d.raw.classes) == pytest.approx(100.0)
    assert d.raw.percent("neutrophil") == pytest.approx(60.0)
    apart = {a.label: a for a in d.apart}
    ery, plt = apart["erythroblast"], apart["platelet"]
    assert (ery.role, ery.count, ery.unit) == ("per_100_leukocytes", 2, "/100 leukocytes")
    assert ery.value == pytest.approx(20.0)  # 2 per 10 leukocytes
    # exact CI of the ratio: Clopper-Pearson of 2 / (2 + 10), mapped through 100 p / (1 - p)
    p_lo, p_hi = beta.ppf(0.025, 2, 11), beta.ppf(0.975, 3, 10)
    assert ery.ci_low == pytest.approx(100 * p_lo / (1 - p_lo)) and ery.ci_high == pytest.approx(100 * p_hi / (1 - p_hi))
    assert (plt.role, plt.count, plt.value, plt.ci_low) == ("counted_apart", 3, 3.0, None)
    assert d.n_cells == 15 and not d.qc_counts  # platelets and erythroblasts are reported, not excluded
    for comp in (d.adjusted_count, d.em):  # corrected over every class, reported over the counted ones
        assert comp.labels == ("neutrophil", "lymphocyte") and sum(comp.percent) == pytest.approx(100.0)
        assert [lab for lab, *_ in comp.per_100_leukocytes] == ["erythroblast"]
    assert json.dumps(res.to_dict())


def test_a_perfect_confusion_corrects_nothing_and_keeps_the_apart_ratio(store):
    """With an error-free validation confusion the adjusted count equals the raw count, also per 100 leukocytes:
    the renormalisation over counted classes is consistent with the raw rule."""
    _sample(store, "B1", Specimen.blood)
    _predict(store, "B1", BLOOD_CARD, BLOOD_LABELS)
    card = {**BLOOD_CARD, "validation": {"confusion_confident": (np.eye(4, dtype=int) * 50).tolist()}}
    d = sample_results(store, "B1", n_bootstrap=50, card=card).differential
    assert d.adjusted_count.as_mapping() == pytest.approx({"neutrophil": 60.0, "lymphocyte": 40.0})
    (label, per_100, lo, hi), = d.adjusted_count.per_100_leukocytes
    assert label == "erythroblast" and per_100 == pytest.approx(20.0) and lo <= per_100 <= hi


def test_balf_card_counts_macrophages_and_notes_epithelial_cells(store):
    _sample(store, "L1", Specimen.balf)
    _predict(store, "L1", BALF_CARD, BALF_LABELS)
    res = sample_results(store, "L1", n_bootstrap=0, card=BALF_CARD)
    d = res.differential
    assert res.specimen_check.declared
    assert [c.label for c in d.raw.classes] == ["macrophage", "lymphocyte", "neutrophil", "eosinophil"]
    assert d.raw.n_counted == 20 and d.raw.percent("macrophage") == pytest.approx(70.0)
    (epi,) = d.apart
    assert (epi.label, epi.role, epi.count) == ("epithelial", "noted", 5)
    assert epi.value == pytest.approx(20.0)  # 5 of the 25 counted and noted cells
    assert epi.ci_low < 20.0 < epi.ci_high


def test_an_undeclared_specimen_is_stated_and_follows_the_cards_own_rule(store):
    _sample(store, "L1", Specimen.balf)
    _predict(store, "L1", BLOOD_CARD, BLOOD_LABELS)
    res = sample_results(store, "L1", n_bootstrap=0, card=BLOOD_CARD)
    check = res.specimen_check
    assert not check.declared and check.declared_specimens == ("blood",)
    assert "not meant for balf samples" in check.message and "declares blood only" in check.message
    assert [c.label for c in res.differential.raw.classes] == ["neutrophil", "lymphocyte"]  # still no platelets
    older = {k: v for k, v in BLOOD_CARD.items() if k != "specimens"}
    check = specimen_check(older, "blood")
    assert not check.declared and check.declared_specimens is None and "no 'specimens' section" in check.message
    assert check.spec.counted == tuple(BLOOD)
    none = specimen_check({**older, "specimens": {}}, "blood")
    assert not none.declared and "declares no clinical specimen" in none.message


def test_committed_cards_declare_their_specimens():
    from tests.conftest import PROJECT_ROOT

    wbc = json.loads((PROJECT_ROOT / "models/wbc-hybrid/model_card.json").read_text())
    assert specimen_check(wbc, "blood").declared and not specimen_check(wbc, "balf").declared
    for folder in ("jurkat-hybrid", "jurkat-cnn"):
        jurkat = json.loads((PROJECT_ROOT / "models" / folder / "model_card.json").read_text())
        assert jurkat["specimens"] == {} and not specimen_check(jurkat, "blood").declared


# -- the report, its PDF and FHIR ------------------------------------------------------------------------------------
def _context(store, tmp_path, sample_id: str, specimen: Specimen, card: dict, labels: list[str], **kw):
    from reports.context import build_context

    model_dir = tmp_path / card["id"]
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model_card.json").write_text(json.dumps(card))
    store.register_model(card["id"], path=str(model_dir), card=card, actor="admin")
    _sample(store, sample_id, specimen)
    _predict(store, sample_id, card, labels)
    store.add_report_version(sample_id, interpretation="Text.", source="template", actor="rev")
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", lab_name="Lab", lab_id="LAB")
    return build_context(store, sample_id, settings=settings, gallery_per_class=0, study_figures=False, **kw)


def test_report_and_fhir_carry_the_counted_differential_and_the_apart_classes_in_their_units(store, tmp_path):
    from reports.context import facts_from_context
    from reports.fhir import LOINC, UCUM, fhir_bundle

    ctx = _context(store, tmp_path, "B1", Specimen.blood, BLOOD_CARD, BLOOD_LABELS,
                   reference_intervals={"neutrophil": (40.0, 75.0), "erythroblast": (0.0, 1.0)})
    assert [r.label for r in ctx.results] == ["neutrophil", "lymphocyte"]
    assert sum(r.percent for r in ctx.results) == pytest.approx(100.0)
    apart = {a.label: a for a in ctx.apart}
    assert apart["erythroblast"].value == pytest.approx(20.0) and apart["erythroblast"].flag == "H"
    assert apart["platelet"].count == 3 and apart["platelet"].reference_low is None
    assert ctx.qc.counted_cells == 10 and ctx.qc.reported_apart == {"erythroblast": 2, "platelet": 3}
    assert ctx.specimen_statement is None and ctx.differential_title == "Leukocyte differential"
    facts = facts_from_context(ctx)
    assert facts.values["apart.erythroblast.per_100"] == pytest.approx(20.0) and facts.values["specimen_declared"] == 1
    assert set(facts.classes.values()) == {"neutrophil", "lymphocyte"} and "platelet" in facts.apart.values()
    from reports.draft import template_sentences

    assert "platelet" not in " ".join(t.text for t in template_sentences(facts))  # the percentages only

    obs = {o["code"]["coding"][-1]["code"]: o for o in
           (e["resource"] for e in fhir_bundle(ctx)["entry"]) if o["resourceType"] == "Observation"}
    assert set(obs) == set(BLOOD)
    assert obs["neutrophil"]["valueQuantity"]["code"] == "%"
    ery = obs["erythroblast"]
    assert ery["valueQuantity"] == {"value": 20.0, "unit": "/100 WBC", "system": UCUM, "code": "/100{WBCs}"}
    assert ery["code"]["coding"][0] == {"system": LOINC, "code": "58413-6", "display":
                                        "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count"}
    ci = {e["url"]: e for e in ery["extension"][0]["extension"]}
    assert ci["interval"]["valueRange"]["high"]["code"] == "/100{WBCs}"
    assert ery["interpretation"][0]["coding"][0]["code"] == "H"
    assert obs["platelet"]["valueQuantity"] == {"value": 3.0, "unit": "cells", "system": UCUM, "code": "{cells}"}
    assert "extension" not in obs["platelet"]  # a count has no CI


@pytest.mark.slow  # renders the PDF
def test_report_states_an_undeclared_specimen_in_context_pdf_and_fhir(store, tmp_path):
    from pypdf import PdfReader

    from reports.fhir import SPECIMEN_EXTENSION, fhir_bundle
    from reports.pdf import render

    ctx = _context(store, tmp_path, "L1", Specimen.balf, BLOOD_CARD, BLOOD_LABELS)
    assert ctx.specimen_statement and "not meant for balf samples" in ctx.specimen_statement
    assert ctx.differential_title == "BAL fluid cell differential"
    text = " ".join(" ".join((page.extract_text() or "").split())
                    for page in PdfReader(io.BytesIO(render(ctx))).pages)
    assert "Model not validated for this specimen" in text and "not meant for balf samples" in text
    assert "BAL fluid cell differential" in text and "Reported apart from the differential" in text
    bundle = fhir_bundle(ctx)
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["extension"][0] == {"url": SPECIMEN_EXTENSION, "valueString": ctx.specimen_statement}
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert obs and all(o["note"][-1]["text"] == ctx.specimen_statement for o in obs)


def test_balf_report_wording_and_noted_epithelial_cells(store, tmp_path):
    from reports.fhir import fhir_bundle

    ctx = _context(store, tmp_path, "L1", Specimen.balf, BALF_CARD, BALF_LABELS,
                   reference_intervals=None)
    assert ctx.specimen_statement is None and ctx.differential_title == "BAL fluid cell differential"
    assert "counted BAL cells" in ctx.counted_basis and "epithelial are noted apart" in ctx.counted_basis
    (epi,) = ctx.apart
    assert epi.role == "noted" and epi.value == pytest.approx(20.0)
    obs = [e["resource"] for e in fhir_bundle(ctx)["entry"] if e["resource"]["resourceType"] == "Observation"]
    epi_obs = next(o for o in obs if o["code"]["coding"][-1]["code"] == "epithelial")
    assert epi_obs["valueQuantity"]["code"] == "%" and "noted" in epi_obs["code"]["text"]
    assert all(c["system"] != "http://loinc.org" for o in obs for c in o["code"]["coding"])  # no blood codes
