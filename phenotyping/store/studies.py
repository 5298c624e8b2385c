"""Saved method-comparison studies and their per-class results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.schemas import utcnow
from phenotyping.store._db import Database, _json, _utc


class StudyRepository:
    def __init__(self, db: Database):
        self._db = db

    def save(self, name: str, *, sample_ids: Sequence[str], model_id: str, model_version: str,
             result: dict[str, Any], per_class: dict[str, dict[str, Any]], actor: str) -> None:
        """Save (or replace) a study and its per-class results, each keyed by comparison ('raw', 'corrected')."""
        if not name.strip():
            raise ValueError("a study needs a name")
        with self._db.tx() as cur:
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
            self._db.audit(cur, actor=actor, action="study.save", entity="study", entity_id=name,
                           before={"sample_ids": json.loads(old[0]), "model_id": old[1]} if old else None,
                           after={"sample_ids": list(sample_ids), "model_id": model_id,
                                  "model_version": model_version})

    def get(self, name: str) -> dict[str, Any]:
        """The study with ``per_class`` keyed ``"<cell type>|<comparison>"``."""
        rows = self._db.rows("SELECT * FROM studies WHERE name = ?", [name])
        if not rows:
            raise NotFoundError(f"no study {name!r}")
        r = rows[0]
        per = self._db.rows("SELECT * FROM study_results WHERE study_name = ? ORDER BY cell_type, comparison",
                            [name])
        return {"name": r["name"], "model_id": r["model_id"], "model_version": r["model_version"],
                "sample_ids": json.loads(r["sample_ids"]), "result": json.loads(r["result"]),
                "created_by": r["created_by"], "created_at": _utc(r["created_at"]),
                "per_class": {f"{p['cell_type']}|{p['comparison']}": json.loads(p["result"]) for p in per}}

    def list(self) -> list[dict[str, Any]]:
        return [{"name": r["name"], "model_id": r["model_id"], "model_version": r["model_version"],
                 "n_samples": len(json.loads(r["sample_ids"])), "created_by": r["created_by"],
                 "created_at": _utc(r["created_at"])}
                for r in self._db.rows("SELECT * FROM studies ORDER BY created_at DESC")]
