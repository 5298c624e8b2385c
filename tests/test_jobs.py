"""The background job runner: progress in the jobs table, failures kept with their message, orphans failed."""

from __future__ import annotations

import json
import threading

import pytest

from phenotyping.errors import IngestError, NotFoundError
from phenotyping.jobs import (JobError, JobRunner, available_cores, export_labelled_cells, ingest_and_record,
                              ingest_runs, label_counts, submit_evaluation, submit_prediction, submit_training)
from phenotyping.schemas import Sample, SampleStatus, Specimen
from tests.conftest import cell_array, png_bytes


@pytest.fixture
def runner(store):
    r = JobRunner(store, workers=1, min_interval_s=0.0)
    yield r
    r.shutdown()


def test_job_reports_progress_and_result(runner, store):
    seen = []

    def work(progress):
        for i in range(1, 4):
            progress(i, 3, 10.0, f"step {i}")
            seen.append(store.get_job(job_id)["done"])
        return {"answer": 42, "ratio": float("nan")}

    job_id = runner.submit("demo", work, actor="rev", params={"x": 1}, total=3)
    job = runner.wait(job_id, timeout=10)
    assert job["status"] == "done" and job["done"] == 3 and job["created_by"] == "rev"
    assert job["result"] == {"answer": 42, "ratio": None}  # NaN stored as null (strict JSON)
    assert seen == [1, 2, 3] and job["finished_at"] is not None and job["params"] == {"x": 1}


def test_failed_job_keeps_one_line_reason(runner):
    def work(progress):
        raise ValueError("sample S9 has no cells; upload its images first\nsecond line")

    def crash(progress):
        raise RuntimeError("boom")

    a = runner.wait(runner.submit("demo", work, actor="rev"), timeout=10)
    b = runner.wait(runner.submit("demo", crash, actor="rev"), timeout=10)
    assert a["status"] == "failed" and a["message"] == "sample S9 has no cells; upload its images first"
    assert b["status"] == "failed" and b["message"] == "RuntimeError: boom"


def test_orphaned_jobs_are_failed_at_start(store):
    jid = store.create_job("predict", actor="rev")
    store.update_job(jid, status="running")
    r = JobRunner(store)
    try:
        assert r.orphans_failed == 1
        job = store.get_job(jid)
        assert job["status"] == "failed" and "stopped" in job["message"]
    finally:
        r.shutdown()


def _sample_with_cells(store, tmp_path, n=3, labelled=True):
    store.create_sample(Sample(id="S1", specimen=Specimen.blood), actor="rev")
    from phenotyping.ingest import ingest_set

    root = tmp_path / "set"
    for i in range(n):
        d = root / ("a" if i % 2 else "b") if labelled else root
        d.mkdir(parents=True, exist_ok=True)
        (d / f"c{i}.png").write_bytes(png_bytes(cell_array(seed=i)))
    return ingest_set(store, root, "S1", actor="rev").cell_ids


