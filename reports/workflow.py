"""A sample's report lifecycle over the store: draft → edits (each a version) → sign → amend → export.

Every step writes the store and its audit trail; the app's Report screen and the command line call these functions,
and each checks the acting account's role itself (:func:`phenotyping.auth.require_actor`): drafting and editing take
``report.draft``, amending ``report.amend``, signing ``report.sign``.
A signed version is never changed: an amendment is a new version that names the one it replaces, signed again.
What a signed version says is its signed PDF: the PDF carries the results (``results.json``) and the per-cell table
(``cells.csv``) it was rendered from, and every export of a signed version (FHIR, CSV, preview) is read from there,
after checking the file against the sha256 recorded at signing, never rebuilt from data that changed later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from phenotyping.auth import can, require_actor
from phenotyping.errors import PhenotypingError, StoreError
from phenotyping.schemas import ReportVersion, SampleStatus
from reports.context import Person, ReportContext, build_context, facts_from_context
from reports.draft import DraftRecord, check_text, draft_interpretation

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

    Raises:
        ValueError: the latest version is signed (only :func:`amend_report` starts a version after signing).
        phenotyping.auth.PermissionDenied: ``actor`` is not an active account with ``report.draft``.
    """
    actor = require_actor(store, actor, "report.draft").username
    settings = _settings(settings)
    latest = store.list_report_versions(sample_id)
    if latest and latest[-1].signed_at is not None:
        raise ValueError(f"version {latest[-1].version} of sample {sample_id} is signed; a signed report is never "
                         "redrafted: amend it (with a reason) to start a new version")
    amends = None
    if latest and latest[-1].amends_version is not None:
        amends = latest[-1]  # drafting inside an amendment keeps it an amendment
    placeholder = ReportVersion(sample_id=sample_id, version=(latest[-1].version + 1) if latest else 1,
                                status="draft", created_by=actor,
                                amends_version=amends.amends_version if amends else None,
                                amendment_reason=amends.amendment_reason if amends else None)
    ctx = build_context(store, sample_id, report_version=placeholder, settings=settings, gallery_per_class=0,
                        study_figures=False)
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
    """Save the reviewer's edited interpretation as a new version (the audit keeps the text before and after).

    Raises:
        phenotyping.auth.PermissionDenied: ``actor`` is not an active account with ``report.draft``.
    """
    actor = require_actor(store, actor, "report.draft").username
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
    """Start an amendment of the latest signed version: a new version naming it, with the reason.

    Raises:
        phenotyping.auth.PermissionDenied: ``actor`` is not an active signer or admin (``report.amend``).
    """
    actor = require_actor(store, actor, "report.amend").username
    if not reason.strip():
        raise ValueError("an amendment needs a reason (what was wrong in the signed report)")
    versions = store.list_report_versions(sample_id)
    if versions and versions[-1].signed_at is None and versions[-1].amends_version is not None:
        raise ValueError(f"version {versions[-1].version} already amends v{versions[-1].amends_version}; "
                         "edit and sign it")
    signed = [v for v in versions if v.signed_at is not None]
    if not signed:
        raise ValueError(f"sample {sample_id!r} has no signed report to amend")
    base = signed[-1]
    rv = store.add_report_version(sample_id, interpretation=base.interpretation, source=base.interpretation_source,
                                  actor=actor, status="draft", amends_version=base.version,
                                  amendment_reason=reason.strip())
    store.set_sample_status(sample_id, SampleStatus.amended, actor=actor, reason=reason.strip())
    return rv


# -- signing ----------------------------------------------------------------------------------------------------------
def interpretation_problems(ctx: ReportContext) -> list[str]:
    """Why the interpretation of ``ctx`` may not be signed: numbers that are not current facts, forbidden wording."""
    return [f"interpretation: {p}" for p in check_text(ctx.interpretation, facts_from_context(ctx))]


