"""Gathering steps of :func:`reports.context.build_context`: what a report needs from the store and the core.

The report version, the people, the audit chain head, manual counts, the latest saved study of the sample,
reference intervals and cell thumbnails. Turning computed results into rows and wording is in :mod:`reports._format`. The models it fills
are in :mod:`reports._models`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from phenotyping.errors import PhenotypingError
from reports._format import kappa_summary, same_value, study_rows, text_svg, thumbnail_data_uri
from reports._models import (AuditChainHead, ComparisonRow, DomainStatement, Person, SignedVersionError,
                             StudyAgreement)


def unsigned_version(store: Any, sample_id: str, version: int | None, given: Any = None) -> Any:
    """The ``ReportVersion`` to build (``given``, else the stored ``version``, else the latest), refused if signed."""
    rv = given if given is not None else store.get_report_version(sample_id, version)
    if rv.signed_at is not None:
        raise SignedVersionError(
            f"report {sample_id} v{rv.version} was signed by {rv.signed_by} at {rv.signed_at:%Y-%m-%d %H:%M} UTC; "
            f"what was signed is its PDF ({store.report_pdf_path(sample_id, rv.version)}, sha256 {rv.pdf_hash}), "
            "never a new rendering of today's data; amend the report to make a new version")
    return rv


def header_fields(settings: Any, sample: Any) -> dict[str, Any]:
    """The report header's laboratory and sample details (ISO 15189 report elements) as ``ReportContext`` fields."""
    return {"lab_name": settings.lab_name, "lab_id": settings.lab_id, "lab_address": settings.lab_address,
            "lab_contact": settings.lab_contact, "patient_pseudonym": sample.patient_pseudonym,
            "specimen": sample.specimen.value, "requester": sample.requester, "collected_at": sample.collected_at,
            "received_at": sample.received_at}


def require_differential(res: Any, sample_id: str) -> None:
    """Raise ValueError unless ``sample_results`` found an analysis model and computed a differential."""
    if res.differential is None or res.card is None or res.model_id is None:
        raise ValueError(f"sample {sample_id!r} has no analysis model, so there is no differential to report; "
                         "run `python -m phenotyping predict` first")


def model_version(store: Any, sample_id: str, model_id: str, card: Any) -> str:
    """The version recorded with the sample's predictions, else the card's."""
    preds = store.list_predictions(sample_id, model_id)
    return preds[0].model_version if preds else str(card.get("version", "unknown"))


def audit_head(store: Any) -> AuditChainHead | None:
    """The store's audit chain head (seq, event id, SHA-256), printed in the report; None while the trail is empty."""
    head = store.audit_head()
    return None if head is None else AuditChainHead(seq=head.seq, event_id=head.id, sha256=head.hash)


def domain_statement(store: Any, sample_id: str, model_id: str) -> DomainStatement | None:
    """The stored domain check of the sample's run of ``model_id`` (None when none was stored)."""
    found = store.domain_check(sample_id, model_id)
    if found is None:
        return None
    r = found["result"]
    return DomainStatement(in_distribution=r.get("in_distribution"), score=r.get("score"),
                           threshold=r.get("threshold"), reason=str(r.get("reason", "")),
                           n_cells=int(r.get("n_cells", 0)))


def person(store: Any, username: str | None) -> Person | None:
    """A user's display name and role; an unknown username is shown as itself with role ``user``."""
    if not username:
        return None
    found = store.get_user(username)
    if found is None:
        return Person(name=username, role="user")
    user = found[0]
    return Person(name=user.display_name or user.username, role=user.role.value)


def cell_reviewers(store: Any, sample_id: str) -> list[Person]:
    """The people who reviewed cells of the sample (reclassified or confirmed them: the actors of its review
    actions), in the order of their first review, with display names from their accounts."""
    actors = dict.fromkeys(a.actor for a in store.list_review_actions(sample_id))
    return [p for p in (person(store, a) for a in actors) if p is not None]


def drafted_versions(store: Any, sample_id: str) -> set[int]:
    """Versions written by ``reports.workflow.draft_report`` (from its ``report.draft`` audit events)."""
    out = set()
    for e in store.list_audit(sample_id=sample_id, action="report.draft", limit=1_000_000):
        _, _, v = e.entity_id.rpartition("/v")
        if v.isdigit():
            out.add(int(v))
    return out


def interpretation_edited(store: Any, rv: Any) -> bool:
    """Whether the reviewer changed the drafted text: the text differs from the latest draft at or before ``rv``.

    A version written by ``draft_report`` is never "edited" (a redraft starts afresh). Versions saved without a
    draft event (older stores) compare with the first version of the same source.
    """
    versions = {v.version: v for v in store.list_report_versions(rv.sample_id)}
    if rv.version not in versions:  # a draft not saved yet
        return False
    drafted = drafted_versions(store, rv.sample_id)
    earlier = [v for v in drafted if v <= rv.version]
    if earlier:
        return versions[max(earlier)].interpretation != rv.interpretation
    for v in sorted(versions):
        if versions[v].interpretation_source == rv.interpretation_source:
            return versions[v].interpretation != rv.interpretation
    return False


def manual_comparison(store: Any, sample_id: str, diff: Any) -> tuple[list[ComparisonRow], bool]:
    """This sample's manual count against the model, in the report's class order; and whether it has any."""
    from phenotyping.agreement.manual_counts import sample_percentages
    own_counts = store.get_manual_counts(sample_id)
    own_pct = sample_percentages(own_counts).get(sample_id, {}) if own_counts else {}
    return [ComparisonRow(label=c.label, manual_percent=own_pct[c.label], model_percent=c.percent)
            for c in diff.raw.classes if c.label in own_pct], bool(own_counts)


