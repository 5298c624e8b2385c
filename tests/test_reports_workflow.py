"""The report lifecycle over a store: draft (audited), edits as versions, signing gates, sign, amend, exports."""

from __future__ import annotations

import json
import subprocess

import pytest

from phenotyping.schemas import QCState, Role, SampleStatus, User
from phenotyping.settings import Settings
from reports.keys import init_ca, issue_signer
from reports.signing import verify
from reports.workflow import (SigningBlocked, amend_report, draft_report, export_cells_csv, export_fhir,
                              save_edit, sign_report, signing_problems)
from tests.test_reports_context import _fill


@pytest.fixture
def lab(store, tmp_path):
    _fill(store, tmp_path / "model")
    store.create_user(User(username="sig", display_name="Dr Sig", role=Role.signer), password_hash="x", actor="a")
    store.create_user(User(username="rev", role=Role.reviewer), password_hash="x", actor="a")
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", llm_model=None)
    init_ca(tmp_path / "ca", name="Test Lab CA", password=b"ca-secret-1", key_type="ec")
    key = issue_signer(tmp_path / "ca", tmp_path / "sig.p12", name="Dr Sig", role="haematologist",
                       ca_password=b"ca-secret-1", password=b"sig-secret-1", key_type="ec")
    return store, settings, key, tmp_path


def test_draft_is_a_new_audited_version(lab):
    store, settings, _, _ = lab
    rv, record = draft_report(store, "S1", actor="rev", settings=settings)
    assert rv.version == 3 and record.outcome == "template_no_model" and rv.interpretation == record.text
    ev = store.list_audit(sample_id="S1", action="report.draft")[0]
    assert ev.after["outcome"] == "template_no_model" and ev.actor == "rev"
    edited = save_edit(store, "S1", record.text + " Reviewed.", actor="rev")
    assert edited.version == 4 and edited.interpretation.endswith("Reviewed.")
    assert save_edit(store, "S1", edited.interpretation, actor="rev").version == 4  # unchanged text: no version


def test_llm_draft_records_prompt_hash_and_raw_output(lab):
    store, settings, _, _ = lab
    settings = settings.model_copy(update={"llm_model": "openai/gpt-4o-mini"})
    raw = json.dumps({"sentences": [{"text": "A differential was counted.", "fact_ids": []}]})
    rv, record = draft_report(store, "S1", actor="rev", settings=settings,
                              completion_options={"mock_response": raw})
    ev = store.list_audit(sample_id="S1", action="report.draft")[0]
    assert ev.after["model"] == "openai/gpt-4o-mini" and len(ev.after["prompt_sha256"]) == 64
    assert ev.after["attempts"][0]["raw_output"] == raw
    assert rv.interpretation_source == record.source


def test_sign_then_amend(lab):
    store, settings, key, tmp_path = lab
    draft_report(store, "S1", actor="rev", settings=settings)
    assert signing_problems(store, "S1", signer="rev") == ["user 'rev' may not sign reports (a signer or admin must)"]
    with pytest.raises(Exception, match="password|decrypt|PKCS"):
        sign_report(store, "S1", signer="sig", key_path=key, password=b"wrong", settings=settings)
    out = sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    assert out["status"] == "final" and store.get_sample("S1").status == SampleStatus.signed
    v = verify(out["pdf"], trust=tmp_path / "ca" / "ca.pem")
    assert v["signed"] and v["intact"] and v["trusted"] and v["covers_whole_file"]
    p = subprocess.run(["pdfsig", out["pdf"]], capture_output=True, text=True)
    assert "Signature is Valid" in p.stdout
    with pytest.raises(ValueError, match="signed"):
        save_edit(store, "S1", "changed after signing", actor="rev")
    with pytest.raises(SigningBlocked, match="already signed"):
        sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    rv = amend_report(store, "S1", reason="CD16 summary misread", actor="rev")
    assert rv.amends_version == out["version"] and store.get_sample("S1").status == SampleStatus.amended
    save_edit(store, "S1", "Corrected interpretation.", actor="rev")
    out2 = sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    assert out2["status"] == "amended" and out2["pdf"] != out["pdf"]
    signed = store.get_report_version("S1", out2["version"])
    assert signed.amends_version == out["version"] and signed.amendment_reason == "CD16 summary misread"
    bundle = export_fhir(store, "S1", settings=settings)
    assert bundle["resourceType"] == "Bundle"
    csv_text = export_cells_csv(store, "S1")
    assert csv_text.splitlines()[0].startswith("cell_id,cell_key,source_file,qc_state,predicted_class")
    assert len(csv_text.splitlines()) == 11


def test_unidentified_cells_block_signing(lab):
    store, settings, key, _ = lab
    draft_report(store, "S1", actor="rev", settings=settings)
    cell = store.list_cells("S1")[3]
    store.set_qc([(cell.id, QCState.unidentified, None)], sample_id="S1", actor="qc")
    with pytest.raises(SigningBlocked, match="1 unidentified cell"):
        sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    store.reclassify([cell.id], "lymphocyte", actor="rev", model_id="toy-1")
    assert signing_problems(store, "S1", signer="sig") == []


def test_export_command(tmp_path, capsys):
    from phenotyping.store import Store
    from reports.__main__ import main

    db = tmp_path / "lab.duckdb"
    with Store(db, image_dir=Settings(db_path=db).image_dir()) as store:
        _fill(store, tmp_path / "model")
    assert main(["export", "--sample", "S1", "--db", str(db), "--fhir", str(tmp_path / "r.json"),
                 "--csv", str(tmp_path / "cells.csv")]) == 0
    bundle = json.loads((tmp_path / "r.json").read_text())
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.count("Observation") == 2 and "DiagnosticReport" in kinds
    assert (tmp_path / "cells.csv").read_text().count("\n") == 11
    assert main(["export", "--sample", "S1", "--db", str(db), "--csv", str(tmp_path / "cells.csv")]) == 2
