"""Throughput benchmark: model-only forward speed, end-to-end speed (files → ingest → QC → predict → store), memory.

Not a test: figures depend on the machine and on whatever else runs on it. ``python -m phenotyping bench`` prints the
result as JSON; docs/BENCHMARKS.md records figures with the machine and the command that produced them.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplications and convolutions,
2 FLOPs per multiply-add; element-wise operations and normalisations are not counted) on a batch of one cell.
"""

from __future__ import annotations

import csv
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The published model's input (4 BSCCM DPC/brightfield channels at 28 × 28), per the issue.
STANDIN_ARCH = "published_standin"
STANDIN_INPUT = (4, 28, 28)


@dataclass(frozen=True)
class ModelSpeed:
    """Forward-pass throughput of one architecture at one input shape."""

    arch: str
    input_shape: tuple[int, ...]
    parameters: int
    batch_size: int
    cells_per_s: float
    ms_per_batch: float
    batches_timed: int
    flops_per_cell: int | None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB), from ``getrusage`` (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine(*, torch_info: bool = True) -> dict[str, Any]:
    """What the figures were measured on (``torch_info=False``: without importing torch)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_cores_available": cores}
    if torch_info:
        import torch

        info.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "cuda": torch.cuda.is_available()})
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def flops_per_cell(model: Any, input_shape: tuple[int, ...], *, device: str = "cpu") -> int | None:
    """FLOPs of one forward pass on one cell (``None`` when the counter cannot trace the model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *input_shape), device=device)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return int(counter.get_total_flops())


def _time_repeats(step: Any, *, cuda: bool, min_seconds: float, warmup: int) -> tuple[int, float]:
    """Run ``step`` ``warmup`` times, then until ``min_seconds`` have passed (at least 3 times); on CUDA the device is
    synchronised before the clock is read. Returns ``(repeats, seconds)``."""
    import torch

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    reps, t0 = 0, time.perf_counter()
    while True:
        step()
        reps += 1
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and reps >= 3:
            return reps, elapsed


def measured_peak_flops(device: str = "cpu", *, min_seconds: float = 1.0) -> dict[str, Any]:
    """The machine's dense matrix-multiply throughput, the yardstick for "fraction of peak".

    A square matmul (4096² in the autocast dtype on CUDA, as the models run there; 1024² float32 on CPU) is timed
    for ``min_seconds``; 2·n³ FLOPs per product. This is a measured peak, not the vendor's datasheet number.
    """
    import torch

    from phenotyping.models.forward import autocast_dtype

    cuda = device == "cuda"
    n = 4096 if cuda else 1024
    dtype = autocast_dtype() if cuda else torch.float32
    a = torch.randn((n, n), device=device, dtype=dtype)
    b = torch.randn((n, n), device=device, dtype=dtype)
    with torch.inference_mode():
        reps, elapsed = _time_repeats(lambda: a @ b, cuda=cuda, min_seconds=min_seconds, warmup=3)
    flops = 2.0 * n**3 * reps / elapsed
    return {"flops_per_s": flops, "matmul": f"{n}x{n} {str(dtype).replace('torch.', '')}", "device": device}


def fraction_of_peak(speed: ModelSpeed, peak_flops_per_s: float) -> float | None:
    """Share of the measured matmul peak that the model's counted FLOPs reach at its measured cells/s."""
    if not speed.flops_per_cell or peak_flops_per_s <= 0:
        return None
    return speed.cells_per_s * speed.flops_per_cell / peak_flops_per_s


def model_speed(model: Any, input_shape: tuple[int, ...], *, device: str = "cpu", batch_size: int = 256,
                min_seconds: float = 3.0, warmup: int = 2, amp: bool = True) -> ModelSpeed:
    """Time forward passes on random normalised input until ``min_seconds`` have passed (after ``warmup`` batches).

    On CUDA the passes run under bf16/fp16 autocast (``amp``) and are synchronised before the clock is read.
    """
    import torch

    from phenotyping.models.forward import autocast_dtype

    model = model.to(device).eval()
    x = torch.randn((batch_size, *input_shape), device=device)
    cuda = device == "cuda"

    def step() -> None:
        if cuda and amp:
            with torch.autocast("cuda", dtype=autocast_dtype()):
                model(x)
        else:
            model(x)

    with torch.inference_mode():
        n, elapsed = _time_repeats(step, cuda=cuda, min_seconds=min_seconds, warmup=warmup)
    params = sum(p.numel() for p in model.parameters())
    return ModelSpeed(arch=str(model.config["arch"]), input_shape=tuple(input_shape), parameters=int(params),
                      batch_size=batch_size, cells_per_s=n * batch_size / elapsed, ms_per_batch=1e3 * elapsed / n,
                      batches_timed=n, flops_per_cell=flops_per_cell(model, input_shape, device=device))


