"""The report's data model: the rows and sections a report version shows, as frozen pydantic models.

:func:`reports.context.build_context` fills them; the PDF template, the FHIR export and the attached results JSON
all read them. Percentages are 0–100; times are timezone-aware.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from phenotyping.errors import PhenotypingError

ReportStatus = Literal["preliminary", "final", "amended"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ResultRow(_Frozen):
    """One class of the differential."""

    label: str
    count: int = Field(ge=0, description="cells counted in this class")
    percent: float = Field(ge=0, le=100)
    ci_low: float = Field(ge=0, le=100, description="lower bound of the exact (Clopper-Pearson) CI, %")
    ci_high: float = Field(ge=0, le=100)
    corrected_percent: float | None = Field(None, ge=0, le=100, description="prior-shift-corrected %, if computed")
    corrected_ci_low: float | None = Field(None, ge=0, le=100)
    corrected_ci_high: float | None = Field(None, ge=0, le=100)
    reference_low: float | None = Field(None, ge=0, le=100, description="the lab's reference interval, if set")
    reference_high: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> ResultRow:
        if not self.ci_low <= self.percent <= self.ci_high:
            raise ValueError(f"class {self.label!r}: CI {self.ci_low}–{self.ci_high} does not contain {self.percent}")
        if (self.reference_low is None) != (self.reference_high is None):
            raise ValueError(f"class {self.label!r}: give both ends of the reference interval or neither")
        return self

    @property
    def flag(self) -> Literal["H", "L", ""]:
        """'H' above, 'L' below the reference interval; '' inside it or when none is configured."""
        if self.reference_low is None or self.reference_high is None:
            return ""
        if self.percent > self.reference_high:
            return "H"
        if self.percent < self.reference_low:
            return "L"
        return ""


class ApartRow(_Frozen):
    """A class the specimen's differential does not count, reported apart (the model card's ``specimens`` rule).

    ``role`` and ``unit``: ``per_100_leukocytes`` — cells per 100 counted cells ("/100 leukocytes", e.g.
    erythroblasts), exact CI, and the corrected value when a correction was computed; ``noted`` — % of the counted
    and noted cells (e.g. epithelial cells in BALF), exact CI; ``counted_apart`` — a number of cells (platelets),
    no CI. ``value`` is None when there is no denominator (no counted cell).
    """

    label: str
    role: Literal["per_100_leukocytes", "counted_apart", "noted"]
    count: int = Field(ge=0)
    value: float | None = Field(None, ge=0)
    ci_low: float | None = Field(None, ge=0)
    ci_high: float | None = Field(None, ge=0)
    unit: str
    corrected_value: float | None = Field(None, ge=0)
    corrected_ci_low: float | None = Field(None, ge=0)
    corrected_ci_high: float | None = Field(None, ge=0)
    reference_low: float | None = Field(None, ge=0, description="the lab's reference interval, in ``unit``")
    reference_high: float | None = Field(None, ge=0)

    @property
    def flag(self) -> Literal["H", "L", ""]:
        """'H' above, 'L' below the reference interval; '' inside it, without one, or without a value."""
        if self.reference_low is None or self.reference_high is None or self.value is None:
            return ""
        return "H" if self.value > self.reference_high else "L" if self.value < self.reference_low else ""


class MarkerRow(_Frozen):
    """Median and quartiles of one regressed marker among the cells of one class (None when n = 0)."""

    label: str
    target: str
    n: int = Field(ge=0)
    median: float | None = None
    q1: float | None = None
    q3: float | None = None
    unit: str = "a.u."  # the target's unit from the model card

    @field_validator("median", "q1", "q3", mode="before")
    @classmethod
    def _nan_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v


class QCSummary(_Frozen):
    """Image quality control: every cell of the sample, the counted ones, and the exclusions by reason."""

    total_cells: int = Field(ge=0)
    counted_cells: int = Field(ge=0)
    excluded: dict[str, int] = Field(default_factory=dict, description="machine-generated reason -> cells left out "
                                                                     "(image QC, not analysed, reviewed as another "
                                                                     "class); the unidentified queue is apart")
    unidentified: int = Field(0, ge=0, description="cells the model was not sure about (calibrated confidence "
                                                   "below the card's threshold), left for manual review; not an "
                                                   "image-QC exclusion")
    reported_apart: dict[str, int] = Field(default_factory=dict, description="class reported apart from the "
                                                                           "differential -> cells")


class ComparisonRow(_Frozen):
    """Manual (cytospin) versus model percentage for one class; difference = model - manual, percentage points."""

    label: str
    manual_percent: float = Field(ge=0, le=100)
    model_percent: float = Field(ge=0, le=100)

    @property
    def difference(self) -> float:
        return self.model_percent - self.manual_percent


class ClassAgreementRow(_Frozen):
    """Bland-Altman agreement of one class in a saved study: model - manual over the study's samples.

    Units follow the study's ``measure``: ``absolute`` percentage points, ``percent`` % of the pair's mean,
    ``ratio`` model/manual. CI bounds are None where the study could not compute them. EP09: ``icc`` (ICC(2,1)),
    the verdict ``accepted`` against ``allowable`` (None where the lab set no allowable difference),
    ``n_outliers`` flagged by the generalised ESD test (kept in these results) and the study's design
    ``warnings``.
    """

    label: str
    comparison: Literal["raw", "corrected"] = Field(description="raw classify-and-count %, or the corrected %")
    n: int = Field(ge=1, description="samples compared")
    bias: float
    bias_ci_low: float | None = None
    bias_ci_high: float | None = None
    loa_low: float
    loa_low_ci_low: float | None = None
    loa_low_ci_high: float | None = None
    loa_high: float
    loa_high_ci_low: float | None = None
    loa_high_ci_high: float | None = None
    icc: float | None = None
    allowable: float | None = None
    accepted: bool | None = None
    n_outliers: int | None = None
    warnings: list[str] = Field(default_factory=list)


class KappaSummary(_Frozen):
    """Cohen's kappa of the study's reviewed cells with both large-sample SEs: Cohen 1960's and Fleiss, Cohen &
    Everitt 1969's (the asymptotic SE of SAS and most software)."""

    n: int = Field(ge=1, description="reviewed cells compared")
    kappa: float
    se: float = Field(ge=0, description="Cohen 1960 SE")
    se_fleiss: float | None = Field(None, ge=0, description="Fleiss, Cohen & Everitt 1969 SE")
    ci_low: float | None = None
    ci_high: float | None = None


