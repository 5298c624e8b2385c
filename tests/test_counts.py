"""Manual cytospin counts: parsing, validation messages and conversions."""

from __future__ import annotations

import pytest

from phenotyping.agreement.manual_counts import (
    ManualCount,
    counts_to_percent,
    parse_counts,
    percent_to_counts,
    read_counts_csv,
    sample_percentages,
    sample_totals,
)

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]


def test_parse_counts_from_dicts():
    rows = [
        {"sample_id": "S1", "cell_type": "neutrophil", "count": 120, "total": 200},
        {"sample_id": "S1", "cell_type": "lymphocyte", "count": "60"},
        {"sample_id": "S1", "cell_type": "monocyte", "count": 20},
        {"sample_id": "S2", "cell_type": "neutrophil", "percent": 55.5},
        {"sample_id": "S2", "cell_type": "lymphocyte", "percent": 44.4},
    ]
    out = parse_counts(rows, allowed_classes=CLASSES, entered_by="alice")
    assert all(isinstance(m, ManualCount) for m in out)
    assert [m.total_counted for m in out if m.sample_id == "S1"] == [200, 200, 200]
    assert out[0].entered_by == "alice"
    pct = sample_percentages(out)
    assert pct["S1"] == {"neutrophil": 60.0, "lymphocyte": 30.0, "monocyte": 10.0}
    assert pct["S2"]["neutrophil"] == 55.5
    assert sample_totals(out) == {"S1": 200}


def test_read_counts_csv_text_and_file(tmp_path):
    text = "sample_id,cell_type,count,total_counted\nA,neutrophil,150,200\nA,lymphocyte,50,200\n"
    assert len(read_counts_csv(text)) == 2
    f = tmp_path / "counts.csv"
    f.write_text(text)
    assert [m.count for m in read_counts_csv(f)] == [150, 50]
    with pytest.raises(FileNotFoundError, match="not found"):
        read_counts_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="'count' or a 'percent' column"):
        read_counts_csv("sample_id,cell_type,value\nA,neutrophil,1\n")


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"sample_id": "S1", "cell_type": "Neutrophil", "count": 1}], r"row 1 \(sample 'S1'\): unknown cell type "
                                                                       r"'Neutrophil' \(did you mean 'neutrophil'\?\)"),
        ([{"sample_id": "S1", "cell_type": "blast", "count": 1}], "unknown cell type 'blast'"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "count": -3}], "row 1 .*negative"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "count": 2.5}], "whole number"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "count": "many"}], "not a number"),
        ([{"sample_id": "S1", "cell_type": "neutrophil"}], "either a count or a percent"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "count": 1, "percent": 50}], "not both"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "percent": 60},
          {"sample_id": "S1", "cell_type": "lymphocyte", "percent": 39}], "sample 'S1'.*sum to 99, expected 100"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "count": 150, "total": 200},
          {"sample_id": "S1", "cell_type": "lymphocyte", "count": 40}], "sum to 190 but the total counted is 200"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "count": 1},
          {"sample_id": "S1", "cell_type": "neutrophil", "count": 2}], r"row 2 .*duplicate.*also row 1"),
        ([{"sample_id": "S1", "cell_type": "neutrophil", "count": 1},
          {"sample_id": "S1", "cell_type": "lymphocyte", "percent": 2}], "mixes counts and percentages"),
        ([{"sample_id": "", "cell_type": "neutrophil", "count": 1}], "sample_id is empty"),
        ([], "no rows"),
    ],
)
def test_validation_errors_name_sample_and_row(rows, match):
    with pytest.raises(ValueError, match=match):
        parse_counts(rows, allowed_classes=CLASSES)


def test_percent_rounding_tolerance():
    rows = [{"sample_id": "S", "cell_type": c, "percent": p} for c, p in
            (("neutrophil", 33.3), ("lymphocyte", 33.3), ("monocyte", 33.3))]  # fmt: skip
    assert len(parse_counts(rows)) == 3  # sums to 99.9: within +/- 0.5
    with pytest.raises(ValueError, match="expected 100"):
        parse_counts(rows, tolerance=0.05)


def test_conversions_round_trip():
    pct = counts_to_percent({"neutrophil": 123, "lymphocyte": 61, "monocyte": 16})
    assert sum(pct.values()) == pytest.approx(100.0)
    counts = percent_to_counts(pct, 200)
    assert counts == {"neutrophil": 123, "lymphocyte": 61, "monocyte": 16}
    thirds = percent_to_counts({"a": 33.3, "b": 33.3, "c": 33.4}, 100)
    assert sum(thirds.values()) == 100 and thirds["c"] == 34
    with pytest.raises(ValueError, match="sum to 0"):
        counts_to_percent({"a": 0})
    with pytest.raises(ValueError, match="at least 1"):
        percent_to_counts({"a": 100.0}, 0)
