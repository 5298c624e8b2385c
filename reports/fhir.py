"""Exports: a FHIR R4B Bundle (DiagnosticReport, Organization, Specimen, ServiceRequest, one Observation per class)
and per-cell CSV.

FHIR version: exactly R4B, :data:`FHIR_VERSION` 4.3.0. ``fhir.resources`` 8 ships R5 (its default models, 5.0.0),
R4B and STU3, no plain R4; the Bundle is validated with ``fhir.resources.R4B`` and :func:`validate_bundle` refuses
to run when those models are not :data:`FHIR_VERSION`. Every resource states the version in ``meta.profile``: the
core StructureDefinition of its type with the version suffix (``…/StructureDefinition/Specimen|4.3.0``); a server
reading files or requests should be given :data:`FHIR_MIME_TYPE`.

The report's header goes into the resources an ISO 15189 report element belongs to: the laboratory (name, id,
address, contact) is an ``Organization``, the report's ``performer``; the requester is a ``ServiceRequest``
(``requester.display``) that the report's ``basedOn`` and the specimen's ``request`` point to, present only when the
sample records one; collection and receipt times are ``Specimen.collection.collectedDateTime`` and
``Specimen.receivedTime``.

How each class is encoded (an Observation):

* ``valueQuantity`` — classify-and-count percentage, UCUM ``%``;
* extension :data:`CI_EXTENSION` — its confidence interval (FHIR has no element for a CI): sub-extension
  ``level`` (valueDecimal, e.g. 0.95), ``interval`` (valueRange in %) and ``method`` (valueString);
* ``component`` (only when computed) — the prior-shift-corrected percentage, with its CI in the same extension;
* ``referenceRange`` + ``interpretation`` (H/L/N, v3-ObservationInterpretation) — only for the laboratory's
  reference interval, when configured (a CI is not a reference range, so it never goes there); otherwise a
  ``note`` says that no interval is configured;
* ``code`` — the LOINC "…/100 leukocytes in Blood by Automated count" code for the five blood classes, and always
  a local code ``urn:leuko:cell-class|<label>``.

Only the classes the specimen's differential counts (the model card's ``specimens`` rule) are percentages. Each class
reported apart is one more Observation in its own unit: per 100 leukocytes (erythroblasts) as UCUM ``/100{WBCs}``
(LOINC 58413-6 "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count" in blood), with its
exact CI and corrected value; counted apart (platelets) as a count of cells, UCUM ``{cells}``, never a percentage;
noted (BALF epithelial cells) as ``%`` of the counted and noted cells. When the model card does not declare the
sample's specimen, every Observation and the DiagnosticReport carry that statement (:data:`SPECIMEN_EXTENSION`).

The DiagnosticReport carries the audit trail's chain head when the report was rendered (:data:`AUDIT_HEAD_EXTENSION`:
sub-extensions ``seq`` valueInteger, ``event`` valueInteger, the event id, and ``sha256`` valueString), the same
values the PDF prints and ``python -m phenotyping audit verify`` checks against.
"""

from __future__ import annotations

import base64
import csv
import io
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reports.context import ApartRow, ReportContext, ResultRow

FHIR_VERSION = "4.3.0"
FHIR_MIME_TYPE = "application/fhir+json; fhirVersion=4.3"
CORE_PROFILE = "http://hl7.org/fhir/StructureDefinition/{resource}|" + FHIR_VERSION
CI_EXTENSION = "urn:leuko:fhir:StructureDefinition:confidence-interval"
REPLACES_EXTENSION = "urn:leuko:fhir:StructureDefinition:replaces-report-version"
AMENDMENT_EXTENSION = "urn:leuko:fhir:StructureDefinition:amendment-reason"
REPLACES_SHA256_EXTENSION = "urn:leuko:fhir:StructureDefinition:replaced-report-pdf-sha256"
SPECIMEN_EXTENSION = "urn:leuko:fhir:StructureDefinition:specimen-not-declared-by-model"
AUDIT_HEAD_EXTENSION = "urn:leuko:fhir:StructureDefinition:audit-chain-head"
CLASS_SYSTEM = "urn:leuko:cell-class"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