class StudyAgreement(_Frozen):
    """The latest saved method-comparison study that includes the sample (same model), as saved."""

    name: str = Field(description="the study's name as typed by its author (never given to the LLM)")
    model_id: str
    model_version: str
    measure: Literal["absolute", "percent", "ratio"] = "absolute"
    n_samples: int = Field(ge=1)
    saved_at: datetime
    saved_by: str = ""
    correction_method: str | None = None
    rows: list[ClassAgreementRow] = Field(min_length=1)
    kappa: KappaSummary | None = Field(None, description="cell-level agreement of the model with the reviewers")

    @property
    def unit(self) -> str:
        return {"absolute": "pp", "percent": "% of mean", "ratio": "ratio"}[self.measure]

    def rows_for(self, comparison: str) -> list[ClassAgreementRow]:
        return [r for r in self.rows if r.comparison == comparison]


class MethodInfo(_Frozen):
    """How the result was produced."""

    description: str = "Label-free single-cell imaging with automated classification"
    modality: str = Field("label-free imaging", description="how the cells were imaged, from the model card's "
                                                            "``modality`` (else its channel names)")
    model_name: str
    model_version: str
    validation: dict[str, float] = Field(default_factory=dict, description="metric name -> value, e.g. macro F1")
    validation_set: str = ""
    correction_method: str | None = Field(None, description="prior-shift correction used for corrected %")


