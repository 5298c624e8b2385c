"""Reading and checking the append-only audit log (rows are appended by :meth:`Database.audit`)."""

from __future__ import annotations

import json
from typing import Any

from phenotyping.schemas import AuditEvent
from phenotyping.store._db import _GENESIS, Database, _utc, audit_digest


class AuditRepository:
    def __init__(self, db: Database):
        self._db = db

    def record_event(
        self, *, actor: str, action: str, entity: str, entity_id: str, sample_id: str | None = None,
        before: Any = None, after: Any = None,
    ) -> None:
        """Write an audit event for something that changed outside the tables (a signed PDF, an LLM draft)."""
        with self._db.tx() as cur:
            self._db.audit(cur, actor=actor, action=action, entity=entity, entity_id=entity_id, sample_id=sample_id,
                           before=before, after=after)

    def list(
        self, *, sample_id: str | None = None, actor: str | None = None, action: str | None = None, limit: int = 1000
    ) -> list[AuditEvent]:
        """The newest events first, filtered by whichever of sample, actor and action are given."""
        where, params = [], []
        for col, val in (("sample_id", sample_id), ("actor", actor), ("action", action)):
            if val:
                where.append(f"{col} = ?")
                params.append(val)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        out = []
        for r in self._db.rows(sql, [*params, int(limit)]):
            out.append(AuditEvent(
                id=r["id"], at=_utc(r["happened_at"]), actor=r["actor"], action=r["action"], entity=r["entity"],
                entity_id=r["entity_id"], sample_id=r["sample_id"],
                before=json.loads(r["before"]) if r["before"] else None,
                after=json.loads(r["after"]) if r["after"] else None,
            ))
        return out

    def verify_chain(self) -> tuple[bool, int | None]:
        """Recompute the hash chain. Returns ``(intact, id of the first bad row or None)``."""
        prev = _GENESIS
        for r in self._db.rows("SELECT * FROM audit ORDER BY id"):
            digest = audit_digest(prev, _utc(r["happened_at"]), r["actor"], r["action"], r["entity"], r["entity_id"],
                                  r["sample_id"], r["before"], r["after"])
            if r["prev_hash"] != prev or r["hash"] != digest:
                return False, int(r["id"])
            prev = r["hash"]
        return True, None
