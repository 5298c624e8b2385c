"""Background jobs: status and progress, polled by the app. Job rows are not audited."""

from __future__ import annotations

import json
from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.schemas import utcnow
from phenotyping.store._db import Database, _json, _utc


def _job_dict(r: dict[str, Any]) -> dict[str, Any]:
    r = dict(r)
    r["params"] = json.loads(r["params"])
    r["result"] = json.loads(r["result"]) if r["result"] else None
    for k in ("created_at", "updated_at", "finished_at"):
        r[k] = _utc(r[k])
    return r


class JobRepository:
    def __init__(self, db: Database):
        self._db = db

    def create(self, kind: str, *, actor: str, sample_id: str | None = None,
               params: dict[str, Any] | None = None, total: int = 0) -> int:
        """Queue a job; returns its id."""
        now = utcnow()
        with self._db.tx() as cur:
            jid = int(cur.execute("SELECT nextval('job_id_seq')").fetchone()[0])
            cur.execute("INSERT INTO jobs (id, kind, sample_id, status, total, params, created_by, created_at, "
                        "updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                        [jid, kind, sample_id, int(total), _json(params or {}), actor, now, now])
        return jid

    def update(self, job_id: int, *, status: str | None = None, done: int | None = None,
               total: int | None = None, rate: float | None = None, message: str | None = None,
               result: dict[str, Any] | None = None) -> None:
        """Set the given fields (None leaves one as it is); a final status also sets ``finished_at``."""
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
        with self._db.tx() as cur:
            cur.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", [*params, int(job_id)])

    def get(self, job_id: int) -> dict[str, Any]:
        rows = self._db.rows("SELECT * FROM jobs WHERE id = ?", [int(job_id)])
        if not rows:
            raise NotFoundError(f"no job {job_id}")
        return _job_dict(rows[0])

    def list(self, *, sample_id: str | None = None, kind: str | None = None, limit: int = 50) -> list[dict]:
        """The newest jobs first, optionally only one sample's or one kind's."""
        where, params = [], []
        if sample_id:
            where.append("sample_id = ?")
            params.append(sample_id)
        if kind:
            where.append("kind = ?")
            params.append(kind)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        return [_job_dict(r) for r in self._db.rows(sql, [*params, int(limit)])]

    def fail_orphaned(self, message: str = "the app stopped while this job ran; start it again") -> int:
        """Mark queued/running jobs failed (called at start-up: no worker of a previous process survives)."""
        n = self._db.cursor().execute(
            "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
        if n:
            with self._db.tx() as cur:
                cur.execute("UPDATE jobs SET status = 'failed', message = ?, finished_at = ? "
                            "WHERE status IN ('queued', 'running')", [message, utcnow()])
        return int(n)
