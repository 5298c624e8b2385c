"""Background jobs: long work (prediction, training, evaluation) on worker threads, tracked in the store's jobs table.

A :class:`JobRunner` owns a small thread pool. :meth:`JobRunner.submit` records a ``queued`` job and returns its id at
once; a worker then runs the job's function, which reports ``(done, total, rate, message)`` through a
:class:`Progress` (written to the jobs table at most every ``min_interval_s``, and always at the end). A job ends
``done`` with its result (a JSON-able dict), or ``failed`` with a one-line message saying why; the traceback goes to
the log. Nothing here imports Streamlit: the app polls :meth:`phenotyping.store.Store.get_job`, and so can a CLI or a
test (:meth:`JobRunner.wait`).

Jobs do not survive the process: a new runner marks queued/running jobs of a previous process as failed
(:meth:`phenotyping.store.Store.fail_orphaned_jobs`).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from phenotyping.errors import NotFoundError, PhenotypingError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINISHED = (DONE, FAILED, "cancelled")


class JobError(PhenotypingError):
    """A job could not be started (e.g. the same work is already running)."""


class Progress:
    """What a job's function reports; writes to the jobs table at most every ``min_interval_s`` seconds."""

    def __init__(self, store: Any, job_id: int, *, min_interval_s: float = 0.5):
        self.store = store
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def __call__(self, done: int, total: int | None = None, rate: float | None = None, message: str | None = None,
                 *, force: bool = False) -> None:
        """Report ``done`` of ``total`` units (cells, epochs…), the rate in units per second, and a status line."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s and (total is None or done < total):
            return
        self._last = now
        self.store.update_job(self.job_id, done=int(done), total=None if total is None else int(total),
                              rate=None if rate is None else float(rate), message=message)


JobFn = Callable[[Progress], dict[str, Any] | None]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (PhenotypingError, ValueError, FileNotFoundError)):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (the jobs table stores strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class JobRunner:
    """Runs job functions on ``workers`` threads and records their progress in ``store``'s jobs table.

    Args:
        store: a :class:`phenotyping.store.Store` (thread-safe: each thread gets its own cursor).
        workers: concurrent jobs; more queue. One suits a small CPU machine: a second job would only share cores.
        min_interval_s: shortest time between two progress writes of one job.
    """

    def __init__(self, store: Any, *, workers: int = 1, min_interval_s: float = 0.5):
        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        self.store = store
        self.min_interval_s = min_interval_s
        self.orphans_failed = store.fail_orphaned_jobs()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leuko-job")
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._warm: threading.Thread | None = None

    def warm_up(self) -> threading.Thread:
        """Start :func:`warm_up_models` for this runner's store (joined by :meth:`shutdown`)."""
        self._warm = warm_up_models(self.store)
        return self._warm

    def submit(self, kind: str, fn: JobFn, *, actor: str, sample_id: str | None = None,
               params: dict[str, Any] | None = None, total: int = 0) -> int:
        """Record a queued job and start ``fn(progress)`` on a worker; returns the job id."""
        job_id = self.store.create_job(kind, actor=actor, sample_id=sample_id, params=params, total=total)
        fut = self._pool.submit(self._run, job_id, fn)
        with self._lock:
            self._futures[job_id] = fut
        return job_id

    def _run(self, job_id: int, fn: JobFn) -> None:
        progress = Progress(self.store, job_id, min_interval_s=self.min_interval_s)
        try:
            self.store.update_job(job_id, status=RUNNING, message="started")
            result = fn(progress) or {}
        except BaseException as e:  # noqa: BLE001 - a job's failure is recorded, never raised into the pool
            log.exception("job %s failed", job_id)
            try:
                self.store.update_job(job_id, status=FAILED, message=_one_line(e))
            except Exception:  # noqa: BLE001 - the store itself failed; nothing more can be recorded
                log.exception("could not record the failure of job %s", job_id)
            return
        try:
            job = self.store.get_job(job_id)
            self.store.update_job(job_id, status=DONE, done=max(job["done"], job["total"]), result=_finite(result),
                                  message=str(result.get("message", "finished")))
        except Exception as e:  # noqa: BLE001 - e.g. a result that is not JSON; the job must not stay "running"
            log.exception("could not record the result of job %s", job_id)
            self.store.update_job(job_id, status=FAILED, message=f"finished, but its result could not be saved: "
                                                                 f"{_one_line(e)}")

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job finishes (or ``timeout`` seconds pass) and return its row."""
        with self._lock:
            fut = self._futures.get(job_id)
        if fut is not None:
            fut.result(timeout=timeout)
        return self.store.get_job(job_id)

    def is_active(self, job_id: int) -> bool:
        with self._lock:
            fut = self._futures.get(job_id)
        return fut is not None and not fut.done()

    def shutdown(self, *, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
        if wait and self._warm is not None:
            self._warm.join()


def active_job(store: Any, *, kind: str, sample_id: str | None = None) -> dict[str, Any] | None:
    """The newest queued or running job of this kind (for this sample), or None."""
    for j in store.list_jobs(sample_id=sample_id, kind=kind, limit=20):
        if j["status"] in (QUEUED, RUNNING):
            return j
    return None


# -- models ----------------------------------------------------------------------------------------------------------
_model_cache: dict[tuple[str, float], Any] = {}
_model_lock = threading.Lock()


def load_model_cached(model_dir: str | Path) -> Any:
    """:func:`phenotyping.checkpoint.load_model_dir`, kept in memory per folder and checkpoint time."""
    from phenotyping.checkpoint import CHECKPOINT, load_model_dir

    path = Path(model_dir).resolve()
    ckpt = path / CHECKPOINT
    key = (str(path), ckpt.stat().st_mtime if ckpt.exists() else 0.0)
    with _model_lock:
        if key not in _model_cache:
            _model_cache[key] = load_model_dir(path)
        return _model_cache[key]


def warm_up_models(store: Any) -> threading.Thread:
    """Load every usable registered model on a background daemon thread (imports torch once, reads the weights),
    so that the first prediction of a server process does not pay for it. Failures are logged, not raised: the
    prediction job reports them when it loads the model itself."""
    def load_all() -> None:
        for m in usable_models(store):
            try:
                load_model_cached(m["path"])
            except Exception:  # noqa: BLE001 - reported again, to the user, by the job that needs the model
                log.exception("warm-up: could not load model %s from %s", m["id"], m["path"])

    t = threading.Thread(target=load_all, name="leuko-model-warm-up", daemon=True)
    t.start()
    return t


def usable_models(store: Any) -> list[dict[str, Any]]:
    """Registered models marked usable whose folder still exists: ``{"id", "path", "card"}``."""
    return [m for m in store.list_models() if m["usable"] and Path(m["path"]).is_dir()]


# -- prediction ------------------------------------------------------------------------------------------------------
def submit_prediction(runner: JobRunner, sample_id: str, model_id: str, *, actor: str,
                      device: str = "auto") -> int:
    """Start QC + prediction of a sample's cells with a usable registered model; returns the job id.

    When it finishes, the model becomes the sample's analysis model and a new sample's status becomes ``analysed``.

    Raises:
        JobError: a prediction of this sample is already queued or running.
        NotFoundError: the model is not registered as usable (the message lists those that are).
    """
    store = runner.store
    store.get_sample(sample_id)
    models = {m["id"]: m for m in usable_models(store)}
    if model_id not in models:
        raise NotFoundError(f"model {model_id!r} is not registered as usable; usable models: "
                            f"{sorted(models) or '(none: an admin marks one usable on the Models screen)'}")
    running = active_job(store, kind="predict", sample_id=sample_id)
    if running is not None:
        raise JobError(f"job {running['id']} is already analysing sample {sample_id}; wait for it to finish")
    if store.count_cells(sample_id) == 0:
        raise ValueError(f"sample {sample_id} has no cells; upload its images first")
    model_dir = models[model_id]["path"]

    def work(progress: Progress) -> dict[str, Any]:
        from phenotyping.inference import predict_sample
        from phenotyping.schemas import SampleStatus

        progress(0, store.count_cells(sample_id), None, "loading the model", force=True)
        lm = load_model_cached(model_dir)

        def report(done: int, total: int, rate: float) -> None:
            progress(done, total, rate, f"{done}/{total} cells")

        run = predict_sample(store, sample_id, lm, device=device, progress=report, actor=actor)
        store.set_analysis_model(sample_id, lm.id, actor=actor)
        if store.get_sample(sample_id).status == SampleStatus.new:
            store.set_sample_status(sample_id, SampleStatus.analysed, actor=actor)
        out = run.to_dict()
        out["message"] = (f"{run.predicted} cells predicted, {run.excluded} excluded by image QC, "
                          f"{run.unidentified} unidentified, {out['cells_per_second']} cells/s")
        return out

    return runner.submit("predict", work, actor=actor, sample_id=sample_id,
                         params={"model_id": model_id, "device": device}, total=store.count_cells(sample_id))


# -- training and evaluation -----------------------------------------------------------------------------------------
def export_labelled_cells(store: Any, sample_ids: Sequence[str], out_dir: str | Path) -> tuple[Path, list[str]]:
    """Write the labelled cells of samples as an image folder with ``manifest.csv`` (cell_id, path, label, group,
    and each continuous target); returns the manifest's path and the target names.

    Raises:
        ValueError: no sample given, or none of their cells has a reference label.
    """
    if not sample_ids:
        raise ValueError("choose at least one sample with labelled cells")
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for sid in sample_ids:
        for c in store.list_cells(sid):
            label = c.reviewed_label or c.reference_label
            if not label:
                continue
            ext = Path(c.blob_path).suffix or ".bin"
            name = f"cells/{c.id}{ext}"
            shutil.copyfile(store.image_dir / c.blob_path, out / name)
            rows.append({"cell_id": f"{sid}:{c.cell_key}", "path": name, "label": label, "group": sid,
                         **{k: v for k, v in c.targets.items()}})
    if not rows:
        raise ValueError(f"no cell of {list(sample_ids)} has a label (from its image set or a review); "
                         "training needs labelled cells")
    targets = sorted({k for r in rows for k in r} - {"cell_id", "path", "label", "group"})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["cell_id", "path", "label", "group", *targets])
        w.writeheader()
        w.writerows(rows)
    return manifest, targets


_EPOCH = re.compile(r"^epoch (\d+)/(\d+)")


def submit_training(runner: JobRunner, sample_ids: Sequence[str], name: str, *, actor: str, arch: str = "hybrid",
                    epochs: int = 20, targets: Sequence[str] | None = None, seed: int = 0,
                    model_root: str | Path | None = None) -> int:
    """Train a model on the labelled cells of stored samples (background job with per-epoch progress).

    The model folder ``<model_root>/<name>`` is written by :func:`phenotyping.train.train` and registered in the
    store as *not usable* until an admin has looked at its evaluation and marks it usable.
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,63}", name):
        raise ValueError(f"model name {name!r}: use 2-64 lower-case letters, digits, '.', '_' or '-'")
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    store = runner.store
    if model_root is None:
        from phenotyping.settings import get_settings

        model_root = get_settings().model_dir
    out = Path(model_root) / name
    if out.exists():
        raise ValueError(f"model folder {out} exists already; choose another name")
    for sid in sample_ids:
        store.get_sample(sid)

    def work(progress: Progress) -> dict[str, Any]:
        from phenotyping.train import TrainConfig, train

        progress(0, epochs, None, "exporting the labelled cells", force=True)
        with tempfile.TemporaryDirectory(prefix="leuko-train-") as tmp:
            manifest, available = export_labelled_cells(store, sample_ids, tmp)
            use_targets = list(available if targets is None else targets)
            missing = [t for t in use_targets if t not in available]
            if missing:
                raise ValueError(f"target(s) {missing} are not in these samples; they have {available or 'none'}")
            started = time.perf_counter()

            def on_log(msg: str) -> None:
                m = _EPOCH.match(msg)
                if m:
                    done = int(m.group(1))
                    progress(done, int(m.group(2)), done / max(time.perf_counter() - started, 1e-9), msg,
                             force=True)
                else:
                    progress(0, epochs, None, msg[:200], force=True)

            card = train(manifest, "label", out, target_columns=use_targets,
                         group_column="group" if len(sample_ids) > 1 else None,
                         config=TrainConfig(arch=arch, epochs=epochs, seed=seed,
                                            data_licence=f"cells of samples {', '.join(sample_ids)} in {store.db_path}"),
                         log=on_log)
        store.register_model(card["id"], path=str(out), card=card, actor=actor, usable=False)
        val = card.get("validation") or {}
        return {"model_id": card["id"], "path": str(out), "val_accuracy": val.get("accuracy"),
                "val_macro_f1": val.get("macro_f1"),
                "message": f"trained {card['id']}: validation accuracy {val.get('accuracy', float('nan')):.3f}"}

    return runner.submit("train", work, actor=actor, params={"samples": list(sample_ids), "name": name, "arch": arch,
                                                             "epochs": epochs, "seed": seed}, total=epochs)


