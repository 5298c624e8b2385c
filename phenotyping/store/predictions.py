"""Model predictions per cell: one row per (cell, model), replaced when the model is run again."""

from __future__ import annotations

import json
from collections.abc import Sequence

from phenotyping.schemas import Prediction
from phenotyping.store._db import (PREDICTION_DIGEST_COLUMNS, Database, _json, _utc, id_ranges,
                                   rows_digest)


class PredictionRepository:
    def __init__(self, db: Database):
        self._db = db

    def add(self, predictions: Sequence[Prediction], *, sample_id: str, actor: str) -> None:
        """Store (or replace) predictions; committed as one transaction so an interrupted run keeps whole batches.

        One audit event per model in the batch (normally one per batch) records the model id and version, the
        number of cells, how many earlier predictions it replaced, the predicted classes counted, the cell ids
        (``cell_ranges``, inclusive runs) and the SHA-256 of the rows as stored (``digest``), which
        ``audit verify`` recomputes.

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
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, f"writing {len(batch)} prediction(s)")
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
                digests = {(m, v): rows_digest(cur.execute(
                    f"SELECT {PREDICTION_DIGEST_COLUMNS} FROM predictions WHERE sample_id = ? AND model_id = ? AND "
                    "model_version = ? AND cell_id IN (SELECT cell_id FROM _pred_batch WHERE model_id = ? AND "
                    "model_version = ?) ORDER BY cell_id", [sample_id, m, v, m, v]).fetchall())
                    for m, v, _, _ in summary}
            finally:
                cur.unregister("_pred_batch")
            for model_id, version, n, replaced in summary:
                mine = batch[(batch["model_id"] == model_id) & (batch["model_version"] == version)]
                classes = {str(k): int(v) for k, v in mine["predicted_class"].value_counts().sort_index().items()}
                self._db.audit(cur, actor=actor, action="predictions.save", entity="sample", entity_id=sample_id,
                               sample_id=sample_id,
                               after={"model_id": model_id, "model_version": version, "cells": int(n),
                                      "replaced": int(replaced), "classes": classes,
                                      "cell_ranges": id_ranges(mine["cell_id"].tolist()),
                                      "digest": digests[(model_id, version)]})

    def cell_ids(self, sample_id: str, model_id: str) -> set[int]:
        """Ids of the sample's cells that ``model_id`` has predicted."""
        return {int(r[0]) for r in self._db.cursor().execute(
            "SELECT cell_id FROM predictions WHERE sample_id = ? AND model_id = ?", [sample_id, model_id]).fetchall()}

    def list(self, sample_id: str, model_id: str) -> list[Prediction]:
        return [Prediction(
            cell_id=r["cell_id"], model_id=r["model_id"], model_version=r["model_version"],
            predicted_class=r["predicted_class"], confidence=r["confidence"],
            probabilities=json.loads(r["probabilities"]), targets=json.loads(r["targets"]),
            created_at=_utc(r["created_at"]),
        ) for r in self._db.rows("SELECT * FROM predictions WHERE sample_id = ? AND model_id = ? ORDER BY cell_id",
                                 [sample_id, model_id])]

    def delete(self, sample_id: str, model_id: str, *, actor: str) -> int:
        """Delete the sample's predictions by ``model_id``; returns how many there were."""
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, f"deleting the predictions of model {model_id}")
            n = cur.execute("SELECT count(*) FROM predictions WHERE sample_id = ? AND model_id = ?",
                            [sample_id, model_id]).fetchone()[0]
            cur.execute("DELETE FROM predictions WHERE sample_id = ? AND model_id = ?", [sample_id, model_id])
            self._db.audit(cur, actor=actor, action="predictions.delete", entity="sample", entity_id=sample_id,
                           sample_id=sample_id, before={"model_id": model_id, "predictions": int(n)})
        return int(n)

    def save_domain_check(self, sample_id: str, model_id: str, model_version: str, result: dict,
                          cell_scores: dict, *, actor: str) -> None:
        """Store (or replace) the domain check of the sample's run of ``model_id``
        (:class:`phenotyping.analysis.domain.DomainCheck` as a dict) with the per-cell scores behind it; audited as
        ``domain_check.save`` with the verdict.

        Raises:
            SampleLocked: the sample's latest report version is signed.
        """
        from datetime import datetime, timezone

        verdict = result.get("in_distribution")
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, f"saving the domain check of model {model_id}")
            cur.execute("DELETE FROM domain_checks WHERE sample_id = ? AND model_id = ?", [sample_id, model_id])
            cur.execute("INSERT INTO domain_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [sample_id, model_id, model_version, verdict, _json(result), _json(cell_scores), actor,
                         datetime.now(timezone.utc)])
            self._db.audit(cur, actor=actor, action="domain_check.save", entity="sample", entity_id=sample_id,
                           sample_id=sample_id,
                           after={"model_id": model_id, "model_version": model_version,
                                  **{k: result.get(k) for k in ("in_distribution", "score", "threshold", "reason",
                                                                "n_cells")}})

    def domain_check(self, sample_id: str, model_id: str) -> dict | None:
        """``{"model_version", "result", "cell_scores", "checked_by", "checked_at"}`` of the stored domain check of
        the sample's run of ``model_id``, or None."""
        rows = self._db.rows("SELECT * FROM domain_checks WHERE sample_id = ? AND model_id = ?", [sample_id, model_id])
        if not rows:
            return None
        r = rows[0]
        return {"model_version": r["model_version"], "result": json.loads(r["result"]),
                "cell_scores": json.loads(r["cell_scores"]), "checked_by": r["checked_by"],
                "checked_at": _utc(r["checked_at"])}
