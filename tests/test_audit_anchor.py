"""The audit chain's anchor (``<db>.audit-anchor``), batch digests, ``audit verify`` and the chain head in reports."""

from __future__ import annotations

import io
import json

import pytest

from phenotyping.__main__ import main
from phenotyping.schemas import Prediction, Sample, SampleStatus, Specimen
from phenotyping.store import Store
from phenotyping.store._db import _utc, audit_digest
from reports.demo import demo_context
from reports.fhir import AUDIT_HEAD_EXTENSION, fhir_bundle
from reports._models import AuditChainHead
from tests.test_app import app_env  # noqa: F401 (fixture)
from tests.test_store import add_cells


def _fill(path) -> list[int]:
    """A file store with a sample, a batch of 3 cells, their predictions and some status changes (7 events)."""
    with Store(path) as s:
        s.create_sample(Sample(id="S1", specimen=Specimen.blood), actor="a")
        ids = add_cells(s, 3)
        s.add_predictions([Prediction(cell_id=i, model_id="m1", model_version="1", predicted_class="neutrophil",
                                      confidence=0.8, probabilities={"neutrophil": 0.8, "lymphocyte": 0.2})
                           for i in ids], sample_id="S1", actor="runner")
        for st in (SampleStatus.analysed, SampleStatus.reviewed, SampleStatus.analysed, SampleStatus.reviewed):
            s.set_sample_status("S1", st, actor="b")
    return ids


def _verify(path, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["audit", "verify", "--db", str(path)])
    return rc, json.loads(capsys.readouterr().out)


def _events(s: Store) -> list[dict]:
    cur = s._cursor().execute("SELECT * FROM audit ORDER BY id")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_intact_store_verifies_and_anchor_has_one_line_per_event(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    _fill(db)
    lines = [json.loads(x) for x in (tmp_path / "a.duckdb.audit-anchor").read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, 8)) and not any(x.get("late") for x in lines)
    rc, out = _verify(db, capsys)
    assert rc == 0 and out["bottom_line"] == "intact" and out["anchor_state"] == "agrees"
    assert out["head"]["seq"] == 7 and out["head"]["hash"] == lines[-1]["hash"]
    assert out["batches"]["checked"] == 2 and out["batches"]["changed"] == 0