#: LOINC codes "<class>/100 leukocytes in Blood by Automated count" (blood specimens only).
BLOOD_LOINC = {
    "neutrophil": ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
    "lymphocyte": ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
    "monocyte": ("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
    "eosinophil": ("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
    "basophil": ("706-2", "Basophils/100 leukocytes in Blood by Automated count"),
}
NRBC_LOINC = ("58413-6", "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count")
_NRBC_NAMES = {"erythroblast", "nrbc", "nucleated red cell", "nucleated red blood cell", "normoblast"}
REPORT_CODE = {"coding": [{"system": "urn:leuko:report-type", "code": "leukocyte-differential"}],
               "text": "Leukocyte differential by single-cell imaging"}
SPECIMEN_SNOMED = {"blood": ("119297000", "Blood specimen"),
                   "balf": ("258607008", "Bronchoalveolar lavage fluid sample")}


#: UCUM (unit shown, code) of each way a class is reported.
UNITS = {"percent": ("%", "%"), "per_100_leukocytes": ("/100 WBC", "/100{WBCs}"), "counted_apart": ("cells", "{cells}"),
         "noted": ("%", "%")}


def _quantity(value: float, kind: str = "percent") -> dict[str, Any]:
    unit, code = UNITS[kind]
    return {"value": round(float(value), 3), "unit": unit, "system": UCUM, "code": code}


def _pct(value: float) -> dict[str, Any]:
    return _quantity(value, "percent")


def _ci(level: float, low: float, high: float, method: str, kind: str = "percent") -> dict[str, Any]:
    return {"url": CI_EXTENSION, "extension": [
        {"url": "level", "valueDecimal": level},
        {"url": "interval", "valueRange": {"low": _quantity(low, kind), "high": _quantity(high, kind)}},
        {"url": "method", "valueString": method},
    ]}


def _class_code(ctx: ReportContext, label: str) -> dict[str, Any]:
    codings = []
    key = label.strip().lower().removesuffix("s")
    if ctx.specimen == "blood" and key in BLOOD_LOINC:
        code, display = BLOOD_LOINC[key]
        codings.append({"system": LOINC, "code": code, "display": display})
    codings.append({"system": CLASS_SYSTEM, "code": label})
    per = "leukocytes" if ctx.specimen == "blood" else "cells counted"
    return {"coding": codings, "text": f"{label} / 100 {per}"}


def _base_observation(ctx: ReportContext, code: dict[str, Any], subject: dict, specimen_ref: str, method: str
                      ) -> dict[str, Any]:
    """The parts every Observation shares."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": _meta("Observation"),
        "status": ctx.status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": code,
        "subject": subject,
        "specimen": {"reference": specimen_ref},
        "issued": ctx.reported_at.isoformat(),
        "method": {"text": f"{ctx.method.description}; model {ctx.method.model_name} "
                           f"version {ctx.method.model_version}; {method}"},
    }
    if ctx.collected_at is not None:
        obs["effectiveDateTime"] = ctx.collected_at.isoformat()
    return obs


def _with_statement(ctx: ReportContext, obs: dict[str, Any]) -> dict[str, Any]:
    """``obs`` with the specimen statement as its last note, when the model card does not declare the specimen."""
    if ctx.specimen_statement:
        obs.setdefault("note", []).append({"text": ctx.specimen_statement})
    return obs


def _apart_observation(ctx: ReportContext, row: ApartRow, subject: dict, specimen_ref: str) -> dict[str, Any]:
    """A class reported apart from the differential, in its own unit (see the module docstring)."""
    codings = []
    if ctx.specimen == "blood" and row.role == "per_100_leukocytes" and \
            row.label.strip().lower().removesuffix("s") in _NRBC_NAMES:
        codings.append({"system": LOINC, "code": NRBC_LOINC[0], "display": NRBC_LOINC[1]})
    codings.append({"system": CLASS_SYSTEM, "code": row.label})
    text = {"per_100_leukocytes": f"{row.label} / 100 leukocytes (not part of the differential)",
            "counted_apart": f"{row.label}: number of cells among the imaged cells (not a concentration; not part "
                             "of the differential)",
            "noted": f"{row.label}, % of counted and noted cells (noted; not part of the differential)"}[row.role]
    obs = _base_observation(ctx, {"coding": codings, "text": text}, subject, specimen_ref,
                            f"{row.count} cells; {ctx.qc.counted_cells} cells counted in the differential")
    if row.role == "counted_apart":
        obs["valueQuantity"] = _quantity(row.count, "counted_apart")
        return obs
    if row.value is None:
        obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-applicable"}],
                                   "text": "no counted cell to relate it to"}
        return obs
    obs["valueQuantity"] = _quantity(row.value, row.role)
    if row.ci_low is not None and row.ci_high is not None:
        obs["extension"] = [_ci(ctx.confidence, row.ci_low, row.ci_high, "Clopper-Pearson exact binomial", row.role)]
    if row.corrected_value is not None:
        comp: dict[str, Any] = {
            "code": {"coding": [{"system": CLASS_SYSTEM, "code": f"{row.label}:corrected"}],
                     "text": f"{row.label} / 100 leukocytes, corrected for the classifier's error pattern "
                             f"({ctx.method.correction_method or 'prior-shift correction'})"},
            "valueQuantity": _quantity(row.corrected_value, row.role)}
        if row.corrected_ci_low is not None and row.corrected_ci_high is not None:
            comp["extension"] = [_ci(ctx.confidence, row.corrected_ci_low, row.corrected_ci_high,
                                     "percentile bootstrap", row.role)]
        obs["component"] = [comp]
    if row.reference_low is not None and row.reference_high is not None:
        obs["referenceRange"] = [{"low": _quantity(row.reference_low, row.role),
                                  "high": _quantity(row.reference_high, row.role),
                                  "text": "laboratory reference interval"}]
        flag = row.flag or "N"
        obs["interpretation"] = [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": flag,
                                              "display": {"H": "High", "L": "Low", "N": "Normal"}[flag]}]}]
    return obs


def _observation(ctx: ReportContext, row: ResultRow, subject: dict, specimen_ref: str) -> dict[str, Any]:
    level = ctx.confidence
    obs = _base_observation(ctx, _class_code(ctx, row.label), subject, specimen_ref,
                            f"{row.count} of {ctx.qc.counted_cells} cells")
    obs["valueQuantity"] = _pct(row.percent)
    obs["extension"] = [_ci(level, row.ci_low, row.ci_high, "Clopper-Pearson exact binomial")]
    if row.corrected_percent is not None:
        comp: dict[str, Any] = {
            "code": {"coding": [{"system": CLASS_SYSTEM, "code": f"{row.label}:corrected"}],
                     "text": f"{row.label} / 100 leukocytes, corrected for the classifier's error pattern "
                             f"({ctx.method.correction_method or 'prior-shift correction'})"},
            "valueQuantity": _pct(row.corrected_percent),
        }
        if row.corrected_ci_low is not None and row.corrected_ci_high is not None:
            comp["extension"] = [_ci(level, row.corrected_ci_low, row.corrected_ci_high, "percentile bootstrap")]
        obs["component"] = [comp]
    if row.reference_low is not None and row.reference_high is not None:
        obs["referenceRange"] = [{"low": _pct(row.reference_low), "high": _pct(row.reference_high),
                                  "text": "laboratory reference interval"}]
        flag = row.flag or "N"
        obs["interpretation"] = [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": flag,
                                              "display": {"H": "High", "L": "Low", "N": "Normal"}[flag]}]}]
    else:
        obs["note"] = [{"text": "No reference interval configured by the laboratory for this class and specimen; "
                                "the result is not flagged."}]
    return obs


def _meta(resource: str, **extra: Any) -> dict[str, Any]:
    return {**extra, "profile": [CORE_PROFILE.format(resource=resource)]}


def _telecom(contact: str) -> list[dict[str, str]]:
    """ContactPoints from the lab's free-text contact: items split at ',' ';' or newlines; '@' → email, http(s) →
    url, digits with + - ( ) spaces → phone, anything else → other."""
    out = []
    for item in (x.strip() for x in contact.replace(";", ",").replace("\n", ",").split(",")):
        if not item:
            continue
        if "@" in item:
            system = "email"
        elif item.lower().startswith(("http://", "https://")):
            system = "url"
        elif sum(ch.isdigit() for ch in item) >= 5 and all(ch.isdigit() or ch in "+-() ./" for ch in item):
            system = "phone"
        else:
            system = "other"
        out.append({"system": system, "value": item})
    return out


def _organization(ctx: ReportContext) -> dict[str, Any]:
    org: dict[str, Any] = {"resourceType": "Organization", "meta": _meta("Organization"),
                           "identifier": [{"system": "urn:leuko:lab", "value": ctx.lab_id}], "name": ctx.lab_name}
    if ctx.lab_address:
        lines = [x.strip() for x in ctx.lab_address.splitlines() if x.strip()]
        org["address"] = [{"text": ", ".join(lines), "line": lines}]
    if ctx.lab_contact:
        org["telecom"] = _telecom(ctx.lab_contact)
    return org


def _specimen(ctx: ReportContext, subject: dict, request_ref: str | None) -> dict[str, Any]:
    code, display = SPECIMEN_SNOMED[ctx.specimen]
    specimen: dict[str, Any] = {
        "resourceType": "Specimen",
        "meta": _meta("Specimen"),
        "accessionIdentifier": {"system": "urn:leuko:sample", "value": ctx.sample_id},
        "type": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": ctx.specimen_label},
        "subject": subject,
    }
    if ctx.received_at is not None:
        specimen["receivedTime"] = ctx.received_at.isoformat()
    if request_ref is not None:
        specimen["request"] = [{"reference": request_ref}]
    if ctx.collected_at is not None:
        specimen["collection"] = {"collectedDateTime": ctx.collected_at.isoformat()}
    return specimen


def _service_request(ctx: ReportContext, subject: dict, specimen_ref: str) -> dict[str, Any]:
    """The order the report answers: who requested it (free text, as recorded on the sample)."""
    status = "active" if ctx.status == "preliminary" else "completed"  # a preliminary report leaves it open
    return {"resourceType": "ServiceRequest", "meta": _meta("ServiceRequest"), "status": status,
            "intent": "order", "code": {**REPORT_CODE, "text": _code_text(ctx)}, "subject": subject, "requester": {"display": ctx.requester},
            "specimen": [{"reference": specimen_ref}]}


def _code_text(ctx: ReportContext) -> str:
    """The report's name with how its cells were imaged, from the model card (a stained smear is not label-free)."""
    return f"{ctx.differential_title} ({ctx.method.modality})"


def _report(ctx: ReportContext, subject: dict, refs: dict[str, str | None], obs_urls: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": _meta("DiagnosticReport", versionId=str(ctx.version)),
        "identifier": [{"system": f"urn:leuko:report:{ctx.lab_id}", "value": ctx.report_id}],
        "status": ctx.status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM",
                                  "display": "Hematology"}]}],
        "code": {**REPORT_CODE, "text": _code_text(ctx)},
        "subject": subject,
        "issued": ctx.reported_at.isoformat(),
        "performer": [{"reference": refs["organization"], "display": f"{ctx.lab_name} ({ctx.lab_id})"}],
        "specimen": [{"reference": refs["specimen"]}],
        "result": [{"reference": u} for u in obs_urls],
    }
    if refs["request"] is not None:
        report["basedOn"] = [{"reference": refs["request"]}]
    if ctx.collected_at is not None:
        report["effectiveDateTime"] = ctx.collected_at.isoformat()
    if ctx.signer is not None:
        report["resultsInterpreter"] = [{"display": f"{ctx.signer.name} ({ctx.signer.role})"}]
    if ctx.interpretation:
        report["conclusion"] = ctx.interpretation
    if ctx.specimen_statement:
        report["extension"] = [{"url": SPECIMEN_EXTENSION, "valueString": ctx.specimen_statement}]
    if ctx.status == "amended":
        report.setdefault("extension", []).extend([
            {"url": REPLACES_EXTENSION, "valueIdentifier": {
                "system": f"urn:leuko:report:{ctx.lab_id}",
                "value": f"{ctx.replaces_report_id or ctx.report_id} v{ctx.replaces_version}"}},
            {"url": AMENDMENT_EXTENSION, "valueString": ctx.amendment_reason},
        ])
        if ctx.replaces_pdf_sha256:
            report["extension"].append({"url": REPLACES_SHA256_EXTENSION, "valueString": ctx.replaces_pdf_sha256})
    if ctx.audit_head is not None:
        report.setdefault("extension", []).append({"url": AUDIT_HEAD_EXTENSION, "extension": [
            {"url": "seq", "valueInteger": ctx.audit_head.seq},
            {"url": "event", "valueInteger": ctx.audit_head.event_id},
            {"url": "sha256", "valueString": ctx.audit_head.sha256}]})
    return report


