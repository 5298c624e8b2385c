"""The analysis worker process's side (``python -m phenotyping job-worker``, started by
:class:`phenotyping.jobs.worker.ProcessWorker`; not a command for people).

It reads one JSON request per line on stdin and answers each with JSON lines on stdout, the last of them ``end`` or
``error``:

- ``{"op": "load", "models": [DIR, ...]}``: import torch and timm and load the models (kept in memory);
- ``{"op": "predict", "model_dir", "device", "batch_size", "threads", "image_dir", "cells", "out_dir"}``: read the
  cells listed in the JSON file ``cells`` (``[[cell id, blob_path, source file], ...]``) from the image store's
  files, decode them, run image QC and the model (:mod:`phenotyping.analysis.inference`, the same functions as a
  run in the app's process) and write each batch's outcome to ``out_dir/chunk-NNNNN.npz``, announced by a ``chunk``
  line once the file is complete. Events: ``loaded`` (the model's id, version, classes, targets, the device, the
  seconds loading the model took), ``stage`` (what it is doing), ``chunk``;
- ``{"op": "quit"}``.

The worker never opens the database (the app holds it read-write): the app's job thread imports the chunks. Errors
in a request are answered with a one-line ``error`` (the traceback goes to stderr) and the worker waits for the next
request; it ends when stdin closes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, TextIO

import numpy as np

from phenotyping.jobs._runner import _one_line

log = logging.getLogger(__name__)

#: Shortest time between two "reading images" stage lines (the decoding threads report every image).
STAGE_INTERVAL_S = 0.25

Emit = Callable[[dict[str, Any]], None]


def main() -> int:
    """Serve requests on stdin; the protocol goes to a copy of stdout, and anything a library prints goes to
    stderr, so that no stray print can break a line of the protocol."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return serve(sys.stdin, proto)


def serve(inp: TextIO, out: TextIO) -> int:
    """Answer requests read from ``inp`` until it closes or a ``quit`` comes; returns the exit status."""
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(event) + "\n")
            out.flush()

    emit({"event": "ready", "pid": os.getpid()})
    for line in inp:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                break
            if op == "load":
                _load(req.get("models") or [], emit)
            elif op == "predict":
                _predict(req, emit)
            else:
                raise ValueError(f"unknown request {op!r}")
            emit({"event": "end"})
        except Exception as e:  # noqa: BLE001 - answered as one line; the worker serves the next request
            log.exception("analysis worker: request failed")
            emit({"event": "error", "message": _one_line(e)})
    return 0


def _load(models: list[str], emit: Emit) -> None:
    import phenotyping._tv_shim  # noqa: F401 - before timm
    import timm  # noqa: F401 - paid here, at warm-up, rather than by the first job
    import torch  # noqa: F401

    from phenotyping.analysis.inference import resolve_device
    from phenotyping.models.checkpoint import load_model_cached

    for path in models:
        try:
            load_model_cached(path)
        except Exception:  # noqa: BLE001 - the job that needs the model reports it
            log.exception("analysis worker: could not load the model in %s", path)
    try:
        resolve_device(None)  # torch's first look for CUDA takes most of a second; not in the first job
    except ValueError:
        log.exception("analysis worker: the device setting")
    emit({"event": "loaded", "models": len(models)})


class _PackReader:
    """Reads a ``blob_path`` from the image store's files (a file of its own or a slice of a pack), as the store does,
    without opening the database."""

    def __init__(self, image_dir: Path):
        from phenotyping.store.cells import CellRepository

        self._cells = CellRepository(SimpleNamespace(image_dir=image_dir))

    def read_blob(self, rel: str) -> bytes:
        return self._cells.read_blob(rel)


