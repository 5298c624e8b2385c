"""The ``agreement`` command's CSV contract and its CLSI EP09 output (issue 18): replicates only from a replicate
column, identical rows and mixed totals refused naming the rows, ``--confidence`` in (0, 1), ``--scale absolute``,
and per class the decision-level bias, outlier screening, verdict, warnings, ICC and CCC shifts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phenotyping.__main__ import main
from phenotyping.agreement import stats as ag
from phenotyping.agreement.class_agreement import (
    EP09Options,
    compare_class,
    parse_class_values,
)
from phenotyping.agreement.paired import paired_from_csv
from phenotyping.settings import get_settings

HEADER = "sample_id,cell_type,reference,test"


def _csv(rows: list[tuple], header: str = HEADER) -> str:
    return header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)


def _agreement(capsys, *args: str) -> tuple[int, dict | None, str]:
    try:
        code = main(["agreement", *args])
    except SystemExit as e:  # argparse refuses the value
        code = int(e.code)
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_identical_rows_are_refused_not_replicates():
    with pytest.raises(ValueError, match=r"rows 2 and 3 are identical \(sample 'S2', cell type 'neu'\)"):
        paired_from_csv(_csv([("S1", "neu", 30, 31), ("S2", "neu", 40, 42), ("S2", "neu", 40, 42)]))
    with pytest.raises(ValueError, match=r"rows 1 and 2 both give sample 'S1'.*'replicate' column"):
        paired_from_csv(_csv([("S1", "neu", 30, 31), ("S1", "neu", 32, 31)]))
    with pytest.raises(ValueError, match=r"rows 1 and 2 are identical .*replicate '1'"):
        paired_from_csv(_csv([("S1", "neu", 30, 31, 1), ("S1", "neu", 30, 31, 1)], HEADER + ",replicate"))
    reps = paired_from_csv(_csv([("S1", "neu", 30, 31, 1), ("S1", "neu", 30, 31, 2), ("S2", "neu", 5, 6, 1)],
                                HEADER + ",replicate"))  # fmt: skip
    assert reps["neu"].replicates and reps["neu"].replicate_ids == ("1", "2", "1")


def test_rows_with_and_without_totals_are_refused():
    rows = [("S1", "neu", 150, 140, 200), ("S2", "neu", 75, 80, ""), ("S3", "neu", 120, 118, 200)]
    with pytest.raises(ValueError, match=r"reference_total is given on rows 1, 3 but empty on rows 2"):
        paired_from_csv(_csv(rows, HEADER + ",reference_total"))
    # totals on one side only, on every row, are fine (model percentages against manual counts)
    ok = paired_from_csv(_csv([("S1", "neu", 150, 70, 200), ("S2", "neu", 75, 40, 200)], HEADER + ",reference_total"))
    assert ok["neu"].reference == (75.0, 37.5) and ok["neu"].test == (70.0, 40.0)


def test_scale_absolute_takes_quantities(tmp_path, capsys):
    rows = [(f"S{i}", "neutrophil", r, r * 1.04 + 30) for i, r in enumerate([2500, 3100, 4200, 5100, 6800, 1900])]
    f = tmp_path / "abs.csv"
    f.write_text(_csv(rows))
    code, _, err = _agreement(capsys, "--paired", str(f), "--measure", "absolute")
    assert code == 2 and "above 100 %" in err and "--scale absolute" in err
    code, out, _ = _agreement(capsys, "--paired", str(f), "--scale", "absolute")
    assert code == 0 and out["scale"] == "absolute"
    neu = out["cell_types"]["neutrophil"]
    x = np.array([r[2] for r in rows], dtype=float)
    assert neu["bias"] == pytest.approx(float(np.mean(x * 0.04 + 30)))
    assert neu["counting_error"] is None and neu["scale"] == "absolute"
    with pytest.raises(ValueError, match="--scale absolute means the values are quantities"):
        paired_from_csv(_csv([("S1", "neu", 3, 4, 200)], HEADER + ",reference_total"), scale="absolute")


@pytest.mark.parametrize("level", ["95", "0", "1", "-0.5", "abc"])
def test_confidence_outside_zero_one_is_refused(tmp_path, capsys, level):
    f = tmp_path / "p.csv"
    f.write_text(_csv([(f"S{i}", "neu", 10 + i, 11 + i) for i in range(5)]))
    code, _, err = _agreement(capsys, "--paired", str(f), "--confidence", level)
    assert code == 2 and "--confidence" in err


def test_compare_class_refuses_a_bad_confidence():
    with pytest.raises(ValueError, match="between 0 and 1"):
        compare_class("neu", list("abcde"), [1.0, 2, 3, 4, 5], [1.0, 2, 3, 4, 6], confidence=95)


def _study_rows(seed: int = 2, n: int = 45, outlier: bool = True) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = np.round(rng.uniform(20, 80, n), 1)
    test = np.round(ref * 1.02 + 0.5 + rng.normal(0, 1.5, n), 1)
    if outlier:
        test[7] = min(ref[7] + 25.0, 100.0)
    return [(f"S{i}", "neutrophil", r, t) for i, (r, t) in enumerate(zip(ref, test))], ref, test


def test_cli_reports_the_ep09_results(tmp_path, capsys):
    rows, ref, test = _study_rows()
    f = tmp_path / "p.csv"
    f.write_text(_csv(rows))
    code, out, err = _agreement(capsys, "--paired", str(f), "--allowable", "neutrophil=6", "--decision-levels",
                                "40,70", "--bootstrap", "200", "--seed", "3")  # fmt: skip
    assert code == 0, err
    neu = out["cell_types"]["neutrophil"]
    # outlier screening flags S7, keeps it in the main results and shows the comparison without it
    assert neu["outliers"]["samples"] == ["S7"] and neu["n"] == 45
    keep = np.arange(45) != 7
    assert neu["without_outliers"]["n"] == 44
    assert neu["without_outliers"]["bias"] == pytest.approx(ag.bland_altman(ref[keep], test[keep]).bias)
    assert any("S7" in w for w in neu["warnings"]) and "S7" in err
    # verdict from the bias and limits with the outlier in
    ba = ag.bland_altman(ref, test)
    acc = ag.acceptance(ba.bias, ba.loa_lower, ba.loa_upper, 6.0)
    assert neu["verdict"] == ("accepted" if acc.accepted else "not accepted")
    assert neu["acceptance"]["limits_within"] == acc.limits_within and neu["acceptance"]["allowable"] == 6.0
    assert neu["without_outliers"]["verdict"] in ("accepted", "not accepted")
    # decision-level bias from Deming with bootstrap CIs (seeded, so reproducible)
    dl = neu["decision_levels"]
    expected = ag.decision_level_bias(ref, test, [40, 70], ci="bootstrap", n_bootstrap=200, seed=3)
    assert [lv["bias"] for lv in dl["levels"]] == pytest.approx([lv.bias for lv in expected.levels])
    assert dl["levels"][1]["bias_ci"] == pytest.approx(list(expected.levels[1].bias_ci))
    assert neu["passing_bablok"]["bootstrap"]["n_bootstrap"] == 200
    assert neu["icc"]["icc"] == pytest.approx(ag.icc(np.column_stack([ref, test])).icc)
    assert "mean test - mean reference" in out["ccc_shifts"] and neu["ccc_shifts"]["location_shift"] > 0
    assert out["options"]["allowable"] == {"neutrophil": 6.0}
    code, again, _ = _agreement(capsys, "--paired", str(f), "--allowable", "neutrophil=6", "--decision-levels",
                                "40,70", "--bootstrap", "200", "--seed", "3")  # fmt: skip
    assert again == out


def test_cli_uses_the_lab_settings_and_warns(tmp_path, capsys, monkeypatch):
    rows, _, _ = _study_rows(n=8, outlier=False)
    f = tmp_path / "p.csv"
    f.write_text(_csv(rows))
    monkeypatch.setenv("LEUKO_AGREEMENT_ALLOWABLE", '{"*": 4}')
    monkeypatch.setenv("LEUKO_AGREEMENT_DECISION_LEVELS", '{"neutrophil": [50]}')
    get_settings.cache_clear()
    try:
        code, out, err = _agreement(capsys, "--paired", str(f))
    finally:
        get_settings.cache_clear()
    assert code == 0, err
    neu = out["cell_types"]["neutrophil"]
    assert neu["acceptance"]["allowable"] == 4.0 and neu["verdict"] in ("accepted", "not accepted")
    assert [lv["level"] for lv in neu["decision_levels"]["levels"]] == [50.0]
    assert "jackknife" in neu["decision_levels"]["ci_method"]
    assert any("< 10" in w for w in neu["warnings"]) and any("40" in w for w in neu["warnings"])
    assert "fewer than the 40" in err


def test_options_and_specs():
    assert parse_class_values(["neutrophil=40,70", "5"], "x") == {"neutrophil": (40.0, 70.0), "*": (5.0,)}
    with pytest.raises(ValueError, match="not CLASS=VALUE"):
        parse_class_values(["neutrophil=forty"], "--decision-levels")
    o = EP09Options(decision_levels={"*": [10]}, allowable={"lymphocyte": 3})
    assert o.levels_for("monocyte") == (10.0,) and o.allowable_for("monocyte") is None
    assert o.allowable_for("lymphocyte") == 3.0
    with pytest.raises(ValueError, match="bootstrap"):
        EP09Options(bootstrap=10)
    with pytest.raises(ValueError, match="positive"):
        EP09Options(allowable={"*": 0})
    # replicates: the verdict reads the repeated-measures limits and their MOVER CIs
    ids = [s for s in "abcdef" for _ in range(2)]
    ref = [10.0, 11, 20, 21, 30, 29, 40, 41, 50, 52, 60, 59]
    r = compare_class("neu", ids, ref, [v + 1 for v in ref[:-1]] + [61.5], options=EP09Options(allowable={"*": 5}))
    assert r.repeated is not None and r.acceptance is not None and r.acceptance.accepted
    assert r.summary()["bias_ci"] == pytest.approx(list(r.repeated.mover.bias_ci))