def fhir_bundle(ctx: ReportContext, *, pdf: bytes | None = None) -> dict[str, Any]:
    """The report as a FHIR R4B (:data:`FHIR_VERSION`) ``collection`` Bundle (validated), as a JSON-ready dict.

    ``pdf`` (the rendered report) is embedded in ``DiagnosticReport.presentedForm`` when given.

    Raises:
        ValueError: the bundle does not validate (names the element).
    """
    subject = {"identifier": {"system": "urn:leuko:patient-pseudonym", "value": ctx.patient_pseudonym}}
    refs: dict[str, str | None] = {"organization": f"urn:uuid:{uuid.uuid4()}", "specimen": f"urn:uuid:{uuid.uuid4()}",
                                   "request": f"urn:uuid:{uuid.uuid4()}" if ctx.requester else None}
    obs_urls = [f"urn:uuid:{uuid.uuid4()}" for _ in (*ctx.results, *ctx.apart)]
    report = _report(ctx, subject, refs, obs_urls)
    if pdf is not None:
        report["presentedForm"] = [{"contentType": "application/pdf", "data": base64.b64encode(pdf).decode(),
                                    "title": f"{ctx.report_id} v{ctx.version}"}]
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": report},
               {"fullUrl": refs["specimen"], "resource": _specimen(ctx, subject, refs["request"])}]
    entries += [{"fullUrl": u, "resource": _with_statement(ctx, _observation(ctx, r, subject, refs["specimen"]))}
                for u, r in zip(obs_urls, ctx.results)]
    entries += [{"fullUrl": u, "resource": _with_statement(ctx, _apart_observation(ctx, a, subject,
                                                                                   refs["specimen"]))}
                for u, a in zip(obs_urls[len(ctx.results):], ctx.apart)]
    entries.append({"fullUrl": refs["organization"], "resource": _organization(ctx)})
    if refs["request"] is not None:
        entries.append({"fullUrl": refs["request"], "resource": _service_request(ctx, subject, refs["specimen"])})
    bundle = {"resourceType": "Bundle", "meta": _meta("Bundle"), "type": "collection",
              "timestamp": ctx.reported_at.isoformat(), "entry": entries}
    validate_bundle(bundle)
    return bundle


