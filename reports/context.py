"""What a report shows (:class:`ReportContext`) and the facts an LLM may see (:func:`facts_from_context`).

Percentages are 0–100 throughout. Times are timezone-aware. The context is plain data: the PDF template, the FHIR
export and the attached JSON are all rendered from it, so they cannot disagree.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class MarkerRow(_Frozen):
    """Median and quartiles of one regressed marker among the cells of one class (None when n = 0)."""

    label: str
    target: str
    n: int = Field(ge=0)
    median: float | None = None
    q1: float | None = None
    q3: float | None = None

    @field_validator("median", "q1", "q3", mode="before")
    @classmethod
    def _nan_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v


class QCSummary(_Frozen):
    """Image quality control: every cell of the sample, the counted ones, and the exclusions by reason."""

    total_cells: int = Field(ge=0)
    counted_cells: int = Field(ge=0)
    excluded: dict[str, int] = Field(default_factory=dict, description="machine-generated reason -> cells")


class ComparisonRow(_Frozen):
    """Manual (cytospin) versus model percentage for one class; difference = model - manual, percentage points."""

    label: str
    manual_percent: float = Field(ge=0, le=100)
    model_percent: float = Field(ge=0, le=100)

    @property
    def difference(self) -> float:
        return self.model_percent - self.manual_percent


class AgreementSummary(_Frozen):
    """Bland-Altman summary of model - manual differences over the classes (percentage points)."""

    n_pairs: int = Field(ge=1)
    bias: float
    loa_low: float
    loa_high: float


class MethodInfo(_Frozen):
    """How the result was produced."""

    description: str = "Label-free single-cell imaging with automated classification"
    model_name: str
    model_version: str
    validation: dict[str, float] = Field(default_factory=dict, description="metric name -> value, e.g. macro F1")
    validation_set: str = ""
    correction_method: str | None = Field(None, description="prior-shift correction used for corrected %")


class Person(_Frozen):
    name: str
    role: str


class ReportContext(_Frozen):
    """Everything one report version shows."""

    lab_name: str
    lab_id: str
    report_id: str
    version: int = Field(ge=1)
    status: ReportStatus
    amendment_reason: str | None = None
    replaces_report_id: str | None = None
    replaces_version: int | None = Field(None, ge=1)
    patient_pseudonym: str
    sample_id: str
    specimen: Literal["blood", "balf"]
    collected_at: datetime | None = None
    reported_at: datetime
    method: MethodInfo
    results: list[ResultRow] = Field(min_length=1)
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of every interval")
    markers: list[MarkerRow] = Field(default_factory=list)
    qc: QCSummary
    comparison: list[ComparisonRow] = Field(default_factory=list)
    agreement: AgreementSummary | None = None
    bland_altman_svg: str | None = Field(None, description="an SVG document, shown as an image")
    gallery: dict[str, list[str]] = Field(default_factory=dict, description="class -> PNG data URIs")
    warnings: list[str] = Field(default_factory=list, description="machine-generated caveats, e.g. few cells")
    interpretation: str = ""
    interpretation_source: str = Field("template", description="'template' or the litellm route that drafted it")
    interpretation_edited: bool = False
    reviewer: Person | None = None
    signer: Person | None = None

    @model_validator(mode="after")
    def _amendment(self) -> ReportContext:
        if self.status == "amended":
            if not (self.amendment_reason or "").strip() or self.replaces_version is None:
                raise ValueError("an amended report needs amendment_reason and replaces_version (the version it "
                                 "replaces)")
        for uri in (u for urls in self.gallery.values() for u in urls):
            if not uri.startswith("data:image/png;base64,"):
                raise ValueError(f"gallery images must be PNG data URIs, got {uri[:40]!r}")
        if self.bland_altman_svg is not None and "<svg" not in self.bland_altman_svg[:2000]:
            raise ValueError("bland_altman_svg must be an SVG document (no '<svg' element found)")
        return self

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
        """The machine-readable results attached inside the PDF (no images)."""
        d = self.model_dump(mode="json", exclude={"gallery", "bland_altman_svg"})
        for row, src in zip(d["comparison"], self.comparison):
            row["difference"] = src.difference
        d["schema"] = "leuko-report/1"
        return d


# ----------------------------------------------------------------------------------------------------------------
# Facts: the only input an LLM receives


class Facts(_Frozen):
    """Computed facts for interpretation drafting: no identifiers, no user-typed text.

    ``values`` maps a fact id (``diff.neutrophil.pct``) to a number; ``classes`` maps the slug used in fact ids to
    the class label; ``units`` says what each kind of fact measures.
    """

    specimen: Literal["blood", "balf"]
    classes: dict[str, str]
    values: dict[str, float]
    units: dict[str, str]

    def prompt_json(self) -> dict[str, Any]:
        return {"specimen": self.specimen, "classes": self.classes, "facts": self.values, "units": self.units}


_UNITS = {
    "cells.*": "number of cells",
    "qc.excluded.*": "cells excluded by image quality control, by reason",
    "confidence_pct": "confidence level of every interval, %",
    "diff.<class>.count": "cells counted in the class",
    "diff.<class>.pct|ci_low|ci_high": "classify-and-count %, with the exact CI bounds (%)",
    "corr.<class>.pct|ci_low|ci_high": "prior-shift-corrected %, with bootstrap CI bounds (%)",
    "ref.<class>.low|high": "the laboratory's reference interval (%)",
    "marker.<class>.<target>.median|q1|q3|n": "regressed marker among the class's cells (marker's own units)",
    "manual.<class>.pct|diff": "manual count % and model minus manual (percentage points)",
    "agreement.*": "Bland-Altman bias and 95% limits of agreement (percentage points), n class pairs",
    "reference_min_cells": "cells a reference manual differential counts (CLSI H20-A2)",
}


def slug(text: str) -> str:
    """Fact-id-safe form of a class or reason: lowercase ASCII letters, digits and '_'."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:40] or "x"


