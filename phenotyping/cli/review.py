"""``python -m phenotyping review {queue,confirm,reclassify}``: a reviewer's decisions on a sample's cells.

The same rules as the Review screen (:mod:`phenotyping.analysis.review`): the label must be one of the analysis
model's classes or ``debris``/``other``; a signed sample is locked; every change is one audit event per cell.
"""

from __future__ import annotations

import argparse

from phenotyping.cli._common import add_db_argument, add_user_arguments, authenticated, open_store, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="list the unidentified queue; confirm or reclassify cells",
                       description="Review a sample's cells. Signing is blocked while cells wait in the "
                                   "unidentified queue: confirm the model's class or give each another label.")
    rs = p.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    q = rs.add_parser("queue", help="the cells awaiting review, least confident first (JSON; read-only)")
    q.add_argument("--sample", required=True)
    add_db_argument(q)
    q.set_defaults(func=_queue)

    c = rs.add_parser("confirm", help="confirm the model's class of cells as their reviewed label",
                      description="Record the analysis model's class of each cell as its reviewed label. Prints "
                                  '{"confirmed": {cell_id: label}, "changed": n, "unidentified_left": n}.')
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell", type=int, nargs="+", help="cell id(s) of the sample")
    which.add_argument("--unidentified", action="store_true",
                       help="every cell now in the unidentified queue (after looking at them: see review queue)")
    _common(c, "confirms the cells")
    c.set_defaults(func=_confirm)

    r = rs.add_parser("reclassify", help="give cells another label (a class of the model, debris or other)")
    r.add_argument("--cell", type=int, nargs="+", required=True, help="cell id(s) of the sample")
    r.add_argument("--label", required=True, help="one of the model's classes, or debris / other (not counted)")
    _common(r, "reclassifies the cells")
    r.set_defaults(func=_reclassify)


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--sample", required=True)
    p.add_argument("--note", default="", help="reviewer's note, kept with each change in the audit trail")
    add_user_arguments(p, what)
    add_db_argument(p)


def _left(store, sample_id: str) -> int:
    from phenotyping.analysis.aggregates import sample_summary

    return sample_summary(store, sample_id, n_bootstrap=0).n_unidentified


def _queue(args: argparse.Namespace) -> int:
    from phenotyping.analysis.results import sample_results
    from phenotyping.analysis.review import review_labels, unidentified_queue

    with open_store(args.db, read_only=True) as store:
        labels = review_labels(store, args.sample)
        res = sample_results(store, args.sample, n_bootstrap=0)
        cells = unidentified_queue(res)
    print_json({"sample_id": args.sample, "model_id": res.model_id, "unidentified": len(cells), "labels": labels,
                "cells": cells})
    return 0


def _confirm(args: argparse.Namespace) -> int:
    from phenotyping.analysis.review import confirm_cells

    with open_store(args.db) as store:
        user = authenticated(store, args, "review")
        out = confirm_cells(store, args.sample, None if args.unidentified else args.cell, actor=user.username,
                            note=args.note)
        out["unidentified_left"] = _left(store, args.sample)
    print_json({"sample_id": args.sample, **out})
    return 0


def _reclassify(args: argparse.Namespace) -> int:
    from phenotyping.analysis.review import reclassify_cells

    with open_store(args.db) as store:
        user = authenticated(store, args, "review")
        changed = reclassify_cells(store, args.sample, args.cell, args.label, actor=user.username, note=args.note)
        left = _left(store, args.sample)
    print_json({"sample_id": args.sample, "label": args.label, "cells": args.cell, "changed": changed,
                "unidentified_left": left})
    return 0
