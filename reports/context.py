"""What a report shows (:class:`ReportContext`) and the facts an LLM may see (:func:`facts_from_context`).

Percentages are 0–100 throughout. Times are timezone-aware. The context is plain data: the PDF template, the FHIR
export and the attached JSON are all rendered from it, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
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


class ClassAgreementRow(_Frozen):
    """Bland-Altman agreement of one class in a saved study: model - manual over the study's samples.

    Units follow the study's ``measure``: ``absolute`` percentage points, ``percent`` % of the pair's mean,
    ``ratio`` model/manual. CI bounds are None where the study could not compute them.
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

    @property
    def unit(self) -> str:
        return {"absolute": "pp", "percent": "% of mean", "ratio": "ratio"}[self.measure]

    def rows_for(self, comparison: str) -> list[ClassAgreementRow]:
        return [r for r in self.rows if r.comparison == comparison]


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
    replaces_signed_at: datetime | None = Field(None, description="when the replaced version was signed")
    replaces_signed_by: str | None = None
    replaces_pdf_sha256: str | None = Field(None, description="sha256 (hex) of the replaced version's signed PDF")
    patient_pseudonym: str
    sample_id: str
    specimen: Literal["blood", "balf"]
    collected_at: datetime | None = None
    reported_at: datetime = Field(description="signing time for a signed version, else when the version was saved")
    method: MethodInfo
    results: list[ResultRow] = Field(min_length=1)
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
    reviewer: Person | None = None
    signer: Person | None = None
    signer_certificate: str | None = Field(None, description="subject name of the signing certificate, when it "
                                                             "differs from the signer's display name")

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
        d["comparison"] = [{k: v for k, v in r.items() if k != "difference"} for r in d.get("comparison", [])]
        d["results"] = [{k: v for k, v in r.items() if k != "flag"} for r in d.get("results", [])]
        return cls.model_validate(d)


RESULTS_SCHEMA = "leuko-report/2"


# ----------------------------------------------------------------------------------------------------------------
# Facts: the only input an LLM receives


class Facts(_Frozen):
    """Computed facts for interpretation drafting: no identifiers, no user-typed text.

    ``values`` maps a fact id (``diff.neutrophil.pct``) to a number; ``classes`` maps the slug used in fact ids to
    the class label; ``targets`` maps a marker slug to the marker's name (from the model card); ``units`` says
    what each kind of fact measures.
    """

    specimen: Literal["blood", "balf"]
    classes: dict[str, str]
    targets: dict[str, str] = Field(default_factory=dict)
    values: dict[str, float]
    units: dict[str, str]

    def prompt_json(self) -> dict[str, Any]:
        return {"specimen": self.specimen, "classes": self.classes, "markers": self.targets, "facts": self.values,
                "units": self.units}

    def names(self) -> list[str]:
        """Names whose digits are not numbers of the text: class labels, marker names, QC reasons (longest first)."""
        reasons = [k.removeprefix("qc.excluded.").replace("_", " ") for k in self.values
                   if k.startswith("qc.excluded.")]
        return sorted({*self.classes.values(), *self.targets.values(), *reasons}, key=len, reverse=True)


