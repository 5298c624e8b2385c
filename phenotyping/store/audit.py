"""Reading and checking the append-only audit log (rows are appended by :meth:`Database.audit`).

:meth:`AuditRepository.verify` is the full check, returning an :class:`AuditCheck` whose ``bottom_line`` callers
must honour:

- the hash chain, recomputed from the table (a row edited or deleted in place breaks it);
- the anchor ``<db>.audit-anchor`` (see :mod:`._db`): every anchored event must still be in the table at its place
  with its hash, so deleting the last rows (truncation), editing one and recomputing every later hash (re-chaining),
  or deleting one and re-chaining are found, naming the first event concerned; an anchor behind the table (a crash
  between commit and anchor write) or missing is reported as ``unanchored``, not as intact;
- batch digests: each ``cells.ingest`` and ``predictions.save`` event records the SHA-256 of the rows it inserted,
  recomputed from today's rows, so rows edited or deleted behind the audit's back are named by sample and batch.
  Covered: a cell's identity, file hash, image path, shape, reference label, targets and extra columns, and a
  prediction's model, version, class, confidence, probabilities and targets. Not covered: cells' image-QC state and
  reviewed label (changed by audited QC and review events, whose rows are not digested), prediction batches later
  replaced or deleted through the store, rows added to other tables, and events recorded before digests existed.

Anyone who can write both the database and the anchor can rewrite both; the chain head printed in every signed
report (``AuditRepository.head``) is the copy they cannot reach.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from phenotyping.schemas import AuditEvent
from phenotyping.store._db import (_GENESIS, CELL_DIGEST_COLUMNS, PREDICTION_DIGEST_COLUMNS, Database, _utc,
                                   audit_digest, rows_digest)

BottomLine = Literal["intact", "tampered", "unanchored"]


@dataclasses.dataclass(frozen=True)
class AuditHead:
    """The last event of the chain: its place (``seq``, 1-based), id, time and hash."""

    seq: int
    id: int
    at: datetime
    hash: str


@dataclasses.dataclass(frozen=True)
class AuditCheck:
    """What :meth:`AuditRepository.verify` found.

    ``bottom_line``: ``intact`` (chain, anchor and batch digests agree), ``tampered`` (something was changed or
    removed; ``first_bad`` names the first event concerned when it is an audit event) or ``unanchored`` (nothing
    found changed, but the anchor is missing or behind, so truncation or re-chaining of its last events could not be
    ruled out). ``anchor_state``: agrees, behind, missing, disagrees, or none (an in-memory database).
    """

    bottom_line: BottomLine
    events: int
    head: AuditHead | None
    anchor: str | None
    anchor_state: str
    anchored: int
    behind_by: int = 0
    first_bad: dict[str, Any] | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    batches: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.bottom_line == "intact"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.head is not None:
            d["head"]["at"] = self.head.at.isoformat()
        d["ok"] = self.ok
        return d


def _event(seq: int, r: dict[str, Any]) -> dict[str, Any]:
    return {"seq": seq, "id": int(r["id"]), "at": _utc(r["happened_at"]).isoformat(), "action": r["action"],
            "sample_id": r["sample_id"]}


def _name(e: dict[str, Any]) -> str:
    return f"event #{e['id']} (seq {e['seq']}, {e['at']}, {e['action']})"


def _read_anchor(path: Path, problems: list[str], notes: list[str]) -> dict[int, dict[str, Any]]:
    """seq -> the first anchor line for it; unreadable lines and contradicting duplicates go to ``problems``, except
    a line cut short (a crash during the write; the next commit wrote its events again), which is a note."""
    out: dict[int, dict[str, Any]] = {}
    for n, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            seq, line["id"], line["hash"] = int(line["seq"]), int(line["id"]), str(line["hash"])
        except (ValueError, KeyError, TypeError) as e:
            if text.lstrip().startswith("{") and not text.rstrip().endswith("}"):
                notes.append(f"{path} line {n} was cut short (a crash while it was written): {text[:60]!r}")
            else:
                problems.append(f"{path} line {n} is not an anchor line ({e}): {text[:80]!r}")
            continue
        line["line"] = n
        first = out.setdefault(seq, line)
        if first is not line and (first["id"], first["hash"]) != (line["id"], line["hash"]):
            problems.append(f"{path} has two different lines for seq {seq} (lines {first['line']} and {n}): the "
                            f"audit table was cut back to before seq {seq} and written again (or the database file was "
                            "replaced by another while this anchor stayed)")
    return out


def _compare_anchor(rows: list[dict[str, Any]], anchor: dict[int, dict[str, Any]], path: Path,
                    problems: list[str]) -> dict[str, Any] | None:
    """Check every anchored event against the table; the first event concerned, or None."""
    for seq in sorted(anchor):
        a = anchor[seq]
        if seq > len(rows):
            last = f"event #{rows[-1]['id']} at seq {len(rows)}" if rows else "no event"
            missing = {"seq": seq, "id": a["id"], "at": a.get("at"), "action": a.get("action"), "sample_id": None}
            problems.append(f"truncated: the audit table ends with {last}, but the anchor records "
                            f"{len(anchor) and max(anchor) - len(rows)} more; the first missing is {_name(missing)}")
            return {**missing, "problem": "missing"}
        r = rows[seq - 1]
        if int(r["id"]) != a["id"] or r["hash"] != a["hash"]:
            e = _event(seq, r)
            problems.append(f"{_name(e)} differs from the anchor, which recorded event #{a['id']} "
                            f"({a.get('at')}, {a.get('action')}) with hash {a['hash'][:16]}… at seq {seq} "
                            f"(table: {r['hash'][:16]}…): it was edited and every later hash recomputed, or an "
                            f"earlier event was deleted ({path})")
            return {**e, "problem": "differs from the anchor", "anchored_id": a["id"],
                    "anchored_action": a.get("action")}
    return None


def _contained(cell_id: int, ranges: list[list[int]]) -> bool:
    return any(lo <= cell_id <= hi for lo, hi in ranges)


def _overlap(a: list[list[int]], b: list[list[int]]) -> bool:
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


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

    def head(self) -> AuditHead | None:
        """The chain head (the newest event's seq, id, time and hash); None while the trail is empty."""
        rows = self._db.rows("SELECT (SELECT count(*) FROM audit) AS n, id, happened_at, hash FROM audit "
                             "ORDER BY id DESC LIMIT 1")
        if not rows:
            return None
        r = rows[0]
        return AuditHead(seq=int(r["n"]), id=int(r["id"]), at=_utc(r["happened_at"]), hash=r["hash"])

    def verify_chain(self) -> tuple[bool, int | None]:
        """Recompute the hash chain. Returns ``(intact, id of the first bad row or None)``.

        This checks the table alone: deleting its last rows, or re-chaining, passes. :meth:`verify` also checks
        the anchor and the batch digests.
        """
        prev = _GENESIS
        for r in self._db.rows("SELECT * FROM audit ORDER BY id"):
            digest = audit_digest(prev, _utc(r["happened_at"]), r["actor"], r["action"], r["entity"], r["entity_id"],
                                  r["sample_id"], r["before"], r["after"])
            if r["prev_hash"] != prev or r["hash"] != digest:
                return False, int(r["id"])
            prev = r["hash"]
        return True, None

    def verify(self) -> AuditCheck:
        """Check the chain, the anchor and the batch digests (see the module docstring); never raises on what it
        finds, only on a database it cannot read."""
        rows = self._db.rows("SELECT * FROM audit ORDER BY id")
        problems: list[str] = []
        notes: list[str] = []
        first_bad = None
        prev = _GENESIS
        for seq, r in enumerate(rows, start=1):
            digest = audit_digest(prev, _utc(r["happened_at"]), r["actor"], r["action"], r["entity"], r["entity_id"],
                                  r["sample_id"], r["before"], r["after"])
            if r["prev_hash"] != prev or r["hash"] != digest:
                first_bad = {**_event(seq, r), "problem": "hash chain broken"}
                problems.append(f"the hash chain breaks at {_name(first_bad)}: this row was edited, or the one "
                                f"before it deleted, without recomputing the hashes")
                break
            prev = r["hash"]
        head = None if not rows else AuditHead(seq=len(rows), id=int(rows[-1]["id"]),
                                               at=_utc(rows[-1]["happened_at"]), hash=rows[-1]["hash"])
        state, anchored, behind, anchor_bad = self._check_anchor(rows, problems, notes)
        if anchor_bad is not None and (first_bad is None or anchor_bad["seq"] <= first_bad["seq"]):
            first_bad = anchor_bad
        batches = self._check_batches(rows, problems)
        if problems:
            bottom: BottomLine = "tampered"
        elif state in ("behind", "missing"):
            bottom = "unanchored"
        else:
            bottom = "intact"
        path = self._db.anchor_path
        return AuditCheck(bottom_line=bottom, events=len(rows), head=head, anchor=None if path is None else str(path),
                          anchor_state=state, anchored=anchored, behind_by=behind, first_bad=first_bad,
                          problems=problems, notes=notes, batches=batches)

    def _check_anchor(self, rows: list[dict[str, Any]], problems: list[str], notes: list[str]
                      ) -> tuple[str, int, int, dict[str, Any] | None]:
        """``(anchor state, anchored events, events not yet anchored, first event concerned)``."""
        path = self._db.anchor_path
        if path is None:
            notes.append("in-memory database: there is no anchor file, so only the chain and digests were checked")
            return "none", 0, 0, None
        if not path.exists():
            if rows:
                notes.append(f"the anchor {path} is missing while the database holds {len(rows)} event(s): deleting "
                             "or re-chaining events cannot be detected; it is written again from the next change "
                             "on (restore it from a backup if it was deleted)")
                return "missing", 0, len(rows), None
            return "agrees", 0, 0, None
        before = len(problems)
        anchor = _read_anchor(path, problems, notes)
        bad = _compare_anchor(rows, anchor, path, problems)
        top = max(anchor, default=0)
        gaps = [s for s in range(1, min(top, len(rows)) + 1) if s not in anchor]
        if gaps:
            problems.append(f"the anchor {path} lacks the lines of {len(gaps)} event(s) from seq {gaps[0]} on: "
                            "lines were removed from it")
        late = sorted(s for s, a in anchor.items() if a.get("late"))
        if late:
            notes.append(f"{len(late)} event(s) (seq {late[0]}–{late[-1]}) were anchored late, at "
                         f"{anchor[late[-1]].get('anchored_at')}: the anchor vouches for them only from then")
        behind = max(0, len(rows) - top)
        if behind and bad is None:
            notes.append(f"the anchor is behind by {behind} event(s) (seq {top + 1}–{len(rows)}, from event "
                         f"#{rows[top]['id']} {rows[top]['action']}): a process stopped between its commit and the "
                         "anchor write, or something wrote the audit table without the store; the next change "
                         "through the store anchors them")
        state = "disagrees" if len(problems) > before else "behind" if behind else "agrees"
        return state, len(anchor), behind, bad

    def _check_batches(self, rows: list[dict[str, Any]], problems: list[str]) -> dict[str, Any]:
        """Recompute the digests of cell and prediction batches; name those whose rows changed."""
        counts = {"checked": 0, "changed": 0, "superseded": 0, "without_digest": 0}
        events = [(r, json.loads(r["after"] or "null") or {}, json.loads(r["before"] or "null") or {}) for r in rows
                  if r["action"] in ("cells.ingest", "predictions.save", "predictions.delete")]
        for i, (r, after, _) in enumerate(events):
            if r["action"] == "cells.ingest":
                self._check_cells(r, after, counts, problems)
            elif r["action"] == "predictions.save":
                later = events[i + 1:]
                if any(lr["sample_id"] == r["sample_id"] and (
                        (lr["action"] == "predictions.delete" and lb.get("model_id") == after.get("model_id"))
                        or (lr["action"] == "predictions.save" and la.get("model_id") == after.get("model_id")
                            and _overlap(la.get("cell_ranges") or [[-1, 2**62]], after.get("cell_ranges") or []))
                ) for lr, la, lb in later):
                    counts["superseded"] += 1
                else:
                    self._check_predictions(r, after, counts, problems)
        self._check_stray_cells(events, problems)
        return counts

    def _check_cells(self, r: dict[str, Any], after: dict[str, Any], counts: dict[str, int],
                     problems: list[str]) -> None:
        if "digest" not in after:
            counts["without_digest"] += 1
            return
        counts["checked"] += 1
        found = self._db.cursor().execute(
            f"SELECT {CELL_DIGEST_COLUMNS} FROM cells WHERE sample_id = ? AND id BETWEEN ? AND ? ORDER BY id",
            [r["sample_id"], after["first_id"], after["last_id"]]).fetchall()
        if rows_digest(found) != after["digest"]:
            counts["changed"] += 1
            problems.append(f"sample {r['sample_id']}: the cells of batch event #{r['id']} ({r['action']}, "
                            f"{_utc(r['happened_at']).isoformat()}, cell ids {after['first_id']}–{after['last_id']}, "
                            f"{after['cells']} recorded, {len(found)} now) were changed or deleted behind the audit")

    def _check_predictions(self, r: dict[str, Any], after: dict[str, Any], counts: dict[str, int],
                           problems: list[str]) -> None:
        if "digest" not in after:
            counts["without_digest"] += 1
            return
        counts["checked"] += 1
        ranges = after["cell_ranges"]
        found = [row for row in self._db.cursor().execute(
            f"SELECT {PREDICTION_DIGEST_COLUMNS} FROM predictions WHERE sample_id = ? AND model_id = ? "
            "AND model_version = ? ORDER BY cell_id", [r["sample_id"], after["model_id"], after["model_version"]]
        ).fetchall() if _contained(int(row[0]), ranges)]
        if rows_digest(found) != after["digest"]:
            counts["changed"] += 1
            problems.append(f"sample {r['sample_id']}: the predictions of model {after['model_id']} "
                            f"{after['model_version']} saved by batch event #{r['id']} "
                            f"({_utc(r['happened_at']).isoformat()}, cell ids {ranges[0][0]}–{ranges[-1][1]}, "
                            f"{after['cells']} recorded, {len(found)} now) were changed or deleted behind the audit")

    def _check_stray_cells(self, events: list[tuple[dict, dict, dict]], problems: list[str]) -> None:
        """Cells that no ``cells.ingest`` event of their sample covers (inserted without the store). Samples with
        an ingest event that does not record its ids (older versions) are skipped."""
        covered: dict[str, list[list[int]] | None] = {}
        for r, after, _ in events:
            if r["action"] == "cells.ingest":
                ranges = covered.setdefault(r["sample_id"], [])
                if "first_id" not in after or ranges is None:
                    covered[r["sample_id"]] = None
                else:
                    ranges.append([int(after["first_id"]), int(after["last_id"])])
        stray: dict[str, list[int]] = {}
        for sample_id, cell_id in self._db.cursor().execute(
                "SELECT sample_id, id FROM cells ORDER BY sample_id, id").fetchall():
            ranges = covered.get(sample_id, [])
            if ranges is not None and not _contained(int(cell_id), ranges):
                stray.setdefault(sample_id, []).append(int(cell_id))
        for sample_id, ids in stray.items():
            problems.append(f"sample {sample_id}: {len(ids)} cell(s) (ids from {ids[0]}) were added without a "
                            "cells.ingest audit event")
