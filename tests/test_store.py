"""The DuckDB store: migrations, audit trail, one writer per file, durability of committed cells."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from phenotyping.errors import NotFoundError
from phenotyping.schemas import ManualCount, Prediction, QCState, Role, Sample, SampleStatus, Specimen, User
from phenotyping.store import SCHEMA_VERSION, Store
from tests.conftest import PROJECT_ROOT, cell_array, png_bytes


def add_cells(store, n, sample_id="S1"):
    rows = []
    for i in range(n):
        data = png_bytes(cell_array(seed=i))
        digest, rel = store.put_blob(data, suffix=".png")
        rows.append({"cell_key": f"c{i}", "content_hash": digest, "source_file": f"c{i}.png", "blob_path": rel,
                     "shape": (1, 32, 32), "dtype": "uint8", "reference_label": "neutrophil"})
    return store.add_cells(sample_id, rows, actor="tester")


def test_memory_and_file_stores_migrate(tmp_path):
    s = Store(tmp_path / "a.duckdb")
    assert s.schema_version() == SCHEMA_VERSION
    s.close()
    s = Store(tmp_path / "a.duckdb")  # reopening applies nothing twice
    assert s.schema_version() == SCHEMA_VERSION
    s.close()


def test_sample_lifecycle_is_audited(store, sample):
    with pytest.raises(ValueError, match="already exists"):
        store.create_sample(Sample(id="S1", specimen=Specimen.balf), actor="x")
    store.set_sample_status("S1", SampleStatus.analysed, actor="rev")
    assert store.get_sample("S1").status == SampleStatus.analysed
    events = store.list_audit(sample_id="S1")
    assert [e.action for e in events] == ["sample.status", "sample.create"]
    assert events[0].before == {"status": "new"} and events[0].after == {"status": "analysed"}
    assert events[0].actor == "rev"
    with pytest.raises(NotFoundError, match="no sample 'nope'"):
        store.get_sample("nope")


def test_reclassify_writes_review_and_audit(store, sample):
    ids = add_cells(store, 3)
    store.add_predictions([Prediction(cell_id=i, model_id="m1", model_version="1", predicted_class="neutrophil",
                                      confidence=0.9, probabilities={"neutrophil": 0.9, "monocyte": 0.1})
                           for i in ids], sample_id="S1", actor="model")
    assert store.reclassify(ids[:2], "monocyte", actor="rev", model_id="m1") == 2
    assert store.reclassify(ids[:1], "monocyte", actor="rev", model_id="m1") == 0  # no change, no record
    assert [c.reviewed_label for c in store.list_cells("S1")] == ["monocyte", "monocyte", None]
    ev = [e for e in store.list_audit(sample_id="S1") if e.action == "cell.reclassify"]
    assert len(ev) == 2 and ev[0].before["label"] == "neutrophil" and ev[0].after["label"] == "monocyte"
    assert len(store.list_review_actions("S1")) == 2


def test_audit_chain_detects_tampering(tmp_path):
    s = Store(tmp_path / "a.duckdb")
    s.create_sample(Sample(id="S1", specimen=Specimen.blood), actor="a")
    s.set_sample_status("S1", SampleStatus.analysed, actor="b")
    assert s.verify_audit_chain() == (True, None)
    s._cursor().execute("UPDATE audit SET actor = 'mallory' WHERE id = 1")
    ok, bad = s.verify_audit_chain()
    assert not ok and bad == 1
    s.close()


def test_manual_counts_replace_and_audit(store, sample):
    store.set_manual_counts("S1", [ManualCount(sample_id="S1", cell_type="neutrophil", count=120, total_counted=200),
                                   ManualCount(sample_id="S1", cell_type="lymphocyte", count=80, total_counted=200)],
                            actor="tech")
    store.set_manual_counts("S1", [ManualCount(sample_id="S1", cell_type="neutrophil", count=110, total_counted=200),
                                   ManualCount(sample_id="S1", cell_type="lymphocyte", count=90, total_counted=200)],
                            actor="tech")
    assert {c.cell_type: c.count for c in store.get_manual_counts("S1")} == {"neutrophil": 110, "lymphocyte": 90}
    ev = store.list_audit(sample_id="S1", action="counts.save")
    assert len(ev) == 2 and ev[0].before[1]["count"] == 120


def test_report_versions_and_signing_once(store, sample):
    v1 = store.add_report_version("S1", interpretation="draft text", source="template", actor="rev")
    v2 = store.add_report_version("S1", interpretation="edited", source="template", actor="rev")
    assert (v1.version, v2.version) == (1, 2)
    store.mark_report_signed("S1", 2, signer="sig", status="final", pdf_path="x.pdf", pdf_hash="ab")
    with pytest.raises(ValueError, match="amend"):
        store.mark_report_signed("S1", 2, signer="sig", status="final", pdf_path="y.pdf", pdf_hash="cd")
    with pytest.raises(ValueError, match="reason"):
        store.add_report_version("S1", interpretation="x", source="template", actor="rev", amends_version=2)
    v3 = store.add_report_version("S1", interpretation="fixed", source="template", actor="rev", status="amended",
                                  amends_version=2, amendment_reason="typo in CD16 line")
    assert v3.amends_version == 2 and store.get_report_version("S1").version == 3


def test_users_jobs_models(store):
    store.create_user(User(username="admin", role=Role.admin), password_hash="h", actor="setup")
    assert store.get_user("admin")[0].role == Role.admin and store.count_users() == 1
    jid = store.create_job("predict", actor="admin", sample_id=None, total=10)
    store.update_job(jid, status="running", done=5, rate=12.5)
    assert store.get_job(jid)["done"] == 5
    assert store.fail_orphaned_jobs() == 1 and store.get_job(jid)["status"] == "failed"
    store.register_model("m1", path="/models/m1", card={"classes": ["a"]}, actor="admin")
    store.set_model_usable("m1", True, actor="admin")
    assert store.list_models()[0]["usable"] is True


def test_qc_states(store, sample):
    ids = add_cells(store, 2)
    store.set_qc([(ids[0], QCState.passed, None), (ids[1], QCState.excluded, "empty frame")], sample_id="S1",
                 actor="qc")
    assert [c.qc_state for c in store.list_cells("S1")] == [QCState.passed, QCState.excluded]
    assert store.list_cells("S1", qc_state=QCState.excluded)[0].qc_reason == "empty frame"


def test_second_process_gets_database_in_use(tmp_path):
    db = tmp_path / "busy.duckdb"
    s = Store(db)
    code = textwrap.dedent(f"""
        from phenotyping.store import Store
        from phenotyping.errors import DatabaseInUseError
        try:
            Store({str(db)!r})
        except DatabaseInUseError as e:
            print("IN USE:", e)
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    s.close()
    assert "IN USE:" in p.stdout and "in use by another process" in p.stdout, p.stdout + p.stderr


