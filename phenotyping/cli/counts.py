"""``python -m phenotyping counts {import,show}``: manual (cytospin) differential counts of samples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from phenotyping.cli._common import add_db_argument, add_user_arguments, authenticated, open_store, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("counts", help="import or show manual (cytospin) counts",
                       description="Manual differential counts, one row per sample and class, entered per class of "
                                   "each sample's analysis model (as on the Agreement screen).")
    cs = p.add_subparsers(dest="counts_command", required=True, metavar="ACTION")
    i = cs.add_parser("import", help="validate a manual-count CSV and save it (replaces each listed sample's counts)",
                      description="CSV columns: sample_id, cell_type, and count or percent; optional total_counted. "
                                  "Every row is validated before anything is saved; a sample whose report is signed "
                                  "is refused before any sample is changed. Prints {sample_id: classes saved}.")
    i.add_argument("csv", type=Path, help="manual-count CSV file")
    i.add_argument("--sample", default=None,
                   help="check that every row is this sample's (default: import every sample the file lists)")
    add_user_arguments(i, "enters the counts")
    add_db_argument(i)
    i.set_defaults(func=_import)
    s = cs.add_parser("show", help="a sample's saved manual counts (JSON)")
    s.add_argument("--sample", required=True)
    add_db_argument(s)
    s.set_defaults(func=_show)


def _classes(store: Any, sample_ids: list[str]) -> list[str] | None:
    """The class list the counts are checked against: that of the samples' analysis model(s), which must agree.
    None when no listed sample exists (the import then fails naming them)."""
    from phenotyping.analysis.results import load_card_for

    by_classes: dict[tuple[str, ...], list[str]] = {}
    for s in sample_ids:
        if not store.sample_exists(s):
            continue
        model_id = store.analysis_model(s)
        if model_id is None:
            raise ValueError(f"sample {s!r} has not been analysed: manual counts are entered per class of its "
                             "model; run predict on it first")
        by_classes.setdefault(tuple(load_card_for(model_id, store=store)["classes"]), []).append(s)
    if len(by_classes) > 1:
        parts = "; ".join(f"{sorted(v)}: {list(k)}" for k, v in by_classes.items())
        raise ValueError(f"the samples were analysed by models with different classes ({parts}); import each "
                         "group from its own file")
    return list(next(iter(by_classes))) if by_classes else None


def _manual_only(store: Any, sample_ids: list[str], classes: list[str] | None) -> list[str]:
    """Cell types a manual count of these samples may hold besides the model's classes (e.g. basophils in blood):
    those every listed sample's specimen allows (the Agreement screen offers the same)."""
    from phenotyping.agreement.manual_counts import manual_classes

    if classes is None:
        return []
    specimens = {store.get_sample(s).specimen.value for s in sample_ids if store.sample_exists(s)}
    allowed = [set(manual_classes(classes, sp)[1]) for sp in specimens]
    common = set.intersection(*allowed) if allowed else set()
    return sorted(common)


def _import(args: argparse.Namespace) -> int:
    from phenotyping.agreement.manual_counts import import_manual_counts, read_counts_csv

    if not args.csv.is_file():
        raise FileNotFoundError(f"manual-count CSV not found: {args.csv}")
    listed = sorted({c.sample_id for c in read_counts_csv(args.csv)})
    if args.sample is not None and listed != [args.sample]:
        others = [s for s in listed if s != args.sample]
        raise ValueError(f"{args.csv} has rows for sample(s) {others} besides --sample {args.sample}; remove them, "
                         "or import the whole file without --sample")
    with open_store(args.db) as store:
        user = authenticated(store, args, "counts")
        classes = _classes(store, listed)
        for s in listed:
            if store.sample_exists(s):
                store.ensure_unlocked(s, "importing its manual counts")
        done = import_manual_counts(store, args.csv, actor=user.username, allowed_classes=classes,
                                    extra_classes=_manual_only(store, listed, classes))
    print_json(done)
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_store(args.db, read_only=True) as store:
        store.get_sample(args.sample)
        print_json([c.model_dump(mode="json") for c in store.get_manual_counts(args.sample)])
    return 0
