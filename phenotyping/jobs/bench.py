"""``python -m phenotyping bench app-job``: the app's prediction job against the CLI's run on the same cells.

In one process and one on-disk store of synthetic cells (the model's input shape, ingested into packs as the app
does), each repeat times, in this order: :func:`~phenotyping.analysis.inference.predict_sample` as ``predict
--sample`` runs it (``cli``); a prediction job of a :class:`~phenotyping.jobs.JobRunner` with
``job_worker="thread"`` (``thread``) and with ``"process"`` (``process``); and both again while a thread of this
process keeps the GIL busy the way Streamlit's script reruns do while the job's screen is open (``*_watched``: 30 %
of the time; ``*_watched_busy``: all the time, which on a small machine also takes a core from the job).
The model is loaded before (in this process and in the worker: the app's warm-up), so the rates are those of a
warm server. Each job's rate is the one the Analyse screen shows (``cells_per_second`` of the job's result: cells
over the run's time, model loading left out); ``wall_cells_per_s`` is cells over the time from submitting the job
to its row saying ``done``.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: How often the simulated screen polls the job's row (the Analyse fragment's ``run_every``).
POLL_S = 0.5
#: Share of each poll period the "watched" screen spends in Python (a rerun of 0.15 s every 0.5 s); ``*_watched_busy``
#: uses 1 (no pause).
WATCHED_DUTY = 0.3


class GilHammer:
    """A thread that, every :data:`POLL_S` seconds, reads the job's row and then runs pure-Python work (holding the
    GIL but for the interpreter's switch interval) for ``duty`` of the period: a screen rerunning its script.
    ``duty=1`` never pauses (a rerun as long as the period, the worst case); it also takes a whole core."""

    def __init__(self, store: Any, sample_id: str, *, duty: float = 1.0):
        if not 0 < duty <= 1:
            raise ValueError(f"duty={duty} must be in (0, 1]")
        self.store, self.sample_id, self.duty = store, sample_id, duty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gil-hammer", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            self.store.list_jobs(sample_id=self.sample_id, kind="predict", limit=1)
            while time.monotonic() - start < self.duty * POLL_S:
                acc = 0
                for i in range(20_000):  # about a millisecond of bytecode, like building a page's widgets
                    acc += i * i
            rest = POLL_S - (time.monotonic() - start)
            if rest > 0:
                self._stop.wait(rest)

    def __enter__(self) -> "GilHammer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _job(runner: Any, store: Any, sample_id: str, model_id: str, n: int) -> dict[str, Any]:
    from phenotyping.jobs import submit_prediction

    store.delete_predictions(sample_id, model_id, actor="bench")
    t0 = time.perf_counter()
    job = runner.wait(submit_prediction(runner, sample_id, model_id, actor="bench", device="cpu"))
    wall = time.perf_counter() - t0
    if job["status"] != "done":
        raise RuntimeError(f"the benchmark's prediction job failed: {job['message']}")
    return {"cells_per_s": float(job["result"]["cells_per_second"]), "wall_cells_per_s": round(n / wall, 1)}


def app_job_bench(model_dir: str | Path, *, n_cells: int = 1000, repeats: int = 3, batch_size: int = 256,
                  workdir: str | Path | None = None) -> dict[str, Any]:
    """Time the CLI's run, the in-process job and the worker-process job, unwatched and watched, on the same cells.

    Returns the median of ``repeats`` per way (and every value), each way's ratio to the CLI's median, the worker's
    start-up, and the machine.
    """
    from phenotyping.analysis.bench import machine, write_synthetic_set
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.ingest import ingest_set
    from phenotyping.jobs import JobRunner
    from phenotyping.models.checkpoint import load_card, load_model_cached
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    if n_cells < 1 or repeats < 1:
        raise ValueError(f"--cells {n_cells} and repeats {repeats} must be >= 1")
    model_dir = Path(model_dir).resolve()
    card = load_card(model_dir)
    inp = card.get("input") or {}
    with tempfile.TemporaryDirectory(prefix="phenotyping-bench-app-job-", dir=workdir) as tmp:
        tmpd = Path(tmp)
        manifest = write_synthetic_set(tmpd / "set", n_cells, len(inp.get("channels") or [0, 0]),
                                       int(inp.get("img_size") or 40))
        with Store(tmpd / "bench.duckdb", image_dir=tmpd / "images") as store:
            store.create_sample(Sample(id="BENCH", specimen=Specimen.blood), actor="bench")
            ingest_set(store, manifest, "BENCH", actor="bench")
            store.register_model(card["id"], path=str(model_dir), card=card, actor="bench", usable=True)
            lm = load_model_cached(model_dir)
            thread = JobRunner(store, job_worker="thread")
            process = JobRunner(store, job_worker="process")
            t0 = time.perf_counter()
            process.warm_up().join()
            start_s = time.perf_counter() - t0
            ways: dict[str, list[dict[str, Any]]] = {}

            def cli() -> dict[str, Any]:
                store.delete_predictions("BENCH", lm.id, actor="bench")
                t = time.perf_counter()
                run = predict_sample(store, "BENCH", lm, device="cpu", batch_size=batch_size, actor="bench")
                return {"cells_per_s": round(run.cells_per_second, 1),
                        "wall_cells_per_s": round(n_cells / (time.perf_counter() - t), 1)}

            for _ in range(repeats):
                ways.setdefault("cli", []).append(cli())
                for name, runner in (("thread", thread), ("process", process)):
                    ways.setdefault(name, []).append(_job(runner, store, "BENCH", lm.id, n_cells))
                for duty, tag in ((WATCHED_DUTY, "watched"), (1.0, "watched_busy")):
                    for name, runner in (("thread", thread), ("process", process)):
                        with GilHammer(store, "BENCH", duty=duty):
                            ways.setdefault(f"{name}_{tag}", []).append(_job(runner, store, "BENCH", lm.id, n_cells))
            thread.shutdown()
            process.shutdown()
    return _summary(ways, n_cells=n_cells, repeats=repeats, batch_size=batch_size, model_id=lm.id,
                    worker_start_s=start_s, machine_info=machine())


def _summary(ways: dict[str, list[dict[str, Any]]], *, machine_info: dict[str, Any], **head: Any) -> dict[str, Any]:
    med = {k: statistics.median(r["cells_per_s"] for r in v) for k, v in ways.items()}
    wall = {k: statistics.median(r["wall_cells_per_s"] for r in v) for k, v in ways.items()}
    cli = med["cli"]
    return {
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in head.items()},
        "cells_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio_to_cli": {k: round(v / cli, 3) for k, v in med.items()},
        "wall_cells_per_s": {k: round(v, 1) for k, v in wall.items()},
        "wall_ratio_to_cli": {k: round(v / wall["cli"], 3) for k, v in wall.items()},
        "runs": ways,
        "watched": f"a thread of this process reading the job's row every {POLL_S} s and running pure-Python work "
                   f"for {WATCHED_DUTY:.0%} of each period (watched_busy: all of it)",
        "machine": machine_info,
    }