def _unique_slugs(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        base = s = slug(name)
        i = 2
        while s in out:
            s, i = f"{base}_{i}", i + 1
        out[s] = name
    return out


def facts_from_context(ctx: ReportContext) -> Facts:
    """The facts an interpretation may use. Leaves out the patient, sample, people and every free-text field."""
    classes = _unique_slugs([r.label for r in ctx.results])
    by_label = {label: s for s, label in classes.items()}
    v: dict[str, float] = {
        "cells.total": ctx.qc.total_cells,
        "cells.counted": ctx.qc.counted_cells,
        "cells.excluded": ctx.qc.total_cells - ctx.qc.counted_cells,
        "confidence_pct": ctx.confidence_percent,
        "reference_min_cells": 200,
    }
    for reason_slug, reason in _unique_slugs(list(ctx.qc.excluded)).items():
        v[f"qc.excluded.{reason_slug}"] = ctx.qc.excluded[reason]
    for r in ctx.results:
        s = by_label[r.label]
        v |= {f"diff.{s}.count": r.count, f"diff.{s}.pct": r.percent,
              f"diff.{s}.ci_low": r.ci_low, f"diff.{s}.ci_high": r.ci_high}
        if r.corrected_percent is not None:
            v[f"corr.{s}.pct"] = r.corrected_percent
            if r.corrected_ci_low is not None and r.corrected_ci_high is not None:
                v[f"corr.{s}.ci_low"] = r.corrected_ci_low
                v[f"corr.{s}.ci_high"] = r.corrected_ci_high
        if r.reference_low is not None and r.reference_high is not None:
            v[f"ref.{s}.low"] = r.reference_low
            v[f"ref.{s}.high"] = r.reference_high
    for m in ctx.markers:
        if m.label not in by_label or m.n == 0 or m.median is None:
            continue
        base = f"marker.{by_label[m.label]}.{slug(m.target)}"
        v[f"{base}.n"] = m.n
        v[f"{base}.median"] = m.median
        if m.q1 is not None and m.q3 is not None:
            v[f"{base}.q1"], v[f"{base}.q3"] = m.q1, m.q3
    for c in ctx.comparison:
        if c.label in by_label:
            v[f"manual.{by_label[c.label]}.pct"] = c.manual_percent
            v[f"manual.{by_label[c.label]}.diff"] = c.difference
    if ctx.agreement is not None:
        a = ctx.agreement
        v |= {"agreement.n_pairs": a.n_pairs, "agreement.bias": a.bias,
              "agreement.loa_low": a.loa_low, "agreement.loa_high": a.loa_high}
    values = {k: float(x) for k, x in v.items() if math.isfinite(float(x))}
    return Facts(specimen=ctx.specimen, classes=classes, values=values, units=dict(_UNITS))


# ----------------------------------------------------------------------------------------------------------------
# From the store

_STATUS = {"draft": "preliminary", "preliminary": "preliminary", "final": "final", "amended": "amended"}
_METRICS = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"), ("accuracy", "accuracy"),
            ("kappa", "Cohen's kappa"), ("n", "n cells"))


def _person(store: Any, username: str | None) -> Person | None:
    if not username:
        return None
    found = store.get_user(username)
    if found is None:
        return Person(name=username, role="user")
    user = found[0]
    return Person(name=user.display_name or user.username, role=user.role.value)


def _edited(store: Any, rv: Any) -> bool:
    """Whether the reviewer changed the drafted text: the text differs from the first version with this source.

    Assumes the draft is saved, unedited, as the first version carrying its source (every later save is an edit).
    """
    for earlier in store.list_report_versions(rv.sample_id):
        if earlier.interpretation_source == rv.interpretation_source:
            return earlier.interpretation != rv.interpretation
    return False


