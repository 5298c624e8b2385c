"""Manual differential counts entered for a sample (the reference a model is compared with)."""

from __future__ import annotations

from collections.abc import Sequence

from phenotyping.schemas import ManualCount, utcnow
from phenotyping.store._db import Database, _utc
from phenotyping.store.samples import SampleRepository

_FIELDS = {"cell_type", "count", "percent", "total_counted"}


class ManualCountRepository:
    def __init__(self, db: Database):
        self._db = db
        self._samples = SampleRepository(db)

    def set(self, sample_id: str, counts: Sequence[ManualCount], *, actor: str) -> None:
        """Replace the sample's manual counts (validated upstream); the audit keeps the previous set."""
        self._samples.get(sample_id)
        for c in counts:
            if c.sample_id != sample_id:
                raise ValueError(f"manual count for sample {c.sample_id!r} given while saving sample {sample_id!r}")
        before = [c.model_dump(mode="json", include=_FIELDS) for c in self.get(sample_id)]
        now = utcnow()
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, "replacing the manual counts")
            cur.execute("DELETE FROM manual_counts WHERE sample_id = ?", [sample_id])
            cur.executemany("INSERT INTO manual_counts VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [[sample_id, c.cell_type, c.count, c.percent, c.total_counted, actor, now] for c in counts])
            self._db.audit(cur, actor=actor, action="counts.save", entity="manual_counts", entity_id=sample_id,
                           sample_id=sample_id, before=before or None,
                           after=[c.model_dump(mode="json", include=_FIELDS) for c in counts])

    def get(self, sample_id: str) -> list[ManualCount]:
        return [ManualCount(**{**r, "entered_at": _utc(r["entered_at"])}) for r in self._db.rows(
            "SELECT * FROM manual_counts WHERE sample_id = ? ORDER BY cell_type", [sample_id])]

    def sample_ids(self) -> list[str]:
        """Ids of the samples that have manual counts, sorted."""
        return [r[0] for r in self._db.cursor().execute(
            "SELECT DISTINCT sample_id FROM manual_counts ORDER BY sample_id").fetchall()]