def submit_evaluation(runner: JobRunner, model_id: str, sample_ids: Sequence[str], *, actor: str) -> int:
    """Evaluate a registered model on the labelled cells of stored samples; the metrics are added to its card in
    the registry under ``evaluations`` (newest last) and returned as the job's result."""
    store = runner.store
    models = {m["id"]: m for m in store.list_models()}
    if model_id not in models:
        raise NotFoundError(f"model {model_id!r} is not registered; registered: {sorted(models) or '(none)'}")
    for sid in sample_ids:
        store.get_sample(sid)

    def work(progress: Progress) -> dict[str, Any]:
        from phenotyping.evaluate import evaluate_model_dir

        progress(0, 2, None, "exporting the labelled cells", force=True)
        m = models[model_id]
        with tempfile.TemporaryDirectory(prefix="leuko-eval-") as tmp:
            manifest, _ = export_labelled_cells(store, sample_ids, tmp)
            progress(1, 2, None, "predicting", force=True)
            metrics = evaluate_model_dir(m["path"], manifest, label_column="label", drop_unknown=True,
                                         log=lambda msg: progress(1, 2, None, msg[:200], force=True))
        current = next(x for x in store.list_models() if x["id"] == model_id)
        card = dict(current["card"])
        card["evaluations"] = [*card.get("evaluations", []),
                               {"samples": list(sample_ids), "by": actor, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                               time.gmtime()),
                                "metrics": metrics}]
        store.register_model(model_id, path=current["path"], card=card, actor=actor, usable=current["usable"])
        return {"model_id": model_id, "samples": list(sample_ids), "metrics": metrics,
                "message": f"accuracy {metrics.get('accuracy', float('nan')):.3f}, "
                           f"macro-F1 {metrics.get('macro_f1', float('nan')):.3f}"}

    return runner.submit("evaluate", work, actor=actor, params={"model_id": model_id, "samples": list(sample_ids)},
                         total=2)