def _gate_problems(store: Any, sample_id: str, signer: str) -> tuple[list[str], Any]:
    """Role, version and review-state reasons not to sign (cheap: no bootstrap, no rendering), and the sample's
    results without bootstrap (None when there is nothing to check further)."""
    from phenotyping.analysis.results import sample_results

    problems = []
    found = store.get_user(signer)
    if found is None or not found[0].active or not can(found[0].role, "report.sign"):
        problems.append(f"user {signer!r} may not sign reports (a signer or admin must)")
    versions = store.list_report_versions(sample_id)
    if not versions:
        return [*problems, "there is no report draft to sign"], None
    if versions[-1].signed_at is not None:
        return [*problems, f"version {versions[-1].version} is already signed; amend it to change the report"], None
    res = sample_results(store, sample_id, n_bootstrap=0)
    if res.differential is None:
        return [*problems, "the sample has not been analysed"], None
    if res.n_unidentified:
        problems.append(f"{res.n_unidentified} unidentified cell(s) await review")
    return problems, res


def signing_problems(store: Any, sample_id: str, *, signer: str, settings: Any = None,
                     context: ReportContext | None = None) -> list[str]:
    """Why the latest version cannot be signed by ``signer`` now (empty when it can).

    Besides role, version and review state, the interpretation is checked again against the facts of the sample's
    current results (``context``, built here when not given): a number that is not a fact any more (cells
    reclassified after drafting) or was typed by the reviewer, or forbidden wording, blocks signing. The check
    first uses the results without bootstrap; only a number it cannot place is checked again with the corrected
    proportions' bootstrap CIs (which take seconds).
    """
    problems, res = _gate_problems(store, sample_id, signer)
    if res is None:
        return problems
    if context is not None:
        return problems + interpretation_problems(context)
    settings = _settings(settings)
    quick = dict(settings=settings, gallery_per_class=0, study_figures=False)
    text = interpretation_problems(build_context(store, sample_id, results=res, **quick))
    if any("matches no" in p for p in text):
        text = interpretation_problems(build_context(store, sample_id, **quick))
    return problems + text


def domain_acknowledgement_needed(store: Any, sample_id: str) -> Any:
    """The analysis run's domain check (a ``DomainStatement``) when it found the cells out of distribution, which a
    signer must acknowledge with a reason (:func:`sign_report`); None when in distribution or never checked."""
    from reports._gather import domain_statement

    model_id = store.analysis_model(sample_id)
    found = None if model_id is None else domain_statement(store, sample_id, model_id)
    return found if found is not None and found.in_distribution is False else None


