"""The facts an LLM may see when it drafts an interpretation: :func:`facts_from_context`.

Computed numbers only, keyed by fact ids such as ``diff.neutrophil.pct``; no identifiers and no user-typed text.
Re-exported by :mod:`reports.context`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from reports._models import ReportContext


class Facts(BaseModel):
    """Computed facts for interpretation drafting: no identifiers, no user-typed text.

    ``values`` maps a fact id (``diff.neutrophil.pct``) to a number; ``classes`` maps the slug used in fact ids to
    the label of each class the differential counts, ``apart`` the same for the classes reported apart from it;
    ``targets`` maps a marker slug to the marker's name (from the model card); ``units`` says what each kind of fact
    measures; ``reference_source`` is where the laboratory's reference intervals (``ref.<class>.low|high``) come
    from (file name and the start of its sha256; None when none are configured).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specimen: Literal["blood", "balf"]
    classes: dict[str, str]
    apart: dict[str, str] = Field(default_factory=dict)
    targets: dict[str, str] = Field(default_factory=dict)
    values: dict[str, float]
    units: dict[str, str]
    reference_source: str | None = None

    def prompt_json(self) -> dict[str, Any]:
        return {"specimen": self.specimen, "classes": self.classes, "reported_apart": self.apart,
                "markers": self.targets, "facts": self.values, "units": self.units,
                "reference_intervals_source": self.reference_source}

    def names(self) -> list[str]:
        """Names whose digits are not numbers of the text: class labels, marker names, QC reasons (longest first)."""
        reasons = [k.removeprefix("qc.excluded.").replace("_", " ") for k in self.values
                   if k.startswith("qc.excluded.")]
        source = [self.reference_source] if self.reference_source else []
        return sorted({*self.classes.values(), *self.apart.values(), *self.targets.values(), *reasons, *source},
                      key=len, reverse=True)


_UNITS = {
    "cells.*": "number of cells",
    "qc.excluded.*": "cells left out of the count (image quality control, not analysed, reviewed as another "
                     "class), by reason",
    "cells.unidentified": "cells below the model's confidence threshold, left for manual review (not counted; "
                          "not an image-quality exclusion)",
    "confidence_pct": "confidence level of every interval, %",
    "diff.<class>.count": "cells counted in the class",
    "diff.<class>.pct|ci_low|ci_high": "classify-and-count %, with the exact CI bounds (%)",
    "corr.<class>.pct|ci_low|ci_high": "prior-shift-corrected %, with bootstrap CI bounds (%)",
    "apart.<class>.count": "cells of a class reported apart from the differential (not in its percentages)",
    "apart.<class>.per_100|ci_low|ci_high": "cells per 100 counted cells of a class reported per 100 leukocytes "
                                            "(e.g. erythroblasts), with exact CI bounds",
    "apart.<class>.corr_per_100": "the same, corrected for the classifier's error pattern",
    "apart.<class>.noted_pct|ci_low|ci_high": "a noted class (e.g. BALF epithelial cells) as % of counted and noted "
                                              "cells, with exact CI bounds",
    "specimen_declared": "1 when the model card declares this specimen, 0 when the model is not meant for it",
    "reference_configured": "1 when the laboratory configured reference intervals for this specimen, else 0",
    "ref.<class>.low|high": "the laboratory's reference interval, in the unit of the class's value (% for a counted "
                            "or noted class, cells per 100 counted cells for a class reported per 100 leukocytes); "
                            "a class without these facts has no interval, and may not be called normal, high or low",
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
    slugs = _unique_slugs([r.label for r in ctx.results] + [a.label for a in ctx.apart])
    by_label = {label: s for s, label in slugs.items()}
    classes = {by_label[r.label]: r.label for r in ctx.results}
    targets = _unique_slugs(sorted({m.target for m in ctx.markers}))
    by_target = {name: s for s, name in targets.items()}
    v: dict[str, float] = {
        "cells.total": ctx.qc.total_cells,
        "cells.counted": ctx.qc.counted_cells,
        "cells.excluded": ctx.qc.total_cells - ctx.qc.counted_cells,
        "cells.unidentified": ctx.qc.unidentified,
        "confidence_pct": ctx.confidence_percent,
        "reference_min_cells": 200,
        "reference_configured": 1 if ctx.reference_source is not None else 0,
        "specimen_declared": 0 if ctx.specimen_statement else 1,
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
    for a in ctx.apart:
        s = by_label[a.label]
        v[f"apart.{s}.count"] = a.count
        name = {"per_100_leukocytes": "per_100", "noted": "noted_pct"}.get(a.role)
        if name and a.value is not None:
            v[f"apart.{s}.{name}"] = a.value
            if a.ci_low is not None and a.ci_high is not None:
                v[f"apart.{s}.ci_low"], v[f"apart.{s}.ci_high"] = a.ci_low, a.ci_high
        if a.corrected_value is not None:
            v[f"apart.{s}.corr_per_100"] = a.corrected_value
        if a.reference_low is not None and a.reference_high is not None and a.value is not None:
            v[f"ref.{s}.low"], v[f"ref.{s}.high"] = a.reference_low, a.reference_high
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
    return Facts(specimen=ctx.specimen, classes=classes, apart={by_label[a.label]: a.label for a in ctx.apart},
                 targets=targets, values=values, units=dict(_UNITS), reference_source=ctx.reference_source)

