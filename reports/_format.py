"""Pure steps of :func:`reports.context.build_context`: computed results into the report's rows and wording.

Nothing here reads the store or the settings; the gathering steps are in :mod:`reports._gather`. The models it
fills are in :mod:`reports._models`.
"""

from __future__ import annotations

import math
import threading
from typing import Any
from reports._models import (ApartRow, ClassAgreementRow, KappaSummary, MarkerRow, MethodInfo, QCSummary,
                             ReportStatus, ResultRow)

_STATUS = {"draft": "preliminary", "preliminary": "preliminary", "final": "final", "amended": "amended"}
_METRICS = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"), ("accuracy", "accuracy"),
            ("kappa", "Cohen's kappa"), ("n", "n cells"))


def report_status(rv: Any) -> ReportStatus:
    """What the report says of a stored version: a draft is preliminary; a saved amendment is amended."""
    return "amended" if rv.amends_version is not None and rv.status != "draft" else _STATUS[rv.status]


def result_rows(diff: Any, refs: dict[str, tuple[float, float]]) -> list[ResultRow]:
    """One row per class of a ``SampleDifferential``: raw %, its CI, the corrected % and the reference interval.

    A corrected CI bound that is not finite (the bootstrap could not give one) is left out.
    """
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
    return rows


def apart_rows(diff: Any, refs: dict[str, tuple[float, float]]) -> list[ApartRow]:
    """One row per class the specimen reports apart (``SampleDifferential.apart``), with the corrected value of a
    class reported per 100 leukocytes when the corrected composition has one, and the reference interval."""
    corrected = diff.corrected
    corr = {} if corrected is None else {lab: (v, lo, hi) for lab, v, lo, hi in corrected.per_100_leukocytes}
    rows = []
    for a in diff.apart:
        cv, clo, chi = corr.get(a.label, (None, None, None))
        ref = refs.get(a.label) if a.role != "counted_apart" else None
        rows.append(ApartRow(
            label=a.label, role=a.role, count=a.count, value=a.value, ci_low=a.ci_low, ci_high=a.ci_high,
            unit=a.unit, corrected_value=cv if cv is not None and math.isfinite(cv) else None,
            corrected_ci_low=clo if clo is not None and math.isfinite(clo) else None,
            corrected_ci_high=chi if chi is not None and math.isfinite(chi) else None,
            reference_low=None if ref is None else ref[0], reference_high=None if ref is None else ref[1]))
    return rows


def differential_wording(specimen: str, check: Any) -> tuple[str, str, str | None]:
    """``(title, what the percentages are of, statement)`` for a sample's specimen and its
    :class:`phenotyping.analysis.specimens.SpecimenCheck`; the statement (None when the model card declares the
    specimen) says that the model is not meant for it."""
    spec = check.spec
    title = {"blood": "Leukocyte differential", "balf": "BAL fluid cell differential"}[specimen]
    if not check.declared:
        return title, f"counted cells of the model's classes ({', '.join(spec.counted)})", check.message
    if specimen == "blood":
        basis = "counted leukocytes"
    else:
        basis = f"counted BAL cells ({', '.join(spec.counted)})"
    if spec.noted:
        basis += f"; {', '.join(spec.noted)} are noted apart, not counted"
    return title, basis, None


def modality(card: Any) -> str:
    """How the model's cells were imaged: the card's ``modality`` (e.g. "label-free DPC", "May-Grünwald-Giemsa
    stained smear"), else a description from its channel names (red, green, blue: a colour brightfield image, its
    stain not stated; other names: label-free imaging of those channels)."""
    from phenotyping.analysis.cellview import is_rgb

    given = card.get("modality")
    if isinstance(given, str) and given.strip():
        return given.strip()
    channels = [str(c) for c in (card.get("input") or {}).get("channels") or []]
    if is_rgb(channels):
        return "colour brightfield imaging (stain not stated in the model card)"
    return f"label-free imaging: {', '.join(channels)} channels" if channels else "label-free imaging"


def method_info(model_id: str, model_version: str, card: Any, corrected: Any) -> MethodInfo:
    """The method section: the imaging (:func:`modality`), the model, its test (else validation) metrics from the
    card, the correction used."""
    metrics_src = card.get("test") or card.get("validation") or {}
    validation = {name: float(metrics_src[key]) for key, name in _METRICS
                  if isinstance(metrics_src.get(key), (int, float))}
    imaging = modality(card)
    return MethodInfo(description=f"Automated classification of single-cell images; imaging: {imaging}",
                      modality=imaging, model_name=model_id, model_version=model_version, validation=validation,
                      validation_set="held-out test split" if card.get("test") else "validation split",
                      correction_method=None if corrected is None else corrected.method)


def marker_rows(diff: Any, card: Any = None) -> list[MarkerRow]:
    """The marker table: predicted median and IQR per class to 3 significant figures, with each target's unit from
    the model ``card`` (:func:`phenotyping.analysis.markers.target_units`; default "a.u.")."""
    from phenotyping.analysis.markers import DEFAULT_UNIT, significant, target_units

    units = target_units(card)
    return [MarkerRow(label=m.label, target=m.target, n=m.n, median=significant(m.median), q1=significant(m.q1),
                      q3=significant(m.q3), unit=units.get(m.target, DEFAULT_UNIT))
            for m in diff.markers]


