"""The DuckDB store: the only module that imports ``duckdb``.

Design:
- One read-write connection per process (DuckDB allows one writer per file). A second process that opens the same
  file gets :class:`DatabaseInUseError`. Threads of this process each get their own cursor (``_cursor()``); writes are
  serialised by a lock so that two threads never race on one transaction.
- Schema changes are numbered migrations applied in order and recorded in ``schema_migrations``.
- Every change of a sample, cell label, manual count, report, user or model is written to the append-only ``audit``
  table in the same transaction as the change (who, when, what, state before and after). Each audit row carries the
  SHA-256 of its content chained to the previous row's, so a deleted or edited row is detectable
  (:meth:`Store.verify_audit_chain`).
- Cell images are kept as the original file bytes in a content-addressed folder (``<image_dir>/ab/<sha256><ext>``),
  not as blobs: the database stays small and fast to copy, and the bytes a lab received are kept verbatim. A file is
  written to a temporary name and renamed; :meth:`Store.add_cells` fsyncs every file its rows point to, and their
  folders, *before* it commits the rows, so a process killed mid-ingest (or a power cut) leaves at worst an
  unreferenced file, never a row without its image. A batch's fsyncs run in parallel threads, where they share the
  file system's journal commits (about 0.4 ms a small file on ext4, against about 3 ms one after another). One
  system-wide ``sync()`` per batch is cheaper still but waits for every other process's writes, and outside Linux
  need not wait for the disk at all.
- While a sample's latest report version is signed, the sample is locked: changes that would alter its results
  (cells, image QC, predictions, reviews, the analysis model, manual counts) raise :class:`SampleLocked`, checked in
  the same transaction as the write. A new report version that amends the signed one (with a reason) unlocks it.
- All SQL uses ``?`` parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from phenotyping.errors import DatabaseInUseError, NotFoundError, SampleLocked, StoreError
from phenotyping.schemas import (
    AuditEvent,
    Cell,
    ManualCount,
    Prediction,
    QCState,
    ReportVersion,
    ReviewAction,
    Role,
    Sample,
    SampleStatus,
    Specimen,
    User,
    utcnow,
)

_MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE SEQUENCE cell_id_seq START 1;
    CREATE SEQUENCE audit_id_seq START 1;
    CREATE SEQUENCE review_id_seq START 1;
    CREATE SEQUENCE job_id_seq START 1;
    CREATE TABLE samples (
        id VARCHAR PRIMARY KEY,
        specimen VARCHAR NOT NULL,
        patient_pseudonym VARCHAR NOT NULL DEFAULT '',
        collected_at TIMESTAMPTZ,
        status VARCHAR NOT NULL,
        notes VARCHAR NOT NULL DEFAULT '',
        created_at TIMESTAMPTZ NOT NULL,
        created_by VARCHAR NOT NULL
    );
    CREATE TABLE cells (
        id BIGINT PRIMARY KEY,
        sample_id VARCHAR NOT NULL,
        cell_key VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        source_file VARCHAR NOT NULL,
        blob_path VARCHAR NOT NULL,
        channels INTEGER NOT NULL,
        shape VARCHAR NOT NULL,
        dtype VARCHAR NOT NULL,
        qc_state VARCHAR NOT NULL,
        qc_reason VARCHAR,
        reference_label VARCHAR,
        targets VARCHAR NOT NULL DEFAULT '{}',
        extra VARCHAR NOT NULL DEFAULT '{}',
        reviewed_label VARCHAR,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE UNIQUE INDEX cells_sample_key ON cells (sample_id, cell_key);
    CREATE INDEX cells_sample_hash ON cells (sample_id, content_hash);
    CREATE TABLE predictions (
        cell_id BIGINT NOT NULL,
        sample_id VARCHAR NOT NULL,
        model_id VARCHAR NOT NULL,
        model_version VARCHAR NOT NULL,
        predicted_class VARCHAR NOT NULL,
        confidence DOUBLE NOT NULL,
        probabilities VARCHAR NOT NULL,
        targets VARCHAR NOT NULL DEFAULT '{}',
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (cell_id, model_id)
    );
    CREATE TABLE review_actions (
        id BIGINT PRIMARY KEY,
        cell_id BIGINT NOT NULL,
        sample_id VARCHAR NOT NULL,
        actor VARCHAR NOT NULL,
        acted_at TIMESTAMPTZ NOT NULL,
        old_label VARCHAR,
        new_label VARCHAR NOT NULL,
        note VARCHAR NOT NULL DEFAULT ''
    );
    CREATE TABLE manual_counts (
        sample_id VARCHAR NOT NULL,
        cell_type VARCHAR NOT NULL,
        count INTEGER,
        percent DOUBLE,
        total_counted INTEGER,
        entered_by VARCHAR NOT NULL,
        entered_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (sample_id, cell_type)
    );
    CREATE TABLE reports (
        sample_id VARCHAR NOT NULL,
        version INTEGER NOT NULL,
        status VARCHAR NOT NULL,
        interpretation VARCHAR NOT NULL DEFAULT '',
        interpretation_source VARCHAR NOT NULL DEFAULT 'template',
        amends_version INTEGER,
        amendment_reason VARCHAR,
        created_by VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        signed_by VARCHAR,
        signed_at TIMESTAMPTZ,
        pdf_path VARCHAR,
        pdf_hash VARCHAR,
        PRIMARY KEY (sample_id, version)
    );
    CREATE TABLE users (
        username VARCHAR PRIMARY KEY,
        display_name VARCHAR NOT NULL DEFAULT '',
        role VARCHAR NOT NULL,
        password_hash VARCHAR NOT NULL,
        active BOOLEAN NOT NULL DEFAULT TRUE,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE audit (
        id BIGINT PRIMARY KEY,
        happened_at TIMESTAMPTZ NOT NULL,
        actor VARCHAR NOT NULL,
        action VARCHAR NOT NULL,
        entity VARCHAR NOT NULL,
        entity_id VARCHAR NOT NULL,
        sample_id VARCHAR,
        before VARCHAR,
        after VARCHAR,
        prev_hash VARCHAR NOT NULL,
        hash VARCHAR NOT NULL
    );
    CREATE TABLE jobs (
        id BIGINT PRIMARY KEY,
        kind VARCHAR NOT NULL,
        sample_id VARCHAR,
        status VARCHAR NOT NULL,
        done BIGINT NOT NULL DEFAULT 0,
        total BIGINT NOT NULL DEFAULT 0,
        rate DOUBLE,
        message VARCHAR NOT NULL DEFAULT '',
        params VARCHAR NOT NULL DEFAULT '{}',
        result VARCHAR,
        created_by VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        finished_at TIMESTAMPTZ
    );
    CREATE TABLE models (
        id VARCHAR PRIMARY KEY,
        path VARCHAR NOT NULL,
        usable BOOLEAN NOT NULL DEFAULT FALSE,
        card VARCHAR NOT NULL,
        registered_by VARCHAR NOT NULL,
        registered_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE studies (
        name VARCHAR PRIMARY KEY,
        model_id VARCHAR NOT NULL,
        model_version VARCHAR NOT NULL,
        sample_ids VARCHAR NOT NULL,
        result VARCHAR NOT NULL,
        created_by VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE study_results (
        study_name VARCHAR NOT NULL,
        cell_type VARCHAR NOT NULL,
        comparison VARCHAR NOT NULL,
        result VARCHAR NOT NULL,
        PRIMARY KEY (study_name, cell_type, comparison)
    );
    """,
    # 2: the model whose predictions a sample's differential uses
    """
    ALTER TABLE samples ADD COLUMN analysis_model_id VARCHAR;
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)
_GENESIS = "0" * 64
_LOCK_PATTERN = re.compile(r"lock|conflicting|being used", re.IGNORECASE)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=False)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class Store:
    """A DuckDB database plus its content-addressed image folder.

    Args:
        db_path: the DuckDB file, or ``":memory:"`` (tests).
        image_dir: where original image bytes are kept; required for ``":memory:"``.
        read_only: open without write access (several read-only processes may share a file that no writer holds).
    """

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

    @classmethod
    def from_settings(cls, settings: Any = None) -> Store:
        """Open the store named by :class:`phenotyping.settings.Settings`."""
        from phenotyping.settings import get_settings

        s = settings or get_settings()
        return cls(s.db_path, image_dir=s.image_dir())

    # -- connection plumbing -------------------------------------------------------------------------------------
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cursor = cur
        return cur

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction on this thread's cursor; rolled back on any error."""
        if self.read_only:
            raise StoreError(f"database {self.db_path} was opened read-only")
        with self._write_lock:
            cur = self._cursor()
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

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._cursor().execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def _migrate(self) -> None:
        with self._tx() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)"
            )
            done = {r[0] for r in cur.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, sql in enumerate(_MIGRATIONS, start=1):
                if version in done:
                    continue
                for statement in (s.strip() for s in sql.split(";")):
                    if statement:
                        cur.execute(statement)
                cur.execute("INSERT INTO schema_migrations VALUES (?, ?)", [version, utcnow()])

    def schema_version(self) -> int:
        return int(self._cursor().execute("SELECT max(version) FROM schema_migrations").fetchone()[0])

    # -- audit -----------------------------------------------------------------------------------------------------
    def _audit(
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
        row = cur.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev = row[0] if row else _GENESIS
        at = utcnow()
        b = None if before is None else _json(before)
        a = None if after is None else _json(after)
        digest = hashlib.sha256(
            _json([prev, at.isoformat(), actor, action, entity, entity_id, sample_id, b, a]).encode()
        ).hexdigest()
        cur.execute(
            "INSERT INTO audit VALUES (nextval('audit_id_seq'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [at, actor, action, entity, str(entity_id), sample_id, b, a, prev, digest],
        )

    def record_event(
        self, *, actor: str, action: str, entity: str, entity_id: str, sample_id: str | None = None,
        before: Any = None, after: Any = None,
    ) -> None:
        """Write an audit event for something that changed outside the tables (a signed PDF, an LLM draft)."""
        with self._tx() as cur:
            self._audit(cur, actor=actor, action=action, entity=entity, entity_id=entity_id, sample_id=sample_id,
                        before=before, after=after)

    def list_audit(
        self, *, sample_id: str | None = None, actor: str | None = None, action: str | None = None, limit: int = 1000
    ) -> list[AuditEvent]:
        where, params = [], []
        for col, val in (("sample_id", sample_id), ("actor", actor), ("action", action)):
            if val:
                where.append(f"{col} = ?")
                params.append(val)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        out = []
        for r in self._rows(sql, [*params, int(limit)]):
            out.append(AuditEvent(
                id=r["id"], at=_utc(r["happened_at"]), actor=r["actor"], action=r["action"], entity=r["entity"],
                entity_id=r["entity_id"], sample_id=r["sample_id"],
                before=json.loads(r["before"]) if r["before"] else None,
                after=json.loads(r["after"]) if r["after"] else None,
            ))
        return out

    def verify_audit_chain(self) -> tuple[bool, int | None]:
        """Recompute the hash chain. Returns ``(intact, id of the first bad row or None)``."""
        prev = _GENESIS
        for r in self._rows("SELECT * FROM audit ORDER BY id"):
            at = _utc(r["happened_at"])
            digest = hashlib.sha256(
                _json([prev, at.isoformat(), r["actor"], r["action"], r["entity"], r["entity_id"], r["sample_id"],
                       r["before"], r["after"]]).encode()
            ).hexdigest()
            if r["prev_hash"] != prev or r["hash"] != digest:
                return False, int(r["id"])
            prev = r["hash"]
        return True, None

    # -- the signed-sample lock ------------------------------------------------------------------------------------
    def ensure_unlocked(self, sample_id: str, change: str) -> None:
        """Raise SampleLocked now if ``change`` would be refused (the write itself checks again)."""
        self._refuse_if_signed(self._cursor(), sample_id, change)

    def signed_lock(self, sample_id: str) -> ReportVersion | None:
        """The signed report version that locks the sample's results, or None when they may change."""
        rows = self._rows("SELECT * FROM reports WHERE sample_id = ? ORDER BY version DESC LIMIT 1", [sample_id])
        if rows and rows[0]["signed_at"] is not None:
            return self._report_from_row(rows[0])
        return None

    @staticmethod
    def _refuse_if_signed(cur: duckdb.DuckDBPyConnection, sample_id: str, change: str) -> None:
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

    # -- samples ---------------------------------------------------------------------------------------------------
    def create_sample(self, sample: Sample, *, actor: str) -> Sample:
        with self._tx() as cur:
            self._insert_sample(cur, sample, actor)
        return sample.model_copy(update={"created_by": actor})

    def _insert_sample(self, cur: duckdb.DuckDBPyConnection, sample: Sample, actor: str) -> None:
        if cur.execute("SELECT 1 FROM samples WHERE id = ?", [sample.id]).fetchall():
            raise ValueError(f"sample {sample.id!r} already exists; choose another id")
        cur.execute(
            "INSERT INTO samples (id, specimen, patient_pseudonym, collected_at, status, notes, created_at, "
            "created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [sample.id, sample.specimen.value, sample.patient_pseudonym, sample.collected_at,
             sample.status.value, sample.notes, sample.created_at, actor],
        )
        self._audit(cur, actor=actor, action="sample.create", entity="sample", entity_id=sample.id,
                    sample_id=sample.id, after=sample.model_dump(mode="json"))

    def _sample_from_row(self, r: dict[str, Any]) -> Sample:
        return Sample(
            id=r["id"], specimen=Specimen(r["specimen"]), patient_pseudonym=r["patient_pseudonym"],
            collected_at=_utc(r["collected_at"]), status=SampleStatus(r["status"]), notes=r["notes"],
            created_at=_utc(r["created_at"]), created_by=r["created_by"],
        )

    def get_sample(self, sample_id: str) -> Sample:
        rows = self._rows("SELECT * FROM samples WHERE id = ?", [sample_id])
        if not rows:
            raise NotFoundError(f"no sample {sample_id!r} in {self.db_path}; `python -m phenotyping samples` lists them")
        return self._sample_from_row(rows[0])

    def sample_exists(self, sample_id: str) -> bool:
        return bool(self._cursor().execute("SELECT 1 FROM samples WHERE id = ?", [sample_id]).fetchone())

    def list_samples(self, *, search: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Samples with their cell counts, newest first. ``search`` matches id, pseudonym or notes (substring)."""
        where, params = [], []
        if search:
            where.append("(s.id ILIKE ? OR s.patient_pseudonym ILIKE ? OR s.notes ILIKE ?)")
            params += [f"%{search}%"] * 3
        if status:
            where.append("s.status = ?")
            params.append(status)
        sql = (
            "SELECT s.*, count(c.id) AS n_cells FROM samples s LEFT JOIN cells c ON c.sample_id = s.id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY ALL ORDER BY s.created_at DESC, s.id"
        )
        out = []
        for r in self._rows(sql, params):
            d = self._sample_from_row(r).model_dump(mode="json")
            d["n_cells"] = int(r["n_cells"])
            d["analysis_model_id"] = r["analysis_model_id"]
            out.append(d)
        return out

    def set_sample_status(self, sample_id: str, status: SampleStatus, *, actor: str, reason: str = "") -> None:
        before = self.get_sample(sample_id)
        if before.status == status:
            return
        with self._tx() as cur:
            cur.execute("UPDATE samples SET status = ? WHERE id = ?", [status.value, sample_id])
            self._audit(cur, actor=actor, action="sample.status", entity="sample", entity_id=sample_id,
                        sample_id=sample_id, before={"status": before.status.value},
                        after={"status": status.value, "reason": reason} if reason else {"status": status.value})

    def update_sample(self, sample_id: str, *, actor: str, patient_pseudonym: str | None = None,
                      collected_at: datetime | None = None, notes: str | None = None) -> Sample:
        before = self.get_sample(sample_id)
        changes = {k: v for k, v in (("patient_pseudonym", patient_pseudonym), ("collected_at", collected_at),
                                     ("notes", notes)) if v is not None}
        if not changes:
            return before
        after = Sample(**{**before.model_dump(), **changes})
        with self._tx() as cur:
            if "patient_pseudonym" in changes or "collected_at" in changes:  # both are printed on the signed report
                self._refuse_if_signed(cur, sample_id, "change the sample's pseudonym or collection time")
            cur.execute("UPDATE samples SET patient_pseudonym = ?, collected_at = ?, notes = ? WHERE id = ?",
                        [after.patient_pseudonym, after.collected_at, after.notes, sample_id])
            self._audit(cur, actor=actor, action="sample.update", entity="sample", entity_id=sample_id,
                        sample_id=sample_id, before={k: getattr(before, k) for k in changes},
                        after={k: getattr(after, k) for k in changes})
        return after

    def set_analysis_model(self, sample_id: str, model_id: str, *, actor: str) -> None:
        row = self._cursor().execute("SELECT analysis_model_id FROM samples WHERE id = ?", [sample_id]).fetchone()
        if row is None:
            raise NotFoundError(f"no sample {sample_id!r}")
        if row[0] == model_id:
            return
        with self._tx() as cur:
            self._refuse_if_signed(cur, sample_id, f"choosing model {model_id} for its differential")
            cur.execute("UPDATE samples SET analysis_model_id = ? WHERE id = ?", [model_id, sample_id])
            self._audit(cur, actor=actor, action="sample.analysis_model", entity="sample", entity_id=sample_id,
                        sample_id=sample_id, before={"model_id": row[0]}, after={"model_id": model_id})

    def analysis_model(self, sample_id: str) -> str | None:
        row = self._cursor().execute("SELECT analysis_model_id FROM samples WHERE id = ?", [sample_id]).fetchone()
        if row is None:
            raise NotFoundError(f"no sample {sample_id!r}")
        return row[0]

    # -- images and cells ------------------------------------------------------------------------------------------
    def put_blob(self, data: bytes, *, suffix: str) -> tuple[str, str]:
        """Write original image bytes to the content-addressed folder and return (sha256, relative path).

        Idempotent: the same bytes always land at the same path. A file already there is reused only if it holds
        exactly these bytes (one left half-written by a crash before its rows were committed is rewritten).
        The file is not yet durable: :meth:`sync_blobs` (called by :meth:`add_cells` before it commits) is.
        """
        digest = hashlib.sha256(data).hexdigest()
        suffix = suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix or "") else ".bin"
        rel = f"{digest[:2]}/{digest}{suffix}"
        path = self.image_dir / rel
        try:
            intact = path.stat().st_size == len(data) and path.read_bytes() == data
        except FileNotFoundError:
            intact = False
        if not intact:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return digest, rel

    def sync_blobs(self, rels: Iterable[str]) -> None:
        """fsync image files and the folders that hold them (in threads), so rows may point to them.

        Raises:
            StoreError: a file is missing or the file system refused the fsync.
        """
        from concurrent.futures import ThreadPoolExecutor

        files = {self.image_dir / r for r in rels}
        if not files:
            return
        folders = {f.parent for f in files} | {self.image_dir, self.image_dir.parent}

        def fsync(path: Path) -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
                list(pool.map(fsync, files))
                if os.name != "nt":  # folders cannot be opened for fsync on Windows
                    list(pool.map(fsync, folders))
        except OSError as e:
            raise StoreError(f"cannot make image files durable in {self.image_dir}: {e}; check the disk") from e

    def read_blob(self, rel: str) -> bytes:
        path = self.image_dir / rel
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise StoreError(f"image file {path} is missing from the image store {self.image_dir}") from e

    def known_hashes(self, sample_id: str) -> dict[str, str]:
        """content hash -> cell key, for duplicate detection within a sample."""
        return {h: k for h, k in self._cursor().execute(
            "SELECT content_hash, cell_key FROM cells WHERE sample_id = ?", [sample_id]).fetchall()}

    def known_cell_keys(self, sample_id: str) -> set[str]:
        return {r[0] for r in self._cursor().execute(
            "SELECT cell_key FROM cells WHERE sample_id = ?", [sample_id]).fetchall()}

    def sample_channel_count(self, sample_id: str) -> int | None:
        """Channels of the sample's cells so far (None before the first cell)."""
        row = self._cursor().execute(
            "SELECT channels FROM cells WHERE sample_id = ? LIMIT 1", [sample_id]).fetchone()
        return int(row[0]) if row else None

    def add_cells(self, sample_id: str, cells: Iterable[dict[str, Any]], *, actor: str,
                  create: Sample | None = None) -> list[int]:
        """Insert cells whose bytes are already in the image store; one transaction for the batch.

        Each dict has: cell_key, content_hash, source_file, blob_path, shape (tuple), dtype, and optionally
        reference_label, targets (dict[str, float]), extra (dict[str, str]).

        Args:
            create: a new sample to create in the same transaction (its id must be ``sample_id``), so that a
                sample never exists without the cells it was created for.
        """
        cells = list(cells)
        if not cells:
            return []
        if create is not None:
            if create.id != sample_id:
                raise ValueError(f"add_cells: create= is sample {create.id!r}, cells are for {sample_id!r}")
        else:
            self.get_sample(sample_id)
        now = utcnow()
        rows = []
        for c in cells:
            shape = [int(x) for x in c["shape"]]
            rows.append((c["cell_key"], c["content_hash"], c["source_file"], c["blob_path"], shape[0], _json(shape),
                         c["dtype"], c.get("reference_label"), _json(c.get("targets") or {}),
                         _json(c.get("extra") or {})))
        if self.db_path != ":memory:":  # an in-memory database does not survive a crash either
            self.sync_blobs(c["blob_path"] for c in cells)
        with self._tx() as cur:
            if create is not None:
                self._insert_sample(cur, create, actor)
            self._refuse_if_signed(cur, sample_id, f"adding {len(rows)} cell(s)")
            ids = [int(r[0]) for r in cur.execute(
                "SELECT nextval('cell_id_seq') FROM range(?)", [len(rows)]).fetchall()]
            import pandas as pd  # a DataFrame scan inserts a batch far faster than row-wise parameters

            batch = pd.DataFrame(rows, columns=["cell_key", "content_hash", "source_file", "blob_path", "channels",
                                                "shape", "dtype", "reference_label", "targets", "extra"])
            batch.insert(0, "id", ids)
            cur.register("_cells_batch", batch)
            try:
                cur.execute(
                    "INSERT INTO cells (id, sample_id, cell_key, content_hash, source_file, blob_path, channels, "
                    "shape, dtype, qc_state, qc_reason, reference_label, targets, extra, reviewed_label, created_at) "
                    "SELECT id, ?, cell_key, content_hash, source_file, blob_path, channels, shape, dtype, ?, NULL, "
                    "reference_label, targets, extra, NULL, ? FROM _cells_batch",
                    [sample_id, QCState.pending.value, now])
            finally:
                cur.unregister("_cells_batch")
            self._audit(cur, actor=actor, action="cells.ingest", entity="sample", entity_id=sample_id,
                        sample_id=sample_id, after={"cells": len(ids), "first_id": ids[0], "last_id": ids[-1]})
        return ids

    def _cell_from_row(self, r: dict[str, Any]) -> Cell:
        return Cell(
            id=r["id"], sample_id=r["sample_id"], cell_key=r["cell_key"], content_hash=r["content_hash"],
            source_file=r["source_file"], blob_path=r["blob_path"], channels=r["channels"],
            shape=tuple(json.loads(r["shape"])), dtype=r["dtype"], qc_state=QCState(r["qc_state"]),
            qc_reason=r["qc_reason"], reference_label=r["reference_label"], targets=json.loads(r["targets"]),
            extra=json.loads(r["extra"]), reviewed_label=r["reviewed_label"],
        )

    def list_cells(self, sample_id: str, *, qc_state: QCState | None = None, limit: int | None = None,
                   offset: int = 0) -> list[Cell]:
        sql, params = "SELECT * FROM cells WHERE sample_id = ?", [sample_id]
        if qc_state is not None:
            sql += " AND qc_state = ?"
            params.append(qc_state.value)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        return [self._cell_from_row(r) for r in self._rows(sql, params)]

    def count_cells(self, sample_id: str) -> int:
        return int(self._cursor().execute("SELECT count(*) FROM cells WHERE sample_id = ?", [sample_id]).fetchone()[0])

    def get_cell(self, cell_id: int) -> Cell:
        rows = self._rows("SELECT * FROM cells WHERE id = ?", [int(cell_id)])
        if not rows:
            raise NotFoundError(f"no cell with id {cell_id}")
        return self._cell_from_row(rows[0])

    def read_cell_bytes(self, cell: Cell) -> bytes:
        return self.read_blob(cell.blob_path)

    def set_qc(self, results: Iterable[tuple[int, QCState, str | None]], *, sample_id: str, actor: str) -> None:
        """Record image-QC outcomes ``(cell_id, state, reason)``; one audit event summarises the batch."""
        results = list(results)
        if not results:
            return
        import pandas as pd

        batch = pd.DataFrame({"id": [int(i) for i, _, _ in results], "state": [st.value for _, st, _ in results],
                              "reason": [r for _, _, r in results]})
        with self._tx() as cur:
            self._refuse_if_signed(cur, sample_id, f"changing the image QC of {len(results)} cell(s)")
            cur.register("_qc_batch", batch)
            try:
                cur.execute("UPDATE cells SET qc_state = b.state, qc_reason = b.reason FROM _qc_batch b "
                            "WHERE cells.id = b.id")
            finally:
                cur.unregister("_qc_batch")
            summary: dict[str, int] = {}
            for _, s, r in results:
                key = s.value if s != QCState.excluded else f"excluded: {(r or '').split(':')[0]}"
                summary[key] = summary.get(key, 0) + 1
            self._audit(cur, actor=actor, action="cells.qc", entity="sample", entity_id=sample_id,
                        sample_id=sample_id, after=summary)

    def reclassify(self, cell_ids: Sequence[int], new_label: str, *, actor: str, note: str = "",
                   model_id: str | None = None) -> int:
        """Set the reviewed class of cells (one review action and one audit event per cell).

        ``before`` in the audit is the cell's previous reviewed label, else its prediction by ``model_id``.
        Returns the number of cells whose label changed.
        """
        if not new_label or not new_label.strip():
            raise ValueError("new_label must be a non-empty class name")
        changed = 0
        unlocked: set[str] = set()
        with self._tx() as cur:
            for cid in cell_ids:
                row = cur.execute("SELECT sample_id, reviewed_label FROM cells WHERE id = ?", [int(cid)]).fetchone()
                if row is None:
                    raise NotFoundError(f"no cell with id {cid}")
                sample_id, old = row
                if sample_id not in unlocked:
                    self._refuse_if_signed(cur, sample_id, f"reclassifying cell {cid} as {new_label!r}")
                    unlocked.add(sample_id)
                if old is None and model_id:
                    p = cur.execute("SELECT predicted_class FROM predictions WHERE cell_id = ? AND model_id = ?",
                                    [int(cid), model_id]).fetchone()
                    old_shown = p[0] if p else None
                else:
                    old_shown = old
                if old == new_label:
                    continue
                cur.execute("UPDATE cells SET reviewed_label = ? WHERE id = ?", [new_label, int(cid)])
                cur.execute("INSERT INTO review_actions VALUES (nextval('review_id_seq'), ?, ?, ?, ?, ?, ?, ?)",
                            [int(cid), sample_id, actor, utcnow(), old_shown, new_label, note])
                self._audit(cur, actor=actor, action="cell.reclassify", entity="cell", entity_id=str(cid),
                            sample_id=sample_id, before={"label": old_shown, "reviewed": old is not None},
                            after={"label": new_label, "note": note} if note else {"label": new_label})
                changed += 1
        return changed

    def list_review_actions(self, sample_id: str) -> list[ReviewAction]:
        return [ReviewAction(at=_utc(r.pop("acted_at")), **r) for r in self._rows(
            "SELECT * FROM review_actions WHERE sample_id = ? ORDER BY id", [sample_id])]

    # -- predictions -----------------------------------------------------------------------------------------------
    def add_predictions(self, predictions: Sequence[Prediction], *, sample_id: str, actor: str) -> None:
        """Store (or replace) predictions; committed as one transaction so an interrupted run keeps whole batches.

        One audit event per model in the batch (normally one per batch) records the model id and version, the
        number of cells, how many earlier predictions it replaced, and the predicted classes counted.

        Raises:
            ValueError: a prediction's cell is not a cell of ``sample_id``.
            SampleLocked: the sample's latest report version is signed.
        """
        if not predictions:
            return
        import pandas as pd  # one DataFrame scan per batch; row-wise parameters cost ~3 ms a row here

        batch = pd.DataFrame({
            "cell_id": [int(p.cell_id) for p in predictions], "model_id": [p.model_id for p in predictions],
            "model_version": [p.model_version for p in predictions],
            "predicted_class": [p.predicted_class for p in predictions],
            "confidence": [float(p.confidence) for p in predictions],
            "probabilities": [_json(p.probabilities) for p in predictions],
            "targets": [_json(p.targets) for p in predictions],
            "created_at": [p.created_at for p in predictions]})
        with self._tx() as cur:
            self._refuse_if_signed(cur, sample_id, f"writing {len(batch)} prediction(s)")
            cur.register("_pred_batch", batch)
            try:
                stray = cur.execute("SELECT b.cell_id FROM _pred_batch b LEFT JOIN cells c ON c.id = b.cell_id "
                                    "WHERE c.sample_id IS DISTINCT FROM ? LIMIT 5", [sample_id]).fetchall()
                if stray:
                    raise ValueError(f"predictions for cell(s) {[int(r[0]) for r in stray]} given for sample "
                                     f"{sample_id}, but those cells are not in it; pass each sample's own cells")
                summary = cur.execute(
                    "SELECT b.model_id, b.model_version, count(*), count(p.cell_id) FROM _pred_batch b "
                    "LEFT JOIN predictions p ON p.cell_id = b.cell_id AND p.model_id = b.model_id "
                    "GROUP BY ALL ORDER BY b.model_id, b.model_version").fetchall()
                cur.execute("DELETE FROM predictions WHERE (cell_id, model_id) IN "
                            "(SELECT cell_id, model_id FROM _pred_batch)")
                cur.execute("INSERT INTO predictions SELECT cell_id, ?, model_id, model_version, predicted_class, "
                            "confidence, probabilities, targets, created_at FROM _pred_batch", [sample_id])
            finally:
                cur.unregister("_pred_batch")
            for model_id, version, n, replaced in summary:
                mine = batch[(batch["model_id"] == model_id) & (batch["model_version"] == version)]
                classes = {str(k): int(v) for k, v in mine["predicted_class"].value_counts().sort_index().items()}
                self._audit(cur, actor=actor, action="predictions.save", entity="sample", entity_id=sample_id,
                            sample_id=sample_id,
                            after={"model_id": model_id, "model_version": version, "cells": int(n),
                                   "replaced": int(replaced), "classes": classes})

    def predicted_cell_ids(self, sample_id: str, model_id: str) -> set[int]:
        return {int(r[0]) for r in self._cursor().execute(
            "SELECT cell_id FROM predictions WHERE sample_id = ? AND model_id = ?", [sample_id, model_id]).fetchall()}

    def list_predictions(self, sample_id: str, model_id: str) -> list[Prediction]:
        return [Prediction(
            cell_id=r["cell_id"], model_id=r["model_id"], model_version=r["model_version"],
            predicted_class=r["predicted_class"], confidence=r["confidence"],
            probabilities=json.loads(r["probabilities"]), targets=json.loads(r["targets"]),
            created_at=_utc(r["created_at"]),
        ) for r in self._rows("SELECT * FROM predictions WHERE sample_id = ? AND model_id = ? ORDER BY cell_id",
                              [sample_id, model_id])]

    def delete_predictions(self, sample_id: str, model_id: str, *, actor: str) -> int:
        with self._tx() as cur:
            self._refuse_if_signed(cur, sample_id, f"deleting the predictions of model {model_id}")
            n = cur.execute("SELECT count(*) FROM predictions WHERE sample_id = ? AND model_id = ?",
                            [sample_id, model_id]).fetchone()[0]
            cur.execute("DELETE FROM predictions WHERE sample_id = ? AND model_id = ?", [sample_id, model_id])
            self._audit(cur, actor=actor, action="predictions.delete", entity="sample", entity_id=sample_id,
                        sample_id=sample_id, before={"model_id": model_id, "predictions": int(n)})
        return int(n)

    # -- manual counts ---------------------------------------------------------------------------------------------
    def set_manual_counts(self, sample_id: str, counts: Sequence[ManualCount], *, actor: str) -> None:
        """Replace the sample's manual counts (validated upstream); the audit keeps the previous set."""
        self.get_sample(sample_id)
        for c in counts:
            if c.sample_id != sample_id:
                raise ValueError(f"manual count for sample {c.sample_id!r} given while saving sample {sample_id!r}")
        before = [c.model_dump(mode="json", include={"cell_type", "count", "percent", "total_counted"})
                  for c in self.get_manual_counts(sample_id)]
        now = utcnow()
        with self._tx() as cur:
            self._refuse_if_signed(cur, sample_id, "replacing the manual counts")
            cur.execute("DELETE FROM manual_counts WHERE sample_id = ?", [sample_id])
            cur.executemany("INSERT INTO manual_counts VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [[sample_id, c.cell_type, c.count, c.percent, c.total_counted, actor, now] for c in counts])
            self._audit(cur, actor=actor, action="counts.save", entity="manual_counts", entity_id=sample_id,
                        sample_id=sample_id, before=before or None,
                        after=[c.model_dump(mode="json", include={"cell_type", "count", "percent", "total_counted"})
                               for c in counts])

    def get_manual_counts(self, sample_id: str) -> list[ManualCount]:
        return [ManualCount(**{**r, "entered_at": _utc(r["entered_at"])}) for r in self._rows(
            "SELECT * FROM manual_counts WHERE sample_id = ? ORDER BY cell_type", [sample_id])]

    def samples_with_manual_counts(self) -> list[str]:
        return [r[0] for r in self._cursor().execute(
            "SELECT DISTINCT sample_id FROM manual_counts ORDER BY sample_id").fetchall()]

    # -- reports ---------------------------------------------------------------------------------------------------
    def _report_from_row(self, r: dict[str, Any]) -> ReportVersion:
        return ReportVersion(
            sample_id=r["sample_id"], version=r["version"], status=r["status"], interpretation=r["interpretation"],
            interpretation_source=r["interpretation_source"], amends_version=r["amends_version"],
            amendment_reason=r["amendment_reason"], created_by=r["created_by"], created_at=_utc(r["created_at"]),
            signed_by=r["signed_by"], signed_at=_utc(r["signed_at"]), pdf_hash=r["pdf_hash"],
        )

    def add_report_version(self, sample_id: str, *, interpretation: str, source: str, actor: str,
                           status: str = "draft", amends_version: int | None = None,
                           amendment_reason: str | None = None) -> ReportVersion:
        """Save a new report version (every saved edit is a new version; nothing is overwritten).

        After a signed version only an amendment (``amends_version`` and a reason) may follow; it unlocks the sample.
        """
        self.get_sample(sample_id)
        if amends_version is not None and not (amendment_reason or "").strip():
            raise ValueError("an amendment needs a reason")
        with self._tx() as cur:
            last = cur.execute("SELECT max(version) FROM reports WHERE sample_id = ?", [sample_id]).fetchone()[0]
            if amends_version is None:
                self._refuse_if_signed(cur, sample_id, "a new report version that is not an amendment")
            version = int(last or 0) + 1
            rv = ReportVersion(sample_id=sample_id, version=version, status=status, interpretation=interpretation,
                               interpretation_source=source, amends_version=amends_version,
                               amendment_reason=amendment_reason, created_by=actor)
            cur.execute(
                "INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
                [sample_id, version, status, interpretation, source, amends_version, amendment_reason, actor,
                 rv.created_at],
            )
            prev = None
            if last:
                p = cur.execute("SELECT interpretation, status FROM reports WHERE sample_id = ? AND version = ?",
                                [sample_id, int(last)]).fetchone()
                prev = {"version": int(last), "interpretation": p[0], "status": p[1]}
            self._audit(cur, actor=actor, action="report.version", entity="report", entity_id=f"{sample_id}/v{version}",
                        sample_id=sample_id, before=prev,
                        after={"version": version, "status": status, "interpretation": interpretation,
                               "source": source, "amends_version": amends_version,
                               "amendment_reason": amendment_reason})
        return rv

    def list_report_versions(self, sample_id: str) -> list[ReportVersion]:
        return [self._report_from_row(r) for r in self._rows(
            "SELECT * FROM reports WHERE sample_id = ? ORDER BY version", [sample_id])]

    def get_report_version(self, sample_id: str, version: int | None = None) -> ReportVersion:
        if version is None:
            rows = self._rows("SELECT * FROM reports WHERE sample_id = ? ORDER BY version DESC LIMIT 1", [sample_id])
        else:
            rows = self._rows("SELECT * FROM reports WHERE sample_id = ? AND version = ?", [sample_id, int(version)])
        if not rows:
            raise NotFoundError(f"no report{'' if version is None else f' version {version}'} for sample {sample_id!r}")
        return self._report_from_row(rows[0])

    def report_pdf_path(self, sample_id: str, version: int) -> str | None:
        row = self._cursor().execute("SELECT pdf_path FROM reports WHERE sample_id = ? AND version = ?",
                                     [sample_id, int(version)]).fetchone()
        return row[0] if row else None

    def mark_report_signed(self, sample_id: str, version: int, *, signer: str, status: str, pdf_path: str,
                           pdf_hash: str) -> ReportVersion:
        """Record that a version was signed. A signed version cannot be signed or changed again."""
        rv = self.get_report_version(sample_id, version)
        if rv.signed_at is not None:
            raise ValueError(f"report {sample_id} v{version} was signed by {rv.signed_by} at {rv.signed_at}; "
                             "amend it to make a new version")
        if status not in ("final", "amended"):
            raise ValueError(f"a signed report is 'final' or 'amended', not {status!r}")
        now = utcnow()
        with self._tx() as cur:
            cur.execute("UPDATE reports SET status = ?, signed_by = ?, signed_at = ?, pdf_path = ?, pdf_hash = ? "
                        "WHERE sample_id = ? AND version = ?", [status, signer, now, pdf_path, pdf_hash, sample_id,
                                                                int(version)])
            self._audit(cur, actor=signer, action="report.sign", entity="report", entity_id=f"{sample_id}/v{version}",
                        sample_id=sample_id, before={"status": rv.status},
                        after={"status": status, "pdf_sha256": pdf_hash, "pdf_path": pdf_path})
        return self.get_report_version(sample_id, version)

    # -- users -----------------------------------------------------------------------------------------------------
    def create_user(self, user: User, *, password_hash: str, actor: str) -> User:
        with self._tx() as cur:
            if cur.execute("SELECT 1 FROM users WHERE username = ?", [user.username]).fetchone():
                raise ValueError(f"user {user.username!r} already exists")
            cur.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
                        [user.username, user.display_name, user.role.value, password_hash, user.active, utcnow()])
            self._audit(cur, actor=actor, action="user.create", entity="user", entity_id=user.username,
                        after={"role": user.role.value, "display_name": user.display_name})
        return user

    def get_user(self, username: str) -> tuple[User, str] | None:
        """The user and their password hash, or None."""
        rows = self._rows("SELECT * FROM users WHERE username = ?", [username])
        if not rows:
            return None
        r = rows[0]
        return User(username=r["username"], display_name=r["display_name"], role=Role(r["role"]),
                    active=r["active"]), r["password_hash"]

    def list_users(self) -> list[User]:
        return [User(username=r["username"], display_name=r["display_name"], role=Role(r["role"]),
                     active=r["active"]) for r in self._rows("SELECT * FROM users ORDER BY username")]

    def count_users(self) -> int:
        return int(self._cursor().execute("SELECT count(*) FROM users").fetchone()[0])

    def update_user(self, username: str, *, actor: str, role: Role | None = None, active: bool | None = None,
                    password_hash: str | None = None) -> User:
        found = self.get_user(username)
        if found is None:
            raise NotFoundError(f"no user {username!r}")
        user, old_hash = found
        new = user.model_copy(update={k: v for k, v in (("role", role), ("active", active)) if v is not None})
        with self._tx() as cur:
            cur.execute("UPDATE users SET role = ?, active = ?, password_hash = ? WHERE username = ?",
                        [new.role.value, new.active, password_hash or old_hash, username])
            self._audit(cur, actor=actor, action="user.update", entity="user", entity_id=username,
                        before={"role": user.role.value, "active": user.active},
                        after={"role": new.role.value, "active": new.active,
                               "password_changed": password_hash is not None})
        return new

    # -- models ----------------------------------------------------------------------------------------------------
    def register_model(self, model_id: str, *, path: str, card: dict[str, Any], actor: str,
                       usable: bool = False) -> None:
        with self._tx() as cur:
            old = cur.execute("SELECT path, usable FROM models WHERE id = ?", [model_id]).fetchone()
            cur.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                        [model_id, path, usable, _json(card), actor, utcnow()])
            self._audit(cur, actor=actor, action="model.register", entity="model", entity_id=model_id,
                        before={"path": old[0], "usable": old[1]} if old else None,
                        after={"path": path, "usable": usable})

    def set_model_usable(self, model_id: str, usable: bool, *, actor: str) -> None:
        row = self._cursor().execute("SELECT usable FROM models WHERE id = ?", [model_id]).fetchone()
        if row is None:
            raise NotFoundError(f"model {model_id!r} is not registered")
        with self._tx() as cur:
            cur.execute("UPDATE models SET usable = ? WHERE id = ?", [usable, model_id])
            self._audit(cur, actor=actor, action="model.usable", entity="model", entity_id=model_id,
                        before={"usable": row[0]}, after={"usable": usable})

    def list_models(self) -> list[dict[str, Any]]:
        return [{"id": r["id"], "path": r["path"], "usable": r["usable"], "card": json.loads(r["card"]),
                 "registered_by": r["registered_by"], "registered_at": _utc(r["registered_at"])}
                for r in self._rows("SELECT * FROM models ORDER BY id")]

    # -- jobs ------------------------------------------------------------------------------------------------------
    def create_job(self, kind: str, *, actor: str, sample_id: str | None = None,
                   params: dict[str, Any] | None = None, total: int = 0) -> int:
        now = utcnow()
        with self._tx() as cur:
            jid = int(cur.execute("SELECT nextval('job_id_seq')").fetchone()[0])
            cur.execute("INSERT INTO jobs (id, kind, sample_id, status, total, params, created_by, created_at, "
                        "updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                        [jid, kind, sample_id, int(total), _json(params or {}), actor, now, now])
        return jid

    def update_job(self, job_id: int, *, status: str | None = None, done: int | None = None,
                   total: int | None = None, rate: float | None = None, message: str | None = None,
                   result: dict[str, Any] | None = None) -> None:
        sets, params = ["updated_at = ?"], [utcnow()]
        for col, val in (("status", status), ("done", done), ("total", total), ("rate", rate), ("message", message)):
            if val is not None:
                sets.append(f"{col} = ?")
                params.append(val)
        if result is not None:
            sets.append("result = ?")
            params.append(_json(result))
        if status in ("done", "failed", "cancelled"):
            sets.append("finished_at = ?")
            params.append(utcnow())
        with self._tx() as cur:
            cur.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", [*params, int(job_id)])

    def _job_dict(self, r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        r["params"] = json.loads(r["params"])
        r["result"] = json.loads(r["result"]) if r["result"] else None
        for k in ("created_at", "updated_at", "finished_at"):
            r[k] = _utc(r[k])
        return r

    def get_job(self, job_id: int) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", [int(job_id)])
        if not rows:
            raise NotFoundError(f"no job {job_id}")
        return self._job_dict(rows[0])

    def list_jobs(self, *, sample_id: str | None = None, kind: str | None = None, limit: int = 50) -> list[dict]:
        where, params = [], []
        if sample_id:
            where.append("sample_id = ?")
            params.append(sample_id)
        if kind:
            where.append("kind = ?")
            params.append(kind)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        return [self._job_dict(r) for r in self._rows(sql, [*params, int(limit)])]

    def fail_orphaned_jobs(self, message: str = "the app stopped while this job ran; start it again") -> int:
        """Mark queued/running jobs failed (called at start-up: no worker of a previous process survives)."""
        n = self._cursor().execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
        if n:
            with self._tx() as cur:
                cur.execute("UPDATE jobs SET status = 'failed', message = ?, finished_at = ? "
                            "WHERE status IN ('queued', 'running')", [message, utcnow()])
        return int(n)

    # -- studies ---------------------------------------------------------------------------------------------------
    def save_study(self, name: str, *, sample_ids: Sequence[str], model_id: str, model_version: str,
                   result: dict[str, Any], per_class: dict[str, dict[str, Any]], actor: str) -> None:
        """Save (or replace) a study and its per-class results, each keyed by comparison ('raw', 'corrected')."""
        if not name.strip():
            raise ValueError("a study needs a name")
        with self._tx() as cur:
            old = cur.execute("SELECT sample_ids, model_id FROM studies WHERE name = ?", [name]).fetchone()
            cur.execute("DELETE FROM study_results WHERE study_name = ?", [name])
            cur.execute("DELETE FROM studies WHERE name = ?", [name])
            cur.execute("INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [name, model_id, model_version, _json(list(sample_ids)), _json(result), actor, utcnow()])
            rows = []
            for key, res in per_class.items():
                cell_type, _, comparison = key.partition("|")
                rows.append([name, cell_type, comparison or "raw", _json(res)])
            if rows:
                cur.executemany("INSERT INTO study_results VALUES (?, ?, ?, ?)", rows)
            self._audit(cur, actor=actor, action="study.save", entity="study", entity_id=name,
                        before={"sample_ids": json.loads(old[0]), "model_id": old[1]} if old else None,
                        after={"sample_ids": list(sample_ids), "model_id": model_id, "model_version": model_version})

    def get_study(self, name: str) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM studies WHERE name = ?", [name])
        if not rows:
            raise NotFoundError(f"no study {name!r}")
        r = rows[0]
        per = self._rows("SELECT * FROM study_results WHERE study_name = ? ORDER BY cell_type, comparison", [name])
        return {"name": r["name"], "model_id": r["model_id"], "model_version": r["model_version"],
                "sample_ids": json.loads(r["sample_ids"]), "result": json.loads(r["result"]),
                "created_by": r["created_by"], "created_at": _utc(r["created_at"]),
                "per_class": {f"{p['cell_type']}|{p['comparison']}": json.loads(p["result"]) for p in per}}

    def list_studies(self) -> list[dict[str, Any]]:
        return [{"name": r["name"], "model_id": r["model_id"], "model_version": r["model_version"],
                 "n_samples": len(json.loads(r["sample_ids"])), "created_by": r["created_by"],
                 "created_at": _utc(r["created_at"])}
                for r in self._rows("SELECT * FROM studies ORDER BY created_at DESC")]
