"""``python -m phenotyping users {create-admin,create,unlock,list}``: local accounts of the app.

Passwords never go on the command line: the new account's comes from ``--password-file`` (first line), the
environment variable ``LEUKO_ADMIN_PASSWORD`` (or ``LEUKO_USER_PASSWORD`` for ``create``), or an interactive prompt
asked twice. ``create`` and ``unlock`` (of an account locked after repeated failed logins) are done by an admin who
authenticates (``--user`` and ``--user-password-file`` or ``LEUKO_PASSWORD``): the audit names that admin.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from phenotyping.cli._common import add_db_argument, add_user_arguments, authenticated, open_store, print_json, \
    read_password


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="manage the app's local accounts",
                       description="Create the first admin, add accounts, unlock a locked account, list accounts "
                                   "(JSON). Passwords are read from --password-file, LEUKO_ADMIN_PASSWORD / "
                                   "LEUKO_USER_PASSWORD, or a prompt.")
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
    c.add_argument("--password-file", type=Path, default=None,
                   help="file whose first line is the new account's password (else LEUKO_USER_PASSWORD, else a "
                        "prompt)")
    add_user_arguments(c, "creates the account (an active admin)")
    add_db_argument(c)
    c.set_defaults(func=_create)
    u = us.add_parser("unlock", help="clear an account's failed logins and lock (as an admin, recorded in the audit "
                                     "trail)")
    u.add_argument("username", metavar="USERNAME")
    add_user_arguments(u, "unlocks the account (an active admin)")
    add_db_argument(u)
    u.set_defaults(func=_unlock)
    ls = us.add_parser("list", help="list accounts (no hashes; locked_until is set while one is locked)")
    add_db_argument(ls)
    ls.set_defaults(func=_list)


def _create_admin(args: argparse.Namespace) -> int:
    from phenotyping.auth import create_first_admin

    password = read_password(args.password_file, "LEUKO_ADMIN_PASSWORD", confirm=True)
    with open_store(args.db) as store:
        user = create_first_admin(store, args.username, password, display_name=args.display_name)
    print_json(user.model_dump(mode="json"))
    return 0


def _create(args: argparse.Namespace) -> int:
    from phenotyping.auth import create_user

    with open_store(args.db) as store:
        admin = authenticated(store, args, "users.manage")
        password = read_password(args.password_file, "LEUKO_USER_PASSWORD", prompt="New account's password: ",
                                 confirm=True)
        user = create_user(store, args.username, password, args.role, actor=admin.username,
                           display_name=args.display_name)
    print_json(user.model_dump(mode="json"))
    return 0


def _unlock(args: argparse.Namespace) -> int:
    from phenotyping.auth import unlock_account

    with open_store(args.db) as store:
        admin = authenticated(store, args, "users.manage")
        was_locked = unlock_account(store, args.username, actor=admin.username)
    print_json({"username": args.username.strip().lower(), "was_locked": was_locked})
    return 0


def _list(args: argparse.Namespace) -> int:
    from phenotyping.auth import locked_until

    with open_store(args.db) as store:
        print_json([{**u.model_dump(mode="json"), "locked_until": locked_until(store, u.username)}
                    for u in store.list_users()])
    return 0
