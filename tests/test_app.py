"""The app through Streamlit's AppTest: every page launches logged out and per role, and the main actions work with
the model patched out (predictions written directly) and no LLM configured (template drafts)."""

from __future__ import annotations

import json
import re
import zipfile
from io import BytesIO

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from phenotyping.schemas import Prediction, SampleStatus
from tests.conftest import PROJECT_ROOT, cell_array, png_bytes

CLASSES = ["neutrophil", "lymphocyte"]
CARD = {"id": "toy-1", "name": "toy", "classes": CLASSES, "targets": [], "intended_use": "tests only",
        "architecture": {"name": "test_cnn", "parameters": 10},
        "input": {"channels": ["grey"], "img_size": 32},
        "calibration": {"unidentified_threshold": 0.6},
        "validation": {"confusion": [[45, 5], [10, 40]], "macro_f1": 0.85, "accuracy": 0.86, "n": 100},
        "training": {"class_proportions": {"neutrophil": 0.5, "lymphocyte": 0.5}, "n_cells": 100}}
PASSWORD = "long-enough-pw"
KEY_PASSWORD = "sig-secret-1"
PAGES = ["samples", "analyse", "review", "agreement", "report", "models", "audit", "users", "account"]


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    """A fresh database, no LLM, and the Streamlit resource cache cleared so get_store() opens it."""
    import streamlit as st

    from phenotyping.settings import get_settings

    monkeypatch.setenv("LEUKO_DB_PATH", str(tmp_path / "app.duckdb"))
    monkeypatch.delenv("LEUKO_LLM_MODEL", raising=False)
    get_settings.cache_clear()
    st.cache_resource.clear()
    yield tmp_path
    from pages._common import get_runner

    get_runner().shutdown(wait=True)
    get_store_obj().close()
    st.cache_resource.clear()
    get_settings.cache_clear()


def get_store_obj():
    from pages._common import get_store

    return get_store()


def logged_in(at: AppTest, user: str) -> AppTest:
    """``at`` with ``user``'s session as the login screen starts it (the account's session epoch, active now)."""
    import time

    from pages._common import LAST_ACTIVE, SESSION_EPOCH

    at.session_state["username"] = user
    at.session_state[SESSION_EPOCH] = get_store_obj().users.session_epoch(user)
    at.session_state[LAST_ACTIVE] = time.time()
    return at


def app(user: str | None = None, page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)
    if user:
        logged_in(at, user)
        at.session_state["sample_id"] = "S1"
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    return at


