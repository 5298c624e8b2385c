"""Agreement studies and the ``agreement`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phenotyping.agreement import stats as ag
from phenotyping.agreement.paired import paired_from_csv
from phenotyping.agreement.study import compare_class, compute_study

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["neutrophil", "lymphocyte", "monocyte", "basophil"]


def _differentials(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    manual, raw, corrected = {}, {}, {}
    for i in range(n):
        neu = float(rng.uniform(40, 75))
        mono = float(rng.uniform(3, 10))
        lym = 100.0 - neu - mono
        sid = f"S{i:02d}"
        manual[sid] = {"neutrophil": neu, "lymphocyte": lym, "monocyte": mono}
        shift = float(rng.normal(0, 1.0))
        raw[sid] = {"neutrophil": neu + 3.0 + shift, "lymphocyte": lym - 3.0 - shift, "monocyte": mono}
        corrected[sid] = {"neutrophil": neu + shift, "lymphocyte": lym - shift, "monocyte": mono, "basophil": 0.0}
    return manual, raw, corrected


def test_compute_study_raw_and_corrected():
    manual, raw, corrected = _differentials()
    totals = {s: 200 for s in manual}
    res = compute_study("pilot", manual, raw, model_corrected=corrected, manual_totals=totals,
                        model_totals={s: 2000 for s in manual}, classes=CLASSES, model_version="m1")  # fmt: skip
    assert res.classes == tuple(CLASSES)
    assert res.raw["neutrophil"].bland_altman.bias == pytest.approx(3.0 + np.mean(
        [raw[s]["neutrophil"] - 3.0 - manual[s]["neutrophil"] for s in manual]))  # fmt: skip
    assert abs(res.corrected["neutrophil"].bland_altman.bias) < abs(res.raw["neutrophil"].bland_altman.bias)
    assert res.raw["monocyte"].bland_altman.sd == pytest.approx(0.0, abs=1e-12)
    ce = res.raw["neutrophil"].counting_error
    assert ce is not None and ce.reference_cells == 200 and ce.test_cells == 2000
    p = np.array([(manual[s]["neutrophil"] + raw[s]["neutrophil"]) / 2 for s in sorted(manual)])
    assert ce.sd_difference == pytest.approx(np.sqrt(np.mean(p * (100 - p) * (1 / 200 + 1 / 2000))))
    # basophil is 0 everywhere: Bland-Altman is defined, the regressions and correlations are not, and say why
    baso = res.corrected["basophil"]
    assert baso.bland_altman.bias == 0.0 and baso.passing_bablok is None and "passing_bablok" in baso.errors
    json.dumps(res.to_dict(), allow_nan=False)
    summary = json.loads(json.dumps(res.summary(), allow_nan=False))
    # undefined statistics keep their keys, with nulls, so consumers can index them
    assert summary["corrected"]["basophil"]["passing_bablok"] == {
        "slope": None, "slope_ci": [None, None], "intercept": None, "intercept_ci": [None, None],
        "cusum_p_value": None, "linear": None, "bootstrap": None}  # fmt: skip
    assert summary["corrected"]["basophil"]["deming"]["slope"] is None
    assert summary["raw"]["neutrophil"]["counting_error"]["reference_cells"] == 200
    # the spread of 200- and 400-cell manual counts is reported whether or not totals are known
    assert [m["n_cells"] for m in summary["raw"]["neutrophil"]["counting_error"]["manual_counts"]] == [200, 400]


def test_compute_study_validation():
    manual, raw, _ = _differentials(4)
    with pytest.raises(ValueError, match=r"lacks sample\(s\) \['S03'\]"):
        compute_study("x", manual, {k: v for k, v in raw.items() if k != "S03"})
    bad = {**raw, "S00": {**raw["S00"], "blast": 1.0}}
    with pytest.raises(ValueError, match="unknown class 'blast'"):
        compute_study("x", manual, bad, classes=CLASSES)
    with pytest.raises(ValueError, match="at least 3 samples"):
        compute_study("x", dict(list(manual.items())[:2]), raw)
    # one class whose limits cannot be computed does not stop the others
    zero = {s: {**d, "monocyte": 0.0} for s, d in manual.items()}
    res = compute_study("x", zero, {s: {**d, "monocyte": 0.0} for s, d in raw.items()}, measure="percent")
    mono = res.raw["monocyte"]
    assert mono.bland_altman is None and not mono.computed and "both methods are 0" in mono.errors["bland_altman"]
    assert res.raw["neutrophil"].computed
    with pytest.raises(ValueError, match="no class of the raw differential has limits of agreement"):
        only = {s: {"monocyte": 0.0} for s in manual}
        compute_study("x", only, only, measure="ratio")
    with pytest.raises(ValueError, match="manual_cells"):
        compute_study("x", manual, raw, manual_cells=[0])


def test_compare_class_matches_the_statistics():
    ref, test = [10.0, 20.0, 30.0, 40.0, 50.0], [12.0, 19.0, 33.0, 41.0, 52.0]
    res = compare_class("neutrophil", list("abcde"), ref, test)
    assert res.bland_altman == ag.bland_altman(ref, test, labels=list("abcde"))
    assert res.passing_bablok.slope == ag.passing_bablok(ref, test).slope
    ce = res.counting_error
    assert ce.reference_cells is None and ce.sd_difference is None and ce.spread is None  # totals unknown
    p = (np.array(ref) + np.array(test)) / 2
    for m, n in zip(ce.manual_counts, (200, 400)):
        assert m.n_cells == n
        assert m.sd_difference == pytest.approx(np.sqrt(np.mean(p * (100 - p) / n)))
        assert m.loa_halfwidth == pytest.approx(1.96 * m.sd_difference)
        assert m.spread == ag.counting_spread(30.0, n)


def test_each_statistic_of_a_class_is_independent():
    # two samples: nothing can be computed, and every contract key is still there
    res = compare_class("basophil", ["a", "b"], [1.0, 2.0], [1.5, 2.5])
    assert not res.computed and set(res.errors) == {"bland_altman", "passing_bablok", "deming", "ccc", "pearson",
                                                    "icc", "outliers"}  # fmt: skip
    s = json.loads(json.dumps(res.summary(), allow_nan=False))
    for key in ("bias", "sd", "loa_lower", "loa_upper", "ccc", "pearson"):
        assert s[key] is None
    assert s["bias_ci"] == s["loa_lower_ci"] == s["loa_upper_ci"] == [None, None]
    assert s["proportional_bias"] == {"slope": None, "p_value": None, "intercept": None}
    assert s["passing_bablok"]["slope_ci"] == [None, None] and s["deming"] == {
        "slope": None, "intercept": None, "slope_ci": [None, None], "intercept_ci": [None, None], "weighted": None,
        "bootstrap": None}  # fmt: skip
    assert s["icc"]["icc"] is None and s["verdict"] is None and any("40" in w for w in s["warnings"])
    assert [m["n_cells"] for m in s["counting_error"]["manual_counts"]] == [200, 400]
    # ratio with a zero: Bland-Altman fails, the regressions and correlations do not
    r = compare_class("monocyte", list("abcde"), [0.0, 2.0, 4.0, 6.0, 9.0], [1.0, 2.5, 3.5, 6.5, 8.0],
                      measure="ratio")
    assert r.bland_altman is None and "positive" in r.errors["bland_altman"]
    assert r.passing_bablok is not None and r.ccc is not None and r.pearson is not None
    assert r.counting_error.sd_difference is None  # no totals
    assert r.counting_error.manual_counts[0].sd_difference is not None  # every pair mean is > 0


def test_counting_error_in_the_units_of_the_measure():
    ref, test = [10.0, 20.0, 40.0, 50.0], [12.0, 18.0, 44.0, 47.0]
    p = (np.array(ref) + np.array(test)) / 2
    base = p * (100 - p) * (1 / 200 + 1 / 1000)
    kw = dict(reference_totals=[200] * 4, test_totals=[1000] * 4)
    ce = {m: compare_class("neu", list("abcd"), ref, test, measure=m, **kw).counting_error
          for m in ("absolute", "percent", "ratio")}  # fmt: skip
    assert ce["absolute"].units == "percentage points"
    assert ce["absolute"].sd_difference == pytest.approx(np.sqrt(np.mean(base)))
    assert ce["percent"].sd_difference == pytest.approx(np.sqrt(np.mean(base * (100 / p) ** 2)))
    assert ce["ratio"].sd_difference == pytest.approx(np.sqrt(np.mean(base / p**2)))
    assert ce["ratio"].units == "natural log of test/reference" and ce["ratio"].test_cells == 1000
    zero = compare_class("baso", list("abcd"), [0.0, 1.0, 0.5, 2.0], [0.0, 1.5, 0.5, 1.0], measure="percent")
    assert zero.counting_error.manual_counts[0].sd_difference is None and "undefined" in zero.counting_error.note


CSV = """sample_id,cell_type,reference,test,reference_total,test_total
S1,neutrophil,120,1300,200,2000
S2,neutrophil,100,1150,200,2000
S3,neutrophil,140,1500,200,2000
S4,neutrophil,90,950,200,2000
S5,neutrophil,130,1330,200,2000
S1,lymphocyte,60,560,200,2000
S2,lymphocyte,80,700,200,2000
S3,lymphocyte,40,380,200,2000
S4,lymphocyte,90,880,200,2000
S5,lymphocyte,50,520,200,2000
"""


def test_paired_from_csv_converts_counts(tmp_path):
    f = tmp_path / "paired.csv"
    f.write_text(CSV)
    paired = paired_from_csv(f)
    assert list(paired) == ["neutrophil", "lymphocyte"]
    neu = paired["neutrophil"]
    assert neu.reference[0] == pytest.approx(60.0) and neu.test[0] == pytest.approx(65.0)
    assert neu.reference_totals == (200,) * 5
    with pytest.raises(ValueError, match="row 1 .*exceeds reference_total"):
        paired_from_csv("sample_id,cell_type,reference,test,reference_total\nS1,neu,300,50,200\n")
    # replicate pairs of a sample come from an explicit replicate column
    reps = paired_from_csv("sample_id,cell_type,reference,test,replicate\nS1,neu,30,50,1\nS1,neu,31,50,2\n")
    assert reps["neu"].sample_ids == ("S1", "S1") and reps["neu"].replicates and not neu.replicates
    assert reps["neu"].replicate_ids == ("1", "2")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['test'\]"):
        paired_from_csv("sample_id,cell_type,reference\nS1,neu,30\n")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phenotyping", "agreement", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_agreement(tmp_path):
    f = tmp_path / "paired.csv"
    f.write_text(CSV)
    proc = _run_cli("--paired", str(f))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    neu = out["cell_types"]["neutrophil"]
    for key in ("n", "bias", "sd", "loa_lower", "loa_upper", "bias_ci", "loa_lower_ci", "loa_upper_ci",
                "proportional_bias", "passing_bablok", "deming", "ccc", "pearson"):  # fmt: skip
        assert key in neu, key
    assert set(neu["proportional_bias"]) >= {"slope", "p_value"}
    assert set(neu["passing_bablok"]) >= {"slope", "slope_ci", "intercept", "intercept_ci"}
    assert set(neu["deming"]) >= {"slope", "intercept"}
    ref = np.array([120, 100, 140, 90, 130]) / 2.0
    test = np.array([1300, 1150, 1500, 950, 1330]) / 20.0
    assert neu["n"] == 5
    assert neu["bias"] == pytest.approx(float(np.mean(test - ref)))  # test - reference, in percentage points
    assert neu["sd"] == pytest.approx(float(np.std(test - ref, ddof=1)))
    assert neu["loa_lower"] < neu["bias"] < neu["loa_upper"]
    assert len(neu["bias_ci"]) == 2 and neu["bias_ci"][0] < neu["bias"] < neu["bias_ci"][1]
    lo, hi = neu["passing_bablok"]["slope_ci"]
    assert lo <= neu["passing_bablok"]["slope"] <= hi
    assert "NaN" not in proc.stdout
    assert neu["counting_error"]["reference_cells"] == 200

    ratio = json.loads(_run_cli("--paired", str(f), "--measure", "ratio").stdout)
    assert ratio["cell_types"]["lymphocyte"]["bias"] == pytest.approx(
        float(np.exp(np.mean(np.log(np.array([560, 700, 380, 880, 520]) / 20 / (np.array([60, 80, 40, 90, 50]) / 2))))))


def test_cli_agreement_errors(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("sample_id,cell_type,reference,test\nS1,neu,30,abc\n")
    proc = _run_cli("--paired", str(f))
    assert proc.returncode == 2
    assert "row 1" in proc.stderr and "'abc' is not a number" in proc.stderr
    proc = _run_cli("--paired", str(tmp_path / "missing.csv"))
    assert proc.returncode == 2 and "not found" in proc.stderr


def _csv(rows: list[tuple], header: str = "sample_id,cell_type,reference,test") -> str:
    return header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)


def test_cli_agreement_one_class_cannot_abort_the_others(tmp_path):
    rows = [(f"S{i}", "neutrophil", ref, test) for i, (ref, test) in
            enumerate([(60, 62), (55, 54), (70, 73), (48, 50), (65, 64)])]
    baso = [(0, 0.5), (1, 0), (0.5, 1), (0, 0), (1, 1)]  # zeros: no ratios
    rows += [(f"S{i}", "basophil", ref, test) for i, (ref, test) in enumerate(baso)]
    rows += [("S0", "eosinophil", 2, 3), ("S1", "eosinophil", 4, 3)]  # fewer than 3 samples
    f = tmp_path / "paired.csv"
    f.write_text(_csv(rows))
    proc = _run_cli("--paired", str(f), "--measure", "ratio")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)["cell_types"]
    assert out["neutrophil"]["bias"] is not None and out["neutrophil"]["errors"] == {}
    for name in ("basophil", "eosinophil"):
        c = out[name]
        assert c["bias"] is None and "bland_altman" in c["errors"]
        assert c["bias_ci"] == [None, None]
        assert set(c["passing_bablok"]) >= {"slope", "slope_ci", "intercept", "intercept_ci"}
        assert set(c["deming"]) >= {"slope", "intercept"} and set(c["proportional_bias"]) >= {"slope", "p_value"}
    assert "positive" in out["basophil"]["errors"]["bland_altman"]
    assert "at least 3" in out["eosinophil"]["errors"]["bland_altman"]
    assert out["basophil"]["ccc"] is not None  # the statistics that do not need positive values still run
    assert "basophil" in proc.stderr and "no limits of agreement" in proc.stderr
    # no class computable at all: a user error, exit 2
    f.write_text(_csv([r for r in rows if r[1] == "eosinophil"]))
    proc = _run_cli("--paired", str(f))
    assert proc.returncode == 2 and "no cell type could be compared" in proc.stderr


def test_cli_agreement_manual_cells_and_replicates(tmp_path):
    ref = [60.0, 55.0, 70.0, 48.0, 65.0]
    test = [62.0, 54.0, 73.0, 50.0, 64.0]
    rows = [(f"S{i}", "neutrophil", r, t, 1) for i, (r, t) in enumerate(zip(ref, test))]
    # lymphocytes counted twice on S0 and S1: replicates, numbered in the replicate column
    lym = [("S0", 30, 31), ("S0", 28, 30), ("S1", 35, 33), ("S1", 36, 35), ("S2", 20, 22), ("S3", 40, 41),
           ("S4", 25, 24)]  # fmt: skip
    reps = [1, 2, 1, 2, 1, 1, 1]
    rows += [(s, "lymphocyte", r, t, k) for (s, r, t), k in zip(lym, reps)]
    f = tmp_path / "paired.csv"
    f.write_text(_csv(rows, header="sample_id,cell_type,reference,test,replicate"))
    proc = _run_cli("--paired", str(f), "--manual-cells", "100")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    neu = out["cell_types"]["neutrophil"]
    ce = neu["counting_error"]  # percent-only CSV: totals unknown, the 100-cell spread is still reported
    assert ce["reference_cells"] is None and ce["loa_halfwidth"] is None
    p = (np.array(ref) + np.array(test)) / 2
    assert [m["n_cells"] for m in ce["manual_counts"]] == [100]
    assert ce["manual_counts"][0]["loa_halfwidth"] == pytest.approx(1.96 * np.sqrt(np.mean(p * (100 - p) / 100)))
    lymph = out["cell_types"]["lymphocyte"]
    expected = ag.bland_altman_repeated([s for s, _, _ in lym], [r for _, r, _ in lym], [t for _, _, t in lym])
    assert lymph["replicates"] and (lymph["n"], lymph["n_samples"]) == (7, 5)
    assert lymph["bias"] == pytest.approx(expected.bias) and lymph["sd"] == pytest.approx(expected.sd)
    assert lymph["loa_lower"] == pytest.approx(expected.loa_lower)
    assert lymph["bias_ci"] == pytest.approx(list(expected.mover.bias_ci)) and "MOVER" in lymph["loa_ci_method"]
    assert lymph["loa_upper_ci"] == pytest.approx(list(expected.mover.loa_upper_ci))
    assert "Bland & Altman 2007" in lymph["bland_altman_method"] and "replicates" in lymph["note"]
    assert "lymphocyte" in proc.stderr and "replicates" in proc.stderr
    # the regressions use each sample's mean of its replicates
    assert lymph["passing_bablok"]["slope"] == pytest.approx(ag.passing_bablok(
        [29.0, 35.5, 20.0, 40.0, 25.0], [30.5, 34.0, 22.0, 41.0, 24.0]).slope)  # fmt: skip
    assert neu["replicates"] is False and neu["bland_altman_method"].startswith("Bland & Altman 1986")
    proc = _run_cli("--paired", str(f), "--manual-cells", "0")
    assert proc.returncode == 2 and "manual_cells" in proc.stderr
