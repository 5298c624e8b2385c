"""``python -m phenotyping bench results``: a sample's results at 10^6 cells through the store's aggregations.

Synthesises the cells and predictions in DuckDB (:meth:`phenotyping.store.predictions.PredictionRepository.synthesise`,
not timed), then, in a fresh process so that its peak memory is the reading path's alone, times
:func:`~phenotyping.analysis.aggregates.sample_summary` (first and second call; differential with the adjusted count's bootstrap while cells
wait in the unidentified queue; EM's point estimate over the ``(N, K)`` probability matrix once none waits) and
:func:`~phenotyping.analysis.aggregates.gallery_page` (first, middle and last pages of each gallery group at 10^5
cells and at N). On a small sample it times both paths, per-cell :func:`sample_results` and the aggregations, and
reports their ratio (the machine may be loaded: compare ratios, not seconds, across runs).
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
MODEL_ID = "bench-synthetic"


def bench_card(threshold: float) -> dict[str, Any]:
    """A card for the synthetic model: confusion matrices, a uniform posterior prior, blood counting every class."""
    k = len(CLASSES)
    confusion = [[90 if i == j else 2 for j in range(k)] for i in range(k)]
    return {"id": MODEL_ID, "classes": CLASSES,
            "calibration": {"temperature": 1.0, "unidentified_threshold": threshold},
            "validation": {"confusion": confusion, "confusion_confident": confusion},
            "training": {"posterior_prior": {"classes": {c: 1 / k for c in CLASSES}}},
            "specimens": {"blood": {"counted": CLASSES}}}


def results_bench(n_cells: int = 1_000_000, *, page_cells: int = 100_000, compare_cells: int = 20_000,
                  n_bootstrap: int = 1000, workdir: Path | None = None) -> dict[str, Any]:
    """Build the samples in a temporary database, measure in a child process, return the figures (seconds, MiB)."""
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    if min(n_cells, page_cells, compare_cells) < 1:
        raise ValueError(f"cell counts must be >= 1, got {n_cells}, {page_cells}, {compare_cells}")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="bench-results-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        with Store(db, image_dir=Path(tmp) / "images") as store:
            for sid, n in (("BIG", n_cells), ("PAGE", page_cells), ("SMALL", compare_cells)):
                store.create_sample(Sample(id=sid, specimen=Specimen.blood), actor="bench")
                store.predictions.synthesise(sid, MODEL_ID, n, CLASSES, actor="bench")
                store.set_analysis_model(sid, MODEL_ID, actor="bench")
        built = time.perf_counter() - t0
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            out = pool.apply(_measure, (str(db), n_bootstrap))
    return {"machine": _machine(), "cells": n_cells, "page_cells": page_cells, "compare_cells": compare_cells,
            "n_bootstrap": n_bootstrap, "synthesis_s": round(built, 1), **out}


def _machine() -> dict[str, Any]:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
            "duckdb": version("duckdb"), "numpy": version("numpy")}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t


def _measure(db: str, n_bootstrap: int) -> dict[str, Any]:
    """In the child: the timings and the peak resident memory of the reading path (before the small comparison)."""
    from phenotyping.analysis.aggregates import gallery_page, sample_summary
    from phenotyping.analysis.results import sample_results
    from phenotyping.store import Store

    store = Store(db, read_only=True)
    queue, no_queue = bench_card(0.5), bench_card(0.0)
    rss_start = _rss_mib()
    summ, t_summary = _timed(sample_summary, store, "BIG", card=queue, n_bootstrap=n_bootstrap)
    _, t_warm = _timed(sample_summary, store, "BIG", card=queue, n_bootstrap=n_bootstrap)
    em, t_em = _timed(sample_summary, store, "BIG", card=no_queue, n_bootstrap=0)
    pages: dict[str, dict[str, float]] = {}
    for sid in ("PAGE", "BIG"):
        sizes = sample_summary(store, sid, card=queue, n_bootstrap=0).group_sizes()
        worst, total = 0.0, []
        for show, label, order in (("all", None, "confidence"), ("class", "neutrophil", "-confidence"),
                                   ("class", "basophil", "confidence"), ("queue", None, "uncertainty"),
                                   ("excluded", None, "id")):
            last = max(1, -(-sizes[label or show] // 48))
            for page in dict.fromkeys((1, max(1, last // 2), last)):
                _, t = _timed(gallery_page, store, sid, show=show, label=label, order=order, page=page,
                              page_size=48, card=queue)
                worst, total = max(worst, t), [*total, t]
        pages[sid] = {"cells": sizes["all"], "pages_timed": len(total), "max_s": round(worst, 3),
                      "mean_s": round(sum(total) / len(total), 3)}
    rss_peak = _rss_mib()
    _, t_small_sql = _timed(sample_summary, store, "SMALL", card=queue, n_bootstrap=0)
    _, t_small_cells = _timed(sample_results, store, "SMALL", card=queue, n_bootstrap=0)
    store.close()
    d = summ.differential
    return {
        "summary_s": round(t_summary, 2), "summary_again_s": round(t_warm, 2), "summary_shown": d.shown.method, "n_counted": d.raw.n_counted,
        "n_unidentified": summ.n_unidentified, "exclusions": dict(summ.exclusions),
        "em_point_s": round(t_em, 2), "em_shown": em.differential.shown.method,
        "pages": pages, "rss_start_mib": round(rss_start), "rss_peak_mib": round(rss_peak),
        "small_sample": {"sample_results_s": round(t_small_cells, 3), "sample_summary_s": round(t_small_sql, 3),
                         "ratio": round(t_small_cells / t_small_sql, 1)},
    }
