"""Ingest runs: an ingest into a sample recorded as an ``ingest.run`` audit event (what was ingested, the duplicates,
the refused files and why), and those records read back for the Samples screen.

The store is passed in (``record_event``, ``list_audit``), so this module needs no database import.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from phenotyping.errors import IngestError, NotFoundError, PhenotypingError
from phenotyping.schemas import IngestResult

log = logging.getLogger(__name__)

INGEST_EVENT = "ingest.run"
#: An ``ingest.run`` event keeps the first refused files (strings cut to a readable length), then only counts; the
#: ingest's own result (the CLI's JSON) still lists every file.
MAX_RECORDED_REJECTIONS, MAX_RECORDED_CHARS = 200, 300


@dataclass(frozen=True)
class IngestRun:
    """One recorded ingest of an image set into a sample (an ``ingest.run`` audit event)."""

    at: datetime
    actor: str
    source: str
    outcome: str  # "ok" or "failed"
    ingested: int
    duplicates: int
    rejected: list[dict[str, str]]  # {"file", "reason"} per refused file, duplicates included (the first ones)
    error: str = ""
    rejected_total: int = 0  # refused files in all; more than len(rejected) when the record was cut


def _cut(text: str, limit: int = MAX_RECORDED_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (PhenotypingError, ValueError, FileNotFoundError)):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _recorded_rejections(rejected: list[Any]) -> dict[str, Any]:
    """The first refused files, their total and, for a cut list, the count per reason (the 20 commonest)."""
    kept = [{"file": _cut(r.file), "reason": _cut(r.reason)} for r in rejected[:MAX_RECORDED_REJECTIONS]]
    out: dict[str, Any] = {"rejected": kept, "rejected_total": len(rejected)}
    if len(rejected) > len(kept):
        out["rejected_by_reason"] = dict(Counter(_cut(r.reason.split(" (")[0], 120) for r in rejected).most_common(20))
    return out


def _as_given(text: str, source: str | Path, source_name: str) -> str:
    """``text`` with the server path of ``source`` (usually a temporary upload folder) replaced by what the user
    gave: a file inside it by its path in the upload, the folder or archive itself by ``source_name``."""
    root = str(Path(source))
    return text.replace(root + "/", "").replace(root, source_name)


def ingest_and_record(store: Any, source: str | Path, sample_id: str, *, actor: str, source_name: str,
                      **options: Any) -> IngestResult:
    """:func:`phenotyping.ingest.ingest_set`, then an ``ingest.run`` audit event holding the run's summary: what was
    ingested, the duplicates, the first refused files with their reasons and how many in all. A run that fails
    (nothing usable, a locked sample, an unreadable archive, too many files, any error) is recorded too, with its
    error and, when files were refused, their count and reasons; the error is raised again, naming the source as
    ``source_name`` (never the server path of the upload).

    Args:
        source_name: what the user gave, as shown later (e.g. ``"set.zip"`` or ``"312 files"``); ``source`` itself
            is usually a temporary folder.
        options: passed on to ``ingest_set`` (``max_pixels``, ``max_bytes``, ``max_files``, ``progress``…).
    """
    from phenotyping.ingest import ingest_set  # looked up at call time (tests replace it)

    def record(after: dict[str, Any]) -> None:
        store.record_event(actor=actor, action=INGEST_EVENT, entity="sample", entity_id=sample_id,
                           sample_id=sample_id, after={"source": _cut(source_name), **after})

    try:
        result = ingest_set(store, source, sample_id, actor=actor, **options)
    except Exception as e:
        if isinstance(e, NotFoundError):  # no such sample: nothing to record it against
            raise
        message = _as_given(_one_line(e), source, source_name)
        try:
            record({"outcome": "failed", "error": _cut(message, 2000), "ingested": 0,
                    "duplicates": int(getattr(e, "duplicates", 0)),
                    **_recorded_rejections(list(getattr(e, "rejected", None) or []))})
        except Exception:  # noqa: BLE001 - the store itself failed: the original error is the one to raise
            log.exception("could not record the failed ingest into %s", sample_id)
        if isinstance(e, (PhenotypingError, ValueError)) and message != _one_line(e):
            raise IngestError(message) from e
        raise
    record({"outcome": "ok", "ingested": result.ingested, "duplicates": result.duplicates,
            **_recorded_rejections(result.rejected)})
    return result


def ingest_runs(store: Any, sample_id: str, *, limit: int = 10) -> list[IngestRun]:
    """The sample's recorded ingest runs, newest first."""
    out = []
    for e in store.list_audit(sample_id=sample_id, action=INGEST_EVENT, limit=limit):
        a = e.after if isinstance(e.after, dict) else {}
        rejected = list(a.get("rejected") or [])
        out.append(IngestRun(at=e.at, actor=e.actor, source=str(a.get("source", "")),
                             outcome=str(a.get("outcome", "ok")), ingested=int(a.get("ingested", 0)),
                             duplicates=int(a.get("duplicates", 0)), rejected=rejected,
                             error=str(a.get("error", "")),
                             rejected_total=int(a.get("rejected_total", len(rejected)))))
    return out
