"""Reviews: a reviewer's reclassification of cells (``review_actions`` plus the cell's ``reviewed_label``)."""

from __future__ import annotations

from collections.abc import Sequence

from phenotyping.errors import NotFoundError
from phenotyping.schemas import QCState, ReviewAction, utcnow
from phenotyping.store._db import Database, _utc


class ReviewRepository:
    def __init__(self, db: Database):
        self._db = db

    def reclassify(self, cell_ids: Sequence[int], new_label: str, *, actor: str, note: str = "",
                   model_id: str | None = None, override_qc: bool = False) -> int:
        """Set the reviewed class of cells (one review action and one audit event per cell).

        ``before`` in the audit is the cell's previous reviewed label, else its prediction by ``model_id``.
        With ``override_qc``, a cell that image QC excluded becomes ``overridden`` (its QC reason kept) so that it is
        counted under ``new_label``; each override is its own audit event (``cell.qc_override``) with ``note`` as
        the reason, which is then required.
        Returns the number of cells whose label or QC state changed.
        """
        if not new_label or not new_label.strip():
            raise ValueError("new_label must be a non-empty class name")
        if override_qc and not note.strip():
            raise ValueError("overriding an image-QC exclusion needs a reason (the note), e.g. 'in focus on "
                             "inspection'")
        changed = 0
        unlocked: set[str] = set()
        with self._db.tx() as cur:
            for cid in cell_ids:
                row = cur.execute("SELECT sample_id, reviewed_label, qc_state, qc_reason FROM cells WHERE id = ?",
                                  [int(cid)]).fetchone()
                if row is None:
                    raise NotFoundError(f"no cell with id {cid}")
                sample_id, old, qc_state, qc_reason = row
                if sample_id not in unlocked:
                    self._db.refuse_if_signed(cur, sample_id, f"reclassifying cell {cid} as {new_label!r}")
                    unlocked.add(sample_id)
                if old is None and model_id:
                    p = cur.execute("SELECT predicted_class FROM predictions WHERE cell_id = ? AND model_id = ?",
                                    [int(cid), model_id]).fetchone()
                    old_shown = p[0] if p else None
                else:
                    old_shown = old
                if override_qc and qc_state == QCState.excluded.value:
                    cur.execute("UPDATE cells SET qc_state = ? WHERE id = ?", [QCState.overridden.value, int(cid)])
                    self._db.audit(cur, actor=actor, action="cell.qc_override", entity="cell", entity_id=str(cid),
                                   sample_id=sample_id, before={"qc_state": qc_state, "qc_reason": qc_reason},
                                   after={"qc_state": QCState.overridden.value, "label": new_label, "reason": note})
                    if old == new_label:
                        changed += 1
                if old == new_label:
                    continue
                cur.execute("UPDATE cells SET reviewed_label = ? WHERE id = ?", [new_label, int(cid)])
                cur.execute("INSERT INTO review_actions VALUES (nextval('review_id_seq'), ?, ?, ?, ?, ?, ?, ?)",
                            [int(cid), sample_id, actor, utcnow(), old_shown, new_label, note])
                self._db.audit(cur, actor=actor, action="cell.reclassify", entity="cell", entity_id=str(cid),
                               sample_id=sample_id, before={"label": old_shown, "reviewed": old is not None},
                               after={"label": new_label, "note": note} if note else {"label": new_label})
                changed += 1
        return changed

    def list_actions(self, sample_id: str) -> list[ReviewAction]:
        return [ReviewAction(at=_utc(r.pop("acted_at")), **r) for r in self._db.rows(
            "SELECT * FROM review_actions WHERE sample_id = ? ORDER BY id", [sample_id])]
