"""ISO 15189 report elements: requester, collection and receipt times on the sample (CLI, store, lock after
signing) and the laboratory's address and contact, through the report context, the PDF text and the FHIR export."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from phenotyping.__main__ import main
from phenotyping.errors import SampleLocked
from phenotyping.schemas import Sample, Specimen
from phenotyping.settings import Settings
from phenotyping.store import Store
from tests.conftest import cell_array, png_bytes

COLLECTED = datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc)
RECEIVED = datetime(2026, 11, 30, 9, 40, tzinfo=timezone.utc)
REQUESTER = "Dr B. Requester, Ward 7"


@pytest.fixture
def image_set(tmp_path):
    folder = tmp_path / "set" / "neutrophil"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"c{i}.png").write_bytes(png_bytes(cell_array(seed=i)))
    return tmp_path / "set"


def _cli(capsys, *args: str) -> tuple[int, dict | list | None, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def _sample(db) -> Sample:
    with Store(db, image_dir=Settings(db_path=db).image_dir(), read_only=True) as store:
        return store.get_sample("S1")


def test_cli_sets_requester_collection_and_receipt_times(tmp_path, image_set, capsys):
    db = str(tmp_path / "lab.duckdb")
    code, out, err = _cli(capsys, "ingest", str(image_set), "--sample", "S1", "--specimen", "blood", "--db", db,
                          "--collected-at", "2026-11-30T08:15Z", "--received-at", "2026-11-30T10:40+01:00",
                          "--requester", REQUESTER)
    assert code == 0 and out["ingested"] == 3, err
    s = _sample(db)
    assert (s.collected_at, s.received_at, s.requester) == (COLLECTED, RECEIVED, REQUESTER)

    later = RECEIVED + timedelta(minutes=5)
    code, out, err = _cli(capsys, "samples", "update", "--sample", "S1", "--received-at", later.isoformat(),
                          "--requester", "Dr C. Other", "--db", db)
    assert code == 0, err
    assert out["received_at"] == "2026-11-30T09:45:00Z" and out["requester"] == "Dr C. Other"
    assert out["collected_at"] == "2026-11-30T08:15:00Z"  # not given: kept
    s = _sample(db)
    assert s.received_at == later and s.requester == "Dr C. Other"
    code, listed, _ = _cli(capsys, "samples", "--db", db)
    assert code == 0 and listed[0]["requester"] == "Dr C. Other"

    # ingest into the existing sample does not silently change its details
    code, _, err = _cli(capsys, "ingest", str(image_set), "--sample", "S1", "--specimen", "blood", "--db", db,
                        "--requester", "Somebody else")
    assert code == 2 and "samples update" in err and _sample(db).requester == "Dr C. Other"


@pytest.mark.parametrize("option", ["--collected-at", "--received-at"])
def test_naive_or_malformed_times_are_refused(tmp_path, image_set, capsys, option):
    db = str(tmp_path / "lab.duckdb")
    code, out, err = _cli(capsys, "ingest", str(image_set), "--sample", "S1", "--specimen", "blood", "--db", db,
                          option, "2026-11-30T08:15")
    assert code == 2 and out is None
    assert option in err and "no time zone" in err and "add Z" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lab.duckdb").exists()  # refused before the store was opened: nothing created
    assert _cli(capsys, "ingest", str(image_set), "--sample", "S1", "--specimen", "blood", "--db", db)[0] == 0
    code, _, err = _cli(capsys, "samples", "update", "--sample", "S1", option, "2026-11-30 08:15", "--db", db)
    assert code == 2 and "add Z" in err
    code, _, err = _cli(capsys, "samples", "update", "--sample", "S1", option, "yesterday", "--db", db)
    assert code == 2 and "'yesterday' is not an ISO 8601 time" in err
    s = _sample(db)
    assert s.collected_at is None and s.received_at is None


def test_sample_model_refuses_naive_times_and_receipt_before_collection():
    with pytest.raises(ValueError, match="add Z"):
        Sample(id="S1", specimen=Specimen.blood, received_at=datetime(2026, 11, 30, 8, 15))
    with pytest.raises(ValueError, match="before the collection time"):
        Sample(id="S1", specimen=Specimen.blood, collected_at=RECEIVED, received_at=COLLECTED)
    with pytest.raises(ValueError, match="control characters"):
        Sample(id="S1", specimen=Specimen.blood, requester="Dr X\nWard 7")


def test_report_details_are_locked_after_signing(store):
    store.create_sample(Sample(id="S1", specimen=Specimen.blood, collected_at=COLLECTED), actor="t")
    store.update_sample("S1", actor="rev", requester=REQUESTER, received_at=RECEIVED)
    store.add_report_version("S1", interpretation="text", source="template", actor="rev")
    store.mark_report_signed("S1", 1, signer="sig", status="final", pdf_path="r.pdf", pdf_hash="ab")
    n_audit = len(store.list_audit())
    for change in ({"requester": "Dr C. Other"}, {"received_at": RECEIVED + timedelta(hours=1)},
                   {"collected_at": COLLECTED - timedelta(hours=1)}):
        with pytest.raises(SampleLocked, match="amend the report"):
            store.update_sample("S1", actor="rev", **change)
    assert len(store.list_audit()) == n_audit
    s = store.get_sample("S1")
    assert (s.requester, s.received_at, s.collected_at) == (REQUESTER, RECEIVED, COLLECTED)
    store.update_sample("S1", actor="rev", notes="notes are not on the report")  # still allowed
    store.add_report_version("S1", interpretation="text", source="template", actor="rev", status="draft",
                             amends_version=1, amendment_reason="requester misspelt")
    assert store.update_sample("S1", actor="rev", requester="Dr C. Other").requester == "Dr C. Other"


def _lab_settings(tmp_path, **extra) -> Settings:
    return Settings(db_path=":memory:", data_dir=tmp_path / "images", lab_name="Test lab", lab_id="LAB-9", **extra)


def _pdf_text(pdf: bytes) -> str:
    from pypdf import PdfReader

    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages)


def test_report_header_shows_lab_requester_and_times(store, tmp_path):
    from reports.context import build_context
    from reports.fhir import fhir_bundle
    from reports.pdf import render
    from tests.test_reports_context import _fill

    _fill(store, tmp_path / "model")
    store.update_sample("S1", actor="rev", requester=REQUESTER, collected_at=COLLECTED, received_at=RECEIVED)
    settings = _lab_settings(tmp_path, lab_address="1 Laboratory Road\nLondon W1A 1AA",
                             lab_contact="+44 20 7946 0000, haem.lab@example.org")
    ctx = build_context(store, "S1", settings=settings)
    assert (ctx.requester, ctx.collected_at, ctx.received_at) == (REQUESTER, COLLECTED, RECEIVED)
    assert ctx.lab_address == "1 Laboratory Road\nLondon W1A 1AA" and ctx.lab_contact.startswith("+44")
    from reports.context import facts_from_context

    assert "B. Requester" not in json.dumps(facts_from_context(ctx).prompt_json())  # people stay out of LLM prompts
    text = _pdf_text(render(ctx))
    for shown in ("1 Laboratory Road", "London W1A 1AA", "+44 20 7946 0000", "haem.lab@example.org",
                  f"Requester {REQUESTER}", "Collected 2026-11-30 08:15 UTC", "Received 2026-11-30 09:40 UTC"):
        assert shown in text, shown

    resources = [e["resource"] for e in fhir_bundle(ctx)["entry"]]
    by_type = {r["resourceType"]: r for r in resources}
    org, request, specimen, report = (by_type[k] for k in ("Organization", "ServiceRequest", "Specimen",
                                                           "DiagnosticReport"))
    urls = {e["resource"]["resourceType"]: e["fullUrl"] for e in fhir_bundle(ctx)["entry"]}
    assert org["address"][0]["line"] == ["1 Laboratory Road", "London W1A 1AA"]
    assert {(t["system"], t["value"]) for t in org["telecom"]} == {("phone", "+44 20 7946 0000"),
                                                                   ("email", "haem.lab@example.org")}
    assert request["requester"]["display"] == REQUESTER and request["intent"] == "order"
    assert datetime.fromisoformat(specimen["receivedTime"]) == RECEIVED
    assert datetime.fromisoformat(specimen["collection"]["collectedDateTime"]) == COLLECTED
    assert len(report["performer"]) == 1 and len(report["basedOn"]) == 1
    assert specimen["request"][0]["reference"] == report["basedOn"][0]["reference"]
    assert report["performer"][0]["reference"] != report["basedOn"][0]["reference"]
    assert set(urls) >= {"Organization", "ServiceRequest"}


def test_report_says_plainly_what_is_not_configured_or_recorded(store, tmp_path):
    from reports.context import build_context
    from reports.fhir import fhir_bundle
    from reports.pdf import render_html
    from tests.test_reports_context import _fill

    _fill(store, tmp_path / "model")
    ctx = build_context(store, "S1", settings=_lab_settings(tmp_path, lab_address="  ", lab_contact=None))
    assert ctx.lab_address is None and ctx.requester == "" and ctx.received_at is None
    html = render_html(ctx)
    assert "Laboratory address: not configured" in html and "Laboratory contact: not configured" in html
    assert html.count("not recorded") >= 3  # requester, collected, received
    kinds = [e["resource"]["resourceType"] for e in fhir_bundle(ctx)["entry"]]
    assert "ServiceRequest" not in kinds and kinds.count("Organization") == 1  # no requester: no order resource
