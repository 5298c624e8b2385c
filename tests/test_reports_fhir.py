"""FHIR R4 export (validated with fhir.resources) and per-cell CSV."""

from __future__ import annotations

import csv
import io

import pytest

from reports.demo import demo_context
from reports.fhir import CI_EXTENSION, LOINC, cells_csv, fhir_bundle, validate_bundle


def _resources(bundle, kind):
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_bundle_has_report_specimen_and_one_observation_per_class():
    ctx = demo_context(status="amended")
    bundle = fhir_bundle(ctx, pdf=b"%PDF-1.7 test")
    (report,) = _resources(bundle, "DiagnosticReport")
    (specimen,) = _resources(bundle, "Specimen")
    observations = _resources(bundle, "Observation")
    assert len(observations) == len(ctx.results) == len(report["result"])
    assert report["status"] == "amended" and report["meta"]["versionId"] == "2"
    assert report["presentedForm"][0]["contentType"] == "application/pdf"
    assert specimen["accessionIdentifier"]["value"] == ctx.sample_id
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(r["reference"] in urls for r in report["result"])

    neut = observations[0]
    assert neut["valueQuantity"] == {"value": 57.0, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert neut["code"]["coding"][0] == {"system": LOINC, "code": "770-8",
                                         "display": "Neutrophils/100 leukocytes in Blood by Automated count"}
    ci = {e["url"]: e for e in neut["extension"][0]["extension"]}
    assert neut["extension"][0]["url"] == CI_EXTENSION
    assert ci["level"]["valueDecimal"] == 0.95
    assert ci["interval"]["valueRange"]["low"]["value"] == 52.0
    assert ci["interval"]["valueRange"]["high"]["value"] == 61.9
    assert neut["component"][0]["valueQuantity"]["value"] == 58.1
    assert neut["referenceRange"][0]["low"]["value"] == 40.0
    assert neut["interpretation"][0]["coding"][0]["code"] == "N"
    assert observations[2]["interpretation"][0]["coding"][0]["code"] == "H"  # monocyte 9.0 > 8.0


def test_balf_uses_local_codes_only():
    ctx = demo_context().model_copy(update={"specimen": "balf"})
    obs = _resources(fhir_bundle(ctx), "Observation")[0]
    assert [c["system"] for c in obs["code"]["coding"]] == ["urn:leuko:cell-class"]


def test_validation_catches_a_bad_bundle():
    bundle = fhir_bundle(demo_context())
    bundle["entry"][2]["resource"]["valueQuantity"]["value"] = "fifty"
    with pytest.raises(ValueError, match="valueQuantity.value"):
        validate_bundle(bundle)
    bundle = fhir_bundle(demo_context())
    bundle["entry"][2]["resource"]["ci"] = [52.0, 61.9]  # not an R4 element
    with pytest.raises(ValueError, match="resource.ci"):
        validate_bundle(bundle)


def test_cells_csv_orders_columns_and_neutralises_formulas():
    text = cells_csv([{"cell_id": 1, "label": "neutrophil", "confidence": 0.98},
                      {"cell_id": 2, "label": "=HYPERLINK(\"x\")", "note": "-1"}])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["cell_id", "label", "confidence", "note"]
    assert rows[1] == ["1", "neutrophil", "0.98", ""]
    assert rows[2][1].startswith("'=") and rows[2][3] == "'-1"
    with pytest.raises(ValueError, match="not in columns"):
        cells_csv([{"a": 1, "b": 2}], columns=["a"])


def test_bundle_declares_and_validates_against_fhir_r4b():
    """The export is FHIR R4B 4.3.0: the R4B models of fhir.resources are that version, every resource says so in
    meta.profile, and validation uses those models (an element only R5 has is refused)."""
    import fhir.resources
    import fhir.resources.R4B

    from reports.fhir import FHIR_MIME_TYPE, FHIR_VERSION

    assert FHIR_VERSION == fhir.resources.R4B.__fhir_version__ == "4.3.0"
    assert fhir.resources.__fhir_version__ != FHIR_VERSION  # the package's default models are another version
    assert FHIR_MIME_TYPE.endswith("fhirVersion=4.3")
    ctx = demo_context().model_copy(update={"requester": "Dr B. Requester"})
    bundle = fhir_bundle(ctx)
    resources = [bundle, *(e["resource"] for e in bundle["entry"])]
    assert {r["resourceType"] for r in resources} == {"Bundle", "DiagnosticReport", "Specimen", "Observation",
                                                     "Organization", "ServiceRequest"}
    for r in resources:
        assert r["meta"]["profile"] == [f"http://hl7.org/fhir/StructureDefinition/{r['resourceType']}|4.3.0"]
    report = bundle["entry"][0]["resource"]
    report["note"] = [{"text": "DiagnosticReport.note exists in R5, not in R4B"}]
    with pytest.raises(ValueError, match="note"):
        validate_bundle(bundle)


def test_validation_refuses_models_of_another_version(monkeypatch):
    import fhir.resources.R4B

    monkeypatch.setattr(fhir.resources.R4B, "__fhir_version__", "4.0.1")
    with pytest.raises(RuntimeError, match="4.0.1.*4.3.0"):
        fhir_bundle(demo_context())


def test_report_code_names_how_the_cells_were_imaged_from_the_card():
    """A stained smear is not "label-free": the DiagnosticReport and ServiceRequest say what the card says."""
    ctx = demo_context()
    smear = ctx.model_copy(update={"method": ctx.method.model_copy(
        update={"modality": "stained peripheral blood smear, colour brightfield microscopy"})})
    bundle = fhir_bundle(smear)
    validate_bundle(bundle)
    texts = [r["code"]["text"] for kind in ("DiagnosticReport", "ServiceRequest") for r in _resources(bundle, kind)]
    assert texts and all("stained peripheral blood smear" in t and "label-free" not in t for t in texts)
