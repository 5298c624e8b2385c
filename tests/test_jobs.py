"""The background job runner: progress in the jobs table, failures kept with their message, orphans failed."""

from __future__ import annotations

import json

import pytest

from phenotyping.errors import NotFoundError
from phenotyping.jobs import JobError, JobRunner, export_labelled_cells, submit_prediction
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
    import phenotyping.inference as inference
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

    def fake_predict(store_, sample_id, lm, *, device, progress, actor):
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
    manifest, targets = export_labelled_cells(store, ["S1"], tmp_path / "out")
    lines = manifest.read_text().splitlines()
    assert lines[0] == "cell_id,path,label,group" and len(lines) == 5 and targets == []
    assert {ln.split(",")[2] for ln in lines[1:]} == {"a", "b"}
    assert all((manifest.parent / ln.split(",")[1]).is_file() for ln in lines[1:])
