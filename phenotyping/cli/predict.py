"""``python -m phenotyping predict --model DIR (--manifest M | --sample ID [--db PATH]) [--out CSV]``, and
``predict --engine ray [--address ADDR] --manifest M --model DIR --out results.parquet`` (batch inference on Ray
Data: :mod:`phenotyping.analysis.distributed`)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from phenotyping.cli._common import add_db_argument, add_user_arguments, authenticated, open_store, print_json

MANIFEST_SAMPLE = "manifest"
TEMPORARY_ACTOR = "cli"  # the actor of the temporary store of --manifest, deleted after the run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="run image QC and a model over a sample's cells and print its differential",
        description="Run image QC and a model over every cell of a stored sample (--sample) or of a manifest/image "
                    "folder (--manifest; held in a temporary store that is deleted afterwards). Predictions are "
                    "committed per batch, so an interrupted run keeps its work and a rerun resumes. Prints JSON "
                    '{"run", "qc_counts", "differential", "domain_check", "tta"} (raw and prior-shift-corrected composition with CIs, '
                    "exclusions per reason, marker expression); --out writes one CSV row per cell.",
    )
    p.add_argument("--model", required=True, type=Path, help="model folder (checkpoint.pt + model_card.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="manifest.csv, image folder or .zip to predict without a database")
    src.add_argument("--sample", help="id of a sample already ingested into the database")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV file: one row per cell (with --engine ray: the Parquet result file, required)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default): this process, through a store; ray: Ray Data tasks decode and QC, an "
                        "actor pool runs the model (one GPU per actor where the cluster has GPUs), one Parquet row "
                        "per cell; load it into a sample with `import-predictions`")
    p.add_argument("--address", default=None,
                   help="with --engine ray: the cluster to join (e.g. ray://head:10001 or auto); default: a local "
                        "Ray instance for this run")
    p.add_argument("--actors", type=int, default=None,
                   help="with --engine ray: model actors (default: one per GPU, else one)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="default: the LEUKO_DEVICE setting (auto: CUDA when available, else CPU)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta", choices=["none", "dihedral"], default="none",
                   help="test-time augmentation: dihedral averages the model's logits, targets and features over "
                        "the flips and 90-degree rotations that keep the channels' meaning (8 views for symmetric "
                        "channels, 4 for DPC; about that many times the model's cost); the predictions' model "
                        "version then ends in +tta<views>, and the JSON records {\"mode\", \"views\"} as tta")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the corrected CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--label-column", default=None, help="with --manifest: the reference-class column, if any")
    add_user_arguments(p, "runs the prediction (with --sample; --manifest writes only a temporary store)")
    add_db_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.models.checkpoint import load_model_dir

    if args.manifest is not None and args.db is not None:
        raise ValueError("--db goes with --sample; --manifest predicts in a temporary store")
    if args.engine == "ray":
        return _run_ray(args)
    if args.address is not None or args.actors is not None:
        raise ValueError("--address and --actors go with --engine ray")
    if args.sample is not None:
        with open_store(args.db) as store:
            actor = authenticated(store, args, "analyse").username
            store.get_sample(args.sample)  # an unknown sample fails before the model loads
            return _predict_and_report(store, args.sample, load_model_dir(args.model), args, actor=actor)
    return _run_manifest(args)


# The reason ingest gives a file whose channel count is not the expected one.
_OTHER_CHANNELS = re.compile(r"^\d+ channel\(s\)( after derivation)?, but ")


def _run_manifest(args: argparse.Namespace) -> int:
    """``--manifest``: ingest into a temporary store and predict each committed batch while the next ones are
    ingested (:mod:`phenotyping.analysis.stream`), the model loading in a thread meanwhile.

    The stream ingests with the model's channel count expected, so that no first pass over the whole set is
    needed. Where that could differ from ingesting the set on its own (its majority channel count is not the
    model's, nothing in it is usable, or cells the model cannot take) the run starts again the sequential way:
    ingest everything as ``ingest`` does, then predict; that path stores and prints what it always did."""
    from concurrent.futures import ThreadPoolExecutor

    from phenotyping.models.checkpoint import load_card, load_model_dir

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model") as loader:
        loading = loader.submit(load_model_dir, args.model)
        card = load_card(args.model)
        channels = len((card.get("input") or {}).get("channels") or []) or None
        if channels is None:  # an older card without its input section: the checkpoint says
            channels = len(loading.result().preprocess.channels)
        checked = loader.submit(lambda: _same_channels(loading.result(), channels, args.model))
        with _temporary_store(args) as store:
            done = _stream(store, args, checked, card, channels)
        if done is not None:
            return done
        # No expected_channels: cells the model cannot take are ingested and judged by the domain check
        # ("channels differ").
        from phenotyping.ingest import ingest_set

        with _temporary_store(args) as store:
            ing = ingest_set(store, args.manifest, MANIFEST_SAMPLE, actor=TEMPORARY_ACTOR,
                             label_column=args.label_column)
            _tell_rejected(ing)
            lm = _same_channels(loading.result(), channels, args.model)
            return _predict_and_report(store, MANIFEST_SAMPLE, lm, args, actor=TEMPORARY_ACTOR)


@contextlib.contextmanager
def _temporary_store(args: argparse.Namespace) -> Iterator[Any]:
    """A store in a temporary folder (deleted afterwards) holding the empty sample the manifest goes into."""
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    with tempfile.TemporaryDirectory(prefix="phenotyping-predict-") as tmp:
        with Store(Path(tmp) / "predict.duckdb", image_dir=Path(tmp) / "images") as store:
            store.create_sample(Sample(id=MANIFEST_SAMPLE, specimen=Specimen.blood,
                                       notes=f"temporary sample for {args.manifest}"), actor=TEMPORARY_ACTOR)
            yield store


def _stream(store: Any, args: argparse.Namespace, loading: Any, card: dict, channels: int) -> int | None:
    """Ingest on a thread and predict each committed batch here, the first read and QC'd while the model loads
    (``loading``, a future of it; ``card`` its card); None when the run must start again sequentially (see
    :func:`_run_manifest`)."""
    from concurrent.futures import ThreadPoolExecutor

    from phenotyping.analysis.stream import CommittedCells, InputRefused, predict_stream
    from phenotyping.errors import IngestError
    from phenotyping.ingest import ingest_set

    # The ingest commits one batch, then waits until the model has loaded and predicted it (predict_stream).
    cells = CommittedCells(store, MANIFEST_SAMPLE, hold_after=args.batch_size)

    def ingest() -> Any:
        try:
            return ingest_set(store, args.manifest, MANIFEST_SAMPLE, actor=TEMPORARY_ACTOR,
                              label_column=args.label_column, expected_channels=channels, on_commit=cells.committed,
                              first_batch=args.batch_size)
        finally:
            cells.close()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest") as pool:
        ingesting = pool.submit(ingest)
        try:
            run_info = predict_stream(store, MANIFEST_SAMPLE, loading, cells, card=card, device=args.device,
                                      batch_size=args.batch_size, progress=_progress, actor=TEMPORARY_ACTOR,
                                      tta=args.tta)
            lm = loading.result()
        except InputRefused as e:
            cells.stop()
            return _again(f"cells the model does not take ({e.reason})")
        except BaseException:
            cells.stop()  # the ingest ends at its next commit; the pool waits for it
            raise
        try:
            ing = ingesting.result()
        except IngestError:  # e.g. no file with the model's channel count: the sequential path says what it is
            return _again("no file was ingested")
    other = sum(1 for r in ing.rejected if _OTHER_CHANNELS.match(r.reason))
    usable = ing.ingested + ing.duplicates
    if 2 * usable <= usable + other:  # ingest on its own would not pick the model's channel count
        return _again(f"only {usable} of {usable + other} readable files have the model's {channels} channel(s)")
    _tell_rejected(ing)
    return _report(store, MANIFEST_SAMPLE, lm, run_info, args, actor=TEMPORARY_ACTOR)


def _again(why: str) -> None:
    print(f"\n{why}: ingesting the whole set first, then predicting", file=sys.stderr)
    return None


def _tell_rejected(ing: Any) -> None:
    if ing.rejected:
        print(f"{len(ing.rejected)} file(s) not ingested, e.g. {ing.rejected[0].file}: {ing.rejected[0].reason}",
              file=sys.stderr)


def _same_channels(lm: Any, channels: int, model_dir: Path) -> Any:
    if len(lm.preprocess.channels) != channels:
        raise ValueError(f"{model_dir}: its model card lists {channels} input channel(s) but its "
                         f"checkpoint {len(lm.preprocess.channels)}; the folder is inconsistent, "
                         "write it again with train or calibrate")
    return lm


def _run_ray(args: argparse.Namespace) -> int:
    from phenotyping.analysis.distributed import predict_with_ray

    if args.manifest is None or args.out is None:
        raise ValueError("--engine ray predicts a --manifest (or folder) into --out results.parquet; load the result "
                         "into a sample with `python -m phenotyping import-predictions --sample ID results.parquet`")
    if args.actors is not None and args.actors < 1:
        raise ValueError(f"--actors {args.actors}: at least one model actor")

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} cells", end="", file=sys.stderr, flush=True)

    summary = predict_with_ray(args.manifest, args.model, args.out, address=args.address,
                               batch_size=args.batch_size, actors=args.actors, label_column=args.label_column,
                               progress=progress, tta=args.tta)
    print(file=sys.stderr)
    print_json(summary)
    return 0


def _progress(done: int, total: int, rate: float) -> None:
    print(f"\r{done}/{total} cells, {rate:.0f} cells/s", end="", file=sys.stderr, flush=True)


def _predict_and_report(store: Any, sample_id: str, lm: Any, args: argparse.Namespace, *, actor: str) -> int:
    from phenotyping.analysis.inference import predict_sample

    run_info = predict_sample(store, sample_id, lm, device=args.device, batch_size=args.batch_size,
                              progress=_progress, actor=actor, tta=args.tta)
    return _report(store, sample_id, lm, run_info, args, actor=actor)


def _report(store: Any, sample_id: str, lm: Any, run_info: Any, args: argparse.Namespace, *, actor: str) -> int:
    """After the prediction run: the analysis model, the sample's results, the CSV and the printed JSON."""
    from phenotyping.analysis.results import sample_results

    print(file=sys.stderr)
    if store.analysis_model(sample_id) is None:
        store.set_analysis_model(sample_id, lm.id, actor=actor)
    res = sample_results(store, sample_id, model_id=lm.id, card=lm.card, n_bootstrap=args.bootstrap, seed=args.seed)
    counts = qc_counts(res)
    if args.out is not None:
        n = write_cells_csv(args.out, res, lm)
        print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    diff = res.differential.to_dict() if res.differential is not None else None
    if diff is not None:
        diff["qc_excluded"] = counts
    check = res.specimen_check
    if check is not None and not check.declared:
        print(f"warning: {check.message}", file=sys.stderr)
    domain = run_info.domain_check
    if domain is not None and domain.get("in_distribution") is False:
        print(f"warning: out of distribution: {domain['reason']}", file=sys.stderr)
    print_json({"sample_id": sample_id, "model_id": lm.id, "run": run_info.to_dict(), "qc_counts": counts,
                "differential": diff, "specimen_check": None if check is None else check.to_dict(),
                "domain_check": domain, "tta": run_info.tta})
    return 0


def qc_counts(res: Any) -> dict[str, int]:
    """Exclusions of the whole sample per reason code (image QC, unidentified, not analysed, reviewed as other)."""
    from phenotyping.analysis.inference import UNREADABLE
    from phenotyping.analysis.qc import REASONS, reason_code
    from phenotyping.analysis.results import NOT_ANALYSED, UNIDENTIFIED

    counts = {r: 0 for r in REASONS}
    for c in res.cells:
        if c.exclusion is None:
            continue
        if c.exclusion == UNIDENTIFIED:
            key = "unidentified"
        elif c.exclusion == NOT_ANALYSED:
            key = "not_analysed"
        elif c.exclusion.startswith("reviewed as "):
            key = "reviewed_as_other"
        else:
            key = reason_code(c.cell.qc_reason) or (
                "unreadable" if (c.cell.qc_reason or "").startswith(UNREADABLE) else "other")
        counts[key] = counts.get(key, 0) + 1
    return counts


def write_cells_csv(path: Path, res: Any, lm: Any) -> int:
    """One row per cell: ids, QC, prediction, calibrated probability per class, each regressed target."""
    target_names = lm.targets.names if lm.targets is not None else []
    header = ["cell_id", "cell_key", "qc_state", "exclusion", "predicted_class", "confidence", "final_label",
              "counted", *[f"p_{c}" for c in lm.classes], *target_names]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for c in res.cells:
            probs = c.probabilities or {}
            w.writerow([
                c.cell.id, c.cell.cell_key, c.cell.qc_state.value, c.exclusion or "", c.predicted_class or "",
                "" if c.confidence is None else f"{c.confidence:.6f}", c.final_label or "", int(c.counted),
                *["" if k not in probs else f"{probs[k]:.6f}" for k in lm.classes],
                *["" if t not in c.targets else f"{c.targets[t]:.6g}" for t in target_names],
            ])
    return len(res.cells)
