"""``python -m phenotyping samples``: list samples as JSON; ``samples update``: change a sample's report details."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from phenotyping.cli._common import add_db_argument, open_store, print_json


def add_sample_detail_arguments(p: argparse.ArgumentParser) -> None:
    """The sample details printed on the report: requester, collection and receipt times (``ingest`` and
    ``samples update`` share them)."""
    p.add_argument("--collected-at", default=None, metavar="TIME",
                   help="when the specimen was collected, ISO 8601 with a time zone, e.g. 2026-11-30T08:15Z or "
                        "2026-11-30T09:15+01:00 (a time without Z or an offset is refused)")
    p.add_argument("--received-at", default=None, metavar="TIME",
                   help="when the laboratory received the specimen (same format as --collected-at)")
    p.add_argument("--requester", default=None, help="who ordered the test, e.g. 'Dr B. Requester, Ward 7'")


def parse_time(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time with a time zone from the command line, or None when not given.

    Raises:
        ValueError: not ISO 8601, or no time zone (names the option and says to add Z or an offset).
    """
    from phenotyping.schemas import require_aware

    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise ValueError(f"{option} {text!r} is not an ISO 8601 time; write e.g. 2026-11-30T08:15Z") from e
    return require_aware(value, option)


def sample_details(args: argparse.Namespace) -> dict[str, Any]:
    """``{collected_at, received_at, requester}`` given on the command line (absent keys were not given)."""
    given = {"collected_at": parse_time(args.collected_at, "--collected-at"),
             "received_at": parse_time(args.received_at, "--received-at"),
             "requester": None if args.requester is None else args.requester.strip()}
    return {k: v for k, v in given.items() if v is not None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samples", help="list samples as JSON; `samples update` changes one",
                       description="List samples (id, specimen, status, cells, …) as a JSON array, newest first. "
                                   "Opens the database read-only; a database file that does not exist is an error. "
                                   "`samples update --sample S …` changes a sample's details.")
    p.add_argument("--search", default=None, help="substring of id, pseudonym or notes")
    p.add_argument("--status", default=None, choices=["new", "analysed", "reviewed", "signed", "amended"])
    add_db_argument(p)
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    u = actions.add_parser(
        "update", help="change a sample's pseudonym, requester, collection or receipt time, or notes",
        description="Change the given details of a sample and print it as JSON. Everything but --notes is printed "
                    "on the report, so it is refused while the sample's latest report version is signed (amend "
                    "the report first). Audited with --user.")
    u.add_argument("--sample", required=True, help="sample id")
    add_sample_detail_arguments(u)
    u.add_argument("--pseudonym", default=None, help="patient pseudonym (never a name)")
    u.add_argument("--notes", default=None, help="free-text notes (not printed on the report)")
    u.add_argument("--user", default="cli", help="who is changing it (recorded in the audit trail)")
    add_db_argument(u)
    u.set_defaults(func=run_update)


def run(args: argparse.Namespace) -> int:
    # read-only: listing never writes, and a mistyped --db must fail (naming the file) rather than create one
    with open_store(args.db, read_only=True) as store:
        print_json(store.list_samples(search=args.search, status=args.status))
    return 0


def run_update(args: argparse.Namespace) -> int:
    changes = sample_details(args)
    if args.pseudonym is not None:
        changes["patient_pseudonym"] = args.pseudonym
    if args.notes is not None:
        changes["notes"] = args.notes
    if not changes:
        raise ValueError("nothing to change: give --collected-at, --received-at, --requester, --pseudonym or "
                         "--notes")
    with open_store(args.db) as store:
        print_json(store.update_sample(args.sample, actor=args.user, **changes).model_dump(mode="json"))
    return 0
