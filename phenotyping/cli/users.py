"""``python -m phenotyping users {create-admin,create,list}``: local accounts of the app.

Passwords never go on the command line: they come from ``--password-file`` (first line), the environment variable
``LEUKO_ADMIN_PASSWORD`` (or ``LEUKO_USER_PASSWORD`` for ``create``), or an interactive prompt asked twice.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from phenotyping.cli._common import add_db_argument, open_store, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="manage the app's local accounts",
                       description="Create the first admin, add accounts, list accounts (JSON). Passwords are read "
                                   "from --password-file, LEUKO_ADMIN_PASSWORD / LEUKO_USER_PASSWORD, or a prompt.")
    us = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    a = us.add_parser("create-admin", help="create the first account (an admin); refused once accounts exist")
    a.add_argument("--username", required=True)
    a.add_argument("--display-name", default="")
    a.add_argument("--password-file", type=Path, default=None)
    add_db_argument(a)
    a.set_defaults(func=_create_admin)
    c = us.add_parser("create", help="create an account with a role (as an admin, recorded in the audit trail)")
    c.add_argument("--username", required=True)
    c.add_argument("--role", required=True, choices=["reviewer", "signer", "admin"])
    c.add_argument("--display-name", default="")
    c.add_argument("--password-file", type=Path, default=None)
    c.add_argument("--actor", required=True, help="the admin who creates the account (must exist and be admin)")
    add_db_argument(c)
    c.set_defaults(func=_create)
    ls = us.add_parser("list", help="list accounts (no hashes)")
    add_db_argument(ls)
    ls.set_defaults(func=_list)


def read_password(file: Path | None, env: str) -> str:
    """The password from the file's first line, else ``env``, else a prompt (asked twice). Never from argv."""
    if file is not None:
        lines = file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"password file {file} is empty; put the password on its first line")
        return lines[0]
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ValueError(f"no password: give --password-file FILE or set {env} (no terminal to prompt on)")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise ValueError("the two passwords differ")
    return first


def _create_admin(args: argparse.Namespace) -> int:
    from phenotyping.auth import create_first_admin

    password = read_password(args.password_file, "LEUKO_ADMIN_PASSWORD")
    with open_store(args.db) as store:
        user = create_first_admin(store, args.username, password, display_name=args.display_name)
    print_json(user.model_dump(mode="json"))
    return 0


def _create(args: argparse.Namespace) -> int:
    from phenotyping.auth import AuthError, can, create_user

    password = read_password(args.password_file, "LEUKO_USER_PASSWORD")
    with open_store(args.db) as store:
        found = store.get_user(args.actor)
        if found is None or not found[0].active or not can(found[0].role, "users.manage"):
            raise AuthError(f"--actor {args.actor!r} is not an active admin")
        user = create_user(store, args.username, password, args.role, actor=args.actor,
                           display_name=args.display_name)
    print_json(user.model_dump(mode="json"))
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        print_json([u.model_dump(mode="json") for u in store.list_users()])
    return 0
