"""``python -m phenotyping samples``: list samples as JSON."""

from __future__ import annotations

import argparse

from phenotyping.cli._common import add_db_argument, open_store, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samples", help="list samples as JSON",
                       description="List samples (id, specimen, status, cells, …) as a JSON array, newest first. "
                                   "Opens the database read-only; a database file that does not exist is an error.")
    p.add_argument("--search", default=None, help="substring of id, pseudonym or notes")
    p.add_argument("--status", default=None, choices=["new", "analysed", "reviewed", "signed", "amended"])
    add_db_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # read-only: listing never writes, and a mistyped --db must fail (naming the file) rather than create one
    with open_store(args.db, read_only=True) as store:
        print_json(store.list_samples(search=args.search, status=args.status))
    return 0
