"""A sample's report lifecycle over the store: draft → edits (each a version) → sign → amend → export.

Every step writes the store and its audit trail; the app's Report screen and the command line call these functions.
A signed version is never changed: an amendment is a new version that names the one it replaces, signed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from phenotyping.errors import PhenotypingError
from phenotyping.schemas import ReportVersion, Role, SampleStatus
from reports.context import Person, build_context, facts_from_context
from reports.draft import DraftRecord, draft_interpretation

SIGNING_ROLES = (Role.signer, Role.admin)


class SigningBlocked(PhenotypingError):
    """The report cannot be signed yet (unreviewed cells, wrong role, already signed…)."""


def _settings(settings: Any) -> Any:
    if settings is not None:
        return settings
    from phenotyping.settings import get_settings

    return get_settings()


def draft_report(store: Any, sample_id: str, *, actor: str, settings: Any = None,
                 completion_options: Mapping[str, Any] | None = None) -> tuple[ReportVersion, DraftRecord]:
    """Draft the interpretation from the sample's computed facts and save it as a new (unedited) version.

    The LLM (``settings.llm_model``) sees only the facts; without a model, or when its draft is rejected or the
    provider fails, the template draft is used. The audit trail keeps the model, the prompt hash, each raw output and
    why it was accepted or rejected.
    """
    settings = _settings(settings)
    latest = store.list_report_versions(sample_id)
    amends = None
    if latest and latest[-1].signed_at is None and latest[-1].amends_version is not None:
        amends = latest[-1]  # drafting inside an amendment keeps it an amendment
    placeholder = ReportVersion(sample_id=sample_id, version=(latest[-1].version + 1) if latest else 1,
                                status="draft", created_by=actor)
    ctx = build_context(store, sample_id, report_version=placeholder, settings=settings)
    record = draft_interpretation(facts_from_context(ctx), model=settings.llm_model,
                                  timeout_s=settings.llm_timeout_s, completion_options=completion_options)
    rv = store.add_report_version(
        sample_id, interpretation=record.text, source=record.source, actor=actor, status="draft",
        amends_version=amends.amends_version if amends else None,
        amendment_reason=amends.amendment_reason if amends else None)
    store.record_event(
        actor=actor, action="report.draft", entity="report", entity_id=f"{sample_id}/v{rv.version}",
        sample_id=sample_id,
        after={"outcome": record.outcome, "source": record.source, "model": record.model,
               "prompt_sha256": record.prompt_sha256,
               "attempts": [a.model_dump(mode="json") for a in record.attempts]})
    return rv, record


def save_edit(store: Any, sample_id: str, text: str, *, actor: str) -> ReportVersion:
    """Save the reviewer's edited interpretation as a new version (the audit keeps the text before and after)."""
    versions = store.list_report_versions(sample_id)
    if not versions:
        raise ValueError(f"sample {sample_id!r} has no draft yet; generate the draft first")
    last = versions[-1]
    if last.signed_at is not None:
        raise ValueError(f"version {last.version} of sample {sample_id} is signed and cannot change; "
                         "amend the report (with a reason) to make a new version")
    if text.strip() == last.interpretation.strip():
        return last
    return store.add_report_version(sample_id, interpretation=text.strip(), source=last.interpretation_source,
                                    actor=actor, status="draft", amends_version=last.amends_version,
                                    amendment_reason=last.amendment_reason)


def amend_report(store: Any, sample_id: str, *, reason: str, actor: str) -> ReportVersion:
    """Start an amendment of the latest signed version: a new version naming it, with the reason."""
    if not reason.strip():
        raise ValueError("an amendment needs a reason (what was wrong in the signed report)")
    signed = [v for v in store.list_report_versions(sample_id) if v.signed_at is not None]
    if not signed:
        raise ValueError(f"sample {sample_id!r} has no signed report to amend")
    base = signed[-1]
    rv = store.add_report_version(sample_id, interpretation=base.interpretation, source=base.interpretation_source,
                                  actor=actor, status="draft", amends_version=base.version,
                                  amendment_reason=reason.strip())
    store.set_sample_status(sample_id, SampleStatus.amended, actor=actor, reason=reason.strip())
    return rv


def signing_problems(store: Any, sample_id: str, *, signer: str) -> list[str]:
    """Why the latest version cannot be signed by ``signer`` now (empty when it can)."""
    from phenotyping.results import sample_results

    problems = []
    found = store.get_user(signer)
    if found is None or not found[0].active or found[0].role not in SIGNING_ROLES:
        problems.append(f"user {signer!r} may not sign reports (a signer or admin must)")
    versions = store.list_report_versions(sample_id)
    if not versions:
        problems.append("there is no report draft to sign")
    elif versions[-1].signed_at is not None:
        problems.append(f"version {versions[-1].version} is already signed; amend it to change the report")
    res = sample_results(store, sample_id, n_bootstrap=0)
    if res.differential is None:
        problems.append("the sample has not been analysed")
    if res.n_unidentified:
        problems.append(f"{res.n_unidentified} unidentified cell(s) await review")
    return problems


