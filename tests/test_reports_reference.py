"""Reference intervals: the lab's file (LEUKO_REFERENCE_INTERVALS), its validation, and where the intervals appear
(result rows with H/L flags, LLM facts, FHIR referenceRange, the PDF) — or that none is configured."""

from __future__ import annotations

import json

import pytest

from phenotyping.settings import Settings
from reports.context import build_context, facts_from_context
from reports.fhir import fhir_bundle
from reports.pdf import render_html
from reports.reference import ReferenceIntervalError, load_reference_intervals
from tests.test_reports_context import _fill

CSV = "specimen,class,low,high\nblood,Neutrophil,40,75\nblood,lymphocyte,20,35\nbalf,macrophage,80,95\n"


def test_csv_and_json_give_the_same_intervals(tmp_path):
    (tmp_path / "ri.csv").write_text(CSV)
    rows = [{"specimen": "blood", "class": "Neutrophil", "low": 40, "high": 75},
            {"specimen": "blood", "class": "lymphocyte", "low": 20, "high": 35},
            {"specimen": "balf", "class": "macrophage", "low": 80, "high": 95}]
    (tmp_path / "ri.json").write_text(json.dumps(rows))
    a, b = load_reference_intervals(tmp_path / "ri.csv"), load_reference_intervals(tmp_path / "ri.json")
    assert a.intervals == b.intervals
    assert a.lookup("blood", "neutrophil") == (40.0, 75.0) and a.lookup("balf", "neutrophil") is None
    assert a.unmatched("blood", ["neutrophil", "monocyte"]) == ["lymphocyte"]
    assert a.source.startswith("ri.csv (sha256 ")


@pytest.mark.parametrize("content, message", [
    ("specimen,class,low\nblood,neutrophil,40\n", "header must be exactly specimen,class,low,high"),
    ("specimen,class,low,high\nblood,neutrophil,40,75\nurine,neutrophil,1,2\n", "line 3: specimen 'urine'"),
    ("specimen,class,low,high\nblood,neutrophil,75,40\n", "line 2: low 75 is above high 40"),
    ("specimen,class,low,high\nblood,neutrophil,40%,75\n", "line 2: low '40%' is not a number"),
    ("specimen,class,low,high\nblood,neutrophil,40,175\n", "line 2: high '175' is outside 0–100"),
    ("specimen,class,low,high\nblood,,40,75\n", "line 2: class is empty"),
    ("specimen,class,low,high\nblood,neutrophil,40,75\nblood,Neutrophil ,41,70\n",
     "line 3: a second interval for blood 'Neutrophil' (first at line 2)"),
    ("specimen,class,low,high\n", "no intervals in the file"),
])
def test_bad_csv_rows_are_named(tmp_path, content, message):
    path = tmp_path / "lab-intervals.csv"
    path.write_text(content)
    with pytest.raises(ReferenceIntervalError) as e:
        load_reference_intervals(path)
    assert message in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("content, message", [
    ('{"blood": {"neutrophil": [40, 75]}}', "expected a JSON list"),
    ('[{"specimen": "blood", "class": "neutrophil", "low": 40}]', "entry 1: missing ['high']"),
    ('[{"specimen": "blood", "class": "neutrophil", "low": 40, "high": 75, "unit": "%"}]', "unknown key(s) ['unit']"),
    ('[{"specimen": "blood", "class": "neutrophil", "low": true, "high": 75}]', "entry 1: low is empty"),
    ("[{]", "not valid JSON"),
])
def test_bad_json_entries_are_named(tmp_path, content, message):
    path = tmp_path / "ri.json"
    path.write_text(content)
    with pytest.raises(ReferenceIntervalError, match="ri.json") as e:
        load_reference_intervals(path)
    assert message in str(e.value)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(ReferenceIntervalError, match="does not exist; fix the path or unset"):
        load_reference_intervals(tmp_path / "nope.csv")
    (tmp_path / "ri.xlsx").write_bytes(b"x")
    with pytest.raises(ReferenceIntervalError, match="use a .csv or .json file"):
        load_reference_intervals(tmp_path / "ri.xlsx")