def test_truncated_trail_fails_naming_the_first_missing_event(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    _fill(db)
    with Store(db) as s:
        events = _events(s)
        s._cursor().execute("DELETE FROM audit WHERE id > ?", [events[4]["id"]])  # keep 5 of 7
        assert s.verify_audit_chain() == (True, None)  # the table alone cannot tell
    rc, out = _verify(db, capsys)
    assert rc == 1 and out["bottom_line"] == "tampered"
    bad = out["first_bad"]
    assert bad["seq"] == 6 and bad["id"] == events[5]["id"] and bad["action"] == "sample.status"
    assert bad["problem"] == "missing" and "truncated" in out["problems"][0]


def _rechain(s: Store, from_id: int, **change: str) -> None:
    """Edit event ``from_id`` and recompute its hash and every later one, as a careful forger would."""
    for col, value in change.items():
        s._cursor().execute(f"UPDATE audit SET {col} = ? WHERE id = ?", [value, from_id])
    prev = None
    for r in _events(s):
        if r["id"] < from_id:
            prev = r["hash"]
            continue
        digest = audit_digest(prev, _utc(r["happened_at"]), r["actor"], r["action"], r["entity"], r["entity_id"],
                              r["sample_id"], r["before"], r["after"])
        s._cursor().execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", [prev, digest, r["id"]])
        prev = digest


def test_rechained_trail_fails_naming_the_edited_event(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    _fill(db)
    with Store(db) as s:
        edited = _events(s)[4]
        _rechain(s, edited["id"], actor="mallory")
        assert s.verify_audit_chain() == (True, None)  # the chain itself is consistent again
    rc, out = _verify(db, capsys)
    assert rc == 1 and out["first_bad"]["id"] == edited["id"] and out["first_bad"]["seq"] == 5
    assert out["first_bad"]["action"] == edited["action"] and "differs from the anchor" in out["problems"][0]


def test_cells_and_predictions_edited_behind_the_audit_name_the_batch(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    ids = _fill(db)
    with Store(db) as s:
        s._cursor().execute("UPDATE cells SET content_hash = ? WHERE id = ?", ["f" * 64, ids[1]])
        s._cursor().execute("UPDATE predictions SET predicted_class = 'lymphocyte' WHERE cell_id = ?", [ids[2]])
        ingest = [e for e in _events(s) if e["action"] == "cells.ingest"][0]
    rc, out = _verify(db, capsys)
    assert rc == 1 and out["batches"]["changed"] == 2
    cells, preds = out["problems"]
    assert "sample S1" in cells and f"event #{ingest['id']}" in cells and f"{ids[0]}–{ids[-1]}" in cells
    assert "sample S1" in preds and "model m1" in preds
    assert out["anchor_state"] == "agrees"  # the trail itself is intact


def test_cells_inserted_without_the_store_are_reported(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    ids = _fill(db)
    with Store(db) as s:
        s._cursor().execute("INSERT INTO cells SELECT * REPLACE (id + 100 AS id, cell_key || 'x' AS cell_key) "
                            "FROM cells WHERE id = ?", [ids[0]])
    rc, out = _verify(db, capsys)
    assert rc == 1 and any("without a cells.ingest audit event" in p for p in out["problems"])


def test_anchor_behind_after_a_crash_is_reported_then_caught_up(tmp_path, capsys, monkeypatch):
    from phenotyping.store._db import Database

    db = tmp_path / "a.duckdb"
    _fill(db)
    real = Database._write_anchor
    monkeypatch.setattr(Database, "_write_anchor", lambda self, cur, pending: None)  # "crash" after COMMIT
    with Store(db) as s:
        s.set_sample_status("S1", SampleStatus.analysed, actor="b")
    rc, out = _verify(db, capsys)
    assert rc == 3 and out["bottom_line"] == "unanchored" and out["behind_by"] == 1
    assert "behind by 1 event" in out["notes"][0]
    monkeypatch.setattr(Database, "_write_anchor", real)
    with Store(db) as s:
        s.set_sample_status("S1", SampleStatus.reviewed, actor="b")
    lines = [json.loads(x) for x in (tmp_path / "a.duckdb.audit-anchor").read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, 10)) and lines[7]["late"] and not lines[8].get("late")
    rc, out = _verify(db, capsys)
    assert rc == 0 and "anchored late" in out["notes"][0]


def test_missing_anchor_is_said(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    _fill(db)
    (tmp_path / "a.duckdb.audit-anchor").unlink()
    rc, out = _verify(db, capsys)
    assert rc == 3 and out["anchor_state"] == "missing" and "is missing" in out["notes"][0]


def test_truncated_then_written_again_is_still_found(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    _fill(db)
    with Store(db) as s:
        s._cursor().execute("DELETE FROM audit WHERE id > (SELECT min(id) + 4 FROM audit)")
    with Store(db) as s:  # the app goes on writing over the hole
        s.set_sample_status("S1", SampleStatus.analysed, actor="b")
    rc, out = _verify(db, capsys)
    assert rc == 1 and out["first_bad"]["seq"] == 6
    assert any("two different lines for seq 6" in p for p in out["problems"])


def test_in_memory_store_has_no_anchor(store, sample):
    check = store.verify_audit()
    assert check.ok and check.anchor is None and check.anchor_state == "none"


def test_report_context_pdf_and_fhir_carry_the_chain_head(tmp_path):
    from pypdf import PdfReader

    from reports.pdf import render
    from tests.test_reports_context import _fill as fill_report

    with Store(tmp_path / "r.duckdb") as s:
        fill_report(s, tmp_path / "model")
        from phenotyping.settings import Settings
        from reports.context import build_context

        ctx = build_context(s, "S1", settings=Settings(db_path=tmp_path / "r.duckdb", lab_id="LAB-9"))
        head = s.audit_head()
    assert ctx.audit_head == AuditChainHead(seq=head.seq, event_id=head.id, sha256=head.hash)
    assert ctx.results_json()["audit_head"]["sha256"] == head.hash
    demo = demo_context().model_copy(update={"audit_head": ctx.audit_head})
    report = fhir_bundle(demo)["entry"][0]["resource"]  # validated against R4B inside
    ext = [e for e in report["extension"] if e["url"] == AUDIT_HEAD_EXTENSION][0]["extension"]
    assert {e["url"]: list(e.values())[1] for e in ext} == {"seq": head.seq, "event": head.id, "sha256": head.hash}
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(render(demo))).pages)
    assert head.hash in "".join(text.split()) and "audit verify" in text


def test_report_without_a_head_reads_back(tmp_path):
    data = demo_context().results_json()
    data.pop("audit_head")  # a results JSON signed before chain heads existed
    assert type(demo_context()).from_results_json(data).audit_head is None
    with pytest.raises(ValueError, match="sha256"):
        AuditChainHead(seq=1, event_id=1, sha256="not-a-hash")


def test_audit_screen_shows_the_anchor_state(app_env):
    from phenotyping.auth import create_first_admin
    from tests.test_app import PASSWORD, app, get_store_obj

    store = get_store_obj()
    create_first_admin(store, "admin", PASSWORD)
    store.create_sample(Sample(id="S1", specimen=Specimen.blood), actor="admin")
    store.set_sample_status("S1", SampleStatus.analysed, actor="admin")
    at = app("admin", "audit")
    at.button[0].click().run()
    assert not at.exception and any("Anchor: agrees" in s.value for s in at.success)
    store._cursor().execute("DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)")
    at.button[0].click().run()
    assert any("Anchor: disagrees" in e.value for e in at.error)
    assert any("truncated" in e.value and "sample.status" in e.value for e in at.error)


def test_a_line_torn_by_a_crash_is_a_note_and_written_again(tmp_path, capsys):
    db = tmp_path / "a.duckdb"
    _fill(db)
    anchor = tmp_path / "a.duckdb.audit-anchor"
    text = anchor.read_text()
    anchor.write_text(text[:-40])  # the last line (seq 7) cut mid-write, no newline
    with Store(db) as s:
        s.set_sample_status("S1", SampleStatus.analysed, actor="b")
    lines = anchor.read_text().splitlines()
    assert json.loads(lines[-2])["seq"] == 7 and json.loads(lines[-2])["late"] and json.loads(lines[-1])["seq"] == 8
    rc, out = _verify(db, capsys)
    assert rc == 0 and any("cut short" in n for n in out["notes"])


def test_predictions_replaced_or_deleted_through_the_store_are_not_flagged(store, sample):
    ids = add_cells(store, 4)

    def preds(cells, label):
        return [Prediction(cell_id=i, model_id="m1", model_version="1", predicted_class=label, confidence=0.7,
                           probabilities={label: 0.7, "x": 0.3}) for i in cells]

    store.add_predictions(preds(ids[:2], "neutrophil"), sample_id="S1", actor="r")
    store.add_predictions(preds(ids[2:], "neutrophil"), sample_id="S1", actor="r")
    store.add_predictions(preds(ids[1:2], "monocyte"), sample_id="S1", actor="r")  # a re-run replaces one
    check = store.verify_audit()
    assert check.ok and check.batches == {"checked": 3, "changed": 0, "superseded": 1, "without_digest": 0}
    store.delete_predictions("S1", "m1", actor="r")
    check = store.verify_audit()
    assert check.ok and check.batches["superseded"] == 3 and check.batches["checked"] == 1  # the cells batch