def sign_report(store: Any, sample_id: str, *, signer: str, key_path: Path, password: bytes,
                settings: Any = None, reason: str | None = None) -> dict[str, Any]:
    """Render the latest version as final (or amended), sign it with the signer's PKCS#12, and record it.

    Returns ``{"version", "status", "pdf", "sha256", "signer"}``; the signed PDF is kept in the reports folder.

    Raises:
        SigningBlocked: see :func:`signing_problems`.
        reports.signing.SigningError: wrong key password or unreadable key.
    """
    from reports.pdf import render
    from reports.signing import sign

    problems = signing_problems(store, sample_id, signer=signer)
    if problems:
        raise SigningBlocked(f"cannot sign sample {sample_id}: " + "; ".join(problems))
    settings = _settings(settings)
    rv = store.get_report_version(sample_id)
    status = "amended" if rv.amends_version is not None else "final"
    user = store.get_user(signer)[0]
    ctx = build_context(store, sample_id, version=rv.version, status=status, settings=settings,
                        signer=Person(name=user.display_name or user.username, role=user.role.value))
    out_dir = Path(settings.reports_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    unsigned = out_dir / f"{sample_id}-v{rv.version}-unsigned.pdf"
    signed = out_dir / f"{sample_id}-v{rv.version}.pdf"
    unsigned.unlink(missing_ok=True)  # a previous attempt that failed at signing (e.g. wrong password)
    unsigned.write_bytes(render(ctx))
    try:
        sign(unsigned, Path(key_path), signed, password=password,
             reason=reason or (f"Amended report (replaces v{rv.amends_version}): {rv.amendment_reason}"
                               if status == "amended" else "Final report"))
    finally:
        unsigned.unlink(missing_ok=True)
    digest = hashlib.sha256(signed.read_bytes()).hexdigest()
    store.mark_report_signed(sample_id, rv.version, signer=signer, status=status, pdf_path=str(signed),
                             pdf_hash=digest)
    store.set_sample_status(sample_id, SampleStatus.signed if status == "final" else SampleStatus.amended,
                            actor=signer)
    return {"version": rv.version, "status": status, "pdf": str(signed), "sha256": digest, "signer": signer}


def preview_pdf(store: Any, sample_id: str, *, settings: Any = None) -> bytes:
    """The latest version rendered as it would be signed (not stored)."""
    from reports.pdf import render

    return render(build_context(store, sample_id, settings=_settings(settings)))


def export_fhir(store: Any, sample_id: str, *, settings: Any = None) -> dict[str, Any]:
    """FHIR R4 Bundle of the latest version (with the signed PDF attached when there is one), validated."""
    from reports.fhir import fhir_bundle, validate_bundle

    rv = store.get_report_version(sample_id)
    ctx = build_context(store, sample_id, version=rv.version, settings=_settings(settings))
    path = store.report_pdf_path(sample_id, rv.version)
    pdf = Path(path).read_bytes() if path and Path(path).is_file() else None
    bundle = fhir_bundle(ctx, pdf=pdf)
    validate_bundle(bundle)
    return bundle


def export_cells_csv(store: Any, sample_id: str) -> str:
    """One row per cell: id, file, QC, prediction with its probabilities and targets, review, counted or why not."""
    from phenotyping.results import sample_results
    from reports.fhir import cells_csv

    res = sample_results(store, sample_id, n_bootstrap=0)
    classes = list(res.card["classes"]) if res.card else []
    rows = []
    targets: list[str] = []
    for r in res.cells:
        row: dict[str, Any] = {
            "cell_id": r.cell.id, "cell_key": r.cell.cell_key, "source_file": r.cell.source_file,
            "qc_state": r.cell.qc_state.value, "predicted_class": r.predicted_class,
            "confidence": None if r.confidence is None else round(r.confidence, 4),
            "reviewed_label": r.cell.reviewed_label, "final_label": r.final_label, "counted": r.counted,
            "exclusion": r.exclusion}
        for c in classes:
            row[f"p_{c}"] = None if r.probabilities is None else round(float(r.probabilities.get(c, 0.0)), 4)
        for t, v in r.targets.items():
            row[f"pred_{t}"] = v
            if t not in targets:
                targets.append(t)
        rows.append(row)
    base = ["cell_id", "cell_key", "source_file", "qc_state", "predicted_class", "confidence", "reviewed_label",
            "final_label", "counted", "exclusion"]
    return cells_csv(rows, columns=base + [f"p_{c}" for c in classes] + [f"pred_{t}" for t in targets])
