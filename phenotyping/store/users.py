"""Users of the app: role, active flag and password hash (hashing happens in the caller)."""

from __future__ import annotations

from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.schemas import Role, User, utcnow
from phenotyping.store._db import Database


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
            cur.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
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
               password_hash: str | None = None) -> User:
        """Change a user's role, active flag or password hash (None keeps the current one)."""
        found = self.get(username)
        if found is None:
            raise NotFoundError(f"no user {username!r}")
        user, old_hash = found
        new = user.model_copy(update={k: v for k, v in (("role", role), ("active", active)) if v is not None})
        with self._db.tx() as cur:
            cur.execute("UPDATE users SET role = ?, active = ?, password_hash = ? WHERE username = ?",
                        [new.role.value, new.active, password_hash or old_hash, username])
            self._db.audit(cur, actor=actor, action="user.update", entity="user", entity_id=username,
                           before={"role": user.role.value, "active": user.active},
                           after={"role": new.role.value, "active": new.active,
                                  "password_changed": password_hash is not None})
        return new
