"""Agreement studies: manual differentials against the model's, per class, with the whole method-comparison set.

Pure computation, no storage (``phenotyping.store`` persists studies). Percentages are 0-100; differences are
model (test) - manual (reference). A class missing from one sample's differential counts as 0 % in that sample
(differentials list the classes that were seen); pass ``classes`` to reject unknown class names instead of
silently adding them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping import agreement as ag

__all__ = [
    "ClassAgreement",
    "CountingError",
    "PairedClass",
    "StudyResult",
    "compare_class",
    "compute_study",
    "paired_from_csv",
]


@dataclass(frozen=True)
class CountingError(ag.JsonResult):
    """How much of the disagreement binomial counting error alone explains, in percentage points.

    ``sd_difference = sqrt(mean_i p_i(100-p_i)(1/n_ref_i + 1/n_test_i))`` with p_i the pair's mean percentage (the
    test term is left out where the test's cell count is unknown); ``loa_halfwidth = z * sd_difference`` is the
    half-width of the limits of agreement two perfect methods would show from counting alone. ``spread`` is the
    spread of a single manual count of ``reference_cells`` cells at the class's mean percentage (Rümke).
    """

    reference_cells: int
    test_cells: int | None
    sd_difference: float
    loa_halfwidth: float
    spread: ag.CountingSpread


@dataclass(frozen=True)
class ClassAgreement(ag.JsonResult):
    """All agreement statistics of one class. A statistic that is undefined for these data (e.g. Passing-Bablok
    when every value is 0) is ``None`` and ``errors`` says why."""

    cell_type: str
    n: int
    measure: str
    sample_ids: tuple[str, ...]
    reference: tuple[float, ...]
    test: tuple[float, ...]
    bland_altman: ag.BlandAltmanResult
    passing_bablok: ag.PassingBablokResult | None
    deming: ag.DemingResult | None
    ccc: ag.ConcordanceResult | None
    pearson: ag.CorrelationResult | None
    counting_error: CountingError | None
    errors: Mapping[str, str]

    def summary(self) -> dict[str, Any]:
        """The command-line contract: ``n, bias, sd, loa_lower, loa_upper, bias_ci, loa_lower_ci, loa_upper_ci,
        proportional_bias{slope, p_value}, passing_bablok{slope, slope_ci, intercept, intercept_ci},
        deming{slope, intercept}, ccc, pearson`` plus extra keys; JSON-safe (no NaN)."""
        ba = self.bland_altman
        pb, dm = self.passing_bablok, self.deming
        out = {
            "n": self.n,
            "measure": self.measure,
            "bias": ba.bias,
            "sd": ba.sd,
            "loa_lower": ba.loa_lower,
            "loa_upper": ba.loa_upper,
            "bias_ci": ba.bias_ci,
            "loa_lower_ci": ba.loa_lower_ci,
            "loa_upper_ci": ba.loa_upper_ci,
            "loa_ci_method": ba.loa_ci_method,
            "proportional_bias": {
                "slope": ba.proportional_bias.slope,
                "p_value": ba.proportional_bias.p_value,
                "intercept": ba.proportional_bias.intercept,
            },
            "regression_loa": ba.regression_limits,
            "passing_bablok": None
            if pb is None
            else {
                "slope": pb.slope,
                "slope_ci": pb.slope_ci,
                "intercept": pb.intercept,
                "intercept_ci": pb.intercept_ci,
                "cusum_p_value": pb.cusum.p_value,
                "linear": pb.cusum.linear,
            },
            "deming": None
            if dm is None
            else {"slope": dm.slope, "intercept": dm.intercept, "slope_ci": dm.slope_ci, "intercept_ci": dm.intercept_ci},
            "ccc": None if self.ccc is None else self.ccc.ccc,
            "ccc_ci": None if self.ccc is None else self.ccc.ci,
            "pearson": None if self.pearson is None else self.pearson.r,
            "counting_error": self.counting_error,
            "errors": dict(self.errors),
        }
        return ag.to_jsonable(out)


def _counting_error(
    ref: np.ndarray, test: np.ndarray, ref_n: Sequence[int | None] | None, test_n: Sequence[int | None] | None, z: float
) -> CountingError | None:
    if ref_n is None or any(v is None for v in ref_n):
        return None
    rn = np.asarray(ref_n, dtype=float)
    tn = None if test_n is None or any(v is None for v in test_n) else np.asarray(test_n, dtype=float)
    p = np.clip((ref + test) / 2.0, 0.0, 100.0)
    inv = 1.0 / rn + (1.0 / tn if tn is not None else 0.0)
    sd = math.sqrt(float(np.mean(p * (100.0 - p) * inv)))
    cells = int(round(float(np.median(rn))))
    return CountingError(
        reference_cells=cells,
        test_cells=None if tn is None else int(round(float(np.median(tn)))),
        sd_difference=sd,
        loa_halfwidth=z * sd,
        spread=ag.counting_spread(float(np.clip(ref.mean(), 0.0, 100.0)), cells),
    )


def compare_class(
    cell_type: str,
    sample_ids: Sequence[str],
    reference: Sequence[float],
    test: Sequence[float],
    *,
    reference_totals: Sequence[int | None] | None = None,
    test_totals: Sequence[int | None] | None = None,
    measure: ag.Measure = "absolute",
    z: float = 1.96,
    confidence: float = 0.95,
) -> ClassAgreement:
    """Bland-Altman, Passing-Bablok, Deming, CCC, Pearson and counting error for one class (percentages 0-100).

    Bland-Altman errors (wrong lengths, NaN, n < 3, non-positive values for ``ratio``) propagate as ``ValueError``;
    the other statistics are ``None`` with the reason in ``errors`` when undefined for these data.
    """
    ids = tuple(str(s) for s in sample_ids)
    ba = ag.bland_altman(reference, test, measure=measure, z=z, confidence=confidence, labels=ids)
    x, y = np.asarray(reference, dtype=float), np.asarray(test, dtype=float)
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> Any:
        try:
            return fn()
        except ValueError as e:
            errors[name] = str(e)
            return None

    pb = attempt("passing_bablok", lambda: ag.passing_bablok(x, y, confidence=confidence, labels=ids))
    dm = attempt("deming", lambda: ag.deming(x, y, confidence=confidence))
    cc = attempt("ccc", lambda: ag.ccc(x, y, confidence=confidence))
    pr = attempt("pearson", lambda: ag.pearson(x, y, confidence=confidence))
    for name, totals in (("reference_totals", reference_totals), ("test_totals", test_totals)):
        if totals is not None and len(totals) != x.size:
            raise ValueError(f"{name} has {len(totals)} entries for {x.size} samples of {cell_type!r}")
    ce = _counting_error(x, y, reference_totals, test_totals, z)
    return ClassAgreement(
        cell_type=cell_type, n=ba.n, measure=measure, sample_ids=ids, reference=tuple(x.tolist()),
        test=tuple(y.tolist()), bland_altman=ba, passing_bablok=pb, deming=dm, ccc=cc, pearson=pr,
        counting_error=ce, errors=errors,
    )  # fmt: skip


@dataclass(frozen=True)
class StudyResult(ag.JsonResult):
    """Agreement of the model's differentials (raw and prior-shift-corrected) with manual counts, per class."""

    name: str
    measure: str
    model_version: str
    sample_ids: tuple[str, ...]
    classes: tuple[str, ...]
    raw: Mapping[str, ClassAgreement]
    corrected: Mapping[str, ClassAgreement] | None

    def summary(self) -> dict[str, Any]:
        """Per-class contract summaries (see ``ClassAgreement.summary``) for ``raw`` and ``corrected``."""
        return {
            "name": self.name,
            "measure": self.measure,
            "model_version": self.model_version,
            "n_samples": len(self.sample_ids),
            "raw": {c: a.summary() for c, a in self.raw.items()},
            "corrected": None if self.corrected is None else {c: a.summary() for c, a in self.corrected.items()},
        }