def validate_bundle(bundle: Mapping[str, Any]) -> None:
    """Validate with the ``fhir.resources`` R4B models; raise ``ValueError`` naming the first problem.

    Raises:
        RuntimeError: the installed ``fhir.resources.R4B`` models are not FHIR :data:`FHIR_VERSION`.
    """
    import fhir.resources.R4B as r4b
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    if r4b.__fhir_version__ != FHIR_VERSION:
        raise RuntimeError(f"fhir.resources.R4B holds FHIR {r4b.__fhir_version__} models, but this export declares "
                           f"{FHIR_VERSION}; install the fhir.resources version pinned in requirements.txt")

    try:
        Bundle.model_validate(dict(bundle))
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"FHIR bundle invalid at {'.'.join(map(str, err['loc']))}: {err['msg']}") from e


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # keep spreadsheets from running text as a formula (CSV injection)
    return value


def cells_csv(rows: Iterable[Mapping[str, Any]], *, columns: Sequence[str] | None = None) -> str:
    """Per-cell results as CSV text (header + one line per row).

    ``columns`` fixes the order (default: the keys of the first row, then new keys as they appear). Missing values
    are empty; text starting with ``= + - @`` is prefixed with ``'`` so that spreadsheets show it as text.
    """
    rows = list(rows)
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    unknown = {k for r in rows for k in r} - set(columns)
    if unknown:
        raise ValueError(f"rows have columns {sorted(unknown)} that are not in columns={list(columns)}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()
