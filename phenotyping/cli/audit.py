"""``python -m phenotyping audit verify``: check the audit trail against its anchor and the batch digests."""

from __future__ import annotations

import argparse

from phenotyping.cli._common import add_db_argument, open_store, print_json

#: Exit status per :attr:`phenotyping.store.audit.AuditCheck.bottom_line` (2 stays the status of user errors).
EXIT = {"intact": 0, "tampered": 1, "unanchored": 3}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="check the audit trail (`audit verify`)",
                       description="Checks of the append-only audit trail.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = actions.add_parser(
        "verify", help="check the hash chain, its anchor file and the batch digests; exit 0 only when all agree",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Recompute the audit hash chain from the table and compare it with the anchor file beside the database
(<db>.audit-anchor, appended and fsynced after every committed change), then recompute the digest each batch of
cells and of predictions recorded in its audit event. Prints the result as JSON: bottom_line, the chain head
(seq, id, hash), anchor_state, first_bad (the first event concerned: seq, id, time, action), problems and notes.

Exit status: 0 intact (chain, anchor and digests agree); 1 tampered: an event edited or removed in place, the
last events deleted (truncation), an event edited or deleted and every later hash recomputed (re-chaining), the
anchor contradicting itself or with lines removed, or cells/predictions rows changed or deleted behind the audit
(named by sample and batch); 3 unanchored: nothing found changed, but the anchor is missing or behind the table
(a process stopped between its commit and the anchor write; the next change anchors the missing events, marked
late), so truncation or re-chaining of those events cannot be ruled out; 2 a usage error.

Covered by digests: each cell's id, key, file hash, image path, shape, dtype, reference label, targets and extra
columns; each prediction's model, version, class, confidence, probabilities and targets. Not covered: image-QC
state and reviewed labels (changed by audited events whose rows are not digested), prediction batches later
replaced or deleted through the store, other tables, and batches recorded before digests existed (counted as
without_digest). Whoever can rewrite both the database and the anchor can forge both: compare the chain head
with the one printed in signed reports.

The database is opened read-only. DuckDB lets no other process open a file that a writer holds: while the app
or another command has it open, this fails with "database ... is in use"; stop it, or check a copy of the
database together with its anchor file.""")
    add_db_argument(v)
    v.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    with open_store(args.db, read_only=True) as store:
        check = store.verify_audit()
    print_json(check.to_json())
    return EXIT[check.bottom_line]