def qc_summary(diff: Any) -> QCSummary:
    """Cells imaged, counted, left out by reason, and the unidentified queue (cells below the model's confidence
    threshold, awaiting manual review) apart from the exclusions."""
    from phenotyping.analysis.results import UNIDENTIFIED

    excluded = {k: n for k, n in diff.qc_counts.items() if k != UNIDENTIFIED}
    return QCSummary(total_cells=diff.n_cells, counted_cells=diff.raw.n_counted, excluded=excluded,
                     unidentified=diff.qc_counts.get(UNIDENTIFIED, 0),
                     reported_apart={a.label: a.count for a in diff.apart})


_DRAFT_OUTCOMES = {
    "template_no_model": "no language model configured",
    "template_after_rejection": "the language model's draft failed the checks",
    "template_after_error": "the language model could not be reached",
}


def draft_source_words(source: str, outcome: str | None = None) -> str:
    """What drafted a text, in words: ``source`` is ``"template"`` or the litellm route, ``outcome`` the
    :class:`reports.draft.DraftRecord` outcome when known."""
    if source == "template":
        why = _DRAFT_OUTCOMES.get(outcome or "")
        return "drafted from the computed facts" + (f" ({why})" if why else "")
    return f"drafted by a language model ({source}) from the computed facts, checked against them"


def _ci(value: Any) -> tuple[float | None, float | None]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None, None
    lo, hi = value
    ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi))
    return (float(lo), float(hi)) if ok else (None, None)


def study_rows(study: dict[str, Any], classes: list[str]) -> list[ClassAgreementRow]:
    """A saved study's per-class Bland-Altman results (raw, then corrected), in the order of ``classes``.

    Classes without a complete bias and limits are left out; a CI that is missing or not finite becomes None.
    """
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
                loa_high=s["loa_upper"], loa_high_ci_low=u_lo, loa_high_ci_high=u_hi, **_ep09_fields(s)))
    return rows


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _ep09_fields(s: dict[str, Any]) -> dict[str, Any]:
    """ICC, verdict, outliers and warnings of a saved class summary (absent in studies saved before them)."""
    icc = s.get("icc") if isinstance(s.get("icc"), dict) else {}
    acc = s.get("acceptance") if isinstance(s.get("acceptance"), dict) else {}
    out = s.get("outliers") if isinstance(s.get("outliers"), dict) else {}
    accepted = acc.get("accepted")
    return {"icc": _number(icc.get("icc")), "allowable": _number(acc.get("allowable")),
            "accepted": accepted if isinstance(accepted, bool) else None,
            "n_outliers": out.get("n_outliers") if isinstance(out.get("n_outliers"), int) else None,
            "warnings": [str(w) for w in s.get("warnings") or []]}


def kappa_summary(classification: Any) -> KappaSummary | None:
    """Cohen's kappa of a saved study's ``classification`` with both SEs; None when the study has none."""
    k = (classification or {}).get("kappa") if isinstance(classification, dict) else None
    if not isinstance(k, dict) or _number(k.get("kappa")) is None or _number(k.get("se")) is None:
        return None
    lo, hi = _ci(k.get("ci_fleiss"))  # the CI from the Fleiss-Cohen-Everitt SE (None in older studies)
    return KappaSummary(n=int(k["n"]), kappa=float(k["kappa"]), se=float(k["se"]),
                        se_fleiss=_number(k.get("se_fleiss")), ci_low=lo, ci_high=hi)


def same_value(a: float, b: Any) -> bool:
    """Whether a recomputed statistic equals a saved one (``b`` may be missing or not a number)."""
    return isinstance(b, (int, float)) and math.isclose(a, float(b), rel_tol=1e-9, abs_tol=1e-9)


def thumbnail_data_uri(data: bytes, name: str, size: int = 64, *, rgb: bool = False) -> str:
    """A cell image as a small 8-bit PNG data URI, middle z-plane, 1st–99th percentile stretch: in colour when
    ``rgb`` (the model card names red, green, blue channels: a stained smear) and the image has three channels,
    else its first channel in grey."""
    import base64
    import io

    from PIL import Image

    from phenotyping.analysis.cellview import to_display
    from phenotyping.ingest import read_image

    arr = read_image(data, name)
    img = to_display(arr, rgb=rgb and arr.shape[0] == 3)  # (H, W) or (H, W, 3) uint8
    pil = Image.fromarray(img)
    pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_RC_LOCK = threading.Lock()


def text_svg(draw: Any, *args: Any, **kwargs: Any) -> str:
    """Call a :mod:`phenotyping.agreement.figures` SVG function with SVG text kept as text (``svg.fonttype = 'none'``).

    matplotlib writes every glyph as a path by default; WeasyPrint draws such a figure about five times slower than
    one with text elements (which it typesets in the embedded DejaVu font). rcParams are process-wide, so the
    switch is held under a lock for the duration of the call.
    """
    import matplotlib

    with _RC_LOCK, matplotlib.rc_context({"svg.fonttype": "none", "font.family": "DejaVu Sans"}):
        return draw(*args, **kwargs)