def write_synthetic_set(root: Path, n: int, channels: int, size: int, *, seed: int = 0) -> Path:
    """``n`` distinct single-cell uint16 TIFFs (textured disc on a noisy background) and a manifest; returns it."""
    import tifffile

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for i in range(n):
        r = rng.uniform(0.25, 0.4) * size
        disc = np.hypot(yy - size / 2 + rng.normal(0, 1), xx - size / 2 + rng.normal(0, 1)) < r
        img = rng.normal(680, 6, size=(channels, size, size))
        img[:, disc] += rng.normal(60, 60, size=(channels, int(disc.sum())))
        name = f"cell{i:06d}.tif"
        tifffile.imwrite(root / name, np.clip(img, 0, 65535).astype(np.uint16), photometric="minisblack",
                         metadata={"axes": "CYX"})
        rows.append((f"syn{i:06d}", name))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path"])
        w.writerows(rows)
    return manifest


def _first_rows(manifest: Path, n: int, out: Path) -> tuple[Path, int]:
    """Copy the first ``n`` images ``manifest`` lists (same relative paths) and a manifest of them into ``out``'s folder.

    The copy is not timed. It is needed because ingestion accepts only paths inside the manifest's own folder, and
    the source folder (a shared, read-only data set) is not written to.
    """
    from phenotyping.ingest import read_manifest

    rows = read_manifest(manifest)[:n]  # paths checked and resolved against the manifest's folder
    base, dest = manifest.parent.resolve(), out.parent
    dest.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path"])
        for i, r in enumerate(rows):
            rel = r["path"].relative_to(base)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r["path"], dest / rel)
            w.writerow([r.get("cell_id") or f"row{i}", rel.as_posix()])
    return out, len(rows)


def end_to_end(model_dir: str | Path, *, n_cells: int, device: str = "cpu", batch_size: int = 256,
               from_files: Path | None = None, tta: str = "none") -> dict[str, Any]:
    """Ingest ``n_cells`` image files into a fresh on-disk store and predict them; timed separately and together.

    Without ``from_files`` the files are synthetic TIFFs written first (not timed) in the model's input shape; with
    it, the first ``n_cells`` rows of that manifest (fewer if it has fewer). With ``tta`` other than ``"none"`` the
    predictions are then deleted and the sample predicted again with that test-time augmentation (``tta`` in the
    result: its seconds, cells/s and the ratio of the two prediction times).
    """
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    lm = load_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="phenotyping-bench-") as tmp:
        tmpd = Path(tmp)
        if from_files is None:
            manifest = write_synthetic_set(tmpd / "set", n_cells, len(lm.preprocess.channels), lm.preprocess.img_size)
            source, n = "synthetic uint16 TIFFs, textured disc on noisy background", n_cells
        else:
            src = from_files / "manifest.csv" if from_files.is_dir() else from_files
            manifest, n = _first_rows(src, n_cells, tmpd / "set" / "manifest.csv")
            source = str(src)
        with Store(tmpd / "bench.duckdb", image_dir=tmpd / "images") as store:
            store.create_sample(Sample(id="BENCH", specimen=Specimen.blood), actor="bench")
            t0 = time.perf_counter()
            ing = ingest_set(store, manifest, "BENCH", actor="bench", expected_channels=len(lm.preprocess.channels))
            t1 = time.perf_counter()
            run = predict_sample(store, "BENCH", lm, device=device, batch_size=batch_size, actor="bench")
            t2 = time.perf_counter()
            again = None if tta == "none" else _predict_again(store, lm, device, batch_size, tta, t2 - t1, n)
    total = t2 - t0
    out = {"source": source, "cells": n, "ingested": ing.ingested, "predicted": run.predicted,
           "excluded": run.excluded, "qc_counts": run.qc_counts, "ingest_s": round(t1 - t0, 3),
           "predict_s": round(t2 - t1, 3), "total_s": round(total, 3),
           "cells_per_s": round(n / total, 1) if total > 0 else None,
           "predict_cells_per_s": round(n / (t2 - t1), 1) if t2 > t1 else None,
           "device": run.device, "batch_size": batch_size}
    if again is not None:
        out["tta"] = again
    return out


