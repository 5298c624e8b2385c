"""Agreement studies and the ``agreement`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phenotyping import agreement as ag
from phenotyping.study import compare_class, compute_study, paired_from_csv

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
    assert summary["corrected"]["basophil"]["passing_bablok"] is None
    assert summary["raw"]["neutrophil"]["counting_error"]["reference_cells"] == 200


def test_compute_study_validation():
    manual, raw, _ = _differentials(4)
    with pytest.raises(ValueError, match=r"lacks sample\(s\) \['S03'\]"):
        compute_study("x", manual, {k: v for k, v in raw.items() if k != "S03"})
    bad = {**raw, "S00": {**raw["S00"], "blast": 1.0}}
    with pytest.raises(ValueError, match="unknown class 'blast'"):
        compute_study("x", manual, bad, classes=CLASSES)
    with pytest.raises(ValueError, match="at least 3 samples"):
        compute_study("x", dict(list(manual.items())[:2]), raw)
    with pytest.raises(ValueError, match="class 'monocyte'.*both methods are 0"):
        zero = {s: {**d, "monocyte": 0.0} for s, d in manual.items()}
        compute_study("x", zero, {s: {**d, "monocyte": 0.0} for s, d in raw.items()}, measure="percent")


def test_compare_class_matches_the_statistics():
    ref, test = [10.0, 20.0, 30.0, 40.0, 50.0], [12.0, 19.0, 33.0, 41.0, 52.0]
    res = compare_class("neutrophil", list("abcde"), ref, test)
    assert res.bland_altman == ag.bland_altman(ref, test, labels=list("abcde"))
    assert res.passing_bablok.slope == ag.passing_bablok(ref, test).slope
    assert res.counting_error is None


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
    with pytest.raises(ValueError, match="duplicate of row 1"):
        paired_from_csv("sample_id,cell_type,reference,test\nS1,neu,30,50\nS1,neu,31,50\n")
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
