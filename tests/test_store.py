"""The DuckDB store: migrations, audit trail, one writer per file, durability of committed cells."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from phenotyping.errors import DatabaseInUseError, NotFoundError
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
                           for i in ids], sample_id="S1")
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
    """SIGKILL an ingest between batches: every committed cell has its image, and a rerun completes the set."""
    src = tmp_path / "set"
    src.mkdir()
    n = 1500
    for i in range(n):
        (src / f"{i:05d}.png").write_bytes(png_bytes(cell_array(h=16, w=16, seed=i)))
    db = tmp_path / "lab.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "phenotyping", "ingest", str(src), "--sample", "K",
                             "--specimen", "blood", "--db", str(db)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    images = tmp_path / "lab-images"
    while time.time() < deadline:  # wait until at least one batch's images exist, then kill
        if images.exists() and sum(1 for _ in images.rglob("*.png")) > 300:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = Store(db)
    committed = s.list_cells("K") if s.sample_exists("K") else []
    assert len(committed) < n, "the ingest finished before it could be killed; make the set larger"
    for c in committed:
        assert s.read_cell_bytes(c) == (src / c.source_file).read_bytes()
    s.close()
    p = subprocess.run([sys.executable, "-m", "phenotyping", "ingest", str(src), "--sample", "K",
                        "--specimen", "blood", "--db", str(db)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    s = Store(db)
    assert s.count_cells("K") == n
    s.close()
