"""What a report shows (:class:`ReportContext`) and the facts an LLM may see (:func:`facts_from_context`).

Percentages are 0–100 throughout. Times are timezone-aware. The context is plain data: the PDF template, the FHIR
export and the attached JSON are all rendered from it, so they cannot disagree. :func:`build_context` reads the
store through the steps in :mod:`reports._gather` and turns results into rows with the pure :mod:`reports._format`;
the facts are made in :mod:`reports._facts`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reports._facts import Facts, facts_from_context, slug
from reports._format import (apart_rows, differential_wording, draft_source_words, marker_rows, method_info,
                             qc_summary, report_status, result_rows, text_svg)
from reports._models import (
    RESULTS_SCHEMA, ApartRow, ClassAgreementRow, ComparisonRow, MarkerRow, MethodInfo, Person, QCSummary, ReportContext,
    ReportStatus, ResultRow, SignedVersionError, StudyAgreement,
)
from reports._gather import (
    audit_head, cell_reviewers, domain_statement, drafted_versions, gallery, header_fields, interpretation_edited,
    manual_comparison, model_version, person, reference_intervals_for, require_differential, study_agreement,
    unsigned_version,
)

__all__ = [
    "ApartRow", "ClassAgreementRow", "ComparisonRow", "Facts", "MarkerRow", "MethodInfo", "Person", "QCSummary",
    "RESULTS_SCHEMA", "ReportContext", "ReportStatus", "ResultRow", "SignedVersionError", "StudyAgreement",
    "build_context", "draft_source_words", "drafted_versions", "facts_from_context", "slug", "study_agreement",
    "text_svg",
]

def build_context(
    store: Any,
    sample_id: str,
    *,
    version: int | None = None,
    status: ReportStatus | None = None,
    signer: Person | None = None,
    signer_certificate: str | None = None,
    reference_intervals: Any = None,
    gallery_per_class: int = 6,
    settings: Any = None,
    report_version: Any = None,
    results: Any = None,
    reported_at: datetime | None = None,
    study_figures: bool = True,
) -> ReportContext:
    """Assemble one unsigned report version of a sample from the store's current data.

    The differential comes from :func:`phenotyping.analysis.results.sample_results` (the one place deciding which cells
    are counted; pass ``results`` to reuse one already computed). Status defaults from the version: draft →
    preliminary, a version that amends another → amended. Reference intervals: ``reference_intervals`` (a
    :class:`reports.reference.ReferenceIntervals` or ``{label: (low, high)}``), else the file of
    ``settings.reference_intervals``. The agreement section is the latest saved study of the sample's model that
    includes it (:func:`study_agreement`). ``report_version`` (a ``ReportVersion`` not yet saved) replaces the
    stored one, e.g. to collect the facts for the first draft.

    Raises:
        NotFoundError: no such sample or report version.
        SignedVersionError: the version is signed (what was signed is its PDF; see ``reports.workflow``).
        ValueError: the sample has no analysis model; the reference-interval file is invalid.
    """
    from phenotyping.analysis.results import sample_results
    from phenotyping.settings import get_settings

    settings = settings or get_settings()
    rv = unsigned_version(store, sample_id, version, given=report_version)
    res = results if results is not None else sample_results(store, sample_id)
    require_differential(res, sample_id)
    diff, card, sample = res.differential, res.card, res.sample
    labels = [c.label for c in diff.raw.classes] + [a.label for a in diff.apart if a.role != "counted_apart"]
    title, basis, statement = differential_wording(sample.specimen.value, res.specimen_check)
    refs, ref_source, ref_warnings = reference_intervals_for(settings, reference_intervals, sample.specimen.value,
                                                             labels)
    comparison, has_manual_counts = manual_comparison(store, sample_id, diff)
    study, figures, study_note = study_agreement(store, sample_id, model_id=res.model_id, card=card,
                                                 figures=study_figures)
    if study is None and not has_manual_counts:
        study_note = None  # nothing to compare: the section is left out
    replaced = None if rv.amends_version is None else store.get_report_version(sample_id, rv.amends_version)
    replaced_by = None if replaced is None else person(store, replaced.signed_by)
    return ReportContext(
        **header_fields(settings, sample), report_id=f"{settings.lab_id}-{sample_id}",
        version=rv.version, status=report_status(rv) if status is None else status,
        amendment_reason=rv.amendment_reason, replaces_version=rv.amends_version,
        replaces_signed_at=None if replaced is None else replaced.signed_at,
        replaces_signed_by=replaced_by.name if replaced_by is not None else None,
        replaces_pdf_sha256=None if replaced is None else replaced.pdf_hash,
        sample_id=sample_id, reported_at=reported_at or rv.created_at,
        method=method_info(res.model_id, model_version(store, sample_id, res.model_id, card), card, diff.corrected),
        results=result_rows(diff, refs), apart=apart_rows(diff, refs), differential_title=title,
        counted_basis=basis, specimen_statement=statement, confidence=diff.raw.confidence, reference_source=ref_source,
        markers=marker_rows(diff, card), qc=qc_summary(diff),
        comparison=comparison, study=study, study_note=study_note, bland_altman_figures=figures,
        gallery=gallery(store, res.cells, gallery_per_class, card=card),
        warnings=[*diff.raw.warnings, *getattr(diff, "notes", ()), *ref_warnings],
        interpretation=rv.interpretation, interpretation_source=rv.interpretation_source,
        interpretation_edited=interpretation_edited(store, rv),
        reviewers=cell_reviewers(store, sample_id), drafted_by=person(store, rv.created_by),
        signer=person(store, rv.signed_by) or signer,
        signer_certificate=signer_certificate, audit_head=audit_head(store),
        domain_check=domain_statement(store, sample_id, res.model_id),
    )
