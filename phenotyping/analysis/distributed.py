"""Batch inference on Ray Data: many files, many machines, one Parquet file of per-cell results.

``predict_with_ray`` lists a manifest or folder on the driver (the same readers and per-file rejections as
ingest), then lets Ray Data stream it: decode + image QC + fitting + normalisation run as parallel tasks
(:func:`decode_batch`), the model runs in a pool of actors (:class:`ModelActor`, one GPU each where the cluster has
GPUs; otherwise CPU actors), and the driver writes the rows, in manifest order, to one Parquet file as they arrive.
Nothing here touches the database: ``import_predictions`` (the ``import-predictions`` command) brings a result file
into a sample through the store, as the local engine would, so the single DuckDB writer stays the only writer.

Each row: ``row`` (position in the set), ``cell_key``, ``path`` (the name in the set), ``content_hash`` (SHA-256 of
the file), ``label`` (reference class, if the manifest has one), ``qc_state`` (``passed`` | ``excluded`` |
``rejected``), ``qc_reason``, ``predicted_class``, ``confidence``, ``unidentified``, ``p_<class>`` per class and one
column per regressed target (in the training targets' units). ``rejected`` is what ingest would refuse (unreadable,
wrong channel count, duplicate content or cell id); ``excluded`` is an image-QC exclusion. The file's schema
metadata records the model (id, version, classes, targets), the source and the engine.

Decoding and QC are the local engine's functions on the same bytes, and the model runs the same forward pass
(:func:`phenotyping.models.forward.forward_batch`), so the two engines agree cell by cell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.errors import ImageError, PhenotypingError

RAY_MISSING = ("Ray is not installed in this environment; install the optional extra with "
               "`pip install --require-hashes -r requirements-ray.txt` (README, \"Batch inference on Ray\")")
#: Parquet schema-metadata key holding the run's description (JSON).
META_KEY = b"phenotyping"
STATES = ("passed", "excluded", "rejected")


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode task needs (small, pickled into every task)."""

    expected_channels: int
    qc: dict[str, Any]
    preprocess: dict[str, Any]
    max_bytes: int
    max_pixels: int


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise PhenotypingError(RAY_MISSING) from e
    return ray


def list_entries(source: Path, *, label_column: str | None, max_bytes: int, max_files: int) -> list[dict[str, Any]]:
    """The set's files as plain rows for Ray tasks (entries the readers already refused keep their reason)."""
    from phenotyping.ingest._sources import iter_source

    if source.is_file() and source.suffix.lower() == ".zip":
        raise PhenotypingError(f"{source}: the Ray engine reads files that every worker can open (a manifest or a "
                               "folder on shared storage); unzip the set first, or use --engine local")
    rows = []
    for i, e in enumerate(iter_source(source, label_column=label_column, max_bytes=max_bytes, max_files=max_files)):
        if e.error is None and e.path is None:
            raise PhenotypingError(f"{source}: {e.name} is not a file on disk; the Ray engine needs a manifest or "
                                   "a folder")
        rows.append({"row": i, "name": e.name, "cell_key": e.cell_key or e.name, "path": e.path or "",
                     "size": int(e.size), "label": e.label or "", "error": e.error or ""})
    return rows


def _decode_one(item: dict[str, Any], spec: DecodeSpec) -> tuple[np.ndarray | None, str, str]:
    """(image or None, content hash, rejection reason or "")."""
    from phenotyping.ingest import read_image

    if item["error"]:
        return None, "", str(item["error"])
    if item["size"] > spec.max_bytes:
        return None, "", f"{item['size'] / 1e6:.1f} MB, above the per-file limit of {spec.max_bytes / 1e6:.0f} MB"
    try:
        with open(item["path"], "rb") as fh:
            data = fh.read(spec.max_bytes + 1)
    except OSError as e:
        return None, "", f"cannot be read: {e.strerror or e}"
    if len(data) > spec.max_bytes:
        return None, "", f"larger than the per-file limit of {spec.max_bytes / 1e6:.0f} MB"
    digest = hashlib.sha256(data).hexdigest()
    try:
        arr = read_image(data, item["name"], max_pixels=spec.max_pixels)
    except ImageError as e:
        return None, digest, e.reason
    if arr.shape[0] != spec.expected_channels:
        return None, digest, (f"{arr.shape[0]} channel(s), but the model takes {spec.expected_channels}; a "
                              "sample's images must all have the same channels")
    return arr, digest, ""