def _check_differentials(
    what: str, data: Mapping[str, Mapping[str, float]], samples: Sequence[str], classes: Sequence[str] | None
) -> None:
    missing = [s for s in samples if s not in data]
    if missing:
        raise ValueError(f"{what} lacks sample(s) {missing[:10]}; every study sample needs a manual and a model value")
    for s in samples:
        for c, v in data[s].items():
            if classes is not None and c not in classes:
                raise ValueError(f"{what}, sample {s!r}: unknown class {c!r}; allowed classes: {list(classes)}")
            f = float(v)
            if not (math.isfinite(f) and 0.0 <= f <= 100.0):
                raise ValueError(f"{what}, sample {s!r}, class {c!r}: percentage {v!r} is not within 0-100")


def compute_study(
    name: str,
    manual: Mapping[str, Mapping[str, float]],
    model_raw: Mapping[str, Mapping[str, float]],
    *,
    model_corrected: Mapping[str, Mapping[str, float]] | None = None,
    manual_totals: Mapping[str, int] | None = None,
    model_totals: Mapping[str, int] | None = None,
    classes: Sequence[str] | None = None,
    measure: ag.Measure = "absolute",
    model_version: str = "",
    z: float = 1.96,
    confidence: float = 0.95,
) -> StudyResult:
    """Compare per-sample differentials ``{sample_id: {cell_type: percent}}`` of the manual count (reference) with
    the model's raw and (optionally) corrected differentials (test), class by class.

    ``manual_totals``/``model_totals`` are cells counted per sample (for the counting-error spread). The samples
    are those of ``manual``; each must be present in the model's differentials.
    """
    samples = sorted(manual)
    if len(samples) < 3:
        raise ValueError(f"a study needs at least 3 samples with manual counts, got {len(samples)}")
    _check_differentials("manual", manual, samples, classes)
    _check_differentials("model (raw)", model_raw, samples, classes)
    if model_corrected is not None:
        _check_differentials("model (corrected)", model_corrected, samples, classes)
    names = tuple(classes) if classes is not None else tuple(
        sorted({c for d in (manual, model_raw, model_corrected or {}) for s in samples if s in d for c in d[s]})
    )  # fmt: skip
    for what, totals in (("manual_totals", manual_totals), ("model_totals", model_totals)):
        if totals is not None:
            lacking = [s for s in samples if s not in totals]
            if lacking:
                raise ValueError(f"{what} lacks sample(s) {lacking[:10]}")
    ref_n = [manual_totals[s] for s in samples] if manual_totals is not None else None
    test_n = [model_totals[s] for s in samples] if model_totals is not None else None

    def per_class(model: Mapping[str, Mapping[str, float]]) -> dict[str, ClassAgreement]:
        out = {}
        for c in names:
            ref = [float(manual[s].get(c, 0.0)) for s in samples]
            tst = [float(model[s].get(c, 0.0)) for s in samples]
            try:
                out[c] = compare_class(c, samples, ref, tst, reference_totals=ref_n, test_totals=test_n,
                                       measure=measure, z=z, confidence=confidence)  # fmt: skip
            except ValueError as e:
                raise ValueError(f"class {c!r}: {e}") from e
        return out

    return StudyResult(
        name=name, measure=measure, model_version=model_version, sample_ids=tuple(samples), classes=names,
        raw=per_class(model_raw), corrected=None if model_corrected is None else per_class(model_corrected),
    )  # fmt: skip


