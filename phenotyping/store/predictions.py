"""Model predictions per cell: one row per (cell, model), replaced when the model is run again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from phenotyping.schemas import Cell, Prediction
from phenotyping.store._db import (PREDICTION_DIGEST_COLUMNS, Database, _json, _utc, id_ranges,
                                   rows_digest)
from phenotyping.store.cells import CellRepository


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

    # -- a sample's results as SQL aggregations (phenotyping.analysis.aggregates)
    def result_counts(self, sample_id: str, model_id: str | None, classes: Sequence[str],
                      threshold: float) -> list[tuple[str | None, bool, str | None, int]]:
        """``(final label, reviewed, exclusion category, cells)`` per group of the sample's cells: the counted cells by
        label and whether a reviewer set it (category None), the others by the exclusion's text before ':'."""
        with_, params = _classified(sample_id, model_id, classes, threshold)
        return [(r[0], bool(r[1]), r[2], int(r[3])) for r in self._db.cursor().execute(
            with_ + "SELECT CASE WHEN exclusion IS NULL THEN final_label END, exclusion IS NULL AND reviewed_label IS "
            "NOT NULL, split_part(exclusion, ':', 1), count(*) FROM cl GROUP BY ALL ORDER BY ALL", params).fetchall()]

    def result_markers(self, sample_id: str, model_id: str, classes: Sequence[str], threshold: float
                       ) -> list[tuple[str, str, int, float | None, float | None, list[float] | None]]:
        """Per (target, final label) of the counted cells: ``(target, label, n, mean, sd, [q1, median, q3])`` over the
        finite predicted values (quantiles by linear interpolation, as ``numpy.percentile``). A target any counted
        cell's prediction names is listed, with n = 0 where a label has no finite value."""
        with_, params = _classified(sample_id, model_id, classes, threshold)
        rows = self._db.cursor().execute(
            with_ + ", v AS (SELECT final_label, unnest(map_keys(m)) AS target, unnest(map_values(m)) AS value FROM "
            "(SELECT final_label, p_targets::JSON::MAP(VARCHAR, DOUBLE) AS m FROM cl WHERE exclusion IS NULL AND "
            "p_targets IS NOT NULL)) SELECT target, final_label, count(value) FILTER (isfinite(value)), "
            "avg(value) FILTER (isfinite(value)), stddev_samp(value) FILTER (isfinite(value)), "
            "quantile_cont(value, [0.25, 0.5, 0.75]) FILTER (isfinite(value)) FROM v GROUP BY ALL ORDER BY ALL",
            params).fetchall()
        return [(str(t), str(lab), int(n), mean, sd, q) for t, lab, n, mean, sd, q in rows]

    def counted_probabilities(self, sample_id: str, model_id: str, classes: Sequence[str],
                              threshold: float) -> np.ndarray:
        """The EM input, ``(n_counted, K)`` float64 in cell-id order: a reviewed cell one-hot on its label, the others
        the model's probabilities (0 for a class a prediction lacks). Fetched as columns, no per-cell objects."""
        with_, params = _classified(sample_id, model_id, classes, threshold)
        cols = ", ".join(f"CASE WHEN reviewed_label IS NOT NULL THEN (final_label = ?)::DOUBLE "
                         f"ELSE coalesce(m[?], 0.0) END AS p{i}" for i in range(len(classes)))
        class_params = [x for c in classes for x in (c, c)]
        out = self._db.cursor().execute(
            with_ + f"SELECT {cols} FROM (SELECT id, reviewed_label, final_label, "
            "p_probabilities::JSON::MAP(VARCHAR, DOUBLE) AS m FROM cl WHERE exclusion IS NULL) ORDER BY id",
            [*params, *class_params]).fetchnumpy()
        if not classes:
            return np.zeros((0, 0))
        return np.column_stack([np.asarray(out[f"p{i}"], dtype=float) for i in range(len(classes))]).reshape(
            -1, len(classes))

    def result_page(self, sample_id: str, model_id: str | None, classes: Sequence[str], threshold: float, *,
                    show: str = "all", label: str | None = None, order: str = "confidence", limit: int = 50,
                    offset: int = 0) -> tuple[list[tuple[Cell, dict[str, Any]]], int]:
        """One page of the sample's cells and how many cells the filter holds: ``(rows, total)``.

        Each row is ``(cell, fields)``: ``fields`` holds the prediction's ``predicted_class``, ``confidence``,
        ``probabilities`` (None without a prediction) and ``targets`` ({}), the cell's ``final_label`` and its
        ``exclusion`` (None when counted). ``show``: ``all``, ``queue`` (the unidentified
        queue), ``excluded`` (not counted, the queue aside) or ``class`` (counted cells whose final label is
        ``label``); ``order`` one of :data:`PAGE_ORDERS`.

        Raises:
            ValueError: an unknown ``show`` or ``order``, ``class`` without a label, a negative limit or offset.
        """
        if show not in PAGE_FILTERS:
            raise ValueError(f"show={show!r} is not one of {list(PAGE_FILTERS)}")
        if order not in PAGE_ORDERS:
            raise ValueError(f"order={order!r} is not one of {list(PAGE_ORDERS)}")
        if show == "class" and not label:
            raise ValueError("show='class' needs the class name (label=...)")
        if limit < 0 or offset < 0:
            raise ValueError(f"limit={limit} and offset={offset} must be >= 0")
        with_, params = _classified(sample_id, model_id, classes, threshold)
        where = {"all": "TRUE", "queue": "cl.exclusion = 'unidentified (awaiting review)'",
                 "excluded": "cl.exclusion IS NOT NULL AND cl.exclusion <> 'unidentified (awaiting review)'",
                 "class": "cl.exclusion IS NULL AND cl.final_label = ?"}[show]
        if show == "class":
            params.append(label)
        cur = self._db.cursor().execute(
            with_ + f"SELECT cl.*, count(*) OVER () AS _total FROM cl WHERE {where} ORDER BY {PAGE_ORDERS[order]} "
            "LIMIT ? OFFSET ?", [*params, int(limit), int(offset)])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        total = int(rows[0]["_total"]) if rows else int(
            self._db.cursor().execute(with_ + f"SELECT count(*) FROM cl WHERE {where}", params).fetchone()[0])
        out = []
        for r in rows:
            has = r["p_class"] is not None
            out.append((CellRepository._from_row(r), {
                "predicted_class": r["p_class"], "confidence": r["p_confidence"],
                "probabilities": json.loads(r["p_probabilities"]) if has else None,
                "targets": json.loads(r["p_targets"]) if has else {},
                "final_label": r["final_label"], "exclusion": r["exclusion"]}))
        return out, total


