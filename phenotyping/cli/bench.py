"""``python -m phenotyping bench --model DIR [--device cpu|cuda] [--cells N] [--from-files [PATH]]``, or
``python -m phenotyping bench --arch A[,B…] --input-shape C,[Z,]H,W`` (untrained architectures, forward pass only),
``python -m phenotyping bench ingest [--cells N]`` (ingest against a plain read+decode loop) or
``python -m phenotyping bench startup [--model DIR] [--cells N]`` (start-up of every command, torch imported or not,
``predict --manifest`` to its first batch) or ``python -m phenotyping bench results [--cells N]`` (a sample's results
at scale) or ``python -m phenotyping bench app-job --model DIR [--cells N]`` (the app's prediction job against the
CLI, in-process and in the worker process, watched or not)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phenotyping.cli._common import comma_list, print_json


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in comma_list(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of integers, e.g. 2,8,40,40") from e


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure model-only and end-to-end throughput and peak memory",
        description="Measure forward-pass throughput of the model (at its own input and at 4x28x28), of the published "
                    "model's stand-in at 4x28x28, and the end-to-end speed of ingest -> QC -> predict -> store "
                    "for N cells. Prints JSON with the machine it ran on. Figures depend on the load of the machine.",
    )
    p.add_argument("what", nargs="?", choices=["model", "ingest", "startup", "results", "app-job"], default="model",
                   help="model (default): the model and end-to-end timings; ingest: `ingest` of --cells synthetic "
                        "2x40x40 16-bit TIFFs against a loop that only reads and decodes them, in one run; startup: "
                        "--help of every command and non-model commands at work (time, torch imported or not), "
                        "and with --model `predict --manifest` on --cells files (time to the first batch, in all); "
                        "results: synthesise --cells cells (default 10^6) with predictions in a temporary DuckDB "
                        "file, then time the store's aggregations (differential, exclusions, markers; EM's point "
                        "estimate), gallery pages at --page-cells and --cells, peak memory, and the per-cell path "
                        "against the aggregations on --compare-cells cells, as a ratio; app-job: on --cells synthetic "
                        "cells (default 1000) in one run, predict_sample as `predict --sample` runs it, the app's "
                        "prediction job in-process and in the worker process, and both while a thread keeps the GIL "
                        "busy as the job's open screen does, as ratios to the CLI (--repeats each)")
    p.add_argument("--model", type=Path, default=None, help="model folder (checkpoint.pt + model_card.json)")
    p.add_argument("--arch", type=comma_list, default=None, metavar="A[,B...]",
                   help="instead of --model: time these registered architectures untrained (random weights) at "
                        "--input-shape, in one run, with their speed relative to the first")
    p.add_argument("--input-shape", type=_ints, default=None, metavar="C,[Z,]H,W",
                   help="with --arch: one cell's shape, e.g. 2,8,40,40 for a 2-channel stack of 8 planes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cells", type=int, default=None,
                   help="cells for the end-to-end run (default 10000; bench ingest and startup: 4500)")
    p.add_argument("--workers", type=int, default=None, help="bench ingest: decoding threads (default 1: decode in "
                                                             "the calling thread)")
    p.add_argument("--expected-channels", action="store_true",
                   help="bench ingest: give ingest the channel count (as predict --manifest does), so it makes no "
                        "first pass")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--from-files", nargs="?", type=Path, const=Path("auto"), default=None, metavar="PATH",
                   help="end-to-end on real files: a manifest.csv or folder holding one (default: the model card's "
                        "training manifest); without this flag, synthetic TIFFs are written first")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per model measurement")
    p.add_argument("--no-standin", action="store_true", help="skip the published-model stand-in")
    p.add_argument("--tta", choices=["none", "dihedral"], default="none",
                   help="bench model: also time the model under this test-time augmentation (as predict --tta), "
                        "with its cost ratio, and predict the end-to-end sample a second time with it")
    p.add_argument("--model-only", action="store_true", help="skip the end-to-end run")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: instead of the model timings, run the local engine and `predict --engine ray` (plus "
                        "`import-predictions`) on the same --cells files in one run, with their ratio and a "
                        "per-worker estimate for 10^6 and 10^7 cells")
    p.add_argument("--address", default=None, help="with --engine ray: the Ray cluster (default: a local instance)")
    p.add_argument("--page-cells", type=int, default=100_000, help="bench results: cells of the gallery sample")
    p.add_argument("--compare-cells", type=int, default=20_000,
                   help="bench results: cells of the per-cell vs SQL comparison")
    p.add_argument("--bootstrap", type=int, default=1000, help="bench results: adjusted-count resamples")
    p.add_argument("--workdir", type=Path, default=None,
                   help="bench results and app-job: where the temporary database goes (default: $TMPDIR)")
    p.add_argument("--repeats", type=int, default=3, help="bench app-job: runs of each way (the median is reported)")
    p.set_defaults(func=run, commands=sub.choices)  # filled with every command by the time it runs


def run(args: argparse.Namespace) -> int:
    if args.what == "results":
        return _run_results(args)
    if args.what == "app-job":
        return _run_app_job(args)
    if args.what != "model":
        return _run_io(args)
    args.cells = 10_000 if args.cells is None else args.cells
    from phenotyping.analysis.bench import run_bench
    from phenotyping.models.checkpoint import load_card

    if args.arch is not None or args.input_shape is not None:
        return _run_arch(args)
    if args.model is None:
        raise ValueError("name a model folder (--model DIR) or architectures and a shape (--arch A --input-shape "
                         "C,[Z,]H,W)")
    if args.cells < 1:
        raise ValueError(f"--cells {args.cells} must be >= 1")
    source = args.from_files
    if source == Path("auto"):
        manifest = (load_card(args.model).get("training") or {}).get("manifest")
        if not manifest or not Path(manifest).exists():
            raise FileNotFoundError(f"--from-files without a path uses the model card's training manifest, but "
                                    f"{manifest!r} does not exist here; pass --from-files PATH")
        source = Path(manifest)
    print("benchmarking (this takes a minute)...", file=sys.stderr)
    if args.engine == "ray":
        from phenotyping.analysis.distributed import compare_engines

        print_json(compare_engines(args.model, n_cells=args.cells, batch_size=args.batch_size, from_files=source,
                                   address=args.address))
        return 0
    print_json(run_bench(args.model, device=args.device, n_cells=args.cells, batch_size=args.batch_size,
                         from_files=source, min_seconds=args.seconds, standin=not args.no_standin,
                         end_to_end_run=not args.model_only, tta=args.tta))
    return 0


def _run_arch(args: argparse.Namespace) -> int:
    """``--arch``/``--input-shape``: untrained architectures, forward pass only (no end-to-end run)."""
    from phenotyping.analysis.bench import arch_bench

    if args.model is not None:
        raise ValueError("--arch times untrained architectures; drop --model, or drop --arch/--input-shape to "
                         "benchmark the model folder")
    if not args.arch or args.input_shape is None:
        raise ValueError("--arch and --input-shape go together, e.g. --arch resnet3d_50,vit3d --input-shape 2,8,40,40")
    print("benchmarking (this takes a minute)...", file=sys.stderr)
    print_json(arch_bench(args.arch, args.input_shape, device=args.device, batch_size=args.batch_size,
                          min_seconds=args.seconds))
    return 0


def _run_io(args: argparse.Namespace) -> int:
    """``bench ingest`` and ``bench startup``: no model is run in this process, so torch is not imported here."""
    from phenotyping.analysis.bench import ingest_bench, startup_bench

    cells = 4500 if args.cells is None else args.cells
    if cells < 1:
        raise ValueError(f"--cells {cells} must be >= 1")
    if args.arch is not None or args.input_shape is not None:
        raise ValueError(f"--arch/--input-shape time models; drop them for bench {args.what}")
    print(f"benchmarking {args.what} (this takes a minute)...", file=sys.stderr)
    if args.what == "ingest":
        if args.model is not None:
            raise ValueError("bench ingest runs no model; drop --model")
        print_json(ingest_bench(n_cells=cells, workers=args.workers, expected_channels=args.expected_channels))
    else:
        print_json(startup_bench(list(args.commands), model_dir=args.model, n_cells=cells))
    return 0


# -- bench results: a sample's results at scale (phenotyping.analysis.results_bench) ---------------------------------
def _run_results(args: argparse.Namespace) -> int:
    from phenotyping.analysis.results_bench import results_bench

    cells = 1_000_000 if args.cells is None else args.cells
    if cells < 1:
        raise ValueError(f"--cells {cells} must be >= 1")
    print("synthesising and measuring (a few minutes at 10^6 cells)...", file=sys.stderr)
    print_json(results_bench(cells, page_cells=args.page_cells, compare_cells=args.compare_cells,
                             n_bootstrap=args.bootstrap, workdir=args.workdir))
    return 0


# -- bench app-job: the app's prediction job against the CLI (phenotyping.jobs.bench) ---------------------------------
def _run_app_job(args: argparse.Namespace) -> int:
    from phenotyping.jobs.bench import app_job_bench

    if args.model is None:
        raise ValueError("bench app-job needs --model DIR (e.g. models/jurkat-hybrid)")
    print("benchmarking the app's prediction job (a few minutes)...", file=sys.stderr)
    print_json(app_job_bench(args.model, n_cells=1000 if args.cells is None else args.cells, repeats=args.repeats,
                             batch_size=args.batch_size, workdir=args.workdir))
    return 0