@dataclass(frozen=True)
class PairedClass:
    """Paired values of one class from the command-line CSV, as percentages (0-100)."""

    cell_type: str
    sample_ids: tuple[str, ...]
    reference: tuple[float, ...]
    test: tuple[float, ...]
    reference_totals: tuple[int, ...] | None
    test_totals: tuple[int, ...] | None


def paired_from_csv(source: str | Path) -> dict[str, PairedClass]:
    """Read the ``agreement`` command's CSV: ``sample_id, cell_type, reference, test`` (percentages), optional
    ``reference_total, test_total``. Where a row has a total, its value is a cell count and is converted to a
    percentage of that total. ``source`` is a path, or CSV text when it contains a newline.
    Returns ``{cell_type: PairedClass}`` in order of first appearance.
    """
    if isinstance(source, Path) or "\n" not in source:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"paired CSV not found: {path}")
        text, label = path.read_text(encoding="utf-8-sig"), str(path)
    else:
        text, label = source, "paired CSV"
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [(h or "").strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("sample_id", "cell_type", "reference", "test") if c not in header]
    if missing:
        raise ValueError(f"{label} lacks column(s) {missing}; found {header}; "
                         "expected sample_id, cell_type, reference, test[, reference_total, test_total]")  # fmt: skip
    rows: dict[str, dict[str, list[Any]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(reader, start=1):
        row = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items()}
        sample, ctype = row.get("sample_id") or "", row.get("cell_type") or ""
        where = f"{label}, row {i} (sample {sample!r}, cell type {ctype!r})"
        if not sample or not ctype:
            raise ValueError(f"{where}: sample_id and cell_type must not be empty")
        if (sample, ctype) in seen:
            raise ValueError(f"{where}: duplicate of row {seen[(sample, ctype)]}")
        seen[(sample, ctype)] = i
        entry = rows.setdefault(ctype, {"ids": [], "ref": [], "test": [], "ref_n": [], "test_n": []})
        entry["ids"].append(sample)
        for side in ("reference", "test"):
            value = _float(row.get(side), side, where)
            total_raw = row.get(f"{side}_total")
            total = None
            if total_raw not in (None, ""):
                t = _float(total_raw, f"{side}_total", where)
                if t < 1 or t != int(t):
                    raise ValueError(f"{where}: {side}_total must be a whole number of cells >= 1, got {total_raw!r}")
                total = int(t)
                if value > total:
                    raise ValueError(f"{where}: {side} count {value:g} exceeds {side}_total {total}")
                value = 100.0 * value / total
            elif value > 100:
                raise ValueError(f"{where}: {side} {value:g} is above 100 %; give {side}_total if it is a count")
            key = "ref" if side == "reference" else "test"
            entry[key].append(value)
            entry[f"{key}_n"].append(total)
    if not rows:
        raise ValueError(f"{label} has no data rows")
    return {
        c: PairedClass(
            cell_type=c, sample_ids=tuple(e["ids"]), reference=tuple(e["ref"]), test=tuple(e["test"]),
            reference_totals=tuple(e["ref_n"]) if all(v is not None for v in e["ref_n"]) else None,
            test_totals=tuple(e["test_n"]) if all(v is not None for v in e["test_n"]) else None,
        )  # fmt: skip
        for c, e in rows.items()
    }


def _float(v: Any, what: str, where: str) -> float:
    if v is None or v == "":
        raise ValueError(f"{where}: {what} is empty")
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"{where}: {what} {v!r} is not a number") from None
    if not math.isfinite(f):
        raise ValueError(f"{where}: {what} {v!r} is not finite")
    if f < 0:
        raise ValueError(f"{where}: {what} {v!r} is negative")
    return f