def _column(values: list[Any]) -> np.ndarray:
    return np.asarray(values, dtype=object)


def decode_batch(batch: dict[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """A Ray Data task: read, decode, check channels, image QC, fit and normalise a batch of files.

    Returns the batch's identifying columns, ``qc_state``/``qc_reason``, ``content_hash``, and ``x``: the
    normalised input (zeros for cells that did not pass)."""
    from phenotyping.analysis.qc import QCConfig, check_images
    from phenotyping.models.preprocess import Preprocess

    pre = Preprocess.from_dict(spec.preprocess)
    items = [{k: batch[k][i] for k in batch} for i in range(len(batch["row"]))]
    decoded = [_decode_one(it, spec) for it in items]
    states = ["rejected" if arr is None else "" for arr, _, _ in decoded]
    reasons = [why for _, _, why in decoded]
    ok = [i for i, (arr, _, _) in enumerate(decoded) if arr is not None]
    for i, r in zip(ok, check_images([decoded[i][0] for i in ok], QCConfig.from_dict(spec.qc))):
        states[i], reasons[i] = ("passed", "") if r.passed else ("excluded", r.reason or "")
    passed = [i for i in ok if states[i] == "passed"]
    x = None
    if passed:
        fitted = np.stack([pre.size(decoded[i][0]) for i in passed])
        xp = pre.normalise(fitted, batched=True).astype(np.float32)
        x = np.zeros((len(items), *xp.shape[1:]), np.float32)
        x[passed] = xp
    else:
        x = np.zeros((len(items), 1), np.float32)
    return {
        "row": np.asarray([int(it["row"]) for it in items], np.int64),
        "cell_key": _column([str(it["cell_key"]) for it in items]),
        "path": _column([str(it["name"]) for it in items]),
        "label": _column([str(it["label"]) for it in items]),
        "content_hash": _column([h for _, h, _ in decoded]),
        "qc_state": _column(states), "qc_reason": _column(reasons), "x": x,
    }


class ModelActor:
    """A Ray actor holding one loaded model (wrapped for test-time augmentation ``tta``, as the local engine
    does); called on decoded batches, it adds the prediction columns."""

    def __init__(self, model_dir: str, device: str = "cpu", threads: int | None = None, tta: str = "none"):
        import torch

        from phenotyping.analysis.inference import prediction_net
        from phenotyping.models.checkpoint import load_model_dir

        self.lm = load_model_dir(model_dir)
        self.device = device
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        self.net = prediction_net(self.lm, device, tta)
        self.threshold = float((self.lm.card.get("calibration") or {}).get("unidentified_threshold", 0.0))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from phenotyping.analysis.qc import unidentified_flags
        from phenotyping.models.forward import forward_batch

        lm, n = self.lm, len(batch["row"])
        passed = np.flatnonzero(batch["qc_state"] == "passed")
        probs = np.full((n, len(lm.classes)), np.nan)
        names = lm.targets.names if lm.targets is not None else []
        targets = np.full((n, len(names)), np.nan)
        if len(passed):
            x = torch.from_numpy(np.ascontiguousarray(batch["x"][passed]))
            if self.device == "cuda":
                x = x.pin_memory()
            p, reg = forward_batch(self.net, x, device=self.device, temperature=lm.temperature)
            probs[passed] = p
            if names and reg.shape[1]:
                targets[passed] = lm.targets.inverse(reg)
        out = {k: v for k, v in batch.items() if k != "x"}
        top = np.nan_to_num(probs, nan=-1.0).argmax(1)
        has = np.isin(np.arange(n), passed)
        out["predicted_class"] = _column([lm.classes[int(t)] if h else None for t, h in zip(top, has)])
        out["confidence"] = np.where(has, np.minimum(1.0, probs[np.arange(n), top]), np.nan)
        flags = unidentified_flags(np.nan_to_num(probs[passed], nan=0.0), threshold=self.threshold) if len(passed) \
            else []
        unsure = np.zeros(n, bool)
        unsure[passed] = [f is not None for f in flags]
        out["unidentified"] = unsure
        for k, c in enumerate(lm.classes):
            out[f"p_{c}"] = probs[:, k]
        for k, t in enumerate(names):
            out[t] = targets[:, k]
        return out


def _mark_duplicates(cols: dict[str, list[Any]], hashes: dict[str, str], keys: set[str],
                     prediction_columns: list[str]) -> None:
    """Refuse, as ingest does, a file whose content or cell id came earlier in the set (the rows arrive in order)."""
    for i, state in enumerate(cols["qc_state"]):
        if state == "rejected":
            continue
        h, key = cols["content_hash"][i], cols["cell_key"][i]
        why = (f"duplicate: same content as {hashes[h]}" if h in hashes
               else f"cell id {key!r} is already in this set" if key in keys else "")
        if why:
            cols["qc_state"][i], cols["qc_reason"][i] = "rejected", why
            for c in prediction_columns:
                cols[c][i] = None if c == "predicted_class" else (False if c == "unidentified" else float("nan"))
            continue
        hashes[h] = cols["path"][i]
        keys.add(key)


def _ray_init(ray: Any, address: str | None, num_cpus: int | None) -> None:
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(**kwargs)


def predict_with_ray(source: str | Path, model_dir: str | Path, out: str | Path, *, address: str | None = None,
                     batch_size: int = 256, actors: int | None = None, label_column: str | None = None,
                     max_bytes: int = 64 * 1024 * 1024, max_pixels: int | None = None, max_files: int | None = None,
                     num_cpus: int | None = None, progress: Callable[[int, int], None] | None = None,
                     tta: str = "none") -> dict[str, Any]:
    """Predict every cell of a manifest or folder on Ray and write one Parquet row per cell to ``out``.

    ``address``: a running cluster (``ray start --head`` prints it; ``auto`` finds the local one); without it a
    local Ray instance is started (``num_cpus`` caps it) and stopped afterwards. ``actors``: model actors (default:
    one per GPU of the cluster, else one). The Parquet file is written beside ``out`` and renamed into place when
    complete, so an interrupted run leaves no partial result under that name. ``tta``: test-time augmentation in
    the actors (``"none"`` or ``"dihedral"``, :mod:`phenotyping.models.tta`); the file's model version then ends in
    ``+tta<views>``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from phenotyping.ingest._image import MAX_PLANE_PIXELS
    from phenotyping.ingest._sources import MAX_FILES_PER_SET
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.models.tta import tta_info

    ray = _ray()
    source, out = Path(source), Path(out)
    if out.suffix.lower() != ".parquet":
        raise ValueError(f"--out {out}: the Ray engine writes Parquet; name the file *.parquet")
    t0 = time.perf_counter()
    lm = load_model_dir(model_dir)
    if "qc" not in lm.card or "unidentified_threshold" not in (lm.card.get("calibration") or {}):
        raise ValueError(f"model card of {lm.id} lacks its qc section or calibration; calibrate the model first")
    tta_run = tta_info(tta, lm.preprocess)  # refused before any work when the channels allow no view
    items = list_entries(source, label_column=label_column, max_bytes=max_bytes,
                         max_files=max_files or MAX_FILES_PER_SET)
    if not items:
        raise PhenotypingError(f"{source}: no files to predict")
    spec = DecodeSpec(expected_channels=len(lm.preprocess.channels), qc=dict(lm.card["qc"]),
                      preprocess=lm.preprocess.to_dict(), max_bytes=max_bytes,
                      max_pixels=max_pixels or MAX_PLANE_PIXELS)
    started_here = not ray.is_initialized()
    _ray_init(ray, address, num_cpus)
    try:
        summary = _run_pipeline(ray, pa, pq, items, spec, lm, Path(model_dir), out, batch_size=batch_size,
                                actors=actors, progress=progress, tta=tta_run,
                                about={"source": str(source.resolve()), "label_column": label_column})
    finally:
        if started_here:
            ray.shutdown()
    summary.update(source=str(source), out=str(out), seconds=round(time.perf_counter() - t0, 3))
    summary["cells_per_second"] = round(summary["cells"] / max(summary["seconds"], 1e-9), 1)
    return summary


def _run_pipeline(ray: Any, pa: Any, pq: Any, items: list[dict[str, Any]], spec: DecodeSpec, lm: Any,
                  model_dir: Path, out: Path, *, batch_size: int, actors: int | None,
                  progress: Callable[[int, int], None] | None, about: dict[str, Any], tta: dict[str, Any]
                  ) -> dict[str, Any]:
    """Build the Ray Data pipeline and stream its output, in order, into the Parquet file."""
    from phenotyping.analysis.inference import model_version, tta_version

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # progress goes through ``progress``; stderr stays readable
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n_actors = actors or max(1, gpus)
    device = "cuda" if gpus else "cpu"
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size + 1, 4 * cpus)))
    ds = ds.map_batches(decode_batch, fn_kwargs={"spec": spec}, batch_size=batch_size, batch_format="numpy")
    ds = ds.map_batches(ModelActor, fn_constructor_kwargs={"model_dir": str(model_dir.resolve()), "device": device,
                                                           "threads": None if gpus else max(1, cpus // n_actors),
                                                           "tta": tta["mode"]},
                        batch_size=batch_size, batch_format="numpy", concurrency=n_actors,
                        num_gpus=1 if gpus else 0)
    names = lm.targets.names if lm.targets is not None else []
    pred_cols = ["predicted_class", "confidence", "unidentified", *[f"p_{c}" for c in lm.classes], *names]
    meta = {"model_id": lm.id, "model_version": tta_version(model_version(lm.card), tta), "classes": lm.classes,
            "targets": names, "engine": "ray", "channels": spec.expected_channels, "tta": tta, **about}
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {s: 0 for s in STATES}
    unidentified = 0
    writer = None
    hashes: dict[str, str] = {}
    keys: set[str] = set()
    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=batch_size):
            cols = {k: list(v) for k, v in batch.items()}
            _mark_duplicates(cols, hashes, keys, pred_cols)
            table = _table(pa, cols, lm.classes, names)
            if writer is None:
                schema = table.schema.with_metadata({META_KEY: json.dumps(meta).encode()})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
            for s in cols["qc_state"]:
                counts[s] += 1
            unidentified += int(sum(bool(u) for u in cols["unidentified"]))
            if progress is not None:
                progress(sum(counts.values()), len(items))
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    return {"engine": "ray", "model_id": lm.id, "cells": sum(counts.values()), **counts,
            "unidentified": unidentified, "actors": n_actors, "device": device, "cluster_cpus": cpus,
            "cluster_gpus": gpus, "tta": tta}


def _table(pa: Any, cols: dict[str, list[Any]], classes: list[str], targets: list[str]) -> Any:
    """A pyarrow table with fixed column types (so every batch has the schema of the first)."""
    text = ["cell_key", "path", "content_hash", "label", "qc_state", "qc_reason", "predicted_class"]
    arrays, fields = [], []
    for name in ["row", *text, "confidence", "unidentified", *[f"p_{c}" for c in classes], *targets]:
        v = cols[name]
        if name == "row":
            typ = pa.int64()
        elif name in text:
            typ = pa.string()
            v = [None if x is None or (name in ("label", "qc_reason") and x == "") else str(x) for x in v]
        elif name == "unidentified":
            typ = pa.bool_()
            v = [bool(x) for x in v]
        else:
            typ = pa.float64()
            v = [None if x is None or not np.isfinite(x) else float(x) for x in v]
        arrays.append(pa.array(v, type=typ))
        fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_result_meta(path: str | Path) -> dict[str, Any]:
    """The run description stored in a result file's schema metadata; PhenotypingError for any other file."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for non-Parquet input
        raise PhenotypingError(f"{path}: not a readable Parquet file ({e})") from e
    if META_KEY not in md:
        raise PhenotypingError(f"{path}: not a result file of `predict --engine ray` (no {META_KEY.decode()} "
                               "metadata)")
    return json.loads(md[META_KEY])


def import_predictions(store: Any, sample_id: str, path: str | Path, *, actor: str, ingest: bool = True,
                       batch_size: int = 256) -> dict[str, Any]:
    """Bring a Ray result file into ``sample_id`` through the store, as the local engine would have written it.

    Cells the sample does not hold yet are first ingested from the run's source (``ingest``; same channel rule, same
    rejections), then each result row is matched to its cell by cell id and checked against the stored file's
    SHA-256 (a file changed since the run is refused, naming it). Image-QC outcomes and predictions are committed
    per batch through :meth:`~phenotyping.store.Store.set_qc` and :meth:`~phenotyping.store.Store.add_predictions`;
    cells that already have a prediction from this model are kept (a rerun after an interruption resumes). A file
    predicted with another test-time augmentation than the model's predictions the sample holds is refused.
    """
    import pyarrow.parquet as pq

    from phenotyping.analysis.inference import _refuse_mixed_tta
    from phenotyping.schemas import Prediction, QCState

    meta = read_result_meta(path)
    store.get_sample(sample_id)
    _refuse_mixed_tta(store, sample_id, meta["model_id"], meta["model_version"])  # with/without --tta, not both
    table = pq.read_table(path)
    rows = table.to_pylist()
    wanted = [r for r in rows if r["qc_state"] != "rejected"]
    by_key = {c.cell_key: c for c in store.list_cells(sample_id)}
    ingested = 0
    if ingest and any(r["cell_key"] not in by_key for r in wanted):
        from phenotyping.ingest import ingest_set

        ing = ingest_set(store, meta["source"], sample_id, actor=actor, label_column=meta.get("label_column"),
                         expected_channels=int(meta["channels"]))
        ingested = ing.ingested
        by_key = {c.cell_key: c for c in store.list_cells(sample_id)}
    missing = [r["cell_key"] for r in wanted if r["cell_key"] not in by_key]
    if missing:
        raise PhenotypingError(f"{path}: {len(missing)} result row(s) have no cell in sample {sample_id}, e.g. "
                               f"{missing[0]!r}; ingest the run's source ({meta['source']}) into it first")
    changed = [r["path"] for r in wanted if by_key[r["cell_key"]].content_hash != r["content_hash"]]
    if changed:
        raise PhenotypingError(f"{path}: {len(changed)} file(s) differ from what the run predicted, e.g. "
                               f"{changed[0]}; predict them again")
    done = store.predicted_cell_ids(sample_id, meta["model_id"])
    todo = [r for r in wanted if by_key[r["cell_key"]].id not in done]
    classes, targets = list(meta["classes"]), list(meta["targets"])
    counts = {"passed": 0, "excluded": 0}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        qc_rows, preds = [], []
        for r in chunk:
            cell = by_key[r["cell_key"]]
            counts[r["qc_state"]] += 1
            if r["qc_state"] == "excluded":
                qc_rows.append((cell.id, QCState.excluded, r["qc_reason"]))
                continue
            qc_rows.append((cell.id, QCState.passed, None))
            preds.append(Prediction(
                cell_id=cell.id, model_id=meta["model_id"], model_version=meta["model_version"],
                predicted_class=r["predicted_class"], confidence=float(r["confidence"]),
                probabilities={c: float(r[f"p_{c}"]) for c in classes},
                targets={t: float(r[t]) for t in targets if r[t] is not None}))
        store.set_qc(qc_rows, sample_id=sample_id, actor=actor)
        store.add_predictions(preds, sample_id=sample_id, actor=actor)
    if store.analysis_model(sample_id) is None:
        store.set_analysis_model(sample_id, meta["model_id"], actor=actor)
    return {"sample_id": sample_id, "model_id": meta["model_id"], "rows": len(rows), "ingested": ingested,
            "already_predicted": len(wanted) - len(todo), "predicted": counts["passed"],
            "excluded": counts["excluded"], "rejected": len(rows) - len(wanted)}


def compare_engines(model_dir: str | Path, *, n_cells: int, batch_size: int = 256, from_files: Path | None = None,
                    address: str | None = None, actors: int | None = None) -> dict[str, Any]:
    """The local engine (ingest → QC → predict → store, :func:`phenotyping.analysis.bench.end_to_end`) and the Ray
    engine (files → Parquet) on the same files in one run: cells/s of each, their ratio, and what the Ray rate per
    model actor implies for 10^6 and 10^7 cells on W workers (linear in W until storage or the driver's Parquet
    writer limits it; an estimate, not a measurement)."""
    import tempfile

    from phenotyping.analysis.bench import _first_rows, end_to_end, write_synthetic_set
    from phenotyping.models.checkpoint import load_model_dir

    lm = load_model_dir(model_dir)
    local = end_to_end(model_dir, n_cells=n_cells, batch_size=batch_size, from_files=from_files)
    with tempfile.TemporaryDirectory(prefix="phenotyping-bench-ray-") as tmp:
        tmpd = Path(tmp)
        if from_files is None:
            manifest = write_synthetic_set(tmpd / "set", n_cells, len(lm.preprocess.channels), lm.preprocess.img_size)
        else:
            src = from_files / "manifest.csv" if from_files.is_dir() else from_files
            manifest, _ = _first_rows(src, n_cells, tmpd / "set" / "manifest.csv")
        ray_run = predict_with_ray(manifest, model_dir, tmpd / "results.parquet", address=address,
                                   batch_size=batch_size, actors=actors)
        ray_run["import_s"] = _timed_import(tmpd, tmpd / "results.parquet")
    local_rate = float(local["cells_per_s"] or 0.0)
    per_actor = ray_run["cells_per_second"] / max(1, ray_run["actors"])
    estimate = {f"{n:.0e} cells": {f"{w} workers": round(n / (per_actor * w) / 3600, 2) for w in (1, 8, 64)}
                for n in (1e6, 1e7)}
    return {"cells": n_cells, "local": local, "ray": ray_run,
            "ray_plus_import_cells_per_s": round(ray_run["cells"] / (ray_run["seconds"] + ray_run["import_s"]), 1),
            "ray_over_local": round(ray_run["cells_per_second"] / max(local_rate, 1e-9), 3),
            "hours_estimate": estimate, "estimate_basis": f"{per_actor:.0f} cells/s per model actor measured here"}


def _timed_import(tmpd: Path, results: Path) -> float:
    """Seconds to bring a result file into a fresh on-disk store (ingest of its files included)."""
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    t0 = time.perf_counter()
    with Store(tmpd / "import.duckdb", image_dir=tmpd / "import-images") as store:
        store.create_sample(Sample(id="BENCH", specimen=Specimen.blood), actor="bench")
        import_predictions(store, "BENCH", results, actor="bench")
    return round(time.perf_counter() - t0, 3)
