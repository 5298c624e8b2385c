"""Users of the app: role, active flag and password hash (hashing happens in the caller), the session epoch that
ends live sessions, and the failed-login state behind throttling and lockout (the policy is the caller's)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.schemas import Role, User, utcnow
from phenotyping.store._db import Database, _utc


@dataclass(frozen=True)
class LoginState:
    """Failed logins of one attempted name since its last successful login: ``failures`` since the last lock,
    the time of the last one, the lock's end (UTC; None when not locked) and how many locks came in a row."""

    failures: int = 0
    last_failed_at: datetime | None = None
    locked_until: datetime | None = None
    lockouts: int = 0


def name_key(username: str) -> str:
    """The key of an attempted name in ``login_attempts``: the SHA-256 of the normalised name, so that a password
    typed into the username field is never stored as text."""
    return hashlib.sha256(username.strip().lower().encode("utf-8")).hexdigest()


class UserRepository:
    def __init__(self, db: Database):
        self._db = db

    @staticmethod
    def _from_row(r: dict[str, Any]) -> User:
        return User(username=r["username"], display_name=r["display_name"], role=Role(r["role"]), active=r["active"])

    def create(self, user: User, *, password_hash: str, actor: str) -> User:
        with self._db.tx() as cur:
            if cur.execute("SELECT 1 FROM users WHERE username = ?", [user.username]).fetchone():
                raise ValueError(f"user {user.username!r} already exists")
            cur.execute("INSERT INTO users (username, display_name, role, password_hash, active, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [user.username, user.display_name, user.role.value, password_hash, user.active, utcnow()])
            self._db.audit(cur, actor=actor, action="user.create", entity="user", entity_id=user.username,
                           after={"role": user.role.value, "display_name": user.display_name})
        return user

    def get(self, username: str) -> tuple[User, str] | None:
        """The user and their password hash, or None."""
        rows = self._db.rows("SELECT * FROM users WHERE username = ?", [username])
        if not rows:
            return None
        return self._from_row(rows[0]), rows[0]["password_hash"]

    def list(self) -> list[User]:
        return [self._from_row(r) for r in self._db.rows("SELECT * FROM users ORDER BY username")]

    def count(self) -> int:
        return int(self._db.cursor().execute("SELECT count(*) FROM users").fetchone()[0])

    def update(self, username: str, *, actor: str, role: Role | None = None, active: bool | None = None,
               password_hash: str | None = None, end_sessions: bool = True) -> User:
        """Change a user's role, active flag or password hash (None keeps the current one).

        A new password, a role change or a change of the active flag raises the account's session epoch
        (:meth:`session_epoch`), which ends its live sessions; ``end_sessions=False`` keeps them (a rehash of the
        same password with new parameters).
        """
        found = self.get(username)
        if found is None:
            raise NotFoundError(f"no user {username!r}")
        user, old_hash = found
        new = user.model_copy(update={k: v for k, v in (("role", role), ("active", active)) if v is not None})
        ends = end_sessions and (password_hash is not None or new.role != user.role or new.active != user.active)
        with self._db.tx() as cur:
            cur.execute("UPDATE users SET role = ?, active = ?, password_hash = ?, "
                        "session_epoch = session_epoch + ? WHERE username = ?",
                        [new.role.value, new.active, password_hash or old_hash, int(ends), username])
            self._db.audit(cur, actor=actor, action="user.update", entity="user", entity_id=username,
                           before={"role": user.role.value, "active": user.active},
                           after={"role": new.role.value, "active": new.active,
                                  "password_changed": password_hash is not None, "sessions_ended": ends})
        return new

    def session_epoch(self, username: str) -> int | None:
        """The account's session epoch (raised whenever its live sessions must end), or None for no account."""
        row = self._db.cursor().execute("SELECT session_epoch FROM users WHERE username = ?", [username]).fetchall()
        return int(row[0][0]) if row else None

    # -- failed logins ------------------------------------------------------------------------------------------------
    def login_state(self, username: str) -> LoginState:
        """The failed-login state of an attempted name (known or not); all zero when it has none."""
        rows = self._db.rows("SELECT * FROM login_attempts WHERE name_key = ?", [name_key(username)])
        return self._state(rows[0]) if rows else LoginState()

    @staticmethod
    def _state(r: dict[str, Any]) -> LoginState:
        return LoginState(failures=int(r["failures"]), last_failed_at=_utc(r["last_failed_at"]),
                          locked_until=_utc(r["locked_until"]), lockouts=int(r["lockouts"]))

    def update_login_state(self, username: str, change: Callable[[LoginState], LoginState], *,
                           forget_before: datetime | None = None) -> tuple[LoginState, LoginState]:
        """Replace the attempted name's state by ``change(old)`` in one transaction (two concurrent failures both
        count). Returns ``(old, new)``; an all-zero new state removes the row. Rows of any name whose last failure
        and lock both ended before ``forget_before`` are removed first (names without an account are never cleared
        by a login)."""
        key = name_key(username)
        with self._db.tx() as cur:
            if forget_before is not None:
                cur.execute("DELETE FROM login_attempts WHERE last_failed_at < ? AND name_key <> ? AND "
                            "(locked_until IS NULL OR locked_until < ?)", [forget_before, key, forget_before])
            cols = ["failures", "last_failed_at", "locked_until", "lockouts"]
            rows = cur.execute(f"SELECT {', '.join(cols)} FROM login_attempts WHERE name_key = ?", [key]).fetchall()
            old = self._state(dict(zip(cols, rows[0]))) if rows else LoginState()
            new = change(old)
            values = [new.failures, new.last_failed_at, new.locked_until, new.lockouts]
            if new == LoginState():
                cur.execute("DELETE FROM login_attempts WHERE name_key = ?", [key])
            elif rows:
                cur.execute("UPDATE login_attempts SET failures = ?, last_failed_at = ?, locked_until = ?, "
                            "lockouts = ? WHERE name_key = ?", [*values, key])
            else:
                cur.execute("INSERT INTO login_attempts VALUES (?, ?, ?, ?, ?)", [key, *values])
        return old, new