_UNITS = {
    "cells.*": "number of cells",
    "qc.excluded.*": "cells excluded by image quality control, by reason",
    "confidence_pct": "confidence level of every interval, %",
    "diff.<class>.count": "cells counted in the class",
    "diff.<class>.pct|ci_low|ci_high": "classify-and-count %, with the exact CI bounds (%)",
    "corr.<class>.pct|ci_low|ci_high": "prior-shift-corrected %, with bootstrap CI bounds (%)",
    "reference_configured": "1 when the laboratory configured reference intervals for this specimen, else 0",
    "ref.<class>.low|high": "the laboratory's reference interval (%)",
    "marker.<class>.<marker>.median|q1|q3|n": "regressed marker among the class's cells (marker's own units)",
    "manual.<class>.pct|diff": "this sample's manual count % and model minus manual (percentage points)",
    "agreement.n_samples": "samples in the latest saved method-comparison study that includes this sample",
    "agreement.<class>.*": "that study's Bland-Altman bias and limits of agreement (loa_low, loa_high) of the "
                           "classify-and-count % against manual counts, with CI bounds (model minus manual)",
    "agreement_corr.<class>.*": "the same for the corrected %",
    "agreement.unit_pp": "1 when agreement values are percentage points, 0 when % of the mean or ratios",
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
    """The facts an interpretation may use. Leaves out the patient, sample, people and every free-text field
    (study name, amendment reason, interpretation)."""
    classes = _unique_slugs([r.label for r in ctx.results])
    by_label = {label: s for s, label in classes.items()}
    targets = _unique_slugs(sorted({m.target for m in ctx.markers}))
    by_target = {name: s for s, name in targets.items()}
    v: dict[str, float] = {
        "cells.total": ctx.qc.total_cells,
        "cells.counted": ctx.qc.counted_cells,
        "cells.excluded": ctx.qc.total_cells - ctx.qc.counted_cells,
        "confidence_pct": ctx.confidence_percent,
        "reference_min_cells": 200,
        "reference_configured": 1 if ctx.reference_source is not None else 0,
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
        base = f"marker.{by_label[m.label]}.{by_target[m.target]}"
        v[f"{base}.n"] = m.n
        v[f"{base}.median"] = m.median
        if m.q1 is not None and m.q3 is not None:
            v[f"{base}.q1"], v[f"{base}.q3"] = m.q1, m.q3
    for c in ctx.comparison:
        if c.label in by_label:
            v[f"manual.{by_label[c.label]}.pct"] = c.manual_percent
            v[f"manual.{by_label[c.label]}.diff"] = c.difference
    if ctx.study is not None:
        v["agreement.n_samples"] = ctx.study.n_samples
        v["agreement.unit_pp"] = 1 if ctx.study.measure == "absolute" else 0
        for a in ctx.study.rows:
            if a.label not in by_label:
                continue
            base = f"{'agreement' if a.comparison == 'raw' else 'agreement_corr'}.{by_label[a.label]}"
            for name in ("n", "bias", "bias_ci_low", "bias_ci_high", "loa_low", "loa_low_ci_low", "loa_low_ci_high",
                         "loa_high", "loa_high_ci_low", "loa_high_ci_high"):
                value = getattr(a, name)
                if value is not None:
                    v[f"{base}.{name}"] = value
    values = {k: float(x) for k, x in v.items() if math.isfinite(float(x))}
    return Facts(specimen=ctx.specimen, classes=classes, targets=targets, values=values, units=dict(_UNITS))


# ----------------------------------------------------------------------------------------------------------------
# From the store

_STATUS = {"draft": "preliminary", "preliminary": "preliminary", "final": "final", "amended": "amended"}
_METRICS = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"), ("accuracy", "accuracy"),
            ("kappa", "Cohen's kappa"), ("n", "n cells"))


class SignedVersionError(PhenotypingError):
    """A signed report version was asked to be rebuilt from live data; what was signed is its PDF."""


def _person(store: Any, username: str | None) -> Person | None:
    if not username:
        return None
    found = store.get_user(username)
    if found is None:
        return Person(name=username, role="user")
    user = found[0]
    return Person(name=user.display_name or user.username, role=user.role.value)


def drafted_versions(store: Any, sample_id: str) -> set[int]:
    """Versions written by ``reports.workflow.draft_report`` (from its ``report.draft`` audit events)."""
    out = set()
    for e in store.list_audit(sample_id=sample_id, action="report.draft", limit=1_000_000):
        _, _, v = e.entity_id.rpartition("/v")
        if v.isdigit():
            out.add(int(v))
    return out


def _edited(store: Any, rv: Any) -> bool:
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


def _ci(value: Any) -> tuple[float | None, float | None]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None, None
    lo, hi = value
    ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi))
    return (float(lo), float(hi)) if ok else (None, None)


