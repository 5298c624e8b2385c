"""Model predictions per cell: one row per (cell, model), replaced when the model is run again."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from phenotyping.schemas import Cell, Prediction
from phenotyping.store._db import (PREDICTION_DIGEST_COLUMNS, Database, _json, _utc, id_ranges,
                                   rows_digest)
from phenotyping.store.cells import CellRepository, _objects


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
        # one scan of NumPy columns per batch (row-wise parameters cost ~3 ms a row here), without pandas, whose
        # import alone is 0.5-0.7 s of a predict run; created_at travels as ISO text and is cast in SQL, so a
        # time zone given with it is kept exactly
        batch = {
            "cell_id": np.asarray([int(p.cell_id) for p in predictions], dtype=np.int64),
            "model_id": _objects([p.model_id for p in predictions]),
            "model_version": _objects([p.model_version for p in predictions]),
            "predicted_class": _objects([p.predicted_class for p in predictions]),
            "confidence": np.asarray([float(p.confidence) for p in predictions], dtype=np.float64),
            "probabilities": _objects([_json(p.probabilities) for p in predictions]),
            "targets": _objects([_json(p.targets) for p in predictions]),
            "created_at": _objects([p.created_at.isoformat() for p in predictions])}
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, f"writing {len(predictions)} prediction(s)")
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
                            "confidence, probabilities, targets, CAST(created_at AS TIMESTAMPTZ) FROM _pred_batch",
                            [sample_id])
                digests = {(m, v): rows_digest(cur.execute(
                    f"SELECT {PREDICTION_DIGEST_COLUMNS} FROM predictions WHERE sample_id = ? AND model_id = ? AND "
                    "model_version = ? AND cell_id IN (SELECT cell_id FROM _pred_batch WHERE model_id = ? AND "
                    "model_version = ?) ORDER BY cell_id", [sample_id, m, v, m, v]).fetchall())
                    for m, v, _, _ in summary}
            finally:
                cur.unregister("_pred_batch")
            for model_id, version, n, replaced in summary:
                mine = [p for p in predictions if p.model_id == model_id and p.model_version == version]
                counts = Counter(p.predicted_class for p in mine if p.predicted_class is not None)
                classes = {str(k): counts[k] for k in sorted(counts)}
                self._db.audit(cur, actor=actor, action="predictions.save", entity="sample", entity_id=sample_id,
                               sample_id=sample_id,
                               after={"model_id": model_id, "model_version": version, "cells": int(n),
                                      "replaced": int(replaced), "classes": classes,
                                      "cell_ranges": id_ranges([int(p.cell_id) for p in mine]),
                                      "digest": digests[(model_id, version)]})

    def cell_ids(self, sample_id: str, model_id: str) -> set[int]:
        """Ids of the sample's cells that ``model_id`` has predicted."""
        return {int(r[0]) for r in self._db.cursor().execute(
            "SELECT cell_id FROM predictions WHERE sample_id = ? AND model_id = ?", [sample_id, model_id]).fetchall()}

    def versions(self, sample_id: str, model_id: str) -> dict[str, int]:
        """The model versions of the sample's predictions by ``model_id``, with how many cells each."""
        return {str(v): int(n) for v, n in self._db.cursor().execute(
            "SELECT model_version, count(*) FROM predictions WHERE sample_id = ? AND model_id = ? GROUP BY ALL "
            "ORDER BY model_version", [sample_id, model_id]).fetchall()}

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
        finite predicted values (quantiles by linear interpolation, as ``numpy.percentile``). Every target a counted
        cell's prediction names is listed for each label among the counted cells (n = 0 where it has no value)."""
        with_, params = _classified(sample_id, model_id, classes, threshold)
        counted = "FROM cl WHERE exclusion IS NULL AND p_targets IS NOT NULL"
        cur = self._db.cursor()
        names = sorted(str(r[0]) for r in cur.execute(
            with_ + f"SELECT DISTINCT unnest(json_keys(p_targets)) {counted}", params).fetchall())
        if not names:
            return []
        spec = json.dumps({t: "DOUBLE" for t in names})
        values = ", ".join(f"struct_extract(m, ?) AS v{i}" for i in range(len(names)))
        stats = ", ".join(f"count(v{i}) FILTER (isfinite(v{i})), avg(v{i}) FILTER (isfinite(v{i})), "
                          f"stddev_samp(v{i}) FILTER (isfinite(v{i})), "
                          f"quantile_cont(v{i}, [0.25, 0.5, 0.75]) FILTER (isfinite(v{i}))" for i in range(len(names)))
        rows = cur.execute(
            with_ + f"SELECT final_label, {stats} FROM (SELECT final_label, {values} FROM (SELECT final_label, "
            f"json_transform(p_targets, ?) AS m {counted})) GROUP BY final_label ORDER BY final_label",
            [*params, *names, spec]).fetchall()
        return [(t, str(r[0]), int(r[1 + 4 * i]), r[2 + 4 * i], r[3 + 4 * i], r[4 + 4 * i])
                for i, t in enumerate(names) for r in rows]

    def counted_probabilities(self, sample_id: str, model_id: str, classes: Sequence[str],
                              threshold: float) -> np.ndarray:
        """The EM input, ``(n_counted, K)`` float64 in cell-id order: a reviewed cell one-hot on its label, the others
        the model's probabilities (0 for a class a prediction lacks). Fetched as columns, no per-cell objects."""
        if not classes:
            raise ValueError("no classes given; pass the model's class names")
        with_, params = _classified(sample_id, model_id, classes, threshold)
        cols = ", ".join(f"CASE WHEN reviewed_label IS NOT NULL THEN (final_label = ?)::DOUBLE "
                         f"ELSE coalesce(struct_extract(m, ?), 0.0) END AS p{i}" for i in range(len(classes)))
        class_params = [x for c in classes for x in (c, c)]
        out = self._db.cursor().execute(
            with_ + f"SELECT {cols} FROM (SELECT id, reviewed_label, final_label, json_transform(p_probabilities, ?) "
            "AS m FROM cl WHERE exclusion IS NULL) ORDER BY id",
            [*params, *class_params, json.dumps({c: "DOUBLE" for c in classes})]).fetchnumpy()
        return np.column_stack([np.asarray(out[f"p{i}"], dtype=float) for i in range(len(classes))])

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
        cur = self._db.cursor()
        # the page's ids over narrow columns first (a top-N sort), then only those cells' rows
        ids = [int(r[0]) for r in cur.execute(
            with_ + f"SELECT cl.id FROM cl WHERE {where} ORDER BY {PAGE_ORDERS[order]} LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)]).fetchall()]
        total = int(cur.execute(with_ + f"SELECT count(*) FROM cl WHERE {where}", params).fetchone()[0])
        rows = []
        if ids:
            page_with, page_params = _classified(sample_id, model_id, classes, threshold, ids=ids)
            by_id = {r["id"]: r for r in self._db.rows(page_with + "SELECT * FROM cl", page_params)}
            rows = [by_id[i] for i in ids]
        out = []
        for r in rows:
            has = r["p_class"] is not None
            out.append((CellRepository._from_row(r), {
                "predicted_class": r["p_class"], "confidence": r["p_confidence"],
                "probabilities": json.loads(r["p_probabilities"]) if has else None,
                "targets": json.loads(r["p_targets"]) if has else {},
                "final_label": r["final_label"], "exclusion": r["exclusion"]}))
        return out, total

    def synthesise(self, sample_id: str, model_id: str, n: int, classes: Sequence[str], *, actor: str,
                   seed: int = 0) -> None:
        """Benchmarks only: add ``n`` synthetic cells to ``sample_id`` with predictions by ``model_id`` in two
        ``INSERT … SELECT`` from ``range(n)`` (seconds for 10^6 cells; no image files, no cell digests).

        Deterministic in ``seed`` (hashes, not ``random()``). Per cell: a class (60/25/8/5/2 % over the first five
        of ``classes``), a confidence of 0.30–1.00 with the rest spread evenly over the other classes, targets
        ``cd16`` and ``cd3``; about 1.5 % excluded "out of focus", 1.3 % "saturated", 0.2 % overridden by a
        reviewer (counted under the predicted class), 0.8 % reviewed as the next class, 0.2 % as debris, 1 %
        without a prediction. One audit event ``bench.synthesise`` records it.
        """
        if n < 1 or len(classes) < 2:
            raise ValueError(f"n={n} must be >= 1 and classes {list(classes)} must hold at least two")
        k, names = len(classes), list(classes)
        weights = [0.60, 0.25, 0.08, 0.05, 0.02][:k]
        cuts = [sum(weights[: i + 1]) / sum(weights) for i in range(len(weights) - 1)]
        u = "(hash(i, {}, ?) % 1000003) / 1000003.0"
        cls = ("CASE " + " ".join(f"WHEN {u.format(3)} < {c:.6f} THEN {i}" for i, c in enumerate(cuts))
               + f" ELSE {len(weights) - 1} END")
        cls_params = [seed] * len(cuts)
        probs = ", ".join(f"?, CASE WHEN cls = {i} THEN conf ELSE (1 - conf) / {k - 1} END" for i in range(k))
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, f"adding {n} synthetic cells")
            cur.execute(
                "INSERT INTO cells (id, sample_id, cell_key, content_hash, source_file, blob_path, channels, shape, "
                "dtype, qc_state, qc_reason, targets, extra, reviewed_label, created_at) "
                "SELECT nextval('cell_id_seq'), ?, 'syn' || i, 'syn' || i, 'syn' || i || '.png', 'synthetic', 1, "
                "'[1, 32, 32]', 'uint8', CASE WHEN u_qc < 0.028 THEN 'excluded' WHEN u_qc < 0.03 THEN 'overridden' "
                "ELSE 'passed' END, CASE WHEN u_qc < 0.015 THEN 'out of focus: focus 0.10 < 0.30' WHEN u_qc < 0.03 "
                "THEN 'saturated' END, '{}', '{}', CASE WHEN u_qc >= 0.028 AND u_qc < 0.03 THEN ?[cls + 1] "
                "WHEN u_rev < 0.008 THEN ?[((cls + 1) % ?) + 1] WHEN u_rev < 0.01 THEN 'debris' END, now() FROM ("
                f"SELECT i, {u.format(1)} AS u_qc, {u.format(2)} AS u_rev, {cls} AS cls FROM range(?) t(i)) "
                "ORDER BY i", [sample_id, names, names, k, seed, seed, *cls_params, int(n)])
            cur.execute(
                "INSERT INTO predictions (cell_id, sample_id, model_id, model_version, predicted_class, confidence, "
                "probabilities, targets, created_at) SELECT id, ?, ?, 'synthetic', ?[cls + 1], conf, "
                f"json_object({probs})::VARCHAR, json_object('cd16', 10.0 * cls + 8 * ({u.format(5)} - 0.5), "
                f"'cd3', 1 + {u.format(6)})::VARCHAR, now() FROM (SELECT id, i, {cls} AS cls, "
                f"0.3 + 0.7 * {u.format(4)} AS conf FROM (SELECT id, CAST(substr(cell_key, 4) AS BIGINT) AS i "
                f"FROM cells WHERE sample_id = ? AND blob_path = 'synthetic')) WHERE {u.format(7)} >= 0.01",
                [sample_id, model_id, names, *names, seed, seed, *cls_params, seed, sample_id, seed])
            self._db.audit(cur, actor=actor, action="bench.synthesise", entity="sample", entity_id=sample_id,
                           sample_id=sample_id, after={"cells": int(n), "model_id": model_id, "seed": seed})

# -- a sample's results as SQL aggregations (phenotyping.analysis.aggregates) ------------------------------------------
#: Why a cell is not counted, in SQL: the same rules, in the same order, as ``phenotyping.analysis.results``'s
#: ``_cell_result`` (parameters: the model's classes twice, then the unidentified threshold). NULL: counted.

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


def _classified(sample_id: str, model_id: str | None, classes: Sequence[str], threshold: float, *,
                ids: Sequence[int] | None = None) -> tuple[str, list[object]]:
    """A ``WITH cl AS (...)`` clause: every cell of the sample (or only those of ``ids``) with its prediction by
    ``model_id`` (``p_*`` columns), ``final_label`` and ``exclusion`` (NULL when counted), and its parameters."""
    if model_id is None:
        case, params = _EXCLUSION_NO_MODEL_SQL, []
        final = "c.reviewed_label"
    else:
        case, params = _EXCLUSION_SQL, [list(classes), list(classes), float(threshold)]
        final = "coalesce(c.reviewed_label, p.predicted_class)"
    only, only_p, id_params = "", "", []
    if ids is not None:
        only, only_p = " AND c.id IN (SELECT unnest(?::BIGINT[]))", " AND p.cell_id IN (SELECT unnest(?::BIGINT[]))"
        id_params = [[int(i) for i in ids]]
    # the sample's predictions filtered before the join, so that the other samples' rows are never read
    sql = (f"WITH cl AS (SELECT c.*, p.predicted_class AS p_class, p.confidence AS p_confidence, "
           f"p.probabilities AS p_probabilities, p.targets AS p_targets, {final} AS final_label, "
           f"{case} AS exclusion FROM cells c LEFT JOIN (SELECT * FROM predictions p WHERE p.sample_id = ? AND "
           f"p.model_id = ?{only_p}) p ON p.cell_id = c.id WHERE c.sample_id = ?{only}) ")
    return sql, [*params, sample_id, model_id, *id_params, sample_id, *id_params]
