"""The app's analysis worker process (issue 17, aim 3): a prediction job run there stores what the in-process job
stores, a worker that fails or is killed fails the job in one line without paths, keeps only whole batches, and the
next job starts a new worker that finishes the rest."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode, save_tiny_model, synthetic_cell  # noqa: E402
from tests.test_app import app_env  # noqa: E402,F401 - a fresh app database (fixture)

CLASSES = ["disc", "ring"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", CLASSES)


@pytest.fixture(scope="module")
def worker():
    """One worker process for the module (starting one imports torch and timm: seconds)."""
    from phenotyping.jobs.worker import ProcessWorker

    w = ProcessWorker()
    yield w
    w.close()


def _sample(store, sid: str, n: int, *, blanks: int = 0, packs: Path | None = None) -> None:
    """Sample ``sid`` with cells of the tiny model's kind (the same bytes in every sample): ``n`` discs and rings,
    ``blanks`` blank crops (image QC excludes them) and one file that does not decode, each in a file of its own;
    with ``packs``, four more cells ingested from TIFF files into a pack (what ingest writes)."""
    from phenotyping.schemas import Sample, Specimen

    store.create_sample(Sample(id=sid, specimen=Specimen.blood), actor="tester")
    rng = np.random.default_rng(0)
    cells = []
    kinds = ["disc", "ring"] * (n // 2) + ["blank"] * blanks
    for i, kind in enumerate([*kinds, "junk"]):
        data = b"II*\x00 not a tiff" if kind == "junk" else encode(synthetic_cell(kind, rng), "tiff")
        digest, rel = store.put_blob(data, suffix=".tif")
        cells.append({"cell_key": f"c{i:03d}", "content_hash": digest, "source_file": f"c{i:03d}.tif",
                      "blob_path": rel, "shape": (2, 20, 20), "dtype": "uint16"})
    store.add_cells(sid, cells, actor="tester")
    if packs is not None:
        from phenotyping.analysis.bench import write_synthetic_set
        from phenotyping.ingest import ingest_set

        ingest_set(store, write_synthetic_set(packs / sid, 4, 2, 20, seed=3), sid, actor="tester",
                   expected_channels=2)
        assert any("@" in c.blob_path for c in store.list_cells(sid))


def _outcome(store, sid: str, model_id: str) -> dict[str, tuple]:
    """cell key -> (QC state, QC reason, predicted class, probabilities, targets) as stored."""
    preds = {p.cell_id: p for p in store.list_predictions(sid, model_id)}
    out = {}
    for c in store.list_cells(sid):
        p = preds.get(c.id)
        out[c.cell_key] = (c.qc_state.value, c.qc_reason, None if p is None else p.predicted_class,
                           None if p is None else p.probabilities, None if p is None else p.targets)
    return out


def _same(a: dict[str, tuple], b: dict[str, tuple]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        (qa, ra, ca, pa, ta), (qb, rb, cb, pb, tb) = a[key], b[key]
        assert (qa, ra, ca) == (qb, rb, cb), key
        if pa is None:
            assert pb is None, key
            continue
        assert pa.keys() == pb.keys() and max(abs(pa[k] - pb[k]) for k in pa) <= 1e-5, key
        assert ta.keys() == tb.keys() and all(abs(ta[k] - tb[k]) <= 1e-5 for k in ta), key


def _register(store, model_dir: Path) -> str:
    card = json.loads((model_dir / "model_card.json").read_text())
    store.register_model(card["id"], path=str(model_dir), card=card, actor="tester", usable=True)
    return card["id"]


@pytest.mark.slow
def test_a_job_in_the_worker_process_stores_what_the_in_process_job_stores(store, model_dir, worker, tmp_path,
                                                                            monkeypatch):
    from phenotyping.jobs import JobRunner, submit_prediction

    model_id = _register(store, model_dir)
    for sid in ("T", "P"):
        _sample(store, sid, 10, blanks=2, packs=tmp_path)
    thread = JobRunner(store, job_worker="thread")
    process = JobRunner(store, job_worker="process")
    monkeypatch.setattr(process, "process_worker", lambda: worker)
    jt = thread.wait(submit_prediction(thread, "T", model_id, actor="rev", device="cpu"), timeout=120)
    jp = process.wait(submit_prediction(process, "P", model_id, actor="rev", device="cpu"), timeout=120)
    assert jt["status"] == jp["status"] == "done", (jt["message"], jp["message"])
    _same(_outcome(store, "T", model_id), _outcome(store, "P", model_id))
    rt, rp = jt["result"], jp["result"]
    for key in ("predicted", "excluded", "unidentified", "qc_counts", "total_cells", "model_version", "qc_config",
                "domain_check"):
        assert rt[key] == rp[key], key
    assert rp["excluded"] == 3 and rp["qc_counts"]["unreadable"] == 1  # two blanks and the file that is no TIFF
    assert rp["predicted"] == 14 and rp["device"] == "cpu"
    assert store.analysis_model("P") == model_id
    actions = [sorted(e.action for e in store.list_audit(sample_id=s)) for s in ("T", "P")]
    assert actions[0] == actions[1]
    assert store.verify_audit().bottom_line == "intact"
    thread.shutdown()
    process.shutdown()


@pytest.mark.slow
def test_a_killed_worker_keeps_whole_batches_and_the_next_job_finishes(store, model_dir, worker, tmp_path):
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.jobs.worker import WorkerError

    model_id = _register(store, model_dir)
    n, batch = 200, 4  # the worker makes 50 small batches; this thread stores one while it makes about 8
    for sid in ("T", "P"):
        _sample(store, sid, n)
    predict_sample(store, "T", model_dir, device="cpu", batch_size=128, actor="rev")
    worker.load([str(model_dir)])
    starts = worker.starts

    def kill_at_first_batch(done: int, total: int, rate: float) -> None:
        if worker.pid is not None:
            os.kill(worker.pid, signal.SIGKILL)

    with pytest.raises(WorkerError) as e:
        worker.predict(store, "P", model_dir, device="cpu", batch_size=batch, progress=kill_at_first_batch,
                       actor="rev")
    msg = str(e.value)
    assert "killed by signal 9" in msg and "\n" not in msg and "/" not in msg and "Traceback" not in msg
    half = _outcome(store, "P", model_id)
    done = [k for k, v in half.items() if v[0] != "pending"]
    assert done and len(done) % batch == 0 and len(done) < n  # whole batches only, and not all of them
    assert all((v[0] == "passed") == (v[2] is not None) for v in half.values())  # QC and prediction together
    assert store.verify_audit().bottom_line == "intact"
    run = worker.predict(store, "P", model_dir, device="cpu", batch_size=128, actor="rev")
    assert worker.starts == starts + 1 and run.already_done == len(done)
    _same(_outcome(store, "T", model_id), _outcome(store, "P", model_id))


@pytest.mark.slow
def test_a_failed_request_is_one_line_and_the_worker_serves_the_next(store, model_dir, worker, tmp_path):
    from phenotyping.jobs.worker import WorkerError

    broken = tmp_path / "broken"
    broken.mkdir()
    card = json.loads((model_dir / "model_card.json").read_text())
    (broken / "model_card.json").write_text(json.dumps(card))  # a card, but no checkpoint
    _sample(store, "P", 2)
    worker.load([])
    pid = worker.pid
    with pytest.raises(WorkerError, match="checkpoint") as e:
        worker.predict(store, "P", broken, device="cpu", actor="rev")
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value) and "/" not in str(e.value)
    assert worker.pid == pid  # still the same process
    assert worker.predict(store, "P", model_dir, device="cpu", actor="rev").predicted == 2


CRASH = ("import sys; sys.stderr.write('Traceback (most recent call last):\\n  File \"/srv/leuko/x.py\", line 1\\n"
         "RuntimeError: out of luck reading /srv/leuko/images/ab/cd.pack\\n'); sys.exit(3)")


def test_a_worker_that_cannot_start_fails_the_job_in_one_line_without_paths(store, model_dir, monkeypatch):
    from phenotyping.jobs import JobRunner, submit_prediction
    from phenotyping.jobs.worker import ProcessWorker

    model_id = _register(store, model_dir)
    _sample(store, "P", 2)
    runner = JobRunner(store, job_worker="process")
    broken = ProcessWorker(command=[sys.executable, "-c", CRASH])
    monkeypatch.setattr(runner, "process_worker", lambda: broken)
    job = runner.wait(submit_prediction(runner, "P", model_id, actor="rev", device="cpu"), timeout=60)
    assert job["status"] == "failed"
    assert job["message"] == ("the analysis worker process stopped (exit status 3: RuntimeError: out of luck reading "
                              "cd.pack); the cells saved before are kept, run the analysis again to finish")
    assert broken.pid is None and not store.list_predictions("P", model_id)
    runner.shutdown()


def test_the_worker_command_is_hidden_and_the_setting_is_checked():
    from phenotyping.__main__ import build_parser
    from phenotyping.jobs import JobRunner
    from phenotyping.settings import Settings

    assert "job-worker" not in build_parser().format_help()
    assert Settings().job_worker in ("process", "thread")
    assert Settings(job_worker="thread").job_worker == "thread"
    with pytest.raises(ValueError, match="not one of process, thread"):
        JobRunner(object(), job_worker="fork")  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_analyse_screen_runs_its_job_in_the_worker_process(app_env, model_dir, monkeypatch):
    """End to end in the app: Run analysis on the Analyse screen, the job in the worker process (the app's default),
    the differential shown; the cells' outcomes equal those of the in-process run on a copy of the sample."""
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.auth import create_first_admin, create_user
    from phenotyping.settings import get_settings
    from tests.test_app import PASSWORD, app, get_store_obj

    monkeypatch.setenv("LEUKO_JOB_WORKER", "process")
    get_settings.cache_clear()
    store = get_store_obj()
    create_first_admin(store, "admin", PASSWORD)
    create_user(store, "rev", PASSWORD, "reviewer", actor="admin")
    card = json.loads((model_dir / "model_card.json").read_text())
    card["input"] = {"channels": ["brightfield", "darkfield"], "img_size": 20, "dims": 2}  # as train writes it
    store.register_model(card["id"], path=str(model_dir), card=card, actor="admin", usable=True)
    for sid in ("S1", "T"):
        _sample(store, sid, 10, blanks=2, packs=app_env)
    at = app("rev", "analyse")
    next(b for b in at.button if b.label == "Run analysis").click().run()
    assert not at.exception, at.exception
    from pages._common import get_runner

    runner = get_runner()
    assert runner.job_worker == "process"
    job = runner.wait(at.session_state["job_S1"], timeout=120)
    assert job["status"] == "done", job["message"]
    assert runner.process_worker().pid is not None  # the job ran there
    at.run()
    assert not at.exception
    assert "Differential" in [s.value for s in at.subheader]
    assert any("14 cells predicted, 3 excluded by image QC" in s.value for s in at.success)
    predict_sample(store, "T", model_dir, device="cpu", actor="rev")
    _same(_outcome(store, "T", card["id"]), _outcome(store, "S1", card["id"]))


@pytest.mark.slow
def test_bench_app_job_times_every_way_on_the_same_cells(model_dir, tmp_path):
    from phenotyping.jobs.bench import GilHammer, app_job_bench

    out = app_job_bench(model_dir, n_cells=8, repeats=1, batch_size=4, workdir=tmp_path)
    ways = ["cli", "thread", "process", "thread_watched", "process_watched", "thread_watched_busy",
            "process_watched_busy"]
    assert sorted(out["cells_per_s"]) == sorted(ways) and all(len(out["runs"][w]) == 1 for w in ways)
    assert all(v > 0 for v in out["cells_per_s"].values()) and out["ratio_to_cli"]["cli"] == 1.0
    assert out["n_cells"] == 8 and out["worker_start_s"] > 0 and out["machine"]["cpu_cores_available"] >= 1
    with pytest.raises(ValueError, match="duty"):
        GilHammer(None, "S1", duty=0)