def _predict_again(store: Any, lm: Any, device: str, batch_size: int, tta: str, plain_s: float,
                   n: int) -> dict[str, Any]:
    """The bench sample's predictions deleted and made again with test-time augmentation ``tta``, timed (``n``:
    the sample's cells, as in the plain run's cells/s)."""
    from phenotyping.analysis.inference import predict_sample

    store.delete_predictions("BENCH", lm.id, actor="bench")
    t0 = time.perf_counter()
    run = predict_sample(store, "BENCH", lm, device=device, batch_size=batch_size, actor="bench", tta=tta)
    s = time.perf_counter() - t0
    return {**run.tta, "model_version": run.model_version, "predicted": run.predicted, "predict_s": round(s, 3),
            "predict_cells_per_s": round(n / s, 1) if s > 0 else None,
            "predict_time_ratio_to_plain": round(s / plain_s, 2) if plain_s > 0 else None}


def run_bench(model_dir: str | Path, *, device: str = "auto", n_cells: int = 10_000, batch_size: int = 256,
              from_files: Path | None = None, min_seconds: float = 3.0, standin: bool = True,
              end_to_end_run: bool = True, tta: str = "none") -> dict[str, Any]:
    """The whole benchmark: the loaded model, the same architecture and the published stand-in at 4×28×28,
    then the end-to-end pipeline. Returns a JSON-ready dict. With ``tta`` (``"dihedral"``) the model is also timed
    wrapped for that test-time augmentation (``native_tta``, and its cost as ``tta_cost_ratio``: plain cells/s
    over TTA cells/s), and the end-to-end run predicts a second time with it."""
    import torch

    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.analysis.inference import cpu_threads, resolve_device
    from phenotyping.models import create_model

    dev = resolve_device(device)
    if dev == "cpu":
        torch.set_num_threads(cpu_threads(background_decoding=False))
    lm = load_model_dir(model_dir)
    cfg = dict(lm.model.config)
    native = (len(lm.preprocess.channels), *([cfg.get("img_size", lm.preprocess.img_size)] * 2))
    if cfg.get("dims", 2) == 3:
        raise ValueError(f"model {lm.id} takes z-stacks; the end-to-end benchmark covers 2D models only; time its "
                         f"architecture with --arch {cfg['arch']} --input-shape C,Z,H,W")
    out: dict[str, Any] = {"model_id": lm.id, "device": dev, "machine": machine(), "model": {}}
    peak = measured_peak_flops(dev)
    out["measured_peak"] = peak

    def timed(model: Any, shape: tuple[int, ...]) -> tuple[ModelSpeed, dict[str, Any]]:
        speed = model_speed(model, shape, device=dev, batch_size=batch_size, min_seconds=min_seconds)
        frac = fraction_of_peak(speed, peak["flops_per_s"])
        return speed, {**asdict(speed), "fraction_of_peak": None if frac is None else round(frac, 5)}

    plain, out["model"]["native"] = timed(lm.model, native)
    if tta != "none":
        from phenotyping.models.tta import with_tta

        wrapped, out["model"]["native_tta"] = timed(with_tta(lm.model, lm.preprocess, tta), native)
        out["model"]["tta_cost_ratio"] = round(plain.cells_per_s / wrapped.cells_per_s, 2)
    if standin:
        k, m = cfg.get("num_classes", len(lm.classes)), cfg.get("num_targets", 0)
        same_arch = create_model(cfg["arch"], **{**cfg, "in_chans": STANDIN_INPUT[0], "img_size": STANDIN_INPUT[1]})
        pub = create_model(STANDIN_ARCH, in_chans=STANDIN_INPUT[0], num_classes=k, num_targets=m,
                           img_size=STANDIN_INPUT[1])
        a, out["model"]["arch_at_4x28x28"] = timed(same_arch, STANDIN_INPUT)
        b, out["model"]["published_standin_4x28x28"] = timed(pub, STANDIN_INPUT)
        out["model"]["speedup_vs_standin"] = round(a.cells_per_s / b.cells_per_s, 2)
    if dev == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if end_to_end_run:
        out["end_to_end"] = end_to_end(model_dir, n_cells=n_cells, device=dev, batch_size=batch_size,
                                       from_files=from_files, tta=tta)
        if dev == "cuda":
            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def arch_bench(archs: list[str], input_shape: tuple[int, ...], *, device: str = "auto", batch_size: int = 32,
               min_seconds: float = 3.0, num_classes: int = 5) -> dict[str, Any]:
    """Forward-pass throughput of untrained registered architectures at one input shape, in one run.

    ``input_shape`` is one cell's ``(C, H, W)``, or ``(C, Z, H, W)`` for z-stack models; each model is built for it
    (``img_size`` = H; a model with a ``z_planes`` setting gets Z). ``relative_to_first`` divides each model's cells/s
    by the first's. Returns a JSON-ready dict.
    """
    import torch

    from phenotyping.analysis.inference import cpu_threads, resolve_device
    from phenotyping.models import create_model

    if len(input_shape) not in (3, 4) or min(input_shape) < 1:
        raise ValueError(f"--input-shape {','.join(map(str, input_shape))}: expected C,H,W or C,Z,H,W "
                         "(positive integers), e.g. 2,8,40,40")
    if not archs:
        raise ValueError("name at least one architecture (--arch resnet3d_50,vit3d)")
    dev = resolve_device(device)
    if dev == "cpu":
        torch.set_num_threads(cpu_threads(background_decoding=False))
    peak = measured_peak_flops(dev)
    out: dict[str, Any] = {"device": dev, "machine": machine(), "input_shape": list(input_shape),
                           "measured_peak": peak, "models": {}}
    cfg = {"in_chans": input_shape[0], "num_classes": num_classes, "img_size": input_shape[-1]}
    for arch in archs:
        torch.manual_seed(0)
        model = create_model(arch, **cfg)
        want = 3 if len(input_shape) == 4 else 2
        if model.config.get("dims", 2) != want:
            raise ValueError(f"--arch {arch} takes {'z-stacks' if want == 2 else '2D cells'}; --input-shape "
                             f"{','.join(map(str, input_shape))} is {'a z-stack' if want == 3 else '2D'}")
        if want == 3 and "z_planes" in model.config:
            model = create_model(arch, **cfg, z_planes=input_shape[1])
        speed = model_speed(model, tuple(input_shape), device=dev, batch_size=batch_size, min_seconds=min_seconds)
        frac = fraction_of_peak(speed, peak["flops_per_s"])
        out["models"][arch] = {**asdict(speed), "fraction_of_peak": None if frac is None else round(frac, 5)}
    first = out["models"][archs[0]]["cells_per_s"]
    out["relative_to_first"] = {a: round(m["cells_per_s"] / first, 3) for a, m in out["models"].items()}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def _plain_read_decode(manifest: Path) -> float:
    """Seconds to read and decode every file a manifest lists, one after the other: the floor ingest is held to."""
    from phenotyping.ingest import read_image, read_manifest

    t0 = time.perf_counter()
    for r in read_manifest(manifest):
        read_image(r["path"].read_bytes(), r["path"].name)
    return time.perf_counter() - t0


