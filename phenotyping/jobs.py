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
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from phenotyping.errors import NotFoundError, PhenotypingError
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


class JobRunner:
    """Runs job functions in lanes of worker threads and records their progress in ``store``'s jobs table.

    Args:
        store: a :class:`phenotyping.store.Store` (thread-safe: each thread gets its own cursor).
        workers: worker threads per lane; more jobs of a lane queue. One suits a small CPU machine.
        lanes: job kind -> lane name (default :data:`LANES`: training apart, everything else in
            :data:`DEFAULT_LANE`). ``{}`` puts every kind in one lane.
        min_interval_s: shortest time between two progress writes of one job.
    """

    def __init__(self, store: Any, *, workers: int = 1, lanes: Mapping[str, str] | None = None,
                 min_interval_s: float = 0.5):
        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        self.store = store
        self.workers = workers
        self.lanes = dict(LANES if lanes is None else lanes)
        self.min_interval_s = min_interval_s
        self.orphans_failed = store.fail_orphaned_jobs()
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._futures: dict[int, Future] = {}
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._warm: threading.Thread | None = None

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

    def warm_up(self) -> threading.Thread:
        """Start :func:`warm_up_models` for this runner's store (joined by :meth:`shutdown`)."""
        self._warm = warm_up_models(self.store)
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


def active_job(store: Any, *, kind: str, sample_id: str | None = None) -> dict[str, Any] | None:
    """The newest queued or running job of this kind (for this sample), or None."""
    for j in store.list_jobs(sample_id=sample_id, kind=kind, limit=20):
        if j["status"] in (QUEUED, RUNNING):
            return j
    return None


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
_KIND = {2: "2D images (C, H, W)", 3: "z-stacks (C, Z, H, W)"}


def model_input(card: Mapping[str, Any]) -> tuple[int, int, list[str]]:
    """``(channels, dims, channel names)`` a model takes, from its card (dims 2: images, 3: z-stacks)."""
    names = list((card.get("input") or {}).get("channels") or [])
    dims = (card.get("input") or {}).get("dims") or ((card.get("architecture") or {}).get("config") or {}).get("dims")
    return len(names), int(dims or 2), names


def input_problem(card: Mapping[str, Any], shapes: Sequence[Sequence[int]]) -> str | None:
    """Why a model cannot take cells of these stored shapes (``(C, H, W)`` or ``(C, Z, H, W)``), or None when it can.

    Checked before a prediction job starts, so that a model never runs for minutes on a sample it cannot read. A
    card that does not state its input (``input.channels``; cards written by ``train`` do) is not judged here: the
    job then fails, naming the mismatch, on the first batch."""
    n_chans, dims, names = model_input(card)
    if not n_chans:
        return None
    kinds = sorted({(int(s[0]), len(s) - 1) for s in shapes if len(s) >= 3})
    wrong = [(c, d) for c, d in kinds if c != n_chans or d != dims]
    if not wrong:
        return None
    have = ", ".join(f"{c} channel(s), {_KIND.get(d, f'{d}D')}" for c, d in wrong)
    return (f"model {card.get('id', '?')} takes {n_chans} channel(s) ({', '.join(names) or 'unnamed'}) as "
            f"{_KIND.get(dims, f'{dims}D')}, but this sample's cells have {have}")