def sign_report(store: Any, sample_id: str, *, signer: str, key_path: Path, password: bytes,
                settings: Any = None, reason: str | None = None,
                domain_acknowledgement: str | None = None) -> dict[str, Any]:
    """Render the latest version as final (or amended), sign it with the signer's PKCS#12, and record it.

    The report time is the signing time; the PDF carries ``results.json`` and ``cells.csv`` (what was signed).
    Returns ``{"version", "status", "pdf", "sha256", "signer", "signer_name", "certificate_name"}``: ``signer``
    the username, ``signer_name`` the display name the signature and its visible stamp carry (the certificate's
    CN names the same person), ``certificate_name`` that CN.

    When the analysis was out of distribution (:func:`domain_acknowledgement_needed`), ``domain_acknowledgement``
    (the signer's reason to sign anyway) is required: the report prints it in its out-of-distribution box and it is
    audited as ``report.domain_acknowledged``.

    Raises:
        SigningBlocked: see :func:`signing_problems`; an out-of-distribution analysis without
            ``domain_acknowledgement``; or the key's certificate fails a rule of
            :func:`phenotyping.certificates.check_signer_certificate` (issued by ``settings.lab_ca``, valid now,
            digital-signature key usage, a common name that names the signer); nothing changes in the store then.
        reports.signing.SigningError: wrong key password or unreadable key.
    """
    from phenotyping.analysis.results import sample_results
    from phenotyping.certificates import check_signer_certificate, common_name
    from reports.pdf import render
    from reports.signing import sign, signing_certificate

    settings = _settings(settings)
    found = store.get_user(signer)
    pre, _ = _gate_problems(store, sample_id, signer)
    if pre:
        raise SigningBlocked(f"cannot sign sample {sample_id}: " + "; ".join(pre))
    ood, ack = domain_acknowledgement_needed(store, sample_id), (domain_acknowledgement or "").strip()
    if ood is not None and not ack:
        raise SigningBlocked(f"cannot sign sample {sample_id}: its analysis is out of distribution ({ood.reason}); "
                             "acknowledge it with a reason to sign")
    user = found[0]
    display = user.display_name or user.username
    cert = signing_certificate(Path(key_path), password)  # a wrong password fails here, before any work
    failed = check_signer_certificate(cert, lab_ca=settings.lab_ca, signer_name=display)
    if failed:
        raise SigningBlocked(f"cannot sign sample {sample_id} with the key {key_path}: " + "; ".join(failed))
    rv = store.get_report_version(sample_id)
    status = "amended" if rv.amends_version is not None else "final"
    res = sample_results(store, sample_id)
    now = datetime.now(timezone.utc)
    ctx = build_context(store, sample_id, version=rv.version, status=status, settings=settings, results=res,
                        signer=Person(name=display, role=user.role.value), reported_at=now,
                        signer_certificate=None if common_name(cert) == display else common_name(cert))
    problems = interpretation_problems(ctx)
    if problems:
        raise SigningBlocked(f"cannot sign sample {sample_id}: " + "; ".join(problems))
    if ood is not None and ctx.domain_check is not None:
        ctx = ctx.model_copy(update={"domain_check": ctx.domain_check.model_copy(update={"acknowledgement": ack})})
    out_dir = Path(settings.reports_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    unsigned = out_dir / f"{sample_id}-v{rv.version}-unsigned.pdf"
    signed = out_dir / f"{sample_id}-v{rv.version}.pdf"
    unsigned.unlink(missing_ok=True)  # a previous attempt that failed at signing
    unsigned.write_bytes(render(ctx, cells_csv=cells_csv_from_results(res)))
    try:
        info = sign(unsigned, Path(key_path), signed, password=password, lab_ca=settings.lab_ca, signer_name=display,
                    reason=reason or (f"Amended report (replaces v{rv.amends_version}): {rv.amendment_reason}"
                                      if status == "amended" else "Final report"))
    finally:
        unsigned.unlink(missing_ok=True)
    digest = hashlib.sha256(signed.read_bytes()).hexdigest()
    if ood is not None:
        store.record_event(actor=signer, action="report.domain_acknowledged", entity="report",
                           entity_id=f"{sample_id}/v{rv.version}", sample_id=sample_id,
                           after={"reason": ack, "domain_check": ood.model_dump(mode="json")})
    store.mark_report_signed(sample_id, rv.version, signer=signer, status=status, pdf_path=str(signed),
                             pdf_hash=digest)
    store.set_sample_status(sample_id, SampleStatus.signed if status == "final" else SampleStatus.amended,
                            actor=signer)
    return {"version": rv.version, "status": status, "pdf": str(signed), "sha256": digest, "signer": signer,
            "signer_name": info["signer"], "certificate_name": common_name(cert)}


def install_signer_key(store: Any, settings: Any, username: str, data: bytes, password: bytes) -> dict[str, Any]:
    """Keep ``data`` (a PKCS#12) as ``username``'s signing key after checking its certificate.

    The certificate must be issued by the lab CA (``settings.lab_ca``), be within its validity, carry the
    digital-signature key usage and name the user's display name (case, punctuation, order and titles ignored):
    :func:`phenotyping.certificates.check_signer_certificate`. The installation is audited. Returns
    ``{"path", "certificate_name", "display_name"}``.

    Raises:
        ValueError: wrong password, not a PKCS#12, no such user, or a certificate rule that fails (named).
    """
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    from phenotyping.auth import install_signer_key as keep_key
    from phenotyping.certificates import common_name

    found = store.get_user(username)
    if found is None:
        raise ValueError(f"no user {username!r}")
    display = found[0].display_name or found[0].username
    path = keep_key(settings, username, data, password, signer_name=display)
    _, cert, _ = pkcs12.load_key_and_certificates(data, password)
    assert cert is not None  # keep_key refuses a file without one
    cn = common_name(cert)
    store.record_event(actor=username, action="signer_key.install", entity="user", entity_id=username,
                       after={"certificate_name": cn, "display_name": display,
                              "certificate_sha256": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()})
    return {"path": str(path), "certificate_name": cn, "display_name": display}


# -- what was signed --------------------------------------------------------------------------------------------------
def signed_pdf(store: Any, sample_id: str, version: int) -> bytes:
    """The signed PDF of a version, checked against the sha256 recorded at signing.

    Raises:
        ValueError: the version is not signed.
        StoreError: the file is missing or its bytes are not the ones signed.
    """
    rv = store.get_report_version(sample_id, version)
    if rv.signed_at is None:
        raise ValueError(f"report {sample_id} v{version} is not signed")
    path = store.report_pdf_path(sample_id, version)
    if not path or not Path(path).is_file():
        raise StoreError(f"the signed PDF of report {sample_id} v{version} is missing ({path}); restore it from "
                         f"the backup (sha256 {rv.pdf_hash})")
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != rv.pdf_hash:
        raise StoreError(f"{path} is not the PDF signed as report {sample_id} v{version}: sha256 {digest}, recorded "
                         f"{rv.pdf_hash}; restore the signed file from the backup")
    return data


def signed_context(store: Any, sample_id: str, version: int) -> ReportContext:
    """What a signed version reported, read from the ``results.json`` inside its signed PDF (no images)."""
    from reports.pdf import RESULTS_ATTACHMENT, attachment

    data = attachment(signed_pdf(store, sample_id, version), RESULTS_ATTACHMENT)
    if data is None:
        raise StoreError(f"the signed PDF of report {sample_id} v{version} has no {RESULTS_ATTACHMENT} attached")
    return ReportContext.from_results_json(json.loads(data))


def _version(store: Any, sample_id: str, version: int | None) -> ReportVersion | None:
    if version is not None:
        return store.get_report_version(sample_id, version)
    versions = store.list_report_versions(sample_id)
    return versions[-1] if versions else None


def preview_pdf(store: Any, sample_id: str, *, settings: Any = None) -> bytes:
    """The latest version as it would be signed now (not stored); for a signed version, its signed PDF."""
    from reports.pdf import render

    rv = store.get_report_version(sample_id)
    if rv.signed_at is not None:
        return signed_pdf(store, sample_id, rv.version)
    return render(build_context(store, sample_id, settings=_settings(settings)))


def export_fhir(store: Any, sample_id: str, *, version: int | None = None, settings: Any = None) -> dict[str, Any]:
    """FHIR R4B Bundle of a version (default: the latest), validated.

    A signed version is exported from its signed PDF's ``results.json`` with the PDF attached; an unsigned one from
    the current results, as preliminary.
    """
    from reports.fhir import fhir_bundle

    rv = store.get_report_version(sample_id, version)
    if rv.signed_at is not None:
        return fhir_bundle(signed_context(store, sample_id, rv.version), pdf=signed_pdf(store, sample_id, rv.version))
    ctx = build_context(store, sample_id, version=rv.version, settings=_settings(settings), gallery_per_class=0,
                        study_figures=False)
    return fhir_bundle(ctx)


def cells_csv_from_results(res: Any) -> str:
    """One row per cell: id, file, QC, prediction with its probabilities and targets, review, counted or why not."""
    from reports.fhir import cells_csv

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


def export_cells_csv(store: Any, sample_id: str, *, version: int | None = None) -> str:
    """Per-cell CSV of a version (default: the latest). A signed version's table is the ``cells.csv`` signed inside
    its PDF; otherwise (or with no report yet) the current results."""
    from phenotyping.analysis.results import sample_results
    from reports.pdf import CELLS_ATTACHMENT, attachment

    rv = _version(store, sample_id, version)
    if rv is not None and rv.signed_at is not None:
        data = attachment(signed_pdf(store, sample_id, rv.version), CELLS_ATTACHMENT)
        if data is None:
            raise StoreError(f"the signed PDF of report {sample_id} v{rv.version} carries no {CELLS_ATTACHMENT} "
                             "(signed before per-cell tables were attached); it cannot be exported as signed")
        return data.decode("utf-8")
    return cells_csv_from_results(sample_results(store, sample_id, n_bootstrap=0))


def report_token(store: Any, sample_id: str, settings: Any = None) -> str:
    """Changes whenever something a report shows may have changed: the sample's latest audit event (cells, QC,
    predictions, reviews, counts, versions, signing), the latest saved study and the reference-interval file."""
    settings = _settings(settings)
    last = store.list_audit(sample_id=sample_id, limit=1)
    study = store.list_audit(action="study.save", limit=1)
    ref = getattr(settings, "reference_intervals", None)
    ref_state = ""
    if ref is not None:
        try:
            st = Path(ref).stat()
            ref_state = f"{ref}@{st.st_mtime_ns}:{st.st_size}"
        except OSError:
            ref_state = f"{ref}@missing"
    return f"{last[0].id if last else 0}/{study[0].id if study else 0}/{ref_state}"
