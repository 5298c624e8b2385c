"""Report versions: every saved edit is a new version; a signed version locks the sample until it is amended."""

from __future__ import annotations

from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.schemas import ReportVersion, utcnow
from phenotyping.store._db import Database, _utc
from phenotyping.store.samples import SampleRepository


class ReportRepository:
    def __init__(self, db: Database):
        self._db = db
        self._samples = SampleRepository(db)

    @staticmethod
    def _from_row(r: dict[str, Any]) -> ReportVersion:
        return ReportVersion(
            sample_id=r["sample_id"], version=r["version"], status=r["status"], interpretation=r["interpretation"],
            interpretation_source=r["interpretation_source"], amends_version=r["amends_version"],
            amendment_reason=r["amendment_reason"], created_by=r["created_by"], created_at=_utc(r["created_at"]),
            signed_by=r["signed_by"], signed_at=_utc(r["signed_at"]), pdf_hash=r["pdf_hash"],
        )

    def _latest_rows(self, sample_id: str) -> list[dict[str, Any]]:
        return self._db.rows("SELECT * FROM reports WHERE sample_id = ? ORDER BY version DESC LIMIT 1", [sample_id])

    def add_version(self, sample_id: str, *, interpretation: str, source: str, actor: str,
                    status: str = "draft", amends_version: int | None = None,
                    amendment_reason: str | None = None) -> ReportVersion:
        """Save a new report version (every saved edit is a new version; nothing is overwritten).

        After a signed version only an amendment (``amends_version`` and a reason) may follow; it unlocks the sample.
        """
        self._samples.get(sample_id)
        if amends_version is not None and not (amendment_reason or "").strip():
            raise ValueError("an amendment needs a reason")
        with self._db.tx() as cur:
            last = cur.execute("SELECT max(version) FROM reports WHERE sample_id = ?", [sample_id]).fetchone()[0]
            if amends_version is None:
                self._db.refuse_if_signed(cur, sample_id, "a new report version that is not an amendment")
            version = int(last or 0) + 1
            rv = ReportVersion(sample_id=sample_id, version=version, status=status, interpretation=interpretation,
                               interpretation_source=source, amends_version=amends_version,
                               amendment_reason=amendment_reason, created_by=actor)
            cur.execute(
                "INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
                [sample_id, version, status, interpretation, source, amends_version, amendment_reason, actor,
                 rv.created_at],
            )
            prev = None
            if last:
                p = cur.execute("SELECT interpretation, status FROM reports WHERE sample_id = ? AND version = ?",
                                [sample_id, int(last)]).fetchone()
                prev = {"version": int(last), "interpretation": p[0], "status": p[1]}
            self._db.audit(cur, actor=actor, action="report.version", entity="report",
                           entity_id=f"{sample_id}/v{version}", sample_id=sample_id, before=prev,
                           after={"version": version, "status": status, "interpretation": interpretation,
                                  "source": source, "amends_version": amends_version,
                                  "amendment_reason": amendment_reason})
        return rv

    def list_versions(self, sample_id: str) -> list[ReportVersion]:
        return [self._from_row(r) for r in self._db.rows(
            "SELECT * FROM reports WHERE sample_id = ? ORDER BY version", [sample_id])]

    def get_version(self, sample_id: str, version: int | None = None) -> ReportVersion:
        """One version of the sample's report; the latest when ``version`` is None."""
        if version is None:
            rows = self._latest_rows(sample_id)
        else:
            rows = self._db.rows("SELECT * FROM reports WHERE sample_id = ? AND version = ?",
                                 [sample_id, int(version)])
        if not rows:
            raise NotFoundError(f"no report{'' if version is None else f' version {version}'} for sample {sample_id!r}")
        return self._from_row(rows[0])

    def pdf_path(self, sample_id: str, version: int) -> str | None:
        row = self._db.cursor().execute("SELECT pdf_path FROM reports WHERE sample_id = ? AND version = ?",
                                        [sample_id, int(version)]).fetchone()
        return row[0] if row else None

    def mark_signed(self, sample_id: str, version: int, *, signer: str, status: str, pdf_path: str,
                    pdf_hash: str) -> ReportVersion:
        """Record that a version was signed. A signed version cannot be signed or changed again."""
        rv = self.get_version(sample_id, version)
        if rv.signed_at is not None:
            raise ValueError(f"report {sample_id} v{version} was signed by {rv.signed_by} at {rv.signed_at}; "
                             "amend it to make a new version")
        if status not in ("final", "amended"):
            raise ValueError(f"a signed report is 'final' or 'amended', not {status!r}")
        now = utcnow()
        with self._db.tx() as cur:
            cur.execute("UPDATE reports SET status = ?, signed_by = ?, signed_at = ?, pdf_path = ?, pdf_hash = ? "
                        "WHERE sample_id = ? AND version = ?", [status, signer, now, pdf_path, pdf_hash, sample_id,
                                                                int(version)])
            self._db.audit(cur, actor=signer, action="report.sign", entity="report",
                           entity_id=f"{sample_id}/v{version}", sample_id=sample_id, before={"status": rv.status},
                           after={"status": status, "pdf_sha256": pdf_hash, "pdf_path": pdf_path})
        return self.get_version(sample_id, version)

    def signed_lock(self, sample_id: str) -> ReportVersion | None:
        """The signed report version that locks the sample's results, or None when they may change."""
        rows = self._latest_rows(sample_id)
        if rows and rows[0]["signed_at"] is not None:
            return self._from_row(rows[0])
        return None