class DomainStatement(_Frozen):
    """The domain check of the analysis run (:mod:`phenotyping.analysis.domain`): whether the sample's cells look
    like the model's training cells. The report states it in a box when they do not."""

    in_distribution: bool | None = Field(description="None: not judged (e.g. a card without a domain reference)")
    score: float | None = Field(None, description="median over the cells of the smallest Mahalanobis distance")
    threshold: float | None = None
    reason: str = Field(description="what is off, or why it is in (machine-generated)")
    n_cells: int = Field(0, ge=0)
    acknowledgement: str | None = Field(None, description="the signer's reason for signing despite an "
                                                          "out-of-distribution verdict")


class Person(_Frozen):
    name: str
    role: str


class AuditChainHead(_Frozen):
    """The audit trail's chain head when the report was rendered: the newest event's place in the chain (``seq``,
    1-based), its id and its SHA-256. ``python -m phenotyping audit verify`` prints the same fields; a trail whose
    event ``seq`` no longer has this hash was rewritten after the report."""

    seq: int = Field(ge=1)
    event_id: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ReportContext(_Frozen):
    """Everything one report version shows."""

    lab_name: str
    lab_id: str
    lab_address: str | None = Field(None, description="the laboratory's postal address (Settings.lab_address); None: "
                                                       "not configured, and the report says so")
    lab_contact: str | None = Field(None, description="telephone / e-mail for enquiries (Settings.lab_contact)")
    report_id: str
    version: int = Field(ge=1)
    status: ReportStatus
    amendment_reason: str | None = None
    replaces_report_id: str | None = None
    replaces_version: int | None = Field(None, ge=1)
    replaces_signed_at: datetime | None = Field(None, description="when the replaced version was signed")
    replaces_signed_by: str | None = None
    replaces_pdf_sha256: str | None = Field(None, description="sha256 (hex) of the replaced version's signed PDF")
    patient_pseudonym: str
    sample_id: str
    specimen: Literal["blood", "balf"]
    requester: str = Field("", description="who ordered the test, as recorded on the sample; '' = not recorded")
    collected_at: datetime | None = None
    received_at: datetime | None = Field(None, description="when the laboratory received the specimen")
    reported_at: datetime = Field(description="signing time for a signed version, else when the version was saved")
    method: MethodInfo
    results: list[ResultRow] = Field(min_length=1)
    apart: list[ApartRow] = Field(default_factory=list, description="classes reported apart from the differential")
    differential_title: str = Field("Leukocyte differential", description="what the report is a differential of")
    counted_basis: str = Field("counted leukocytes", description="what the percentages are of")
    specimen_statement: str | None = Field(None, description="why the model is not meant for this specimen "
                                                             "(machine-generated); None: the model card declares it")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of every interval")
    reference_source: str | None = Field(None, description="where the reference intervals come from; None: the "
                                                           "lab configured none for this specimen")
    markers: list[MarkerRow] = Field(default_factory=list)
    qc: QCSummary
    comparison: list[ComparisonRow] = Field(default_factory=list)
    study: StudyAgreement | None = None
    study_note: str | None = Field(None, description="why no study or no figure is shown (machine-generated)")
    bland_altman_figures: dict[str, str] = Field(default_factory=dict, description="class -> SVG document")
    gallery: dict[str, list[str]] = Field(default_factory=dict, description="class -> PNG data URIs")
    warnings: list[str] = Field(default_factory=list, description="machine-generated caveats, e.g. few cells")
    interpretation: str = ""
    interpretation_source: str = Field("template", description="'template' or the litellm route that drafted it")
    interpretation_edited: bool = False
    reviewers: list[Person] = Field(default_factory=list, description="who reviewed (reclassified or confirmed) "
                                                                     "cells of the sample, in order of first review")
    drafted_by: Person | None = Field(None, description="who saved this version of the report (drafted or edited)")
    signer: Person | None = None
    signer_certificate: str | None = Field(None, description="subject name of the signing certificate, when it "
                                                             "differs from the signer's display name")
    audit_head: AuditChainHead | None = Field(None, description="the audit chain head when rendered; None: the "
                                                                "trail was empty (or a report from before heads)")
    domain_check: DomainStatement | None = Field(None, description="the analysis run's domain check; None: none "
                                                                   "was stored (runs from before the check)")

    @field_validator("collected_at", "received_at", "reported_at", "replaces_signed_at")
    @classmethod
    def _aware(cls, v: datetime | None, info: Any) -> datetime | None:
        if v is not None and v.utcoffset() is None:
            raise ValueError(f"{info.field_name} {v.isoformat()} has no time zone; report times must be "
                             "timezone-aware (add Z or an offset)")
        return v

    @field_validator("lab_address", "lab_contact")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if isinstance(v, str) else v

    @model_validator(mode="after")
    def _amendment(self) -> ReportContext:
        if self.status == "amended":
            if not (self.amendment_reason or "").strip() or self.replaces_version is None:
                raise ValueError("an amended report needs amendment_reason and replaces_version (the version it "
                                 "replaces)")
        for uri in (u for urls in self.gallery.values() for u in urls):
            if not uri.startswith("data:image/png;base64,"):
                raise ValueError(f"gallery images must be PNG data URIs, got {uri[:40]!r}")
        for label, svg in self.bland_altman_figures.items():
            if "<svg" not in svg[:4000]:
                raise ValueError(f"Bland-Altman figure of {label!r} must be an SVG document (no '<svg' element)")
        return self

    @property
    def out_of_distribution(self) -> bool:
        return self.domain_check is not None and self.domain_check.in_distribution is False

    @property
    def specimen_label(self) -> str:
        return {"blood": "Peripheral blood", "balf": "Bronchoalveolar lavage fluid (BALF)"}[self.specimen]

    @property
    def confidence_percent(self) -> int:
        return round(self.confidence * 100)

    @property
    def has_corrected(self) -> bool:
        return any(r.corrected_percent is not None for r in self.results)

    @property
    def has_reference(self) -> bool:
        return any(r.reference_low is not None for r in self.results)

    def results_json(self) -> dict[str, Any]:
        """The machine-readable results attached inside the PDF (no images); :meth:`from_results_json` reads it."""
        d = self.model_dump(mode="json", exclude={"gallery", "bland_altman_figures"})
        for row, src in zip(d["comparison"], self.comparison):
            row["difference"] = src.difference
        for row, src in zip(d["results"], self.results):
            row["flag"] = src.flag
        for row, src in zip(d["apart"], self.apart):
            row["flag"] = src.flag
        d["schema"] = RESULTS_SCHEMA
        return d

    @classmethod
    def from_results_json(cls, data: dict[str, Any]) -> ReportContext:
        """The context a PDF's attached ``results.json`` was rendered from (without gallery and figures)."""
        d = dict(data)
        schema = d.pop("schema", None)
        if schema not in (RESULTS_SCHEMA, "leuko-report/1"):
            raise ValueError(f"results JSON has schema {schema!r}; this version reads {RESULTS_SCHEMA!r} and "
                             "'leuko-report/1'")
        if schema == "leuko-report/1":
            d.pop("agreement", None)  # per-sample summary of the first schema; no longer reported
        if "reviewer" in d:  # before reviewers and drafted_by: the person who saved the version
            d.setdefault("drafted_by", d.pop("reviewer"))
        d["comparison"] = [{k: v for k, v in r.items() if k != "difference"} for r in d.get("comparison", [])]
        d["results"] = [{k: v for k, v in r.items() if k != "flag"} for r in d.get("results", [])]
        d["apart"] = [{k: v for k, v in r.items() if k != "flag"} for r in d.get("apart", [])]
        return cls.model_validate(d)


RESULTS_SCHEMA = "leuko-report/2"


class SignedVersionError(PhenotypingError):
    """A signed report version was asked to be rebuilt from live data; what was signed is its PDF."""
