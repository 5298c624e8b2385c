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