def _thumbnail(data: bytes, name: str, size: int = 64) -> str:
    """A cell image as a small 8-bit PNG data URI: first channel, middle z-plane, 1st–99th percentile stretch."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from phenotyping.ingest import read_image

    arr = read_image(data, name)
    plane = arr[0] if arr.ndim == 3 else arr[0, arr.shape[1] // 2]  # (H, W)
    plane = plane.astype(np.float64)
    lo, hi = np.percentile(plane, [1, 99])
    img = np.clip((plane - lo) / (hi - lo if hi > lo else 1.0) * 255, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_context(
    store: Any,
    sample_id: str,
    *,
    version: int | None = None,
    status: ReportStatus | None = None,
    signer: Person | None = None,
    reference_intervals: dict[str, tuple[float, float]] | None = None,
    agreement: AgreementSummary | None = None,
    bland_altman_svg: str | None = None,
    gallery_per_class: int = 6,
    settings: Any = None,
    report_version: Any = None,
) -> ReportContext:
    """Assemble one report version of a sample from the store (``phenotyping.store.Store``).

    The differential comes from :func:`phenotyping.results.sample_results` (the one place deciding which cells
    are counted). Status defaults from the version: draft → preliminary, a version that amends another →
    amended. ``signer`` defaults to the user who signed the version, if any. Agreement figures are per study, so the
    caller passes them (``agreement``, ``bland_altman_svg``); the manual-count rows come from the sample.
    ``report_version`` (a ``ReportVersion`` not yet saved) replaces the stored one, e.g. to collect the facts for
    the first draft.

    Raises:
        NotFoundError: no such sample or report version.
        ValueError: the sample has no analysis model, so there is no differential to report.
    """
    from phenotyping.results import sample_results
    from phenotyping.settings import get_settings

    settings = settings or get_settings()
    rv = report_version if report_version is not None else store.get_report_version(sample_id, version)
    res = sample_results(store, sample_id)
    if res.differential is None or res.card is None or res.model_id is None:
        raise ValueError(f"sample {sample_id!r} has no analysis model, so there is no differential to report; "
                         "run `python -m phenotyping predict` first")
    diff, card = res.differential, res.card
    corrected = diff.corrected
    corr = {} if corrected is None else {lab: (p, lo, hi) for lab, p, lo, hi in zip(
        corrected.labels, corrected.percent, corrected.ci_low, corrected.ci_high)}
    refs = reference_intervals or {}
    rows = []
    for c in diff.raw.classes:
        cp = corr.get(c.label)
        ref = refs.get(c.label)
        rows.append(ResultRow(
            label=c.label, count=c.count, percent=c.percent, ci_low=c.ci_low, ci_high=c.ci_high,
            corrected_percent=None if cp is None else cp[0],
            corrected_ci_low=None if cp is None or not math.isfinite(cp[1]) else cp[1],
            corrected_ci_high=None if cp is None or not math.isfinite(cp[2]) else cp[2],
            reference_low=None if ref is None else ref[0], reference_high=None if ref is None else ref[1]))
    metrics_src = card.get("test") or card.get("validation") or {}
    validation = {name: float(metrics_src[key]) for key, name in _METRICS
                  if isinstance(metrics_src.get(key), (int, float))}
    preds = store.list_predictions(sample_id, res.model_id)
    model_version = preds[0].model_version if preds else str(card.get("version", "unknown"))
    manual = []
    model_pct = {c.label: c.percent for c in diff.raw.classes}
    for m in store.get_manual_counts(sample_id):
        pct = m.percent if m.percent is not None else (
            100.0 * m.count / m.total_counted if m.count is not None and m.total_counted else None)
        if pct is not None and m.cell_type in model_pct:
            manual.append(ComparisonRow(label=m.cell_type, manual_percent=pct, model_percent=model_pct[m.cell_type]))
    gallery: dict[str, list[str]] = {}
    for r in res.cells:
        if r.counted and r.final_label and len(gallery.setdefault(r.final_label, [])) < gallery_per_class:
            gallery[r.final_label].append(_thumbnail(store.read_cell_bytes(r.cell), r.cell.source_file))
    if status is None:
        status = "amended" if rv.amends_version is not None and rv.status != "draft" else _STATUS[rv.status]
    sample = res.sample
    return ReportContext(
        lab_name=settings.lab_name, lab_id=settings.lab_id, report_id=f"{settings.lab_id}-{sample_id}",
        version=rv.version, status=status, amendment_reason=rv.amendment_reason,
        replaces_version=rv.amends_version, patient_pseudonym=sample.patient_pseudonym, sample_id=sample_id,
        specimen=sample.specimen.value, collected_at=sample.collected_at, reported_at=rv.created_at,
        method=MethodInfo(model_name=res.model_id, model_version=model_version, validation=validation,
                          validation_set="held-out test split" if card.get("test") else "validation split",
                          correction_method=None if corrected is None else corrected.method),
        results=rows, confidence=diff.raw.confidence,
        markers=[MarkerRow(label=m.label, target=m.target, n=m.n, median=m.median, q1=m.q1, q3=m.q3)
                 for m in diff.markers],
        qc=QCSummary(total_cells=diff.n_cells, counted_cells=diff.raw.n_counted, excluded=dict(diff.qc_counts)),
        comparison=manual, agreement=agreement, bland_altman_svg=bland_altman_svg,
        gallery={k: v for k, v in gallery.items() if v}, warnings=list(diff.raw.warnings),
        interpretation=rv.interpretation, interpretation_source=rv.interpretation_source,
        interpretation_edited=_edited(store, rv),
        reviewer=_person(store, rv.created_by), signer=_person(store, rv.signed_by) or signer,
    )
