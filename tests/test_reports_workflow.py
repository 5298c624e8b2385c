"""The report lifecycle over a store: draft (audited), edits as versions, signing gates, sign, amend, exports."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timezone

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
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", llm_model=None,
                        lab_ca=tmp_path / "ca" / "ca.pem")
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
    assert signing_problems(store, "S1", signer="rev", settings=settings) == [
        "user 'rev' may not sign reports (a signer or admin must)"]
    with pytest.raises(Exception, match="password|decrypt|PKCS"):
        sign_report(store, "S1", signer="sig", key_path=key, password=b"wrong", settings=settings)
    out = sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    assert out["status"] == "final" and store.get_sample("S1").status == SampleStatus.signed
    v = verify(out["pdf"], trust=tmp_path / "ca" / "ca.pem")
    assert v["signed"] and v["intact"] and v["trusted"] and v["covers_whole_file"]
    if shutil.which("pdfsig") is not None:  # poppler's independent check, where installed
        p = subprocess.run(["pdfsig", out["pdf"]], capture_output=True, text=True, timeout=60)
        assert "Signature is Valid" in p.stdout
    with pytest.raises(ValueError, match="signed"):
        save_edit(store, "S1", "changed after signing", actor="rev")
    with pytest.raises(SigningBlocked, match="already signed"):
        sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    rv = amend_report(store, "S1", reason="CD16 summary misread", actor="sig")  # a signer amends
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
    problems = signing_problems(store, "S1", signer="sig", settings=settings)
    assert problems and all(p.startswith("interpretation: number") for p in problems)  # drafted before the review
    draft_report(store, "S1", actor="rev", settings=settings)
    assert signing_problems(store, "S1", signer="sig", settings=settings) == []


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


def _attached(pdf_path, name):
    from pypdf import PdfReader

    return PdfReader(pdf_path).attachments[name][0]


def test_draft_is_refused_on_a_signed_version(lab):
    store, settings, key, _ = lab
    draft_report(store, "S1", actor="rev", settings=settings)
    sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    with pytest.raises(ValueError, match="signed; a signed report is never redrafted: amend it"):
        draft_report(store, "S1", actor="rev", settings=settings)
    amend_report(store, "S1", reason="Wrong class", actor="sig")
    rv, _ = draft_report(store, "S1", actor="rev", settings=settings)  # inside an amendment: allowed, still one
    assert rv.amends_version == 3 and rv.amendment_reason == "Wrong class"


@pytest.mark.parametrize("text, problem", [
    ("Neutrophils were 61.0% of the counted cells.", "number 61.0 matches no fact"),
    ("Neutrophils were 55.6%. Consistent with a bacterial infection.", "forbidden wording 'Consistent with'"),
    ("Neutrophils were 55.6%; repeat the count.", "forbidden wording 'repeat'"),
])
def test_reviewer_text_is_checked_at_signing(lab, text, problem):
    store, settings, key, _ = lab
    save_edit(store, "S1", text, actor="rev")
    problems = signing_problems(store, "S1", signer="sig", settings=settings)
    assert any(problem in p for p in problems), problems
    with pytest.raises(SigningBlocked, match="interpretation"):
        sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    save_edit(store, "S1", "Neutrophils were 55.6% of the counted cells.", actor="rev")
    assert signing_problems(store, "S1", signer="sig", settings=settings) == []


def test_a_draft_made_before_intervals_were_configured_blocks_signing(lab):
    store, settings, _, tmp_path = lab
    draft_report(store, "S1", actor="rev", settings=settings)  # no intervals configured: the text says so
    (tmp_path / "ri.csv").write_text("specimen,class,low,high\nblood,neutrophil,40,75\n")
    configured = settings.model_copy(update={"reference_intervals": tmp_path / "ri.csv"})
    problems = signing_problems(store, "S1", signer="sig", settings=configured)
    assert any("has configured intervals" in p for p in problems)
    draft_report(store, "S1", actor="rev", settings=configured)
    assert signing_problems(store, "S1", signer="sig", settings=configured) == []


def test_redraft_is_not_labelled_edited(lab):
    from reports.context import build_context

    store, settings, _, _ = lab  # _fill saved v1 and an edited v2 without draft events
    assert build_context(store, "S1", settings=settings).interpretation_edited
    draft_report(store, "S1", actor="rev", settings=settings)  # v3: a redraft
    assert not build_context(store, "S1", settings=settings).interpretation_edited
    rv = store.get_report_version("S1")
    save_edit(store, "S1", rv.interpretation + " Checked.", actor="rev")
    assert build_context(store, "S1", settings=settings).interpretation_edited
    draft_report(store, "S1", actor="rev", settings=settings)  # v5: redraft after an edit
    assert not build_context(store, "S1", settings=settings).interpretation_edited


def test_exports_of_a_signed_version_come_from_what_was_signed(lab):
    import hashlib

    from reports.context import SignedVersionError, build_context
    from reports.workflow import preview_pdf, signed_context

    store, settings, key, _ = lab
    draft_report(store, "S1", actor="rev", settings=settings)
    before = datetime.now(timezone.utc)
    out = sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    v1 = out["version"]
    signed_rv = store.get_report_version("S1", v1)
    ctx = signed_context(store, "S1", v1)
    assert before <= ctx.reported_at <= signed_rv.signed_at  # the report time is the signing time
    assert abs((signed_rv.signed_at - ctx.reported_at).total_seconds()) < 60
    neut = next(r for r in ctx.results if r.label == "neutrophil")
    csv_signed = export_cells_csv(store, "S1", version=v1)
    assert preview_pdf(store, "S1", settings=settings) == open(out["pdf"], "rb").read()
    with pytest.raises(SignedVersionError, match="what was signed is its PDF"):
        build_context(store, "S1", version=v1, settings=settings)

    amend_report(store, "S1", reason="Two cells misread", actor="sig")  # unlocks the sample: a new version
    cell = next(c for c in store.list_cells("S1") if c.qc_state.value != "excluded")
    store.reclassify([cell.id], "lymphocyte", actor="rev", model_id="toy-1")
    live = {r.label: r for r in build_context(store, "S1", settings=settings).results}
    assert live["neutrophil"].count == neut.count - 1  # today's data changed …

    bundle = export_fhir(store, "S1", version=v1, settings=settings)  # … the signed export did not
    obs = {e["resource"]["code"]["coding"][-1]["code"]: e["resource"] for e in bundle["entry"]
           if e["resource"]["resourceType"] == "Observation"}
    assert obs["neutrophil"]["valueQuantity"]["value"] == round(neut.percent, 3)
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["status"] == "final" and report["issued"] == ctx.reported_at.isoformat()
    assert report["presentedForm"][0]["data"]  # the signed PDF itself
    assert export_cells_csv(store, "S1", version=v1) == csv_signed
    assert export_cells_csv(store, "S1") != csv_signed  # the amendment in progress shows today's cells

    save_edit(store, "S1", "Neutrophils were " + f"{live['neutrophil'].percent:.1f}% of counted cells.",
              actor="rev")
    out2 = sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    amended = json.loads(_attached(out2["pdf"], "results.json"))
    assert amended["status"] == "amended" and amended["replaces_version"] == v1
    assert amended["replaces_pdf_sha256"] == out["sha256"] == hashlib.sha256(open(out["pdf"], "rb").read()
                                                                           ).hexdigest()
    assert amended["replaces_signed_at"] == signed_rv.signed_at.isoformat().replace("+00:00", "Z")
    assert _attached(out2["pdf"], "cells.csv").decode() == export_cells_csv(store, "S1")

    with open(out["pdf"], "ab") as f:  # the signed file changed on disk: exports refuse
        f.write(b"%")
    with pytest.raises(Exception, match="is not the PDF signed"):
        export_fhir(store, "S1", version=v1, settings=settings)


def test_render_command_refuses_a_signed_version(tmp_path, capsys):
    from phenotyping.store import Store
    from reports.__main__ import main

    db = tmp_path / "lab.duckdb"
    settings = Settings(db_path=db, llm_model=None, lab_ca=tmp_path / "ca" / "ca.pem")
    with Store(db, image_dir=settings.image_dir()) as store:
        _fill(store, tmp_path / "model")
        store.create_user(User(username="sig", display_name="Dr Sig", role=Role.signer), password_hash="x",
                          actor="a")
        init_ca(tmp_path / "ca", name="CA", password=b"ca-secret-1", key_type="ec")
        key = issue_signer(tmp_path / "ca", tmp_path / "sig.p12", name="Dr Sig", role="h",
                           ca_password=b"ca-secret-1", password=b"sig-secret-1", key_type="ec")
        draft_report(store, "S1", actor="sig", settings=settings)
        out = sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings)
    capsys.readouterr()
    assert main(["render", "--sample", "S1", "--db", str(db), "--out", str(tmp_path / "r.pdf")]) == 2
    err = capsys.readouterr().err
    assert "was signed by sig" in err and out["sha256"] in err and not (tmp_path / "r.pdf").exists()
    assert main(["export", "--sample", "S1", "--db", str(db), "--csv", str(tmp_path / "c.csv")]) == 0
    assert (tmp_path / "c.csv").read_text() == _attached(out["pdf"], "cells.csv").decode()


def test_signer_certificate_must_name_the_signer(lab):
    from phenotyping.auth import signer_key_path
    from reports.workflow import install_signer_key

    store, settings, key, tmp_path = lab
    settings = settings.model_copy(update={"data_dir": tmp_path / "data"})
    assert install_signer_key(store, settings, "sig", key.read_bytes(), b"sig-secret-1")["certificate_name"] == "Dr Sig"
    other = issue_signer(tmp_path / "ca", tmp_path / "other.p12", name="Someone Else", role="haematologist",
                         ca_password=b"ca-secret-1", password=b"sig-secret-1", key_type="ec")
    with pytest.raises(ValueError, match="issued to 'Someone Else', not to 'Dr Sig'"):
        install_signer_key(store, settings, "sig", other.read_bytes(), b"sig-secret-1")
    assert signer_key_path(settings, "sig").read_bytes() == key.read_bytes()  # the old key stays
    ev = store.list_audit(action="signer_key.install", limit=1)[0]
    assert ev.after["certificate_name"] == "Dr Sig"

    draft_report(store, "S1", actor="rev", settings=settings)
    before = store.get_report_version("S1")
    with pytest.raises(SigningBlocked, match="issued to 'Someone Else', not to 'Dr Sig'"):
        sign_report(store, "S1", signer="sig", key_path=other, password=b"sig-secret-1", settings=settings)
    assert store.get_report_version("S1") == before and store.get_sample("S1").status != SampleStatus.signed


@pytest.mark.parametrize("rule", ["expired", "not valid yet", "not issued by the lab CA", "digital signature",
                                  "no subject common name", "no lab CA is configured"])
def test_sign_report_refuses_a_certificate_that_breaks_a_rule(lab, rule):
    import datetime as dt

    from tests.test_signature_trust import KEY_PW, NOW, make_p12

    store, settings, key, tmp_path = lab
    if rule == "no lab CA is configured":
        settings = settings.model_copy(update={"lab_ca": None})
    elif rule == "not issued by the lab CA":
        init_ca(tmp_path / "other", name="Another CA", password=b"ca-password-1", key_type="ec")
        key = make_p12(tmp_path / "k.p12", ca_dir=tmp_path / "other")
    else:
        ca_copy = tmp_path / "ca-copy"  # make_p12 opens the CA key with its own password
        from cryptography.hazmat.primitives import serialization

        ca_copy.mkdir()
        shutil.copy(tmp_path / "ca" / "ca.pem", ca_copy / "ca.pem")
        ca_key = serialization.load_pem_private_key((tmp_path / "ca" / "ca.key.pem").read_bytes(), b"ca-secret-1")
        (ca_copy / "ca.key.pem").write_bytes(ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"ca-password-1")))
        options = {"expired": {"not_before": NOW - dt.timedelta(days=400), "not_after": NOW - dt.timedelta(days=30)},
                   "not valid yet": {"not_before": NOW + dt.timedelta(days=30)},
                   "digital signature": {"digital_signature": False},
                   "no subject common name": {"name": None}}[rule]
        key = make_p12(tmp_path / "k.p12", ca_dir=ca_copy, **options)
    password = b"sig-secret-1" if key.name == "sig.p12" else KEY_PW
    draft_report(store, "S1", actor="rev", settings=settings)
    before = store.get_report_version("S1")
    with pytest.raises(SigningBlocked, match=rule):
        sign_report(store, "S1", signer="sig", key_path=key, password=password, settings=settings)
    assert store.get_report_version("S1") == before and store.get_sample("S1").status != SampleStatus.signed
    assert not list(settings.reports_dir().glob("S1-*.pdf"))
