"""The model registry: where each model's folder is, its card, and whether it may be used for samples."""

from __future__ import annotations

import json
from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.schemas import utcnow
from phenotyping.store._db import Database, _json, _utc


class ModelRepository:
    def __init__(self, db: Database):
        self._db = db

    def register(self, model_id: str, *, path: str, card: dict[str, Any], actor: str,
                 usable: bool = False) -> None:
        """Register (or re-register, replacing path and card) a model."""
        with self._db.tx() as cur:
            old = cur.execute("SELECT path, usable FROM models WHERE id = ?", [model_id]).fetchone()
            cur.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                        [model_id, path, usable, _json(card), actor, utcnow()])
            self._db.audit(cur, actor=actor, action="model.register", entity="model", entity_id=model_id,
                           before={"path": old[0], "usable": old[1]} if old else None,
                           after={"path": path, "usable": usable})

    def set_usable(self, model_id: str, usable: bool, *, actor: str) -> None:
        row = self._db.cursor().execute("SELECT usable FROM models WHERE id = ?", [model_id]).fetchone()
        if row is None:
            raise NotFoundError(f"model {model_id!r} is not registered")
        with self._db.tx() as cur:
            cur.execute("UPDATE models SET usable = ? WHERE id = ?", [usable, model_id])
            self._db.audit(cur, actor=actor, action="model.usable", entity="model", entity_id=model_id,
                           before={"usable": row[0]}, after={"usable": usable})

    def list(self) -> list[dict[str, Any]]:
        return [{"id": r["id"], "path": r["path"], "usable": r["usable"], "card": json.loads(r["card"]),
                 "registered_by": r["registered_by"], "registered_at": _utc(r["registered_at"])}
                for r in self._db.rows("SELECT * FROM models ORDER BY id")]