def gallery(store: Any, cells: Any, per_class: int, *, card: Any = None) -> dict[str, list[str]]:
    """Up to ``per_class`` thumbnails (PNG data URIs) of counted cells per final label, in the cells' order; in
    colour when the model ``card`` names red, green, blue channels (a stained smear)."""
    from phenotyping.analysis.cellview import is_rgb

    rgb = is_rgb(((card or {}).get("input") or {}).get("channels"))
    out: dict[str, list[str]] = {}
    for r in cells:
        if r.counted and r.final_label and len(out.setdefault(r.final_label, [])) < per_class:
            out[r.final_label].append(thumbnail_data_uri(store.read_cell_bytes(r.cell), r.cell.source_file,
                                                         rgb=rgb))
    return {k: v for k, v in out.items() if v}


def reference_intervals_for(settings: Any, given: Any, specimen: str, labels: list[str]
                            ) -> tuple[dict[str, tuple[float, float]], str | None, list[str]]:
    """``({label: (low, high)}, source or None, warnings)`` from explicit intervals or the lab's setting."""
    from reports.reference import ReferenceIntervals, class_key, configured_intervals

    if given is None:
        given = configured_intervals(settings)
    if given is None:
        return {}, None, []
    if isinstance(given, ReferenceIntervals):
        found = {lab: given.lookup(specimen, lab) for lab in labels}
        out = {lab: iv for lab, iv in found.items() if iv is not None}
        if not given.for_specimen(specimen):
            return {}, None, []
        warnings = []
        unmatched = given.unmatched(specimen, labels)
        if unmatched:
            warnings.append(f"The reference-interval file lists {specimen} class(es) {unmatched} that this model "
                            f"does not report (its classes: {labels}); check the names in {given.source}.")
        return out, given.source, warnings
    keys = {class_key(k): (float(v[0]), float(v[1])) for k, v in dict(given).items()}
    return {lab: keys[class_key(lab)] for lab in labels if class_key(lab) in keys}, "supplied by the caller", []


def _study_figures(store: Any, study: dict[str, Any], card: Any, classes: list[str]
                   ) -> tuple[dict[str, str], str | None]:
    """Bland-Altman SVGs (classify-and-count %, per class) of a saved study, redrawn from the store's data.

    The saved study keeps its statistics, not the paired values, so the pairs are collected again (the same way
    :func:`phenotyping.agreement.study.run_study` does) and the statistics recomputed; figures are drawn only when
    they reproduce the saved bias and limits exactly. Returns ``(figures, why none)``.
    """
    from phenotyping.agreement.figures import bland_altman_svg
    from phenotyping.agreement.manual_counts import sample_percentages
    from phenotyping.agreement.study import compute_study, model_percentages

    ids = list(study["sample_ids"])
    try:
        manual = sample_percentages([m for s in ids for m in store.get_manual_counts(s)])
        raw = {s: model_percentages(store, s, model_id=study["model_id"], card=card)[0] for s in ids}
        recomputed = compute_study(study["name"], manual, raw, classes=classes,
                                   measure=study["result"].get("measure", "absolute"),
                                   model_version=study["model_version"])
    except (ValueError, KeyError, PhenotypingError) as e:
        return {}, f"Bland–Altman figures not drawn: the study's data can no longer be collected ({e})."
    changed = []
    for label, agreement in recomputed.raw.items():
        saved = study["per_class"].get(f"{label}|raw") or {}
        ba = agreement.bland_altman
        if not all(same_value(x, saved.get(k)) for x, k in ((ba.bias, "bias"), (ba.loa_lower, "loa_lower"),
                                                              (ba.loa_upper, "loa_upper"))):
            changed.append(label)
    if changed:
        return {}, (f"Bland–Altman figures not drawn: results of the study's samples changed after it was saved "
                    f"(classes {changed}); the table shows the study as saved. Run the study again to refresh it.")
    # points unlabelled: other samples' ids do not belong in this patient's report
    return {label: text_svg(bland_altman_svg, dataclasses.replace(a.bland_altman, labels=None), title=label,
                            units="%")
            for label, a in recomputed.raw.items()}, None


def study_agreement(store: Any, sample_id: str, *, model_id: str, card: Any, figures: bool = True,
                    ) -> tuple[StudyAgreement | None, dict[str, str], str | None]:
    """The latest saved study of ``model_id`` that includes the sample: its agreement, figures and a note.

    Returns ``(study or None, {class: SVG}, note)``; the note says why there is no study or no figure.
    """
    others = []
    for entry in store.list_studies():  # newest first
        study = store.get_study(entry["name"])
        if sample_id not in study["sample_ids"]:
            continue
        if study["model_id"] != model_id:
            others.append(f"{study['model_id']}")
            continue
        classes = list(card["classes"])
        rows = study_rows(study, classes)
        if not rows:
            return None, {}, f"The latest study including this sample holds no per-class results for {classes}."
        result = study["result"]
        agreement = StudyAgreement(
            name=study["name"], model_id=study["model_id"], model_version=str(study["model_version"]),
            measure=result.get("measure", "absolute"), n_samples=len(study["sample_ids"]),
            saved_at=study["created_at"], saved_by=study.get("created_by") or "",
            correction_method=result.get("correction_method"), rows=rows,
            kappa=kappa_summary(result.get("classification")))
        figs, note = _study_figures(store, study, card, classes) if figures else ({}, None)
        return agreement, figs, note
    if others:
        return None, {}, (f"No saved agreement study of model {model_id} includes this sample (studies of other "
                          f"models do: {sorted(set(others))}).")
    return None, {}, "No saved agreement study includes this sample."
