"""Background jobs: long work (prediction, training, evaluation) on worker threads, tracked in the store's jobs table.

A :class:`JobRunner` runs jobs in *lanes*, one worker thread each by default: training has its own lane, so a
training job (minutes to hours) never holds up an analysis; prediction, evaluation and any other kind share the
``analysis`` lane. :meth:`JobRunner.submit` records a ``queued`` job and returns its id at once; the job's lane then
runs its function, which reports ``(done, total, rate, message)`` through a
:class:`Progress` (written to the jobs table at most every ``min_interval_s``, and always at the end). A job ends
``done`` with its result (a JSON-able dict), or ``failed`` with a one-line message saying why; the traceback goes to
the log. Nothing here imports Streamlit: the app polls :meth:`phenotyping.store.Store.get_job`, and so can a CLI or a
test (:meth:`JobRunner.wait`).

Jobs do not survive the process: a new runner marks queued/running jobs of a previous process as failed
(:meth:`phenotyping.store.Store.fail_orphaned_jobs`).

CPU threads: jobs in two lanes can run at once, and two torch jobs each using every core would only slow each
other down. A job asks :meth:`Progress.cpu_share` for its share (the cores divided by the jobs running now) and sets
torch's intra-op threads in its own worker thread (OpenMP thread counts are per calling thread); training asks again
after each epoch, so it takes every core back when the analysis has finished.

Prediction jobs run their decoding, image QC and model in the runner's analysis worker *process* by default
(``job_worker="process"``, the setting ``LEUKO_JOB_WORKER``; :mod:`phenotyping.jobs.worker`), so that the app's
script reruns, which hold this process's GIL, cannot slow them down; the lane's thread stays the only writer to the
store. ``"thread"`` runs them in the lane's thread instead.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from phenotyping.errors import PhenotypingError
from phenotyping.ingest._runs import (INGEST_EVENT, MAX_RECORDED_CHARS, MAX_RECORDED_REJECTIONS, IngestRun,
                                      ingest_and_record, ingest_runs)  # noqa: F401 - re-exported for the app
from phenotyping.models.checkpoint import load_model_cached

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINISHED = (DONE, FAILED, "cancelled")
#: Job kind -> lane; kinds not named here run in :data:`DEFAULT_LANE`.
LANES: dict[str, str] = {"train": "training"}
DEFAULT_LANE = "analysis"


class JobError(PhenotypingError):
    """A job could not be started (e.g. the same work is already running)."""


class Progress:
    """What a job's function reports; writes to the jobs table at most every ``min_interval_s`` seconds."""

    def __init__(self, store: Any, job_id: int, *, min_interval_s: float = 0.5,
                 cpu_share: Callable[[], int] | None = None):
        self.store = store
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._cpu_share = cpu_share

    def cpu_share(self) -> int:
        """CPU cores this job should use now: the process's cores divided by the jobs running (at least 1)."""
        return self._cpu_share() if self._cpu_share is not None else available_cores()

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


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_torch_threads(n: int) -> None:
    """Set torch's intra-op threads for the calling thread's work (a no-op when already ``n``)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(max(1, int(n)))


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


#: The newest runner of each store (by id; weak: a runner that is gone is forgotten), for :func:`warm_up_models`.
_RUNNERS: weakref.WeakValueDictionary[int, JobRunner] = weakref.WeakValueDictionary()


class JobRunner:
    """Runs job functions in lanes of worker threads and records their progress in ``store``'s jobs table.

    Args:
        store: a :class:`phenotyping.store.Store` (thread-safe: each thread gets its own cursor).
        workers: worker threads per lane; more jobs of a lane queue. One suits a small CPU machine.
        lanes: job kind -> lane name (default :data:`LANES`: training apart, everything else in
            :data:`DEFAULT_LANE`). ``{}`` puts every kind in one lane.
        min_interval_s: shortest time between two progress writes of one job.
        job_worker: where prediction jobs run: ``"process"`` (one analysis worker process per runner, started at
            the first prediction or by :meth:`warm_up`; prediction jobs of several lanes' threads take turns on
            it) or ``"thread"``; ``None`` reads ``Settings.job_worker`` (``LEUKO_JOB_WORKER``).
    """

    def __init__(self, store: Any, *, workers: int = 1, lanes: Mapping[str, str] | None = None,
                 min_interval_s: float = 0.5, job_worker: str | None = None):
        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        if job_worker is None:
            from phenotyping.settings import get_settings

            job_worker = get_settings().job_worker
        if job_worker not in ("process", "thread"):
            raise ValueError(f"job_worker={job_worker!r} is not one of process, thread")
        self.job_worker = job_worker
        self.store = store
        self.workers = workers
        self.lanes = dict(LANES if lanes is None else lanes)
        self.min_interval_s = min_interval_s
        self.orphans_failed = store.fail_orphaned_jobs()
        _RUNNERS[id(store)] = self
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._futures: dict[int, Future] = {}
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._warm: threading.Thread | None = None
        self._worker: Any = None  # phenotyping.jobs.worker.ProcessWorker, made by process_worker()

    def lane(self, kind: str) -> str:
        """The lane jobs of ``kind`` run in."""
        return self.lanes.get(kind, DEFAULT_LANE)

    def _pool(self, lane: str) -> ThreadPoolExecutor:
        with self._lock:
            if lane not in self._pools:
                self._pools[lane] = ThreadPoolExecutor(max_workers=self.workers,
                                                       thread_name_prefix=f"leuko-job-{lane}")
            return self._pools[lane]

    def running_jobs(self) -> int:
        """Jobs of this runner running now (queued ones not counted)."""
        with self._lock:
            return len(self._running)

    def cpu_share(self) -> int:
        """Cores per running job, at least 1 (what a job should give torch now)."""
        return max(1, available_cores() // max(1, self.running_jobs()))

    def process_worker(self) -> Any:
        """This runner's :class:`phenotyping.jobs.worker.ProcessWorker` (its process starts when first asked)."""
        from phenotyping.jobs.worker import ProcessWorker

        with self._lock:
            if self._worker is None:
                self._worker = ProcessWorker()
            return self._worker

    def warm_up(self) -> threading.Thread:
        """Load the usable models on a background thread (joined by :meth:`shutdown`): in the analysis worker
        process with ``job_worker="process"`` (:meth:`ProcessWorker.load`), else here (:func:`warm_up_models`)."""
        if self.job_worker == "thread":
            self._warm = warm_up_models(self.store)
            return self._warm

        def load() -> None:
            try:
                self.process_worker().load([m["path"] for m in usable_models(self.store)])
            except Exception:  # noqa: BLE001 - the first prediction job starts the worker again and reports why
                log.exception("warm-up: the analysis worker process could not load the models")

        self._warm = threading.Thread(target=load, name="leuko-worker-warm-up", daemon=True)
        self._warm.start()
        return self._warm

    def submit(self, kind: str, fn: JobFn, *, actor: str, sample_id: str | None = None,
               params: dict[str, Any] | None = None, total: int = 0) -> int:
        """Record a queued job and start ``fn(progress)`` in the lane of ``kind``; returns the job id."""
        job_id = self.store.create_job(kind, actor=actor, sample_id=sample_id, params=params, total=total)
        fut = self._pool(self.lane(kind)).submit(self._run, job_id, fn)
        with self._lock:
            self._futures[job_id] = fut
        return job_id

    def _run(self, job_id: int, fn: JobFn) -> None:
        progress = Progress(self.store, job_id, min_interval_s=self.min_interval_s, cpu_share=self.cpu_share)
        with self._lock:
            self._running.add(job_id)
        try:
            self._run_recorded(job_id, fn, progress)
        finally:
            with self._lock:
                self._running.discard(job_id)

    def _run_recorded(self, job_id: int, fn: JobFn, progress: Progress) -> None:
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
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=wait)
        if wait and self._warm is not None:
            self._warm.join()
        if self._worker is not None:
            self._worker.close()


def active_job(store: Any, *, kind: str, sample_id: str | None = None) -> dict[str, Any] | None:
    """The newest queued or running job of this kind (for this sample), or None."""
    for j in store.list_jobs(sample_id=sample_id, kind=kind, limit=20):
        if j["status"] in (QUEUED, RUNNING):
            return j
    return None


def warm_up_models(store: Any) -> threading.Thread:
    """Load every usable registered model on a background daemon thread (imports torch once, reads the weights),
    so that the first prediction of a server process does not pay for it. Failures are logged, not raised: the
    prediction job reports them when it loads the model itself.

    Where a runner with ``job_worker="process"`` serves this store (the app's), the models are loaded where its
    prediction jobs run, in its analysis worker process (:meth:`JobRunner.warm_up`), not here."""
    runner = _RUNNERS.get(id(store))
    if runner is not None and runner.store is store and runner.job_worker == "process":
        return runner.warm_up()

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