def test_configured_intervals_reach_rows_flags_facts_fhir_and_pdf(store, tmp_path):
    _fill(store, tmp_path / "model")
    (tmp_path / "ri.csv").write_text(CSV)
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", reference_intervals=tmp_path / "ri.csv")
    ctx = build_context(store, "S1", settings=settings)
    rows = {r.label: r for r in ctx.results}  # neutrophil 5/9 = 55.6 %, lymphocyte 4/9 = 44.4 %
    assert (rows["neutrophil"].reference_low, rows["neutrophil"].reference_high) == (40.0, 75.0)
    assert rows["neutrophil"].flag == "" and rows["lymphocyte"].flag == "H"
    assert ctx.reference_source.startswith("ri.csv (sha256")
    facts = facts_from_context(ctx)
    assert facts.values["ref.lymphocyte.high"] == 35.0 and facts.values["reference_configured"] == 1.0
    obs = {e["resource"]["code"]["coding"][-1]["code"]: e["resource"] for e in fhir_bundle(ctx)["entry"]
           if e["resource"]["resourceType"] == "Observation"}
    assert obs["lymphocyte"]["referenceRange"][0]["high"]["value"] == 35.0
    assert obs["lymphocyte"]["interpretation"][0]["coding"][0]["code"] == "H"
    html = render_html(ctx)
    assert "20.0–35.0" in html and '<td class="flag">H</td>' in html and "ri.csv (sha256" in html


def test_without_configuration_the_report_says_so(store, tmp_path):
    _fill(store, tmp_path / "model")
    ctx = build_context(store, "S1", settings=Settings(db_path=":memory:", data_dir=tmp_path / "images"))
    assert ctx.reference_source is None and not ctx.has_reference
    assert facts_from_context(ctx).values["reference_configured"] == 0.0
    assert "No reference interval configured for peripheral blood" in render_html(ctx)
    obs = [e["resource"] for e in fhir_bundle(ctx)["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert all("referenceRange" not in o and "No reference interval configured" in o["note"][0]["text"]
               for o in obs)


def test_names_the_model_does_not_report_are_warned(store, tmp_path):
    _fill(store, tmp_path / "model")
    (tmp_path / "ri.csv").write_text("specimen,class,low,high\nblood,neutrophils,40,75\n")
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", reference_intervals=tmp_path / "ri.csv")
    ctx = build_context(store, "S1", settings=settings)
    assert not ctx.has_reference
    assert any("['neutrophils'] that this model does not report" in w for w in ctx.warnings)


def test_a_broken_file_stops_the_report(store, tmp_path):
    _fill(store, tmp_path / "model")
    (tmp_path / "ri.csv").write_text("specimen,class,low,high\nblood,neutrophil,90,40\n")
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", reference_intervals=tmp_path / "ri.csv")
    with pytest.raises(ReferenceIntervalError, match="line 2: low 90 is above high 40"):
        build_context(store, "S1", settings=settings)


def test_render_command_uses_the_setting(tmp_path, monkeypatch, capsys):
    from phenotyping.settings import get_settings
    from phenotyping.store import Store
    from reports.__main__ import main

    db = tmp_path / "lab.duckdb"
    with Store(db, image_dir=Settings(db_path=db).image_dir()) as store:
        _fill(store, tmp_path / "model")
    (tmp_path / "ri.csv").write_text(CSV)
    monkeypatch.setenv("LEUKO_REFERENCE_INTERVALS", str(tmp_path / "ri.csv"))
    get_settings.cache_clear()
    try:
        assert main(["render", "--sample", "S1", "--db", str(db), "--out", str(tmp_path / "a.pdf")]) == 0
        assert json.loads(capsys.readouterr().out)["reference_intervals"].startswith("ri.csv")
        (tmp_path / "bad.csv").write_text("specimen,class,low,high\nblood,neutrophil,x,1\n")
        assert main(["render", "--sample", "S1", "--db", str(db), "--out", str(tmp_path / "b.pdf"),
                     "--reference-intervals", str(tmp_path / "bad.csv")]) == 2
        assert "bad.csv, line 2: low 'x' is not a number" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
