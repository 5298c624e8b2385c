"""Command line: ``python -m phenotyping COMMAND --help``.

Each command lives in ``phenotyping/cli/<name>.py`` and exposes ``register(subparsers)``, which adds its parser and
sets ``func`` (``func(args) -> int``, the exit status). Errors a user can fix are printed as one line on stderr and
exit with status 2. Commands that write to the database authenticate the acting account (``--user`` and its
password: ``phenotyping.cli._common``); read-only ones need none.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from phenotyping.errors import PhenotypingError

COMMANDS = ("ingest", "samples", "agreement", "train", "evaluate", "calibrate", "composed-study", "predict", "bench",
            "users", "counts", "review", "study", "audit", "import-predictions", "job-worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m phenotyping", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"phenotyping.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (PhenotypingError, ValueError, FileNotFoundError, KeyError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