def compatible_models(store: Any, sample_id: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The usable models that can take the sample's cells, and the others with the reason (:func:`input_problem`).
    A sample without cells is compatible with every model (there is nothing to run yet)."""
    shapes = {tuple(c.shape) for c in store.list_cells(sample_id)}
    ok, refused = [], {}
    for m in usable_models(store):
        problem = input_problem(m["card"], sorted(shapes))
        if problem is None:
            ok.append(m)
        else:
            refused[m["id"]] = problem
    return ok, refused


def rerun_note(store: Any, sample_id: str, model_id: str) -> str | None:
    """What running ``model_id`` again on the sample would do, when it has predicted cells of it already: the
    predicted cells keep their predictions and only the others are analysed (image-QC exclusions checked again);
    None for a first run."""
    from phenotyping.schemas import QCState

    done_ids = store.predicted_cell_ids(sample_id, model_id)
    if not done_ids:
        return None
    rest = [c for c in store.list_cells(sample_id) if c.id not in done_ids and c.qc_state != QCState.overridden]
    total = len(done_ids) + len(rest)
    if not rest:
        return (f"{model_id} has already predicted every cell of this sample ({len(done_ids):,}); running it again "
                "keeps those predictions and predicts 0 cells, so the results do not change")
    excluded = sum(1 for c in rest if c.qc_state == QCState.excluded)
    parts = [f"{excluded:,} excluded by image QC, checked again" if excluded else "",
             f"{len(rest) - excluded:,} not analysed yet" if len(rest) > excluded else ""]
    return (f"{model_id} has already predicted {len(done_ids):,} of the {total:,} cells; running it again keeps "
            f"those predictions and analyses only the other {len(rest):,} ({'; '.join(p for p in parts if p)})")


def submit_prediction(runner: JobRunner, sample_id: str, model_id: str, *, actor: str,
                      device: str | None = None) -> int:
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
    problem = input_problem(models[model_id]["card"], sorted({tuple(c.shape) for c in store.list_cells(sample_id)}))
    if problem is not None:
        fits = [m["id"] for m in compatible_models(store, sample_id)[0]]
        raise ValueError(f"{problem}; choose a model for this kind of image"
                         + (f" ({', '.join(fits)})" if fits else " (no usable model takes them: train one)"))
    model_dir = models[model_id]["path"]

    def work(progress: Progress) -> dict[str, Any]:
        from phenotyping.analysis.inference import cpu_threads, predict_sample
        from phenotyping.schemas import SampleStatus

        progress(0, store.count_cells(sample_id), None, f"loading the model {model_id}", force=True)
        lm = load_model_cached(model_dir)
        progress(0, store.count_cells(sample_id), None, f"model {model_id} loaded; reading the cells", force=True)

        def report(done: int, total: int, rate: float) -> None:
            progress(done, total, rate, f"{done}/{total} cells analysed")

        def stage(what: str, done: int, total: int) -> None:  # a new stage is written at once, image counts at most
            progress(done, total, None, what, force=not what.startswith("reading images"))  # every min_interval_s

        run = predict_sample(store, sample_id, lm, device=device, progress=report, actor=actor,
                             threads=min(cpu_threads(), progress.cpu_share()), stage=stage)
        store.set_analysis_model(sample_id, lm.id, actor=actor)
        if store.get_sample(sample_id).status == SampleStatus.new:
            store.set_sample_status(sample_id, SampleStatus.analysed, actor=actor)
        out = run.to_dict()
        kept = getattr(run, "already_done", 0)
        if kept and not (run.predicted or run.excluded):
            out["message"] = (f"nothing new to analyse: all {kept:,} cells already had {lm.id}'s prediction or "
                              "image-QC result, which are kept; 0 cells predicted")
        else:
            out["message"] = (f"{run.predicted} cells predicted, {run.excluded} excluded by image QC, "
                              f"{run.unidentified} unidentified, {out['cells_per_second']} cells/s"
                              + (f"; {kept:,} cells analysed by {lm.id} before were kept" if kept else ""))
        return out

    return runner.submit("predict", work, actor=actor, sample_id=sample_id,
                         params={"model_id": model_id, "device": device}, total=store.count_cells(sample_id))


# -- training and evaluation -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledExport:
    """What :func:`export_labelled_cells` wrote: the manifest, the continuous targets found, and the labelled cells
    left out because their label is not one of the chosen classes (label -> cells)."""

    manifest: Path
    targets: list[str]
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())

    def excluded_text(self) -> str:
        """E.g. ``"14 cells labelled outside the classes left out (debris 12, other 2)"``, or ``""``."""
        if not self.excluded:
            return ""
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.excluded.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{self.n_excluded} cell(s) labelled outside the classes left out ({parts})"


def cell_label(cell: Any) -> str | None:
    """A cell's training label: the reviewer's label, else the label its image set came with, else None."""
    return cell.reviewed_label or cell.reference_label or None


def label_counts(store: Any, sample_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Labelled cells of the samples per label, split by where the label came from: ``{"image set": {label: n},
    "review only": {label: n}}`` ("review only": labels no cell's image set carries, e.g. ``debris``)."""
    final: dict[str, int] = {}
    reference: set[str] = set()
    for sid in sample_ids:
        for c in store.list_cells(sid):
            if c.reference_label:
                reference.add(c.reference_label)
            label = cell_label(c)
            if label:
                final[label] = final.get(label, 0) + 1
    return {"image set": {k: v for k, v in sorted(final.items()) if k in reference},
            "review only": {k: v for k, v in sorted(final.items()) if k not in reference}}


def export_labelled_cells(store: Any, sample_ids: Sequence[str], out_dir: str | Path, *,
                          classes: Sequence[str] | None = None) -> LabelledExport:
    """Write the labelled cells of samples as an image folder with ``manifest.csv`` (cell_id, path, label, group,
    and each continuous target).

    A cell's label is its reviewed label, else its image set's (:func:`cell_label`). Cells whose label is not in
    ``classes`` are left out and counted in the result, so a review label such as ``debris`` or ``other`` never
    becomes a class by accident. ``classes=None`` keeps the labels some cell's image set carries (review-only labels
    are left out).

    Raises:
        ValueError: no sample given, an empty class list, or no cell with one of the classes.
    """
    if not sample_ids:
        raise ValueError("choose at least one sample with labelled cells")
    if classes is not None and not list(classes):
        raise ValueError("choose at least one class")
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cells = [(sid, c) for sid in sample_ids for c in store.list_cells(sid)]
    keep = set(classes) if classes is not None else {c.reference_label for _, c in cells if c.reference_label}
    rows: list[dict[str, Any]] = []
    excluded: dict[str, int] = {}
    for sid, c in cells:
        label = cell_label(c)
        if not label:
            continue
        if label not in keep:
            excluded[label] = excluded.get(label, 0) + 1
            continue
        ext = Path(c.blob_path).suffix or ".bin"
        name = f"cells/{c.id}{ext}"
        (out / name).write_bytes(store.read_cell_bytes(c))  # a file of its own, or a slice of a pack
        rows.append({"cell_id": f"{sid}:{c.cell_key}", "path": name, "label": label, "group": sid,
                     **{k: v for k, v in c.targets.items()}})
    if not rows:
        what = f"one of the classes {sorted(keep)}" if keep else "a label (from its image set or a review)"
        found = f"; labels found: {sorted(excluded)}" if excluded else ""
        raise ValueError(f"no cell of {list(sample_ids)} has {what}{found}; training needs labelled cells")
    targets = sorted({k for r in rows for k in r} - {"cell_id", "path", "label", "group"})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["cell_id", "path", "label", "group", *targets])
        w.writeheader()
        w.writerows(rows)
    return LabelledExport(manifest=manifest, targets=targets, excluded=excluded)