def _predict(req: dict[str, Any], emit: Emit) -> None:
    """One prediction request: ``loaded``, then ``stage`` and ``chunk`` lines until every cell is written."""
    import torch

    from phenotyping.analysis import inference as inf
    from phenotyping.models.checkpoint import load_model_cached

    t0 = time.perf_counter()
    loaded = load_model_cached(req["model_dir"])
    load_s = time.perf_counter() - t0  # ~0 when the model was loaded before (warm-up, an earlier job)
    lm, dev, qc_cfg, threshold, version = inf._run_setup(loaded, req.get("device"), None, int(req["batch_size"]))
    names = lm.targets.names if lm.targets is not None else []
    emit({"event": "loaded", "model_id": lm.id, "model_version": version, "classes": list(lm.classes),
          "targets": list(names), "device": dev, "load_s": round(load_s, 4)})
    cells = [SimpleNamespace(id=int(i), blob_path=b, source_file=f)
             for i, b, f in json.loads(Path(req["cells"]).read_text(encoding="utf-8"))]
    net = lm.model.to(dev).eval()
    if dev == "cpu":
        torch.set_num_threads(max(1, int(req.get("threads") or inf.cpu_threads())))
    out_dir = Path(req["out_dir"])
    tell = inf._StageTeller(_throttled(emit), 0, len(cells), len(cells))
    done = 0
    for k, batch in enumerate(inf._prefetch(_PackReader(Path(req["image_dir"])), cells, int(req["batch_size"]), lm,
                                            qc_cfg, pin=dev == "cuda", workers=inf.decode_workers(dev), tell=tell)):
        tell(f"predicting cells {done + 1}-{done + len(batch.cells)} of {len(cells)}", done)
        scores = _Scores()
        qc_rows, preds, unsure = inf._run_batch(batch, net, lm, dev, version, threshold, scores)
        path = _write_chunk(out_dir / f"chunk-{k:05d}.npz", qc_rows, preds, lm.classes, names, scores)
        done += len(batch.cells)
        emit({"event": "chunk", "path": str(path), "cells": len(batch.cells), "unsure": int(unsure),
              "codes": [q.code for q in batch.qc if q is not None],
              "unreadable": sum(e is not None for e in batch.errors)})


def _throttled(emit: Emit) -> Callable[[str, int, int], None]:
    """A :data:`~phenotyping.analysis.inference.StageFn` sending ``stage`` lines, "reading images" ones at most every
    :data:`STAGE_INTERVAL_S`."""
    last = [0.0]

    def stage(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if what.startswith("reading images") and now - last[0] < STAGE_INTERVAL_S:
            return
        last[0] = now
        emit({"event": "stage", "what": what, "done": int(done), "total": int(total)})

    return stage


class _Scores:
    """Collects what :class:`phenotyping.analysis.domain.RunScores` would receive for one batch (the app's job
    thread feeds it to the run's own ``RunScores``)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.features: np.ndarray | None = None
        self.stats: np.ndarray | None = None

    def add(self, cell_ids: Any, features: Any, stats: Any) -> None:
        self.ids = [int(c) for c in cell_ids]
        self.features = None if features is None else np.asarray(features)
        self.stats = None if stats is None else np.asarray(stats)


def _write_chunk(path: Path, qc_rows: list[tuple[int, Any, str | None]], preds: list[Any], classes: list[str],
                 names: list[str], scores: _Scores) -> Path:
    """One batch's outcome as ``.npz`` (written under a temporary name, then renamed): the QC rows, and per
    prediction its cell, class index, confidence, probabilities (float64, as stored) and targets (NaN: none)."""
    arrays: dict[str, np.ndarray] = {
        "qc_ids": np.array([r[0] for r in qc_rows], np.int64),
        "qc_states": np.array([r[1].value for r in qc_rows], dtype=str),
        "qc_reasons": np.array([r[2] or "" for r in qc_rows], dtype=str),
        "ids": np.array([p.cell_id for p in preds], np.int64),
        "top": np.array([classes.index(p.predicted_class) for p in preds], np.int64),
        "confidence": np.array([p.confidence for p in preds], np.float64),
        "probs": np.array([[p.probabilities[c] for c in classes] for p in preds], np.float64).reshape(-1, len(classes)),
        "targets": np.array([[p.targets.get(n, np.nan) for n in names] for p in preds],
                            np.float64).reshape(-1, len(names)),
        "domain_ids": np.array(scores.ids, np.int64),
    }
    if scores.features is not None:
        arrays["features"] = scores.features
    if scores.stats is not None:
        arrays["stats"] = scores.stats
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return path
