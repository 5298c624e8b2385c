"""The connection every repository shares: transactions, migrations, the audit append and the signed-sample lock.

- One read-write connection per process (DuckDB allows one writer per file). A second process that opens the same
  file gets :class:`DatabaseInUseError`. Threads of this process each get their own cursor (:meth:`Database.cursor`);
  writes are serialised by a lock so that two threads never race on one transaction.
- Schema changes are numbered migrations (:mod:`._migrations`) applied in order and recorded in ``schema_migrations``.
- Every change is written to the append-only ``audit`` table in the same transaction as the change
  (:meth:`Database.audit`). Each audit row carries the SHA-256 of its content chained to the previous row's
  (:func:`audit_digest`), so a row edited or deleted in place is detectable.
- The chain is anchored outside the table: after each transaction that appended audit rows commits, one line per new
  row (JSON: ``seq``, ``id``, ``at``, ``action``, ``hash``) is appended to the sidecar file ``<db>.audit-anchor``
  (:func:`anchor_path`) in one write and fsynced. Deleting the last rows, or editing one and recomputing every later
  hash, then disagrees with the anchor (:meth:`phenotyping.store.audit.AuditRepository.verify`). The anchor is
  written only after the commit, so it never claims an event the database lacks; a crash in between leaves it behind,
  and the next commit appends the missing lines marked ``"late": true``. In-memory databases have no anchor.
- Batches of cells and predictions record :func:`rows_digest` of the rows they inserted in their audit event, so rows
  changed behind the audit's back are detectable too.
- While a sample's latest report version is signed, writes that would alter its results call
  :meth:`Database.refuse_if_signed` inside their own transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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
ANCHOR_SUFFIX = ".audit-anchor"
_log = logging.getLogger(__name__)


_ENCODER = json.JSONEncoder(sort_keys=True, default=str, allow_nan=False)  # what json.dumps builds on every call


def _json(value: Any) -> str:
    """Canonical JSON, as ``json.dumps(value, sort_keys=True, default=str, allow_nan=False)`` writes it."""
    return _ENCODER.encode(value)


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


def anchor_path(db_path: str | Path) -> Path | None:
    """The audit anchor beside a database file (``<db>.audit-anchor``); None for ``":memory:"``."""
    return None if str(db_path) == ":memory:" else Path(str(db_path) + ANCHOR_SUFFIX)


def rows_digest(rows: Sequence[Sequence[Any]]) -> str:
    """SHA-256 (hex) of rows as DuckDB returns them, in the order given (canonical JSON, one array per row).

    Writers and :meth:`~phenotyping.store.audit.AuditRepository.verify` select the same columns in the same order, so
    the digest of unchanged rows is the same; floats are serialised by ``repr``, which round-trips a DOUBLE exactly.
    """
    h = hashlib.sha256()
    for r in rows:
        h.update(_json([v.isoformat() if isinstance(v, datetime) else v for v in r]).encode())
        h.update(b"\n")
    return h.hexdigest()


def id_ranges(ids: Sequence[int]) -> list[list[int]]:
    """Sorted ids as inclusive ``[first, last]`` runs: ``[1, 2, 3, 7]`` → ``[[1, 3], [7, 7]]``."""
    out: list[list[int]] = []
    for i in sorted(int(x) for x in ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        elif not out or i != out[-1][1]:
            out.append([i, i])
    return out


CELL_DIGEST_COLUMNS = ("id, cell_key, content_hash, source_file, blob_path, channels, shape, dtype, reference_label, "
                       "targets, extra")
PREDICTION_DIGEST_COLUMNS = "cell_id, model_id, model_version, predicted_class, confidence, probabilities, targets"


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
        self.anchor_path = anchor_path(self.db_path)
        self._anchored_seq = 0
        if not read_only:
            self._migrate()
            self._anchored_seq = self._last_anchored_seq()

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
            self._local.pending = []
            try:
                yield cur
            except BaseException:
                self._local.pending = None
                cur.execute("ROLLBACK")
                raise
            else:
                pending, self._local.pending = self._local.pending, None
                try:
                    cur.execute("COMMIT")
                except duckdb.Error as e:
                    raise StoreError(f"commit failed on {self.db_path}: {e}") from e
                if pending and self.anchor_path is not None:
                    self._write_anchor(cur, pending)

    def _last_anchored_seq(self) -> int:
        """The seq of the anchor's last line (0 when there is none or it cannot be read)."""
        try:
            with open(self.anchor_path, "rb") as fh:  # type: ignore[arg-type]
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 4096))
                tail = fh.read().splitlines()
        except (OSError, TypeError):
            return 0
        for line in reversed(tail):
            try:
                return int(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                continue
        return 0

    def _write_anchor(self, cur: duckdb.DuckDBPyConnection, pending: list[dict[str, Any]]) -> None:
        """Append the committed events' lines to the anchor (one write, one fsync), with any the anchor missed
        (a crash after an earlier commit) first, marked late. Called after COMMIT, under the write lock."""
        lines = []
        first = pending[0]["seq"]
        if first > self._anchored_seq + 1:
            missed = cur.execute("SELECT id, happened_at, action, hash FROM audit ORDER BY id LIMIT ? OFFSET ?",
                                 [first - 1 - self._anchored_seq, self._anchored_seq]).fetchall()
            now = utcnow().isoformat()
            lines += [{"seq": self._anchored_seq + k, "id": int(i), "at": _utc(at).isoformat(), "action": act,
                       "hash": h, "late": True, "anchored_at": now} for k, (i, at, act, h) in enumerate(missed, 1)]
        lines += pending
        data = "".join(_json(line) + "\n" for line in lines).encode()
        try:
            created = not self.anchor_path.exists()
            fd = os.open(self.anchor_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size:
                    os.lseek(fd, size - 1, os.SEEK_SET)
                    if os.read(fd, 1) != b"\n":  # a line torn by a crash: start on a new one
                        data = b"\n" + data
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created and os.name != "nt":
                dfd = os.open(self.anchor_path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:  # the change is committed: say so loudly; the next commit catches the anchor up
            _log.error("audit anchor %s not written (%s): it is now behind the database by %d event(s)",
                       self.anchor_path, e, pending[-1]["seq"] - self._anchored_seq)
            return
        self._anchored_seq = pending[-1]["seq"]

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

    def audit(
        self,
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
        """Append an audit row chained to the last one, inside the caller's transaction ``cur`` (opened by
        :meth:`tx`, which anchors the row once the transaction commits)."""
        count, last = cur.execute("SELECT count(*), arg_max(hash, id) FROM audit").fetchone()
        prev = last or _GENESIS
        at = utcnow()
        b = None if before is None else _json(before)
        a = None if after is None else _json(after)
        digest = audit_digest(prev, at, actor, action, entity, entity_id, sample_id, b, a)
        event_id = int(cur.execute("SELECT nextval('audit_id_seq')").fetchone()[0])
        cur.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [event_id, at, actor, action, entity, str(entity_id), sample_id, b, a, prev, digest],
        )
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append({"seq": int(count) + 1, "id": event_id, "at": at.isoformat(), "action": action,
                            "hash": digest})

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
