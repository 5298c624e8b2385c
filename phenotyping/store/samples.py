"""Samples: identity, specimen, pseudonym, requester, collection and receipt times, status, and the model whose
predictions its differential uses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from phenotyping.errors import NotFoundError
from phenotyping.schemas import Sample, SampleStatus, Specimen
from phenotyping.store._db import Database, _utc


#: Sample fields printed on the report (frozen while its latest version is signed), as a message names them.
REPORTED_FIELDS = {"patient_pseudonym": "pseudonym", "collected_at": "collection time",
                   "received_at": "receipt time", "requester": "requester"}


class SampleRepository:
    def __init__(self, db: Database):
        self._db = db

    def create(self, sample: Sample, *, actor: str) -> Sample:
        with self._db.tx() as cur:
            self.insert(cur, sample, actor)
        return sample.model_copy(update={"created_by": actor})

    def insert(self, cur: duckdb.DuckDBPyConnection, sample: Sample, actor: str) -> None:
        """Insert and audit a new sample inside the caller's transaction ``cur``."""
        if cur.execute("SELECT 1 FROM samples WHERE id = ?", [sample.id]).fetchall():
            raise ValueError(f"sample {sample.id!r} already exists; choose another id")
        cur.execute(
            "INSERT INTO samples (id, specimen, patient_pseudonym, collected_at, received_at, requester, status, "
            "notes, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [sample.id, sample.specimen.value, sample.patient_pseudonym, sample.collected_at, sample.received_at,
             sample.requester, sample.status.value, sample.notes, sample.created_at, actor],
        )
        self._db.audit(cur, actor=actor, action="sample.create", entity="sample", entity_id=sample.id,
                       sample_id=sample.id, after=sample.model_dump(mode="json"))

    @staticmethod
    def _from_row(r: dict[str, Any]) -> Sample:
        return Sample(
            id=r["id"], specimen=Specimen(r["specimen"]), patient_pseudonym=r["patient_pseudonym"],
            collected_at=_utc(r["collected_at"]), received_at=_utc(r["received_at"]), requester=r["requester"],
            status=SampleStatus(r["status"]), notes=r["notes"],
            created_at=_utc(r["created_at"]), created_by=r["created_by"],
        )

    def get(self, sample_id: str) -> Sample:
        rows = self._db.rows("SELECT * FROM samples WHERE id = ?", [sample_id])
        if not rows:
            raise NotFoundError(
                f"no sample {sample_id!r} in {self._db.db_path}; `python -m phenotyping samples` lists them")
        return self._from_row(rows[0])

    def exists(self, sample_id: str) -> bool:
        return bool(self._db.cursor().execute("SELECT 1 FROM samples WHERE id = ?", [sample_id]).fetchone())

    def list(self, *, search: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
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
        for r in self._db.rows(sql, params):
            d = self._from_row(r).model_dump(mode="json")
            d["n_cells"] = int(r["n_cells"])
            d["analysis_model_id"] = r["analysis_model_id"]
            out.append(d)
        return out

    def set_status(self, sample_id: str, status: SampleStatus, *, actor: str, reason: str = "") -> None:
        before = self.get(sample_id)
        if before.status == status:
            return
        with self._db.tx() as cur:
            cur.execute("UPDATE samples SET status = ? WHERE id = ?", [status.value, sample_id])
            self._db.audit(cur, actor=actor, action="sample.status", entity="sample", entity_id=sample_id,
                           sample_id=sample_id, before={"status": before.status.value},
                           after={"status": status.value, "reason": reason} if reason else {"status": status.value})

    def update(self, sample_id: str, *, actor: str, patient_pseudonym: str | None = None,
               collected_at: datetime | None = None, received_at: datetime | None = None,
               requester: str | None = None, notes: str | None = None) -> Sample:
        """Change the given fields (None = keep). All but ``notes`` are printed on the report, so they are refused
        (``SampleLocked``) while its latest version is signed; times must be timezone-aware (ValueError)."""
        before = self.get(sample_id)
        given = {"patient_pseudonym": patient_pseudonym, "collected_at": collected_at, "received_at": received_at,
                 "requester": requester, "notes": notes}
        changes = {k: v for k, v in given.items() if v is not None}
        if not changes:
            return before
        after = Sample(**{**before.model_dump(), **changes})
        changes = {k: v for k, v in changes.items() if getattr(after, k) != getattr(before, k)}
        if not changes:
            return before
        with self._db.tx() as cur:
            reported = [name for field, name in REPORTED_FIELDS.items() if field in changes]
            if reported:
                self._db.refuse_if_signed(cur, sample_id, f"changing the sample's {' and '.join(reported)}")
            cur.execute("UPDATE samples SET patient_pseudonym = ?, collected_at = ?, received_at = ?, requester = ?, "
                        "notes = ? WHERE id = ?",
                        [after.patient_pseudonym, after.collected_at, after.received_at, after.requester,
                         after.notes, sample_id])
            self._db.audit(cur, actor=actor, action="sample.update", entity="sample", entity_id=sample_id,
                           sample_id=sample_id, before={k: getattr(before, k) for k in changes},
                           after={k: getattr(after, k) for k in changes})
        return after

    def set_analysis_model(self, sample_id: str, model_id: str, *, actor: str) -> None:
        current = self.analysis_model(sample_id)
        if current == model_id:
            return
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, f"choosing model {model_id} for its differential")
            cur.execute("UPDATE samples SET analysis_model_id = ? WHERE id = ?", [model_id, sample_id])
            self._db.audit(cur, actor=actor, action="sample.analysis_model", entity="sample", entity_id=sample_id,
                           sample_id=sample_id, before={"model_id": current}, after={"model_id": model_id})

    def analysis_model(self, sample_id: str) -> str | None:
        """The model id chosen for the sample's differential, or None before one is chosen."""
        row = self._db.cursor().execute("SELECT analysis_model_id FROM samples WHERE id = ?", [sample_id]).fetchone()
        if row is None:
            raise NotFoundError(f"no sample {sample_id!r}")
        return row[0]