def test_kill_mid_ingest_loses_no_committed_cell(tmp_path):
    """SIGKILL an ingest after its first batch: every committed cell has its image, and a rerun completes the set."""
    from phenotyping.ingest import read_image

    BATCH = 256  # the ingest below runs with batches this small (the default is larger than the set)
    src = tmp_path / "set"
    src.mkdir()
    n = 1500
    for i in range(n):
        (src / f"{i:05d}.png").write_bytes(png_bytes(cell_array(h=16, w=16, seed=i)))
    db = tmp_path / "lab.duckdb"
    small_batches = ("import sys, phenotyping.ingest._ingest as ing; ing.BATCH = int(sys.argv[1]); "
                     "from phenotyping.__main__ import main; sys.exit(main(sys.argv[2:]))")
    proc = subprocess.Popen([sys.executable, "-c", small_batches, str(BATCH), "ingest", str(src), "--sample", "K",
                             "--specimen", "blood", "--db", str(db)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    images = tmp_path / "lab-images"
    # a batch's images are one pack file; the second pack is written only after the first batch's commit returned
    deadline, written = time.time() + 120, 0
    while time.time() < deadline and proc.poll() is None:
        written = sum(1 for _ in images.rglob("*.pack")) if images.exists() else 0
        if written >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert written >= 2, f"only {written} image packs were written before the kill; a batch is {BATCH} cells"
    s = Store(db)
    assert s.sample_exists("K"), "the first batch (which creates the sample) was not committed"
    committed = s.list_cells("K")
    assert BATCH <= len(committed) < n, (len(committed), n)
    for c in committed:
        data = s.read_cell_bytes(c)  # StoreError if the file is missing
        assert data == (src / c.source_file).read_bytes()
        assert read_image(data, c.source_file).shape == c.shape == (1, 16, 16)
    s.close()
    p = subprocess.run([sys.executable, "-m", "phenotyping", "ingest", str(src), "--sample", "K",
                        "--specimen", "blood", "--db", str(db)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    s = Store(db)
    assert s.count_cells("K") == n
    s.close()


def test_put_blob_rewrites_a_damaged_file_and_sync_needs_the_file(tmp_path):
    from phenotyping.errors import StoreError

    s = Store(tmp_path / "a.duckdb")
    data = png_bytes(cell_array(seed=1))
    _, rel = s.put_blob(data, suffix=".png")
    (s.image_dir / rel).write_bytes(data[:10])  # as a crash before the fsync may leave it
    assert s.put_blob(data, suffix=".png")[1] == rel
    assert s.read_blob(rel) == data
    s.sync_blobs([rel])
    with pytest.raises(StoreError, match="durable"):
        s.sync_blobs(["ab/missing.png"])
    s.close()


def test_migration_from_version_1(tmp_path):
    """A database made by the first release (migration 1 only) is upgraded in place and keeps its rows."""
    import duckdb

    from phenotyping.store import _MIGRATIONS

    db = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
    for statement in (x.strip() for x in _MIGRATIONS[0].split(";")):
        if statement:
            con.execute(statement)
    con.execute("INSERT INTO schema_migrations VALUES (1, now())")
    con.execute("INSERT INTO samples (id, specimen, status, created_at, created_by) "
                "VALUES ('OLD-1', 'blood', 'new', now(), 'v1')")
    con.close()
    s = Store(db)
    assert s.schema_version() == SCHEMA_VERSION > 1
    applied = [r[0] for r in s._cursor().execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()]
    assert applied == list(range(1, SCHEMA_VERSION + 1))
    assert s.get_sample("OLD-1").specimen == Specimen.blood
    assert s.analysis_model("OLD-1") is None  # the column migration 2 added
    s.set_analysis_model("OLD-1", "m1", actor="rev")
    assert s.list_samples()[0]["analysis_model_id"] == "m1"
    s.close()


def predictions(ids, label="neutrophil", model_id="m1"):
    return [Prediction(cell_id=i, model_id=model_id, model_version="1.2", predicted_class=label, confidence=0.9,
                       probabilities={label: 0.9, "other": 0.1}) for i in ids]


def test_every_change_writes_its_audit_event(store, sample):
    ids = add_cells(store, 3)
    store.update_sample("S1", actor="clerk", notes="haemolysed")
    store.set_qc([(ids[0], QCState.passed, None), (ids[1], QCState.excluded, "empty frame: no cell")],
                 sample_id="S1", actor="qc")
    store.add_predictions(predictions(ids), sample_id="S1", actor="runner")
    store.add_predictions(predictions(ids[:1], label="monocyte"), sample_id="S1", actor="runner")
    store.set_analysis_model("S1", "m1", actor="rev")
    store.add_report_version("S1", interpretation="text", source="template", actor="rev")
    store.mark_report_signed("S1", 1, signer="sig", status="final", pdf_path="r.pdf", pdf_hash="ab")
    by_action = {}
    for e in store.list_audit(sample_id="S1"):
        by_action.setdefault(e.action, []).append(e)
    assert by_action["sample.update"][0].actor == "clerk"
    assert by_action["sample.update"][0].after == {"notes": "haemolysed"}
    assert by_action["cells.ingest"][0].after["cells"] == 3 and by_action["cells.ingest"][0].actor == "tester"
    assert by_action["cells.qc"][0].after == {"passed": 1, "excluded: empty frame": 1}
    assert by_action["sample.analysis_model"][0].after == {"model_id": "m1"}
    assert by_action["report.version"][0].after["version"] == 1
    assert by_action["report.sign"][0].actor == "sig" and by_action["report.sign"][0].after["status"] == "final"
    saves = by_action["predictions.save"]  # one event per batch, not per cell; newest first
    assert len(saves) == 2 and all(e.actor == "runner" for e in saves)
    assert saves[1].after.pop("cell_ranges") == [[min(ids), max(ids)]] and len(saves[1].after.pop("digest")) == 64
    assert saves[0].after.pop("cell_ranges") and saves[0].after.pop("digest")  # what `audit verify` recomputes
    assert saves[1].after == {"model_id": "m1", "model_version": "1.2", "cells": 3, "replaced": 0,
                              "classes": {"neutrophil": 3}}
    assert saves[0].after == {"model_id": "m1", "model_version": "1.2", "cells": 1, "replaced": 1,
                              "classes": {"monocyte": 1}}
    assert store.verify_audit_chain() == (True, None)


def test_predictions_for_another_samples_cells_are_refused(store, sample):
    ids = add_cells(store, 2)
    store.create_sample(Sample(id="S2", specimen=Specimen.blood), actor="t")
    with pytest.raises(ValueError, match=r"not in it"):
        store.add_predictions(predictions(ids), sample_id="S2", actor="runner")
    assert store.list_predictions("S2", "m1") == [] and store.list_predictions("S1", "m1") == []


def test_signed_sample_is_locked_until_amended(store, sample):
    from phenotyping.errors import SampleLocked

    ids = add_cells(store, 3)
    store.add_predictions(predictions(ids), sample_id="S1", actor="runner")
    store.set_manual_counts("S1", [ManualCount(sample_id="S1", cell_type="neutrophil", count=100,
                                               total_counted=100)], actor="tech")
    store.add_report_version("S1", interpretation="text", source="template", actor="rev")
    assert store.signed_lock("S1") is None
    store.mark_report_signed("S1", 1, signer="sig", status="final", pdf_path="r.pdf", pdf_hash="ab")
    assert store.signed_lock("S1").version == 1
    n_audit = len(store.list_audit())
    data = png_bytes(cell_array(seed=99))
    digest, rel = store.put_blob(data, suffix=".png")
    attempts = {
        "reclassify": lambda: store.reclassify(ids[:1], "monocyte", actor="rev", model_id="m1"),
        "set_qc": lambda: store.set_qc([(ids[0], QCState.excluded, "blur")], sample_id="S1", actor="qc"),
        "add_predictions": lambda: store.add_predictions(predictions(ids, "monocyte"), sample_id="S1",
                                                         actor="runner"),
        "delete_predictions": lambda: store.delete_predictions("S1", "m1", actor="rev"),
        "set_analysis_model": lambda: store.set_analysis_model("S1", "m2", actor="rev"),
        "set_manual_counts": lambda: store.set_manual_counts(
            "S1", [ManualCount(sample_id="S1", cell_type="neutrophil", count=90, total_counted=100)], actor="tech"),
        "add_cells": lambda: store.add_cells("S1", [{"cell_key": "late", "content_hash": digest,
                                                     "source_file": "late.png", "blob_path": rel,
                                                     "shape": (1, 32, 32), "dtype": "uint8"}], actor="t"),
        "update_sample pseudonym": lambda: store.update_sample("S1", actor="rev", patient_pseudonym="OTHER"),
        "unamended report version": lambda: store.add_report_version("S1", interpretation="new", source="template",
                                                                     actor="rev"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(SampleLocked) as e:
            attempt()
        msg = str(e.value)
        assert "S1" in msg and "version 1" in msg and "amend the report (with a reason)" in msg, (what, msg)
    # nothing changed, nothing audited
    assert len(store.list_audit()) == n_audit
    assert [c.reviewed_label for c in store.list_cells("S1")] == [None] * 3
    assert {p.predicted_class for p in store.list_predictions("S1", "m1")} == {"neutrophil"}
    assert store.get_manual_counts("S1")[0].count == 100 and store.count_cells("S1") == 3
    assert store.get_sample("S1").patient_pseudonym == "P-001"
    store.update_sample("S1", actor="rev", notes="free-text notes are not on the report")  # still allowed
    # other samples are not locked
    store.create_sample(Sample(id="S2", specimen=Specimen.blood), actor="t")
    store.set_manual_counts("S2", [ManualCount(sample_id="S2", cell_type="neutrophil", count=1, total_counted=1)],
                            actor="tech")
    # an amendment (with a reason) unlocks
    store.add_report_version("S1", interpretation="text", source="template", actor="rev", status="draft",
                             amends_version=1, amendment_reason="cell 1 is a monocyte")
    assert store.signed_lock("S1") is None
    assert store.reclassify(ids[:1], "monocyte", actor="rev", model_id="m1") == 1
    store.set_qc([(ids[0], QCState.passed, None)], sample_id="S1", actor="qc")
    # signing the amendment locks again
    store.mark_report_signed("S1", 2, signer="sig", status="amended", pdf_path="r2.pdf", pdf_hash="cd")
    with pytest.raises(SampleLocked, match="version 2"):
        store.reclassify(ids[1:2], "monocyte", actor="rev", model_id="m1")


def test_prediction_and_qc_writes_keep_every_value_without_importing_pandas(store, sample, tmp_path):
    """The batch writes scan NumPy columns (pandas cost 0.5-0.7 s of a predict run): each value is stored as given,
    a prediction's time zone included, and the audit counts the classes of that batch."""
    import subprocess
    import sys
    from datetime import datetime, timedelta, timezone

    ids = add_cells(store, 4)
    store.set_qc([(ids[0], QCState.passed, None), (ids[1], QCState.excluded, "empty frame: no cell"),
                  (ids[2], QCState.passed, None)], sample_id="S1", actor="qc")
    assert [(c.qc_state, c.qc_reason) for c in store.list_cells("S1")][:3] == [
        (QCState.passed, None), (QCState.excluded, "empty frame: no cell"), (QCState.passed, None)]
    at = datetime(2026, 12, 2, 21, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))   # 19:30:15.123456 UTC
    preds = [Prediction(cell_id=i, model_id="m1", model_version="1.2", predicted_class=c, confidence=p,
                        probabilities={"neutrophil": p, "monocyte": 1 - p}, targets={"cd16": t}, created_at=at)
             for i, c, p, t in zip(ids, ["neutrophil", "monocyte", "neutrophil", "monocyte"],
                                   [0.9, 0.35, 0.75, 0.125], [1.5, 2.0, -3.25, 0.0])]
    store.add_predictions(preds, sample_id="S1", actor="runner")
    got = store.list_predictions("S1", "m1")
    assert [(g.cell_id, g.predicted_class, g.confidence, g.targets["cd16"]) for g in got] == [
        (p.cell_id, p.predicted_class, p.confidence, p.targets["cd16"]) for p in preds]
    assert all(g.created_at == at for g in got)   # the same instant, whatever zone it was given in
    save = next(e for e in store.list_audit() if e.action == "predictions.save")
    assert save.after["classes"] == {"monocyte": 2, "neutrophil": 2} and save.after["cells"] == 4
    assert store.verify_audit_chain() == (True, None)
    probe = """
import sys
from phenotyping.schemas import Prediction, QCState, Sample, Specimen
from phenotyping.store import Store
s = Store(":memory:", image_dir=sys.argv[1])
s.create_sample(Sample(id="S", specimen=Specimen.blood), actor="t")
digest, rel = s.put_blob(b"not decoded here", suffix=".png")
ids = s.add_cells("S", [{"cell_key": "c", "content_hash": digest, "source_file": "c.png", "blob_path": rel,
                         "shape": (1, 4, 4), "dtype": "uint8"}], actor="t")
s.set_qc([(ids[0], QCState.passed, None)], sample_id="S", actor="qc")
s.add_predictions([Prediction(cell_id=ids[0], model_id="m", model_version="1", predicted_class="a",
                              confidence=1.0, probabilities={"a": 1.0})], sample_id="S", actor="r")
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "probe-images")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
