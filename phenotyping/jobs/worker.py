"""The analysis worker process: a prediction job's decoding, image QC and model, out of the app's process.

Streamlit runs every script rerun (a screen's fragment polling a job twice a second, a user's click) in the server's
process, holding its GIL; a prediction in a thread of that process shares the GIL with them, and a watched job ran
at a fraction of the CLI's speed. :class:`ProcessWorker` keeps one child process (``python -m phenotyping
job-worker``, :mod:`phenotyping.jobs._worker_main`) per :class:`~phenotyping.jobs.JobRunner`, with the models it
has loaded kept in memory, and :meth:`ProcessWorker.predict` runs a sample's prediction there:

1. this thread lists the cells still to predict (:func:`phenotyping.analysis.inference._cells_to_predict`, the same
   rule as a run in this process) and sends their ids and ``blob_path`` s, never the database, which the app holds
   read-write;
2. the worker reads their bytes from the image store's files and sends each batch's QC outcomes, predictions and
   domain-check inputs as an ``.npz`` file in a temporary folder, announced by a JSON line on its stdout;
3. this thread imports each batch as the in-process run does: ``store.set_qc``, ``store.add_predictions`` (the same
   audit events and digests), the domain check's scores, then progress; the run's record is the same
   :class:`~phenotyping.analysis.inference.PredictionRun`.

The store therefore holds only whole batches: a worker killed mid-run leaves the batches imported before it, and
the job fails with a one-line reason (the worker's last line of stderr, paths shortened to their file names); the
next job starts a new worker, and running the analysis again predicts only the rest. Requests take turns on the one
worker (a lock).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from phenotyping.errors import PhenotypingError

log = logging.getLogger(__name__)

#: The hidden command that serves requests (``phenotyping/cli/job_worker.py``).
COMMAND = "job-worker"
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/](?:[^\s\\/:'\"]+[\\/])+([^\s\\/:'\"]*)")  # absolute


class WorkerError(PhenotypingError):
    """The analysis worker failed a request or stopped; the message is one line, without paths."""


def _short(text: str, limit: int = 240) -> str:
    """``text`` on one line, each absolute path reduced to its last part, at most ``limit`` characters."""
    line = " ".join(text.split())
    line = _PATH.sub(lambda m: m.group(1) or "…", line)
    return line if len(line) <= limit else line[:limit - 1] + "…"


class ProcessWorker:
    """One analysis worker process, started when first needed and again after it stopped.

    Args:
        command: the argv that starts it (default ``[sys.executable, "-m", "phenotyping", "job-worker"]``); tests
            give another to make it fail.
    """

    def __init__(self, command: list[str] | None = None):
        self.command = list(command or [sys.executable, "-m", "phenotyping", COMMAND])
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None  # the worker's stderr: a temporary file, read back into the log on failures
        self._stderr_pos = 0
        self._lock = threading.RLock()
        self.starts = 0  # processes started (a restarted worker counts again)
        self.start_s = 0.0  # seconds the last request spent starting the process (0 when it was running)

    @property
    def pid(self) -> int | None:
        """The running worker's process id, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- the process -------------------------------------------------------------------------------------------
    def _ensure(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._discard()
        from phenotyping.settings import PROJECT_ROOT

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        fd, name = tempfile.mkstemp(prefix="leuko-worker-", suffix=".log")
        os.close(fd)
        with open(name, "ab") as child_err:  # the child appends; this process reads with its own file offset
            self._stderr = open(name, "rb")  # noqa: SIM115 - kept open while the worker lives
            self._stderr_pos = 0
            try:
                self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=child_err, env=env, text=True, encoding="utf-8", bufsize=1)
            finally:
                os.unlink(name)  # gone from the folder once both ends are open (POSIX)
        self.starts += 1
        first = self._next_event(self._proc)
        if first.get("event") != "ready":
            raise WorkerError(f"the analysis worker did not start: {first.get('message') or first}")
        return self._proc

    def _discard(self) -> None:
        """Forget a stopped worker, closing its pipes and its stderr file."""
        for f in ((self._proc.stdin, self._proc.stdout) if self._proc is not None else ()):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if self._stderr is not None:
            self._stderr.close()
        self._proc, self._stderr = None, None

    def _stopped(self, proc: subprocess.Popen) -> WorkerError:
        """The error for a worker that closed its stdout (crashed, killed): its exit and its last stderr line."""
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        lines = self._new_stderr()
        tail = _short(lines[-1]) if lines else ""
        log.error("the analysis worker process (pid %s) stopped (%s)%s", proc.pid, how,
                  "; its stderr ends:\n" + "\n".join(lines[-40:]) if lines else "")
        self._discard()
        return WorkerError(f"the analysis worker process stopped ({how}{': ' + tail if tail else ''}); the cells "
                           "saved before are kept, run the analysis again to finish")

    def _new_stderr(self) -> list[str]:
        """The non-empty lines the worker wrote to stderr since the last call (the server's log gets them)."""
        if self._stderr is None:
            return []
        self._stderr.seek(self._stderr_pos)
        text = self._stderr.read().decode("utf-8", "replace")
        self._stderr_pos = self._stderr.tell()
        return [ln for ln in text.splitlines() if ln.strip()]

    def _next_event(self, proc: subprocess.Popen) -> dict[str, Any]:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if not line:
            raise self._stopped(proc)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            proc.kill()
            raise self._stopped(proc) from None

    def request(self, req: dict[str, Any], on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Send one request and pass each event to ``on_event`` until ``end``.

        Raises:
            WorkerError: the worker answered ``error`` (it goes on serving), or it stopped (the next request starts
                a new one). When ``on_event`` raises, the worker is stopped (it is mid-request) and the error
                re-raised.
        """
        with self._lock:
            t0 = time.perf_counter()
            proc = self._ensure()
            self.start_s = time.perf_counter() - t0
            try:
                proc.stdin.write(json.dumps(req) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                raise self._stopped(proc) from None
            while True:
                event = self._next_event(proc)
                kind = event.get("event")
                if kind == "end":
                    return
                if kind == "error":
                    log.error("the analysis worker failed a request; its stderr:\n%s", "\n".join(self._new_stderr()))
                    raise WorkerError(_short(str(event.get("message") or "the analysis worker failed")))
                if on_event is not None:
                    try:
                        on_event(event)
                    except BaseException:
                        proc.kill()
                        proc.wait()
                        self._discard()
                        raise

    def load(self, model_dirs: list[str]) -> None:
        """Start the worker (torch and timm imported there) and load these models into it."""
        self.request({"op": "load", "models": [str(Path(d).resolve()) for d in model_dirs]})

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to quit (killed after ``timeout`` seconds)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            try:
                if proc.poll() is None:
                    proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    proc.stdin.flush()
                    proc.stdin.close()
                proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            self._discard()

    # -- a prediction --------------------------------------------------------------------------------------------
    def predict(self, store: Any, sample_id: str, model_dir: str | Path, *, device: str | None = None,
                batch_size: int | None = None, progress: Any = None, actor: str = "system",
                threads: int | None = None, stage: Any = None) -> Any:
        """:func:`phenotyping.analysis.inference.predict_sample` with the model in the worker process: the same
        cells, QC outcomes, predictions, domain check, audit events and :class:`PredictionRun` (its ``seconds``
        leave out loading the model, as a run given a loaded model does)."""
        from phenotyping.analysis import inference as inf
        from phenotyping.analysis.domain import input_check
        from phenotyping.models.checkpoint import load_card

        batch_size = batch_size or inf.DEFAULT_BATCH_SIZE
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        card = load_card(model_dir)
        inf.qc_config_from_card(card)  # a card without QC thresholds fails here, before the worker is asked
        version = inf.model_version(card)
        inf._refuse_mixed_tta(store, sample_id, str(card["id"]), version)  # e.g. the CLI predicted it with --tta
        with self._lock:  # after a warm-up or another job still using the worker, which this run does not time
            self._ensure()
            t0 = time.perf_counter()
            cells, todo = inf._cells_to_predict(store, sample_id, str(card["id"]))  # the same rule as in-process
            if input_check(card, sorted({tuple(c.shape) for c in todo})) is not None:
                return inf._input_refused(store, sample_id, _CardOnly(card), todo, version, actor, t0, len(cells),
                                          batch_size, inf.resolve_device(device))
            run = _Import(store, sample_id, card, version, actor, len(cells), len(cells) - len(todo), progress,
                          stage, t0, self)
            with tempfile.TemporaryDirectory(prefix="leuko-job-") as tmp:
                listing = Path(tmp) / "cells.json"
                listing.write_text(json.dumps([[c.id, c.blob_path, c.source_file] for c in todo]), encoding="utf-8")
                self.request({"op": "predict", "model_dir": str(Path(model_dir).resolve()), "device": device,
                              "batch_size": batch_size, "threads": threads, "cells": str(listing), "out_dir": tmp,
                              "image_dir": str(Path(store.image_dir).resolve())}, run.on_event)
            return run.finish(batch_size)


class _CardOnly:
    """What :func:`phenotyping.analysis.inference._input_refused` reads of a loaded model: its card and id."""

    def __init__(self, card: dict[str, Any]):
        self.card, self.id = card, str(card["id"])


class _Import:
    """The job thread's side of one prediction request: each ``chunk`` event's file into the store."""

    def __init__(self, store: Any, sample_id: str, card: dict[str, Any], version: str, actor: str, total: int,
                 already: int, progress: Any, stage: Any, t0: float, worker: ProcessWorker):
        from phenotyping.analysis.domain import RunScores

        self.store, self.sample_id, self.card, self.version, self.actor = store, sample_id, card, version, actor
        self.total, self.already, self.progress, self.stage, self.t0 = total, already, progress, stage, t0
        self.worker = worker
        self.domain = RunScores(card, sample_id, version)
        self.counts = {"predicted": 0, "excluded": 0, "unidentified": 0}
        self.codes: list[str | None] = []
        self.unreadable = 0
        self.meta: dict[str, Any] = {"device": "cpu", "load_s": 0.0}

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "loaded":
            if event["model_id"] != self.card["id"]:
                raise WorkerError(f"the model folder now holds {event['model_id']}, not {self.card['id']}; register "
                                  "it again on the Models screen")
            self.meta = event
        elif kind == "stage" and self.stage is not None:
            self.stage(str(event["what"]), self.already + int(event["done"]), self.total)
        elif kind == "chunk":
            self._chunk(Path(event["path"]), event)

    def _chunk(self, path: Path, event: dict[str, Any]) -> None:
        from phenotyping.analysis.qc import UNIDENTIFIED
        from phenotyping.schemas import Prediction, QCState

        with np.load(path) as z:
            qc_rows = [(int(i), QCState(s), r or None) for i, s, r in zip(z["qc_ids"], z["qc_states"], z["qc_reasons"])]
            classes, names = self.meta["classes"], self.meta["targets"]
            preds = [Prediction(cell_id=int(i), model_id=self.card["id"], model_version=self.version,
                                predicted_class=classes[int(k)], confidence=float(conf),
                                probabilities={c: float(p) for c, p in zip(classes, probs)},
                                targets={n: float(v) for n, v in zip(names, tv) if np.isfinite(v)})
                     for i, k, conf, probs, tv in zip(z["ids"], z["top"], z["confidence"], z["probs"], z["targets"])]
            features = z["features"] if "features" in z.files else None
            stats = z["stats"] if "stats" in z.files else None
            self.domain.add(z["domain_ids"].tolist(), features, stats)
        first = self.counts["predicted"] + self.counts["excluded"] + 1
        if self.stage is not None:
            self.stage(f"saving cells {first}-{first + int(event['cells']) - 1} of {self.total - self.already}",
                       self.already + first - 1, self.total)
        self.store.set_qc(qc_rows, sample_id=self.sample_id, actor=self.actor)
        self.store.add_predictions(preds, sample_id=self.sample_id, actor=self.actor)
        path.unlink(missing_ok=True)
        self.counts["predicted"] += len(preds)
        self.counts["excluded"] += sum(1 for _, s, _ in qc_rows if s == QCState.excluded)
        self.counts["unidentified"] += int(event["unsure"])
        self.codes += [*event["codes"], *[UNIDENTIFIED] * int(event["unsure"])]
        self.unreadable += int(event["unreadable"])
        if self.progress is not None:
            processed = self.counts["predicted"] + self.counts["excluded"]
            self.progress(self.already + processed, self.total, processed / max(self._seconds(), 1e-9))

    def _seconds(self) -> float:
        """The run's time so far without starting the worker process and loading the model (which a run given a
        loaded model does not time either)."""
        spent = time.perf_counter() - self.t0 - self.worker.start_s - float(self.meta.get("load_s") or 0.0)
        return max(spent, 1e-9)

    def finish(self, batch_size: int) -> Any:
        from phenotyping.analysis.inference import PredictionRun, qc_config_from_card
        from phenotyping.analysis.qc import count_reasons

        return PredictionRun(
            sample_id=self.sample_id, model_id=str(self.card["id"]), model_version=self.version,
            device=str(self.meta.get("device", "cpu")), batch_size=batch_size, total_cells=self.total,
            already_done=self.already, predicted=self.counts["predicted"], excluded=self.counts["excluded"],
            unidentified=self.counts["unidentified"],
            qc_counts={**count_reasons(self.codes), "unreadable": self.unreadable}, seconds=self._seconds(),
            qc_config=qc_config_from_card(self.card).to_dict(), domain_check=self.domain.finish(self.store, self.actor))