# -- a sample's results as SQL aggregations (phenotyping.analysis.aggregates) ------------------------------------------
#: Why a cell is not counted, in SQL: the same rules, in the same order, as ``phenotyping.analysis.results``'s
#: ``_cell_result`` (parameters: the model's classes twice, then the unidentified threshold). NULL: counted.
_EXCLUSION_SQL = """CASE
    WHEN c.qc_state = 'excluded' OR (c.qc_state = 'overridden' AND c.reviewed_label IS NULL)
        THEN coalesce(nullif(c.qc_reason, ''), 'excluded by image QC')
    WHEN c.qc_state = 'overridden'
        THEN CASE WHEN list_contains(?::VARCHAR[], c.reviewed_label) THEN NULL
                  ELSE 'reviewed as ' || c.reviewed_label END
    WHEN p.cell_id IS NULL THEN 'not analysed'
    WHEN c.reviewed_label IS NOT NULL AND NOT list_contains(?::VARCHAR[], c.reviewed_label)
        THEN 'reviewed as ' || c.reviewed_label
    WHEN c.reviewed_label IS NULL AND (c.qc_state = 'unidentified' OR p.confidence < ?)
        THEN 'unidentified (awaiting review)'
END"""
#: Without a model nothing is counted: image-QC exclusions keep their reason, every other cell is not analysed.
_EXCLUSION_NO_MODEL_SQL = """CASE WHEN c.qc_state = 'excluded' THEN coalesce(nullif(c.qc_reason, ''),
    'excluded by image QC') ELSE 'not analysed' END"""

#: Gallery filters: which of a sample's classified cells a page shows (``class`` also takes the class name).
PAGE_FILTERS = ("all", "queue", "excluded", "class")
#: Gallery orders: ``confidence`` lowest first (cells without a prediction last), ``-confidence`` highest first
#: (those cells first), ``uncertainty`` as ``confidence``, ``id``; ties by cell id.
PAGE_ORDERS = {"confidence": "cl.p_confidence IS NULL, cl.p_confidence, cl.id",
               "-confidence": "cl.p_confidence IS NULL DESC, cl.p_confidence DESC, cl.id",
               "uncertainty": "cl.p_confidence IS NULL, cl.p_confidence, cl.id", "id": "cl.id"}


def _classified(sample_id: str, model_id: str | None, classes: Sequence[str], threshold: float
                ) -> tuple[str, list[object]]:
    """A ``WITH cl AS (...)`` clause: every cell of the sample with its prediction by ``model_id`` (``p_*``
    columns), ``final_label`` and ``exclusion`` (NULL when counted), and its parameters."""
    if model_id is None:
        case, params = _EXCLUSION_NO_MODEL_SQL, []
        final = "c.reviewed_label"
    else:
        case, params = _EXCLUSION_SQL, [list(classes), list(classes), float(threshold)]
        final = "coalesce(c.reviewed_label, p.predicted_class)"
    sql = (f"WITH cl AS (SELECT c.*, p.predicted_class AS p_class, p.confidence AS p_confidence, "
           f"p.probabilities AS p_probabilities, p.targets AS p_targets, {final} AS final_label, "
           f"{case} AS exclusion FROM cells c LEFT JOIN predictions p ON p.cell_id = c.id AND p.model_id = ? "
           "AND p.sample_id = c.sample_id WHERE c.sample_id = ?) ")
    return sql, [*params, model_id, sample_id]