def test_prediction_job_sets_analysis_model_and_status(runner, store, tmp_path, monkeypatch):
    """The model is patched out: the job's wiring (model lookup, progress, status, analysis model) is what is tested."""
    import phenotyping.analysis.inference as inference
    import phenotyping.jobs as jobs

    _sample_with_cells(store, tmp_path)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    card = {"id": "toy-1", "classes": ["a", "b"]}
    (model_dir / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(NotFoundError, match="not registered as usable"):
        submit_prediction(runner, "S1", "toy-1", actor="rev")
    store.register_model("toy-1", path=str(model_dir), card=card, actor="admin", usable=True)

    class FakeRun:
        predicted, excluded, unidentified = 3, 0, 1

        def to_dict(self):
            return {"predicted": 3, "cells_per_second": 99.0}

    class FakeModel:
        id = "toy-1"

    def fake_predict(store_, sample_id, lm, *, device, progress, actor, threads, stage=None):
        assert threads >= 1
        progress(3, 3, 99.0)
        return FakeRun()

    monkeypatch.setattr(jobs, "load_model_cached", lambda path: FakeModel())
    monkeypatch.setattr(inference, "predict_sample", fake_predict)
    job = runner.wait(submit_prediction(runner, "S1", "toy-1", actor="rev"), timeout=10)
    assert job["status"] == "done", job["message"]
    assert job["done"] == 3 and job["rate"] == 99.0 and "3 cells predicted" in job["message"]
    assert store.analysis_model("S1") == "toy-1" and store.get_sample("S1").status == SampleStatus.analysed
    store.create_job("predict", actor="rev", sample_id="S1")  # a queued one
    with pytest.raises(JobError, match="already analysing"):
        submit_prediction(runner, "S1", "toy-1", actor="rev")


def test_export_labelled_cells_writes_a_manifest(store, tmp_path):
    _sample_with_cells(store, tmp_path, n=4)
    export = export_labelled_cells(store, ["S1"], tmp_path / "out")
    lines = export.manifest.read_text().splitlines()
    assert lines[0] == "cell_id,path,label,group" and len(lines) == 5 and export.targets == []
    assert {ln.split(",")[2] for ln in lines[1:]} == {"a", "b"} and export.excluded == {}
    assert all((export.manifest.parent / ln.split(",")[1]).is_file() for ln in lines[1:])


def test_review_labels_outside_the_classes_are_not_exported(store, tmp_path):
    """A cell reviewed as debris/other is left out (and counted), never exported as a class of its own."""
    _sample_with_cells(store, tmp_path, n=6)  # three "a", three "b"
    by_label = {lab: [c.id for c in store.list_cells("S1") if c.reference_label == lab] for lab in "ab"}
    store.reclassify(by_label["a"][:1] + by_label["b"][:1], "debris", actor="rev")
    store.reclassify(by_label["b"][1:2], "other", actor="rev")
    assert label_counts(store, ["S1"]) == {"image set": {"a": 2, "b": 1}, "review only": {"debris": 2, "other": 1}}
    export = export_labelled_cells(store, ["S1"], tmp_path / "out")
    labels = [ln.split(",")[2] for ln in export.manifest.read_text().splitlines()[1:]]
    assert sorted(labels) == ["a", "a", "b"]
    assert export.excluded == {"debris": 2, "other": 1} and export.n_excluded == 3
    assert export.excluded_text() == "3 cell(s) labelled outside the classes left out (debris 2, other 1)"
    only_a = export_labelled_cells(store, ["S1"], tmp_path / "out2", classes=["a"])
    assert only_a.excluded == {"b": 1, "debris": 2, "other": 1}
    with pytest.raises(ValueError, match="labels found"):
        export_labelled_cells(store, ["S1"], tmp_path / "out3", classes=["lymphocyte"])


def test_prediction_runs_while_a_training_job_runs(store):
    """Training has its own lane: an analysis submitted behind a long training job does not wait for it."""
    runner = JobRunner(store, min_interval_s=0.0)
    release = threading.Event()
    training_started = threading.Event()
    shares = {}

    def slow_training(progress):
        training_started.set()
        assert release.wait(timeout=30), "the test never released the training job"
        shares["train_after"] = progress.cpu_share()
        return {"message": "trained"}

    def prediction(progress):
        shares["predict"] = progress.cpu_share()
        progress(10, 10, 5.0, "10/10 cells")
        return {"message": "predicted"}

    try:
        train_id = runner.submit("train", slow_training, actor="admin")
        assert training_started.wait(timeout=10)
        predict_id = runner.submit("predict", prediction, actor="rev", sample_id=None, total=10)
        job = runner.wait(predict_id, timeout=10)
        assert job["status"] == "done" and job["message"] == "predicted"
        assert store.get_job(train_id)["status"] == "running"  # still running: the prediction did not queue
        assert shares["predict"] == max(1, available_cores() // 2)  # two jobs share the cores
        release.set()
        assert runner.wait(train_id, timeout=10)["status"] == "done"
        assert shares["train_after"] == available_cores()  # alone again: every core
        assert runner.lane("train") != runner.lane("predict") == runner.lane("evaluate")
    finally:
        release.set()
        runner.shutdown()


def test_one_lane_runs_jobs_one_after_the_other(store):
    runner = JobRunner(store, lanes={}, min_interval_s=0.0)
    order = []
    try:
        a = runner.submit("train", lambda p: order.append("train") or {}, actor="admin")
        b = runner.submit("predict", lambda p: order.append("predict") or {}, actor="rev")
        runner.wait(a, timeout=10)
        runner.wait(b, timeout=10)
        assert order == ["train", "predict"]
    finally:
        runner.shutdown()


def test_ingest_runs_are_recorded_with_every_refused_file(store, tmp_path):
    store.create_sample(Sample(id="S1", specimen=Specimen.blood), actor="rev")
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "good.png").write_bytes(png_bytes(cell_array(seed=1)))
    (folder / "copy.png").write_bytes(png_bytes(cell_array(seed=1)))
    (folder / "bad.png").write_bytes(b"not an image")
    result = ingest_and_record(store, folder, "S1", actor="rev", source_name="set (3 files)")
    assert result.ingested == 1 and result.duplicates == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    with pytest.raises(IngestError, match="none of its 1 file"):
        ingest_and_record(store, bad, "S1", actor="sig", source_name="bad")
    with pytest.raises(NotFoundError):
        ingest_and_record(store, folder, "S9", actor="rev", source_name="set")
    failed, ok = ingest_runs(store, "S1")
    assert (ok.actor, ok.source, ok.outcome, ok.ingested, ok.duplicates) == ("rev", "set (3 files)", "ok", 1, 1)
    assert sorted(r["file"] for r in ok.rejected) in (["bad.png", "copy.png"], ["bad.png", "good.png"])
    assert all(r["reason"] for r in ok.rejected)
    assert (failed.actor, failed.outcome, failed.ingested) == ("sig", "failed", 0)
    assert "none of its 1 file" in failed.error
    assert ingest_runs(store, "S9") == []


def _labelled_sample(store, tmp_path, n_per_class=16):
    """Sample S1 with two visibly different labelled classes (small and large discs) and two debris reviews."""
    import numpy as np

    from phenotyping.ingest import ingest_set

    store.create_sample(Sample(id="S1", specimen=Specimen.blood), actor="rev")
    for k, label in enumerate(["small", "large"]):
        d = tmp_path / "set" / label
        d.mkdir(parents=True)
        for i in range(n_per_class):
            arr = cell_array(seed=100 * k + i)
            if label == "small":
                arr[:, :8, :] = arr.min()
                arr[:, -8:, :] = arr.min()
            (d / f"{label}{i}.png").write_bytes(png_bytes(np.ascontiguousarray(arr)))
    ids = ingest_set(store, tmp_path / "set", "S1", actor="rev").cell_ids
    store.reclassify(ids[:2], "debris", actor="rev")
    return ids


@pytest.mark.slow
def test_training_and_evaluation_jobs_with_a_tiny_model(store, tmp_path):
    _labelled_sample(store, tmp_path)
    runner = JobRunner(store, min_interval_s=0.0)
    try:
        jid = submit_training(runner, ["S1"], "tiny-test", actor="admin", arch="test_cnn", epochs=2,
                              model_root=tmp_path / "models")
        job = runner.wait(jid, timeout=300)
        assert job["status"] == "done", job["message"]
        assert job["done"] == 2 and job["total"] == 2
        assert job["result"]["excluded_labels"] == {"debris": 2} and "debris 2" in job["message"]
        model_id = job["result"]["model_id"]
        registered = {m["id"]: m for m in store.list_models()}[model_id]
        assert not registered["usable"] and sorted(registered["card"]["classes"]) == ["large", "small"]
        with pytest.raises(ValueError, match="exists already"):
            submit_training(runner, ["S1"], "tiny-test", actor="admin", model_root=tmp_path / "models")
        eid = submit_evaluation(runner, model_id, ["S1"], actor="admin")
        ev = runner.wait(eid, timeout=300)
        assert ev["status"] == "done", ev["message"]
        assert ev["result"]["metrics"]["n"] == 30 and ev["result"]["excluded_labels"] == {"debris": 2}
        card = {m["id"]: m for m in store.list_models()}[model_id]["card"]
        assert card["evaluations"][-1]["by"] == "admin" and card["evaluations"][-1]["samples"] == ["S1"]
    finally:
        runner.shutdown()