def _study_rows(study: dict[str, Any], classes: list[str]) -> list[ClassAgreementRow]:
    rows = []
    for comparison in ("raw", "corrected"):
        for label in classes:
            s = study["per_class"].get(f"{label}|{comparison}")
            if not s or not all(isinstance(s.get(k), (int, float)) for k in ("bias", "loa_lower", "loa_upper")):
                continue
            (b_lo, b_hi), (l_lo, l_hi), (u_lo, u_hi) = (_ci(s.get("bias_ci")), _ci(s.get("loa_lower_ci")),
                                                         _ci(s.get("loa_upper_ci")))
            rows.append(ClassAgreementRow(
                label=label, comparison=comparison, n=int(s["n"]), bias=s["bias"], bias_ci_low=b_lo,
                bias_ci_high=b_hi, loa_low=s["loa_lower"], loa_low_ci_low=l_lo, loa_low_ci_high=l_hi,
                loa_high=s["loa_upper"], loa_high_ci_low=u_lo, loa_high_ci_high=u_hi))
    return rows


def _same(a: float, b: Any) -> bool:
    return isinstance(b, (int, float)) and math.isclose(a, float(b), rel_tol=1e-9, abs_tol=1e-9)


_RC_LOCK = threading.Lock()


def text_svg(draw: Any, *args: Any, **kwargs: Any) -> str:
    """Call a :mod:`phenotyping.figures` SVG function with SVG text kept as text (``svg.fonttype = 'none'``).

    matplotlib writes every glyph as a path by default; WeasyPrint draws such a figure about five times slower than
    one with text elements (which it typesets in the embedded DejaVu font). rcParams are process-wide, so the
    switch is held under a lock for the duration of the call.
    """
    import matplotlib

    with _RC_LOCK, matplotlib.rc_context({"svg.fonttype": "none", "font.family": "DejaVu Sans"}):
        return draw(*args, **kwargs)


