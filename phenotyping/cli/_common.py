"""Helpers shared by the CLI commands: the database, who is acting (authenticated), passwords, JSON output.

Writers authenticate: ``--user NAME`` and that account's password from ``--user-password-file FILE`` (first line),
else the environment variable ``LEUKO_PASSWORD``, else a prompt when there is a terminal. The password is checked
against the account (:func:`phenotyping.auth.authenticate`) and the account's role must have the command's
permission (:func:`phenotyping.auth.require`); a write without an account is refused, never recorded under a name
typed on the command line. Read-only commands need no account.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

#: The environment variable holding the acting account's password (the password of ``--user``).
PASSWORD_ENV = "LEUKO_PASSWORD"


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None,
                        help="DuckDB file (default: LEUKO_DB_PATH or var/leuko.duckdb). The app must not have it "
                             "open at the same time: DuckDB allows one writer per file.")


def settings_for(db: Path | None) -> Any:
    """The process settings, with the database file replaced by ``--db`` when given (its images, reports and keys
    then live beside that file)."""
    from phenotyping.settings import Settings, get_settings

    return get_settings() if db is None else Settings(db_path=db)


def open_store(db: Path | None, *, read_only: bool = False):
    from phenotyping.store import Store

    settings = settings_for(db)
    if read_only and not Path(settings.db_path).exists():
        raise FileNotFoundError(f"database {settings.db_path} does not exist yet; ingest a sample first")
    return Store(settings.db_path, image_dir=settings.image_dir(), read_only=read_only)


def comma_list(value: str) -> list[str]:
    """An argparse ``type``: ``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def read_password(file: Path | None, env: str, *, prompt: str = "Password: ", confirm: bool = False) -> str:
    """A password from the file's first line, else ``env``, else a terminal prompt (asked twice when ``confirm``).
    Never from argv."""
    if file is not None:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"password file {file} is empty; put the password on its first line")
        return lines[0]
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ValueError(f"no password: give a password file or set {env} (no terminal to prompt on)")
    first = getpass.getpass(prompt)
    if confirm and first != getpass.getpass("Again: "):
        raise ValueError("the two passwords differ")
    return first


def add_user_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--user`` and ``--user-password-file``: the account that ``what`` (e.g. "reclassifies the cells") is
    recorded under, checked against its password."""
    parser.add_argument("--user", default=None,
                        help=f"your account: the one that {what}, recorded in the audit trail (required)")
    parser.add_argument("--user-password-file", type=Path, default=None,
                        help=f"file whose first line is the password of --user (else {PASSWORD_ENV}, else a prompt)")


def authenticated(store: Any, args: argparse.Namespace, permission: str) -> Any:
    """The account of ``--user``, after checking its password and that its role has ``permission``.

    Raises:
        phenotyping.auth.AuthError: no ``--user``, wrong password, deactivated account, or a role without
            ``permission``.
    """
    from phenotyping.auth import AuthError, authenticate, require

    if not getattr(args, "user", None):
        raise AuthError("this command writes to the database, so it needs your account: give --user NAME and its "
                        f"password (--user-password-file FILE or {PASSWORD_ENV})")
    password = read_password(args.user_password_file, PASSWORD_ENV, prompt=f"Password for {args.user}: ")
    return require(authenticate(store, args.user, password), permission)