_EPOCH = re.compile(r"^epoch (\d+)/(\d+)")


def _fmt(value: Any, digits: int = 3) -> str:
    """A metric for a message: ``0.912``, or ``n/a`` when the card or result has none (None, NaN)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{f:.{digits}f}" if math.isfinite(f) else "n/a"


def submit_training(runner: JobRunner, sample_ids: Sequence[str], name: str, *, actor: str, arch: str = "hybrid",
                    epochs: int = 20, targets: Sequence[str] | None = None, seed: int = 0,
                    classes: Sequence[str] | None = None, model_root: str | Path | None = None) -> int:
    """Train a model on the labelled cells of stored samples (background job with per-epoch progress).

    The model folder ``<model_root>/<name>`` is written by :func:`phenotyping.training.train.train` and registered in the
    store as *not usable* until an admin has looked at its evaluation and marks it usable. Only cells labelled with
    one of ``classes`` are used (default: the labels of the samples' image sets; see
    :func:`export_labelled_cells`); the job's result says how many were left out.
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
        from phenotyping.training.train import TrainConfig, train

        progress(0, epochs, None, "exporting the labelled cells", force=True)
        with tempfile.TemporaryDirectory(prefix="leuko-train-") as tmp:
            export = export_labelled_cells(store, sample_ids, tmp, classes=classes)
            manifest, available = export.manifest, export.targets
            use_targets = list(available if targets is None else targets)
            missing = [t for t in use_targets if t not in available]
            if missing:
                raise ValueError(f"target(s) {missing} are not in these samples; they have {available or 'none'}")
            started = time.perf_counter()
            set_torch_threads(progress.cpu_share())

            def on_log(msg: str) -> None:
                m = _EPOCH.match(msg)
                set_torch_threads(progress.cpu_share())  # a job started or ended in the other lane
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
        left_out = export.excluded_text()
        return {"model_id": card["id"], "path": str(out), "val_accuracy": val.get("accuracy"),
                "val_macro_f1": val.get("macro_f1"), "excluded_labels": export.excluded,
                "message": f"trained {card['id']}: validation accuracy {_fmt(val.get('accuracy'))}"
                           + (f"; {left_out}" if left_out else "")}

    return runner.submit("train", work, actor=actor, params={"samples": list(sample_ids), "name": name, "arch": arch,
                                                             "epochs": epochs, "seed": seed,
                                                             "classes": None if classes is None else list(classes)},
                         total=epochs)


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
        from phenotyping.training.evaluate import evaluate_model_dir

        progress(0, 2, None, "exporting the labelled cells", force=True)
        m = models[model_id]
        with tempfile.TemporaryDirectory(prefix="leuko-eval-") as tmp:
            export = export_labelled_cells(store, sample_ids, tmp, classes=m["card"]["classes"])
            progress(1, 2, None, "predicting", force=True)
            set_torch_threads(progress.cpu_share())
            metrics = evaluate_model_dir(m["path"], export.manifest, label_column="label", drop_unknown=True,
                                         log=lambda msg: progress(1, 2, None, msg[:200], force=True))
        current = next(x for x in store.list_models() if x["id"] == model_id)
        card = dict(current["card"])
        card["evaluations"] = [*card.get("evaluations", []),
                               {"samples": list(sample_ids), "by": actor, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                               time.gmtime()),
                                "metrics": metrics}]
        store.register_model(model_id, path=current["path"], card=card, actor=actor, usable=current["usable"])
        left_out = export.excluded_text()
        return {"model_id": model_id, "samples": list(sample_ids), "metrics": metrics,
                "excluded_labels": export.excluded,
                "message": f"accuracy {_fmt(metrics.get('accuracy'))}, macro-F1 {_fmt(metrics.get('macro_f1'))}"
                           + (f"; {left_out}" if left_out else "")}

    return runner.submit("evaluate", work, actor=actor, params={"model_id": model_id, "samples": list(sample_ids)},
                         total=2)