def _study_figures(store: Any, study: dict[str, Any], card: Any, classes: list[str]
                   ) -> tuple[dict[str, str], str | None]:
    """Bland-Altman SVGs (classify-and-count %, per class) of a saved study, redrawn from the store's data.

    The saved study keeps its statistics, not the paired values, so the pairs are collected again (the same way
    :func:`phenotyping.studies.run_study` does) and the statistics recomputed; figures are drawn only when they
    reproduce the saved bias and limits exactly. Returns ``(figures, why none)``.
    """
    from phenotyping.counts import sample_percentages
    from phenotyping.figures import bland_altman_svg
    from phenotyping.studies import model_percentages
    from phenotyping.study import compute_study

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
        if not all(_same(x, saved.get(k)) for x, k in ((ba.bias, "bias"), (ba.loa_lower, "loa_lower"),
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
        rows = _study_rows(study, classes)
        if not rows:
            return None, {}, f"The latest study including this sample holds no per-class results for {classes}."
        result = study["result"]
        agreement = StudyAgreement(
            name=study["name"], model_id=study["model_id"], model_version=str(study["model_version"]),
            measure=result.get("measure", "absolute"), n_samples=len(study["sample_ids"]),
            saved_at=study["created_at"], saved_by=study.get("created_by") or "",
            correction_method=result.get("correction_method"), rows=rows)
        figs, note = _study_figures(store, study, card, classes) if figures else ({}, None)
        return agreement, figs, note
    if others:
        return None, {}, (f"No saved agreement study of model {model_id} includes this sample (studies of other "
                          f"models do: {sorted(set(others))}).")
    return None, {}, "No saved agreement study includes this sample."


def _reference(settings: Any, given: Any, specimen: str, labels: list[str]
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

    The differential comes from :func:`phenotyping.results.sample_results` (the one place deciding which cells
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
    from phenotyping.counts import sample_percentages
    from phenotyping.results import sample_results
    from phenotyping.settings import get_settings

    settings = settings or get_settings()
    rv = report_version if report_version is not None else store.get_report_version(sample_id, version)
    if rv.signed_at is not None:
        raise SignedVersionError(
            f"report {sample_id} v{rv.version} was signed by {rv.signed_by} at {rv.signed_at:%Y-%m-%d %H:%M} UTC; "
            f"what was signed is its PDF ({store.report_pdf_path(sample_id, rv.version)}, sha256 {rv.pdf_hash}), "
            "never a new rendering of today's data; amend the report to make a new version")
    res = results if results is not None else sample_results(store, sample_id)
    if res.differential is None or res.card is None or res.model_id is None:
        raise ValueError(f"sample {sample_id!r} has no analysis model, so there is no differential to report; "
                         "run `python -m phenotyping predict` first")
    diff, card = res.differential, res.card
    sample = res.sample
    labels = [c.label for c in diff.raw.classes]
    refs, ref_source, ref_warnings = _reference(settings, reference_intervals, sample.specimen.value, labels)
    corrected = diff.corrected
    corr = {} if corrected is None else {lab: (p, lo, hi) for lab, p, lo, hi in zip(
        corrected.labels, corrected.percent, corrected.ci_low, corrected.ci_high)}
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
    own_counts = store.get_manual_counts(sample_id)
    own_pct = sample_percentages(own_counts).get(sample_id, {}) if own_counts else {}
    for label in labels:  # the report's class order
        if label in own_pct:
            manual.append(ComparisonRow(label=label, manual_percent=own_pct[label], model_percent=model_pct[label]))
    study, figures, study_note = study_agreement(store, sample_id, model_id=res.model_id, card=card,
                                                 figures=study_figures)
    if study is None and not own_counts:
        study_note = None  # nothing to compare: the section is left out
    gallery: dict[str, list[str]] = {}
    for r in res.cells:
        if r.counted and r.final_label and len(gallery.setdefault(r.final_label, [])) < gallery_per_class:
            gallery[r.final_label].append(_thumbnail(store.read_cell_bytes(r.cell), r.cell.source_file))
    if status is None:
        status = "amended" if rv.amends_version is not None and rv.status != "draft" else _STATUS[rv.status]
    replaced = None if rv.amends_version is None else store.get_report_version(sample_id, rv.amends_version)
    replaced_by = None if replaced is None else _person(store, replaced.signed_by)
    return ReportContext(
        lab_name=settings.lab_name, lab_id=settings.lab_id, report_id=f"{settings.lab_id}-{sample_id}",
        version=rv.version, status=status, amendment_reason=rv.amendment_reason,
        replaces_version=rv.amends_version,
        replaces_signed_at=None if replaced is None else replaced.signed_at,
        replaces_signed_by=replaced_by.name if replaced_by is not None else None,
        replaces_pdf_sha256=None if replaced is None else replaced.pdf_hash,
        patient_pseudonym=sample.patient_pseudonym, sample_id=sample_id,
        specimen=sample.specimen.value, collected_at=sample.collected_at, reported_at=reported_at or rv.created_at,
        method=MethodInfo(model_name=res.model_id, model_version=model_version, validation=validation,
                          validation_set="held-out test split" if card.get("test") else "validation split",
                          correction_method=None if corrected is None else corrected.method),
        results=rows, confidence=diff.raw.confidence, reference_source=ref_source,
        markers=[MarkerRow(label=m.label, target=m.target, n=m.n, median=m.median, q1=m.q1, q3=m.q3)
                 for m in diff.markers],
        qc=QCSummary(total_cells=diff.n_cells, counted_cells=diff.raw.n_counted, excluded=dict(diff.qc_counts)),
        comparison=manual, study=study, study_note=study_note, bland_altman_figures=figures,
        gallery={k: v for k, v in gallery.items() if v},
        warnings=[*diff.raw.warnings, *getattr(diff, "notes", ()), *ref_warnings],
        interpretation=rv.interpretation, interpretation_source=rv.interpretation_source,
        interpretation_edited=_edited(store, rv),
        reviewer=_person(store, rv.created_by), signer=_person(store, rv.signed_by) or signer,
        signer_certificate=signer_certificate,
    )