@pytest.fixture
def lab(app_env):
    """Three accounts, a registered toy model, sample S1 with 12 cells predicted (2 of them unsure)."""
    from phenotyping.auth import create_first_admin, create_user
    from phenotyping.ingest import ingest_set

    store = get_store_obj()
    create_first_admin(store, "admin", PASSWORD)
    create_user(store, "sig", PASSWORD, "signer", actor="admin", display_name="Dr Sig")
    create_user(store, "rev", PASSWORD, "reviewer", actor="admin")
    model_dir = app_env / "toy-model"
    model_dir.mkdir()
    (model_dir / "model_card.json").write_text(json.dumps(CARD))
    store.register_model("toy-1", path=str(model_dir), card=CARD, actor="admin", usable=True)
    from phenotyping.schemas import Sample, Specimen

    store.create_sample(Sample(id="S1", specimen=Specimen.blood, patient_pseudonym="P-001"), actor="rev")
    folder = app_env / "set"
    folder.mkdir()
    for i in range(12):
        (folder / f"c{i:02d}.png").write_bytes(png_bytes(cell_array(seed=i)))
    ids = ingest_set(store, folder, "S1", actor="rev").cell_ids
    preds = []
    for k, cid in enumerate(ids):
        label = CLASSES[k % 2]
        conf = 0.5 if k < 2 else 0.9
        preds.append(Prediction(cell_id=cid, model_id="toy-1", model_version="1", predicted_class=label,
                                confidence=conf, probabilities={c: conf if c == label else 1 - conf for c in CLASSES}))
    store.add_predictions(preds, sample_id="S1", actor="rev")
    store.set_analysis_model("S1", "toy-1", actor="rev")
    store.set_sample_status("S1", SampleStatus.analysed, actor="rev")
    return store, ids


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def table(at: AppTest, column: str):
    """The first dataframe on the screen with this column (AppTest gives plain dataframes no key)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with a column {column!r}; columns: {[list(d.value.columns) for d in at.dataframe]}"
    return found[0]


def test_logged_out_sees_first_run_admin_creation(app_env):
    at = app()
    assert not at.exception
    assert [b.label for b in at.button] == ["Create admin account"]
    at.text_input[0].input("admin")
    at.text_input[2].input(PASSWORD)
    at.text_input[3].input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and at.session_state["username"] == "admin"
    assert get_store_obj().get_user("admin")[0].role.value == "admin"
    # AppTest reruns only the page script after a widget event; a fresh navigation shows the logged-in pages.
    at.switch_page("pages/samples.py").run()
    assert at.title[0].value == "Samples"


def test_login_rejects_wrong_password_then_accepts(lab):
    at = app()
    assert at.title[0].value == "Leukocyte review" and "Create admin account" not in [b.label for b in at.button]
    at.text_input[0].input("rev")
    at.text_input[1].input("wrong-password!")
    at.button[0].click().run()
    assert errors(at) == ["unknown username or wrong password"]
    at.text_input[1].input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and at.session_state["username"] == "rev"


OIDC_SECRETS = {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "leuko", "client_secret": "s",
                          "server_metadata_url": "https://idp.lab.example/.well-known/openid-configuration"},
                 "oidc_accounts": {"admin": {"email": "a.admin@lab.example"},
                                   "rev": {"subject": "00u-rev", "issuer": "https://idp.lab.example"}}}


def oidc_app(claims: dict) -> AppTest:
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)
    for k, v in OIDC_SECRETS.items():
        at.secrets[k] = v
    at.user = claims
    return at.run()


@pytest.mark.parametrize("claims", [
    {"is_logged_in": True, "sub": "x1", "iss": "https://idp.lab.example", "email": "a.admin@lab.example.evil.test",
     "email_verified": True, "preferred_username": "admin"},
    {"is_logged_in": True, "sub": "x2", "iss": "https://idp.lab.example", "email": "a.admin@lab.example",
     "email_verified": False},
])
def test_single_sign_on_refuses_lookalike_and_unverified_addresses(lab, claims):
    at = oidc_app(claims)
    assert not at.exception
    assert "username" not in at.session_state
    assert any("no local account is linked" in e for e in errors(at))
    assert "Sign out of the identity provider" in [b.label for b in at.button]


def test_single_sign_on_maps_a_verified_email_and_a_subject(lab):
    at = oidc_app({"is_logged_in": False})
    assert "Log in with your organisation's account" in [b.label for b in at.button]
    at = oidc_app({"is_logged_in": True, "sub": "x1", "iss": "https://idp.lab.example",
                   "email": "a.admin@lab.example", "email_verified": True})
    assert not at.exception and at.session_state["username"] == "admin"
    at = oidc_app({"is_logged_in": True, "sub": "00u-rev", "iss": "https://idp.lab.example"})
    assert not at.exception and at.session_state["username"] == "rev"
    from phenotyping.auth import update_account

    update_account(get_store_obj(), "rev", actor="admin", active=False)
    at = oidc_app({"is_logged_in": True, "sub": "00u-rev", "iss": "https://idp.lab.example"})
    assert "username" not in at.session_state and any("deactivated" in e for e in errors(at))


@pytest.mark.parametrize("role", [None, "rev", "sig", "admin"])
@pytest.mark.parametrize("page", PAGES)
def test_every_page_launches(lab, role, page):
    if role is None:
        at = app()
        assert not at.exception and at.title[0].value == "Leukocyte review"
        return
    hidden = (page == "audit" and role == "rev") or (page == "users" and role != "admin")
    if hidden:  # the navigation does not offer the page to this role
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            app(role, page)
        return
    at = app(role, page)
    assert not at.exception, at.exception
    assert at.title[0].value.lower().startswith(page[:5]) or page == "account"


def test_create_sample_and_upload_zip(lab, tmp_path):
    at = app("rev")
    form_inputs = [t for t in at.text_input if t.label in ("Sample id", "Patient pseudonym")]
    form_inputs[0].input("S2")
    form_inputs[1].input("P-002")
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert not at.exception
    store = get_store_obj()
    assert store.get_sample("S2").created_by == "rev"
    assert at.session_state["sample_id"] == "S2"
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(5):
            z.writestr(f"set/c{i}.png", png_bytes(cell_array(seed=100 + i)))
        z.writestr("set/broken.png", b"not an image")
    at.file_uploader[0].upload("set.zip", buf.getvalue(), "application/zip")
    at.run()
    # The upload is on disk at once and the uploader is a new, empty widget (Streamlit no longer holds the bytes).
    assert not at.exception
    assert at.file_uploader[0].value == [] and at.file_uploader[0].key.endswith("_1")
    staged = list((tmp_path / ".upload-staging").rglob("set.zip"))
    assert len(staged) == 1 and staged[0].stat().st_size == len(buf.getvalue())
    assert any("Ready to ingest into S2" in m.value for m in at.markdown)
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception
    assert store.count_cells("S2") == 5
    assert any("5 cells ingested" in w.value for w in at.warning)
    assert not any((tmp_path / ".upload-staging").rglob("set.zip"))  # removed after the ingest
    # The run's summary is kept: it is on the screen after a reload, not only in this session.
    at = app("rev")
    next(s for s in at.selectbox if s.label == "Sample").select("S2").run()
    runs = table(at, "cells ingested")
    assert list(runs["source"]) == ["set.zip"] and list(runs["cells ingested"]) == [5]
    assert list(runs["files refused"]) == [1] and runs["by"][0] == "rev"
    refused = table(at, "file")
    assert list(refused["file"]) == ["set/broken.png"] and refused["reason"][0]
    assert store.list_audit(sample_id="S2", action="ingest.run")[0].after["rejected"][0]["file"] == "set/broken.png"


def test_new_sample_and_details_form_record_requester_and_times(lab):
    """The New-sample form records requester, collection and receipt times (UTC); the details form corrects them
    and is locked once the report is signed."""
    from datetime import date, datetime, time, timezone

    store, _ = lab
    at = app("rev")
    next(t for t in at.text_input if t.label == "Sample id").input("S3")
    next(t for t in at.text_input if t.label == "Requester").input("Dr B. Requester, Ward 7")
    next(c for c in at.checkbox if c.key == "new_collected_known").check()
    next(d for d in at.date_input if d.key == "new_collected_day").set_value(date(2026, 11, 30))
    next(t for t in at.time_input if t.key == "new_collected_time").set_value(time(8, 15))
    next(c for c in at.checkbox if c.key == "new_received_known").check()  # no date: refused, nothing created
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert not at.exception and any("receipt date" in e.value for e in at.error)
    assert not store.sample_exists("S3")
    next(d for d in at.date_input if d.key == "new_received_day").set_value(date(2026, 11, 30))
    next(t for t in at.time_input if t.key == "new_received_time").set_value(time(9, 40))
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert not at.exception
    s = store.get_sample("S3")
    assert s.requester == "Dr B. Requester, Ward 7"
    assert (s.collected_at, s.received_at) == (datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc),
                                               datetime(2026, 11, 30, 9, 40, tzinfo=timezone.utc))

    at = app("rev")
    next(s for s in at.selectbox if s.label == "Sample").select("S3").run()
    next(t for t in at.text_input if t.key == "edit_requester_S3").input("Dr C. Other")
    next(t for t in at.time_input if t.key == "edit_received_S3_time").set_value(time(9, 55))
    next(b for b in at.button if b.label == "Save details").click().run()
    assert not at.exception
    s = store.get_sample("S3")
    assert s.requester == "Dr C. Other" and s.received_at == datetime(2026, 11, 30, 9, 55, tzinfo=timezone.utc)
    assert s.collected_at == datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc)  # untouched

    store.add_report_version("S3", interpretation="text", source="template", actor="rev")
    store.mark_report_signed("S3", 1, signer="sig", status="final", pdf_path="r.pdf", pdf_hash="ab")
    at = app("rev")
    next(s for s in at.selectbox if s.label == "Sample").select("S3").run()
    assert next(t for t in at.text_input if t.key == "edit_requester_S3").disabled
    assert any("is locked" in i.value for i in at.info)


def test_upload_many_files_in_two_batches_then_discard_and_ingest(lab, tmp_path):
    store, _ = lab
    at = app("rev")
    at.file_uploader[0].upload("a.png", png_bytes(cell_array(seed=200)), "image/png")
    at.file_uploader[0].upload("b.png", png_bytes(cell_array(seed=201)), "image/png")
    at.run()
    assert not at.exception
    at.file_uploader[0].upload("c.png", png_bytes(cell_array(seed=202)), "image/png")
    at.run()
    assert any("3 file(s)" in m.value for m in at.markdown if "Ready to ingest" in m.value)
    next(b for b in at.button if b.label == "Discard").click().run()
    assert not any("Ready to ingest" in m.value for m in at.markdown)
    assert next(b for b in at.button if b.label == "Ingest").disabled
    at.file_uploader[0].upload("a.png", png_bytes(cell_array(seed=200)), "image/png")
    at.file_uploader[0].upload("d.png", png_bytes(cell_array(seed=0)), "image/png")  # the bytes of S1's c00.png
    at.run()
    before = store.count_cells("S1")
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception
    assert store.count_cells("S1") == before + 1  # d.png repeats c00.png of S1: a duplicate, refused
    run = table(at, "cells ingested")
    assert run["source"][0] == "2 files (a.png, d.png)" and run["duplicates"][0] == 1


def test_reclassify_unidentified_cells_then_review_complete(lab):
    store, ids = lab
    at = app("rev", "review")
    assert any("Signing is blocked: 2 unidentified" in w.value for w in at.warning)
    for cid in ids[:2]:
        at.checkbox(key=f"pick_{cid}").check()
    at.run()
    at.button(key="to_lymphocyte").click().run()
    assert not at.exception
    assert {store.get_cell(c).reviewed_label for c in ids[:2]} == {"lymphocyte"}
    assert store.list_audit(sample_id="S1", action="cell.reclassify")[0].actor == "rev"
    assert not any("Signing is blocked" in w.value for w in at.warning)
    diff = at.dataframe[0].value
    assert dict(zip(diff["class"], diff["cells"])) == {"neutrophil": 5, "lymphocyte": 7}
    next(b for b in at.button if b.label == "Mark the review complete").click().run()
    assert store.get_sample("S1").status == SampleStatus.reviewed


def test_save_manual_counts(lab):
    store, _ = lab
    at = app("rev", "agreement")
    assert list(at.data_editor[0].value["cell_type"]) == CLASSES
    # AppTest applies st.data_editor edits through the editor's keyed edit state (what the browser sends).
    at.session_state["counts_S1"] = {"edited_rows": {0: {"count": 60}, 1: {"count": 40}}, "added_rows": [],
                                     "deleted_rows": []}
    at.run()
    next(b for b in at.button if b.label == "Save manual count").click().run()
    assert not at.exception, at.exception
    counts = {c.cell_type: c.count for c in store.get_manual_counts("S1")}
    assert counts == {"neutrophil": 60, "lymphocyte": 40}
    assert store.list_audit(sample_id="S1", action="counts.save")[0].actor == "rev"
    paired = table(at, "manual %")  # model vs manual, from phenotyping.agreement.comparison
    assert list(paired["class"]) == CLASSES and list(paired["manual %"]) == [60.0, 40.0]
    assert list(paired["model raw %"]) == [50.0, 50.0]  # 5 + 5 confident cells; the 2 unsure await review


def _analysed_sample(store, folder, sample_id: str, labels: list[str]) -> None:
    """A sample whose cells the toy model predicted confidently as ``labels``."""
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen

    store.create_sample(Sample(id=sample_id, specimen=Specimen.blood, patient_pseudonym=f"P-{sample_id}"),
                        actor="rev")
    folder.mkdir()
    for i in range(len(labels)):
        (folder / f"c{i:02d}.png").write_bytes(png_bytes(cell_array(seed=100 + i)))
    ids = ingest_set(store, folder, sample_id, actor="rev").cell_ids
    store.add_predictions([Prediction(cell_id=cid, model_id="toy-1", model_version="1", predicted_class=lab,
                                      confidence=0.9, probabilities={c: 0.9 if c == lab else 0.1 for c in CLASSES})
                           for cid, lab in zip(ids, labels)], sample_id=sample_id, actor="rev")
    store.set_analysis_model(sample_id, "toy-1", actor="rev")
    store.set_sample_status(sample_id, SampleStatus.analysed, actor="rev")


def test_study_shows_verdict_decision_levels_and_warnings(lab, app_env):
    """Issue 18: a study run on the Agreement screen shows the EP09 verdict, the decision-level bias and the design
    warnings, without exceptions."""
    from phenotyping.agreement.manual_counts import save_manual_counts

    store, _ = lab
    _analysed_sample(store, app_env / "s2", "S2", ["neutrophil"] * 7 + ["lymphocyte"] * 3)
    _analysed_sample(store, app_env / "s3", "S3", ["neutrophil"] * 3 + ["lymphocyte"] * 7)
    for sid, neu in (("S1", 55), ("S2", 72), ("S3", 28)):
        save_manual_counts(store, sid, [{"cell_type": "neutrophil", "count": neu, "total_counted": 100},
                                        {"cell_type": "lymphocyte", "count": 100 - neu, "total_counted": 100}],
                           actor="rev", allowed_classes=CLASSES)
    at = app("rev", "agreement")
    assert not at.exception, at.exception
    at.text_input[next(i for i, t in enumerate(at.text_input) if t.label.startswith("Allowable"))].set_value(
        "neutrophil=10; 1")
    at.text_input[next(i for i, t in enumerate(at.text_input) if t.label.startswith("Medical decision"))].set_value(
        "50")
    next(b for b in at.button if b.label == "Run study").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    res = at.session_state["study_result"]
    neu = res.raw["neutrophil"]
    rows = table(at, "verdict")
    verdicts = dict(zip(rows["class"], rows["verdict"]))
    assert verdicts["neutrophil"] == f"{'accepted' if neu.acceptance.accepted else 'not accepted'} (±10)"
    assert verdicts["lymphocyte"].endswith("(±1)")
    assert list(rows["warnings"]) == [len(res.raw[c].warnings) for c in rows["class"]] and min(rows["warnings"]) >= 2
    levels = table(at, "level %")
    assert list(levels["level %"]) == [50.0] and levels["bias"][0] == pytest.approx(neu.decision_levels.levels[0].bias)
    assert any("fewer than the 40 CLSI EP09 requires" in w.value for w in at.warning)
    assert any("accepted against ±10" in m.value for m in [*at.success, *at.error])
    saved = store.get_study(res.name)
    assert saved["result"]["options"]["allowable"] == {"neutrophil": 10.0, "*": 1.0}
    # a malformed allowable difference is a one-line error, not an exception
    at.text_input[next(i for i, t in enumerate(at.text_input) if t.label.startswith("Allowable"))].set_value(
        "neutrophil=ten")
    next(b for b in at.button if b.label == "Run study").click().run()
    assert not at.exception and any("not CLASS=VALUE" in e for e in errors(at))


def test_draft_edit_and_sign(lab, app_env, monkeypatch):
    from phenotyping.auth import install_signer_key
    from phenotyping.settings import get_settings
    from reports.keys import init_ca, issue_signer

    store, ids = lab
    store.reclassify(ids[:2], "neutrophil", actor="rev", model_id="toy-1")
    at = app("rev", "report")
    next(b for b in at.button if b.label == "Generate draft").click().run()
    assert not at.exception
    rv = store.get_report_version("S1")
    assert rv.version == 1 and rv.created_by == "rev" and rv.interpretation
    at.text_area[0].input(rv.interpretation + " Reviewed by the lab.")
    next(b for b in at.button if b.label == "Save edit").click().run()
    assert store.get_report_version("S1").version == 2
    assert any("A signer signs the report" in i.value for i in at.info)  # a reviewer cannot sign

    init_ca(app_env / "ca", name="Test CA", password=b"ca-secret-1", key_type="ec")
    key = issue_signer(app_env / "ca", app_env / "sig.p12", name="Dr Sig", role="haematologist",
                       ca_password=b"ca-secret-1", password=KEY_PASSWORD.encode(), key_type="ec")
    monkeypatch.setenv("LEUKO_LAB_CA", str(app_env / "ca" / "ca.pem"))
    get_settings.cache_clear()
    install_signer_key(get_settings(), "sig", key.read_bytes(), KEY_PASSWORD.encode(), signer_name="Dr Sig")
    at = app("sig", "report")
    pw = next(t for t in at.text_input if t.label == "Key password")
    pw.input("wrong-password")
    next(b for b in at.button if b.label == "Sign the report").click().run()
    assert errors(at) and store.get_report_version("S1").signed_at is None
    pw = next(t for t in at.text_input if t.label == "Key password")
    pw.input(KEY_PASSWORD)
    next(b for b in at.button if b.label == "Sign the report").click().run()
    assert not at.exception, at.exception
    signed = store.get_report_version("S1")
    assert signed.signed_by == "sig" and signed.status == "final"
    assert store.get_sample("S1").status == SampleStatus.signed
    assert {b.label for b in at.get("download_button")} >= {"Signed PDF", "FHIR R4 bundle (JSON)", "Cells (CSV)"}


def test_signing_blocked_while_unidentified(lab):
    store, _ = lab
    store.add_report_version("S1", interpretation="Text.", source="template", actor="rev")
    at = app("sig", "report")
    assert any("unidentified cell(s) await review" in w.value for w in at.warning)
    assert "Sign the report" not in [b.label for b in at.button]


def test_models_screen_shows_proportions_and_benchmark_and_survives_missing_figures(lab, app_env):
    store, _ = lab
    card = {**CARD, "id": "toy-2", "validation": {"accuracy": None, "macro_f1": None,
                                                  "true_proportions": {"neutrophil": 0.6, "lymphocyte": 0.4},
                                                  "predicted_proportions": {"neutrophil": 0.7, "lymphocyte": 0.3}},
            "calibration": {"unidentified_threshold": None}}
    store.register_model("toy-2", path=str(app_env / "toy-model"), card=card, actor="admin", usable=False)
    at = app("admin", "models")
    next(s for s in at.selectbox if s.label == "Model").select("toy-2").run()
    assert not at.exception, at.exception
    assert [m.value for m in at.metric][:2] == ["—", "—"]
    prop = table(at, "validation true %")
    assert list(prop["validation predicted − true"]) == [10.0, -10.0]
    assert any("No benchmark recorded" in i.value for i in at.info)
    assert any("python -m phenotyping bench --model" in c.value for c in at.code)
    bench = {"device": "cpu", "end_to_end": {"cells": 1000, "cells_per_s": 212.5}}
    store.register_model("toy-2", path=str(app_env / "toy-model"), card={**card, "benchmarks": bench},
                         actor="admin", usable=False)
    at.run()
    rows = table(at, "measure")
    assert dict(zip(rows["measure"], rows["value"]))["end_to_end.cells_per_s"] == "212.5"


def test_models_screen_shows_a_cards_cross_validation_when_it_has_no_test_split(lab, app_env):
    from phenotyping.training.cv import summarise

    store, _ = lab
    folds = [{"fold": i + 1, "accuracy": a, "balanced_accuracy": a, "macro_f1": a - 0.1, "unidentified_share": 0.2,
              "confident_accuracy": 0.9, "pearson": {}} for i, a in enumerate([0.7, 0.8, 0.9])]
    card = {**CARD, "id": "toy-cv", "test": None,
            "cross_validation": {"k": 3, "method": "StratifiedKFold (shuffled, seed 0)", "folds": folds,
                                 "summary": summarise(folds, [])}}
    store.register_model("toy-cv", path=str(app_env / "toy-model"), card=card, actor="admin", usable=False)
    at = app("admin", "models")
    next(s for s in at.selectbox if s.label == "Model").select("toy-cv").run()
    assert not at.exception, at.exception
    assert any("3-fold cross-validation" in m.value and "accuracy 0.800 ± 0.100" in m.value
               and "unidentified share 20.0 % ± 0.0 %" in m.value for m in at.markdown)
    assert any("No test split" in c.value for c in at.caption)
    rows = table(at, "figure")
    assert list(rows["fold 3"])[0] == "0.900" and "accuracy above the threshold" in list(rows["figure"])


def test_users_screen_creates_changes_and_deactivates_accounts(lab):
    store, _ = lab
    at = app("admin", "users")
    form = {t.label: t for t in at.text_input}
    form["Username"].input("newrev")
    form["Full name"].input("Dr New")
    form["Initial password"].input(PASSWORD)
    next(s for s in at.selectbox if s.label == "Role").select("reviewer")
    next(b for b in at.button if b.label == "Create account").click().run()
    assert not at.exception and any("Account newrev (reviewer) created" in m.value for m in at.success)
    assert store.get_user("newrev")[0].display_name == "Dr New"
    next(s for s in at.selectbox if s.label == "Account").select("newrev").run()
    at.selectbox(key="role_newrev").select("signer")
    at.checkbox(key="active_newrev").uncheck()
    next(b for b in at.button if b.label == "Save changes").click().run()
    assert not at.exception
    changed = store.get_user("newrev")[0]
    assert changed.role.value == "signer" and not changed.active
    assert store.list_audit(action="user.update")[0].actor == "admin"
    next(s for s in at.selectbox if s.label == "Account").select("admin").run()
    at.checkbox(key="active_admin").uncheck()
    next(b for b in at.button if b.label == "Save changes").click().run()
    assert any("last active admin" in e for e in errors(at)) and store.get_user("admin")[0].active


def test_signed_sample_is_locked_on_the_screens(lab):
    """Once the latest report version is signed, reclassify, run and save are off and the screens say why."""
    store, ids = lab
    rv = store.add_report_version("S1", interpretation="Text.", source="template", actor="sig")
    store.mark_report_signed("S1", rv.version, signer="sig", status="final", pdf_path="x.pdf", pdf_hash="0" * 64)
    at = app("rev", "review")
    assert not at.exception, at.exception
    assert any("Report v1 was signed by sig" in i.value and "amend the report" in i.value for i in at.info)
    assert not [b for b in at.button if b.key and str(b.key).startswith("to_")]  # no reclassify buttons
    at = app("rev", "analyse")
    assert not at.exception and next(b for b in at.button if b.label == "Run analysis").disabled
    assert any("so its analysis is locked" in i.value for i in at.info)
    at = app("rev", "agreement")
    assert not at.exception and "Save manual count" not in [b.label for b in at.button]
    assert any("so its manual count is locked" in i.value for i in at.info)


def test_run_analysis_starts_a_job_and_shows_the_differential(lab, monkeypatch):
    """The Analyse button submits a prediction job (model patched out) and the screen follows it to the end."""
    import phenotyping.analysis.inference as inference
    import phenotyping.jobs as jobs

    store, ids = lab
    store.delete_predictions("S1", "toy-1", actor="rev")

    class FakeRun:
        predicted, excluded, unidentified = 12, 0, 0

        def to_dict(self):
            return {"predicted": 12, "cells_per_second": 120.0}

    class FakeModel:
        id = "toy-1"

    def fake_predict(store_, sample_id, lm, *, device, progress, actor, threads, stage=None):
        preds = [Prediction(cell_id=cid, model_id="toy-1", model_version="1", predicted_class=CLASSES[k % 2],
                            confidence=0.9, probabilities={c: 0.9 if c == CLASSES[k % 2] else 0.1 for c in CLASSES})
                 for k, cid in enumerate(ids)]
        store_.add_predictions(preds, sample_id=sample_id, actor=actor)
        progress(12, 12, 120.0)
        return FakeRun()

    monkeypatch.setattr(jobs, "load_model_cached", lambda path: FakeModel())
    monkeypatch.setattr(inference, "predict_sample", fake_predict)
    at = app("rev", "analyse")
    next(b for b in at.button if b.label == "Run analysis").click().run()
    assert not at.exception, at.exception
    jid = at.session_state["job_S1"]
    from pages._common import get_runner

    job = get_runner().wait(jid, timeout=30)
    assert job["status"] == "done" and job["created_by"] == "rev" and "12 cells predicted" in job["message"]
    at.run()
    assert not at.exception
    assert any(f"Job {jid} finished" in s.value for s in at.success)
    diff = table(at, "raw %")
    assert dict(zip(diff["class"], diff["cells"])) == {"neutrophil": 6, "lymphocyte": 6}


@pytest.mark.slow  # five AppTest runs
def test_analyse_warns_when_the_model_is_not_meant_for_the_specimen(lab, app_env):
    """The toy card states no specimens, so Analyse warns on the blood sample; once the card declares blood the
    warning is gone; declared for BALF only, it names what the card declares."""
    store, _ = lab
    at = app("rev", "analyse")
    assert not at.exception
    assert any("Not validated for blood samples" in w.value and "no 'specimens' section" in w.value
               for w in at.warning)
    for specimens, warned in (({"blood": {"counted": CLASSES}}, False), ({"balf": {"counted": CLASSES}}, True)):
        card = {**CARD, "specimens": specimens}
        (app_env / "toy-model" / "model_card.json").write_text(json.dumps(card))
        store.register_model("toy-1", path=str(app_env / "toy-model"), card=card, actor="admin", usable=True)
        at = app("rev", "analyse")
        assert not at.exception
        found = [w.value for w in at.warning if "Not validated" in w.value]
        assert bool(found) is warned and all("declares balf only" in w for w in found)
    # a class the specimen reports apart leaves the percentages for a table of its own
    card = {**CARD, "specimens": {"blood": {"counted": ["neutrophil"], "counted_apart": ["lymphocyte"]}}}
    (app_env / "toy-model" / "model_card.json").write_text(json.dumps(card))
    store.register_model("toy-1", path=str(app_env / "toy-model"), card=card, actor="admin", usable=True)
    at = app("rev", "analyse")
    assert not at.exception and list(table(at, "raw %")["class"]) == ["neutrophil"]
    apart = table(at, "reported")
    assert list(apart["class"]) == ["lymphocyte"] and list(apart["cells"]) == [5]  # 6, one of them unsure


def test_pages_import_no_heavy_or_db_modules():
    """pages/ and app.py stay thin: no torch, timm, duckdb or litellm import anywhere in their sources."""
    pattern = re.compile(r"^\s*(import|from)\s+(torch|timm|duckdb|litellm)\b", re.MULTILINE)
    sources = [PROJECT_ROOT / "app.py", *sorted((PROJECT_ROOT / "pages").glob("*.py"))]
    assert len(sources) >= 10
    offenders = [p.name for p in sources if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_display_image_is_uint8():
    from phenotyping.analysis.cellview import overlay, to_display

    img = to_display(cell_array(c=2, dtype=np.uint16))
    assert img.dtype == np.uint8 and img.shape == (32, 32) and img.max() == 255
    rgb = overlay(img, np.ones((32, 32), np.float32))
    assert rgb.shape == (32, 32, 3)