def ingest_bench(*, n_cells: int = 4500, channels: int = 2, size: int = 40, workers: int | None = None,
                 expected_channels: bool = False) -> dict[str, Any]:
    """Ingest ``n_cells`` synthetic 16-bit TIFFs (``channels`` × ``size`` × ``size``) into a fresh on-disk store,
    and time a plain loop that only reads and decodes the same files, in one run.

    The plain loop runs before and after the ingest (the files are in the page cache for all three); ``ratio`` is the
    ingest's time over the faster loop. By default the ingest runs as ``python -m phenotyping ingest`` does, without
    an expected channel count (a first pass decodes the set for its majority count; the second reuses it);
    ``expected_channels`` gives it the count, as ``predict --manifest`` does. Returns a JSON-ready dict.
    """
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    if n_cells < 1:
        raise ValueError(f"--cells {n_cells} must be >= 1")
    with tempfile.TemporaryDirectory(prefix="phenotyping-bench-ingest-") as tmp:
        tmpd = Path(tmp)
        manifest = write_synthetic_set(tmpd / "set", n_cells, channels, size)
        plain_before = _plain_read_decode(manifest)
        with Store(tmpd / "bench.duckdb", image_dir=tmpd / "images") as store:
            store.create_sample(Sample(id="BENCH", specimen=Specimen.blood), actor="bench")
            t0 = time.perf_counter()
            result = ingest_set(store, manifest, "BENCH", actor="bench", workers=workers,
                                expected_channels=channels if expected_channels else None)
            ingest_s = time.perf_counter() - t0
            files = sum(1 for p in (tmpd / "images").rglob("*") if p.is_file())
        plain_after = _plain_read_decode(manifest)
    plain = min(plain_before, plain_after)
    return {"machine": machine(torch_info=False), "cells": n_cells, "image": f"{channels}x{size}x{size} uint16 TIFF",
            "ingested": result.ingested, "rejected": len(result.rejected), "image_store_files": files,
            "expected_channels_given": expected_channels,
            "plain_read_decode_s": [round(plain_before, 3), round(plain_after, 3)], "ingest_s": round(ingest_s, 3),
            "ingest_cells_per_s": round(n_cells / ingest_s, 1), "plain_cells_per_s": round(n_cells / plain, 1),
            "ratio_ingest_to_plain": round(ingest_s / plain, 2)}


