"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None,
                        help="DuckDB file (default: LEUKO_DB_PATH or var/leuko.duckdb). The app must not have it "
                             "open at the same time: DuckDB allows one writer per file.")


def open_store(db: Path | None, *, read_only: bool = False):
    from phenotyping.settings import Settings, get_settings
    from phenotyping.store import Store

    settings = get_settings() if db is None else Settings(db_path=db)
    if read_only and not Path(settings.db_path).exists():
        raise FileNotFoundError(f"database {settings.db_path} does not exist yet; ingest a sample first")
    return Store(settings.db_path, image_dir=settings.image_dir(), read_only=read_only)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")
