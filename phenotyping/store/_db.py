"""The connection every repository shares: transactions, migrations, the audit append and the signed-sample lock.

- One read-write connection per process (DuckDB allows one writer per file). A second process that opens the same
  file gets :class:`DatabaseInUseError`. Threads of this process each get their own cursor (:meth:`Database.cursor`);
  writes are serialised by a lock so that two threads never race on one transaction.
- Schema changes are numbered migrations (:mod:`._migrations`) applied in order and recorded in ``schema_migrations``.
- Every change is written to the append-only ``audit`` table in the same transaction as the change
  (:meth:`Database.audit`). Each audit row carries the SHA-256 of its content chained to the previous row's
  (:func:`audit_digest`), so a deleted or edited row is detectable.
- While a sample's latest report version is signed, writes that would alter its results call
  :meth:`Database.refuse_if_signed` inside their own transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from phenotyping.errors import DatabaseInUseError, SampleLocked, StoreError
from phenotyping.schemas import utcnow
from phenotyping.store._migrations import MIGRATIONS

_GENESIS = "0" * 64
_LOCK_PATTERN = re.compile(r"lock|conflicting|being used", re.IGNORECASE)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=False)


def _utc(value: datetime | None) -> datetime | None:
    """DuckDB may hand back naive timestamps; they are UTC (the session's time zone)."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def audit_digest(prev: str, at: datetime, actor: str, action: str, entity: str, entity_id: Any,
                 sample_id: str | None, before: str | None, after: str | None) -> str:
    """The SHA-256 of an audit row chained to ``prev`` (the previous row's hash); ``before``/``after`` as stored."""
    return hashlib.sha256(
        _json([prev, at.isoformat(), actor, action, entity, entity_id, sample_id, before, after]).encode()
    ).hexdigest()


class Database:
    """A DuckDB connection plus the image folder that goes with it (arguments as for :class:`Store`), shared by the
    repositories: per-thread cursors, serialised write transactions, the audit append and the signed-sample lock."""

    def __init__(self, db_path: str | Path, *, image_dir: str | Path | None = None, read_only: bool = False):
        self.db_path = str(db_path)
        if image_dir is None:
            if self.db_path == ":memory:":
                raise ValueError("Store(':memory:') needs image_dir= for its images")
            p = Path(self.db_path)
            image_dir = p.parent / (p.stem + "-images")
        self.image_dir = Path(image_dir)
        if self.db_path != ":memory:":
            Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(self.db_path, read_only=read_only)
        except duckdb.IOException as e:
            if _LOCK_PATTERN.search(str(e)):
                raise DatabaseInUseError(
                    f"database {self.db_path} is in use by another process (DuckDB allows one writer per file): "
                    f"stop the app or the other command that has it open, or pass --db with another file. "
                    f"DuckDB said: {str(e).splitlines()[0]}"
                ) from e
            raise StoreError(f"cannot open database {self.db_path}: {e}") from e
        except duckdb.Error as e:
            raise StoreError(f"cannot open database {self.db_path}: {e}") from e
        self._con.execute("SET TimeZone = 'UTC'")
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self.read_only = read_only
        if not read_only:
            self._migrate()

    def close(self) -> None:
        self._con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor (created on first use)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cursor = cur
        return cur

    @contextmanager
    def tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction on this thread's cursor; rolled back on any error."""
        if self.read_only:
            raise StoreError(f"database {self.db_path} was opened read-only")
        with self._write_lock:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                try:
                    cur.execute("COMMIT")
                except duckdb.Error as e:
                    raise StoreError(f"commit failed on {self.db_path}: {e}") from e

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query on this thread's cursor; each row as a dict keyed by column name."""
        cur = self.cursor().execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def _migrate(self) -> None:
        with self.tx() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)"
            )
            done = {r[0] for r in cur.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version in done:
                    continue
                for statement in (s.strip() for s in sql.split(";")):
                    if statement:
                        cur.execute(statement)
                cur.execute("INSERT INTO schema_migrations VALUES (?, ?)", [version, utcnow()])

    def schema_version(self) -> int:
        return int(self.cursor().execute("SELECT max(version) FROM schema_migrations").fetchone()[0])

    @staticmethod
    def audit(
        cur: duckdb.DuckDBPyConnection,
        *,
        actor: str,
        action: str,
        entity: str,
        entity_id: str,
        sample_id: str | None = None,
        before: Any = None,
        after: Any = None,
    ) -> None:
        """Append an audit row chained to the last one, inside the caller's transaction ``cur``."""
        row = cur.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = row[0] if row else _GENESIS
        at = utcnow()
        b = None if before is None else _json(before)
        a = None if after is None else _json(after)
        digest = audit_digest(prev, at, actor, action, entity, entity_id, sample_id, b, a)
        cur.execute(
            "INSERT INTO audit VALUES (nextval('audit_id_seq'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [at, actor, action, entity, str(entity_id), sample_id, b, a, prev, digest],
        )

    @staticmethod
    def refuse_if_signed(cur: duckdb.DuckDBPyConnection, sample_id: str, change: str) -> None:
        """Raise SampleLocked when the sample's latest report version is signed (called inside the write's tx)."""
        rows = cur.execute("SELECT version, signed_by, signed_at FROM reports WHERE sample_id = ? "
                           "ORDER BY version DESC LIMIT 1", [sample_id]).fetchall()  # fetchall: result complete
        row = rows[0] if rows else None
        if row is not None and row[2] is not None:
            at = _utc(row[2])
            raise SampleLocked(
                f"sample {sample_id} is locked: its report version {row[0]} was signed by {row[1]} on "
                f"{at:%Y-%m-%d %H:%M} UTC, and {change} would change its signed results; "
                f"amend the report (with a reason) to change it")

    def ensure_unlocked(self, sample_id: str, change: str) -> None:
        """Raise SampleLocked now if ``change`` would be refused (the write itself checks again)."""
        self.refuse_if_signed(self.cursor(), sample_id, change)