_HELP_PROBE = """
import json, sys, time
t0 = time.perf_counter()
from phenotyping.__main__ import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({"s": time.perf_counter() - t0, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def _probe(argv: list[str], *, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``main(argv)`` in a fresh interpreter: wall seconds of the whole process, seconds inside Python from the
    import of the CLI, and whether torch got imported."""
    import json
    import subprocess
    import sys

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _HELP_PROBE, *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)
    wall = time.perf_counter() - t0
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "{}"
    try:
        probe = json.loads(last)
    except ValueError:
        probe = {}
    return {"wall_s": round(wall, 3), "in_python_s": round(probe.get("s", float("nan")), 3),
            "torch_imported": probe.get("torch"), "exit_ok": done.returncode == 0 and bool(probe)}


def _first_batch(model_dir: Path, manifest: Path, *, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """``predict --manifest`` as a user runs it: seconds from launch to the first batch's progress line, and to
    the end, and the CPU seconds (user + system, all threads) the process used: on a shared machine the CPU time
    moves much less with the other load than the wall time does."""
    import subprocess
    import sys

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "phenotyping", "predict", "--model", str(model_dir), "--manifest",
                             str(manifest), "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, cwd=cwd)
    assert proc.stderr is not None
    first, tail = None, b""
    while True:
        chunk = proc.stderr.read1(4096)
        if not chunk:
            break
        tail = (tail + chunk)[-4096:]
        if first is None and b" cells/s" in chunk:
            first = time.perf_counter() - t0
    proc.wait()
    end = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"first_batch_s": None if first is None else round(first, 3), "end_to_end_s": round(end, 3),
            "cpu_s": round(cpu, 3), "load_1min_after": round(os.getloadavg()[0], 2), "exit_ok": proc.returncode == 0,
            "stderr_tail": "" if proc.returncode == 0 else tail.decode(errors="replace")[-500:]}


def startup_bench(commands: Sequence[str], *, model_dir: Path | None = None, n_cells: int = 4500) -> dict[str, Any]:
    """Start-up of the command line, each probe in a fresh interpreter: ``--help`` of every command, a few commands
    that run no model (``ingest``, ``samples``, ``audit verify``) doing their work, and whether each imported
    torch; with ``model_dir``, ``predict --manifest`` on ``n_cells`` synthetic TIFFs of the model's input shape:
    seconds to its first batch and end to end. ``commands``: the command line's commands. Returns a JSON-ready
    dict."""
    import json
    import os

    root = Path(__file__).resolve().parents[2]
    out: dict[str, Any] = {"machine": machine(torch_info=False), "help": {}, "work": {},
                           "bytecode": "cached (PYTHONDONTWRITEBYTECODE is dropped from the probes' environment, as "
                                       "an installed package has its .pyc files; a warm-up run writes them)"}
    with tempfile.TemporaryDirectory(prefix="phenotyping-bench-startup-") as tmp:
        tmpd = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["LEUKO_DB_PATH"] = str(tmpd / "leuko.duckdb")
        for name in commands:
            out["help"][name] = _probe([name, "--help"], env=env, cwd=root)
        small = write_synthetic_set(tmpd / "small", 64, 2, 40)
        for argv in (["ingest", str(small), "--sample", "S1", "--specimen", "blood"], ["samples"],
                     ["audit", "verify"]):
            out["work"][" ".join(argv[:2] if argv[0] != "ingest" else argv[:1])] = _probe(argv, env=env, cwd=root)
        if model_dir is not None:
            card = json.loads((Path(model_dir) / "model_card.json").read_text(encoding="utf-8"))
            channels, size = len(card["input"]["channels"]), int(card["input"]["img_size"])
            manifest = write_synthetic_set(tmpd / "set", n_cells, channels, size)
            warm = write_synthetic_set(tmpd / "warm", 64, channels, size)
            out["predict_manifest_warmup_64_cells"] = _first_batch(Path(model_dir).resolve(), warm, env=env, cwd=root)
            out["predict_manifest"] = {"cells": n_cells, "model": str(model_dir),
                                       **_first_batch(Path(model_dir).resolve(), manifest, env=env, cwd=root)}
    out["non_model_commands_without_torch"] = all(
        p["torch_imported"] is False for p in [*out["help"].values(), *out["work"].values()])
    return out
