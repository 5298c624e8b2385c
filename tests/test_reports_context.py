"""build_context from a real (tmp_path) store, and the `render` command end to end."""

from __future__ import annotations

import io
import json

import pytest

from phenotyping.schemas import ManualCount, Prediction, QCState, Sample, Specimen
from phenotyping.settings import Settings
from phenotyping.store import Store
from reports.__main__ import main
from reports.context import build_context, facts_from_context
from tests.test_store import add_cells

CLASSES = ["neutrophil", "lymphocyte"]
CARD = {"id": "toy-1", "classes": CLASSES, "calibration": {"unidentified_threshold": 0.0},
        "validation": {"confusion": [[45, 5], [10, 40]], "macro_f1": 0.85, "balanced_accuracy": 0.86, "n": 100},
        "training": {"class_proportions": {"neutrophil": 0.5, "lymphocyte": 0.5}}}


def _fill(store: Store, model_dir) -> None:
    model_dir.mkdir(exist_ok=True)
    (model_dir / "model_card.json").write_text(json.dumps(CARD))
    store.register_model("toy-1", path=str(model_dir), card=CARD, actor="admin")
    store.create_sample(Sample(id="S1", specimen=Specimen.blood, patient_pseudonym="P-001"), actor="tester")
    ids = add_cells(store, 10)
    labels = ["neutrophil"] * 6 + ["lymphocyte"] * 4
    store.add_predictions([
        Prediction(cell_id=i, model_id="toy-1", model_version="2025.1", predicted_class=lab, confidence=0.9,
                   probabilities={c: 0.9 if c == lab else 0.1 for c in CLASSES}, targets={"cd16": 5.0})
        for i, lab in zip(ids, labels)], sample_id="S1", actor="model")
    store.set_qc([(ids[0], QCState.excluded, "out of focus")], sample_id="S1", actor="qc")
    store.set_analysis_model("S1", "toy-1", actor="rev")
    store.set_manual_counts("S1", [ManualCount(sample_id="S1", cell_type="neutrophil", percent=60.0),
                                   ManualCount(sample_id="S1", cell_type="lymphocyte", percent=40.0)], actor="rev")
    store.add_report_version("S1", interpretation="Drafted text.", source="template", actor="rev")
    store.add_report_version("S1", interpretation="Edited text.", source="template", actor="rev")


def test_build_context_from_store(store, tmp_path):
    _fill(store, tmp_path / "model")
    settings = Settings(db_path=":memory:", data_dir=tmp_path / "images", lab_name="Test lab", lab_id="LAB-9")
    ctx = build_context(store, "S1", settings=settings, reference_intervals={"neutrophil": (40.0, 75.0)})
    assert ctx.report_id == "LAB-9-S1" and ctx.version == 2 and ctx.status == "preliminary"
    assert ctx.qc.total_cells == 10 and ctx.qc.counted_cells == 9 and ctx.qc.excluded == {"out of focus": 1}
    rows = {r.label: r for r in ctx.results}
    assert rows["neutrophil"].count == 5 and rows["neutrophil"].percent == pytest.approx(500 / 9)
    assert rows["neutrophil"].corrected_percent is not None
    assert rows["neutrophil"].reference_low == 40.0 and rows["lymphocyte"].reference_low is None
    assert ctx.method.model_version == "2025.1" and ctx.method.validation["macro F1"] == 0.85
    assert [c.label for c in ctx.comparison] == ["neutrophil", "lymphocyte"]  # in the report's class order
    assert ctx.markers and ctx.markers[0].target == "cd16"
    assert set(ctx.gallery) == set(CLASSES) and ctx.gallery["neutrophil"][0].startswith("data:image/png;base64,")
    assert ctx.interpretation == "Edited text." and ctx.interpretation_edited
    assert "P-001" not in json.dumps(facts_from_context(ctx).prompt_json())


def test_render_command(tmp_path, capsys):
    db = tmp_path / "lab.duckdb"
    with Store(db, image_dir=Settings(db_path=db).image_dir()) as store:
        _fill(store, tmp_path / "model")
    out = tmp_path / "S1.pdf"
    assert main(["render", "--sample", "S1", "--db", str(db), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 2 and out.read_bytes().startswith(b"%PDF-")
    from pypdf import PdfReader

    attached = json.loads(PdfReader(io.BytesIO(out.read_bytes())).attachments["results.json"][0])
    assert attached["sample_id"] == "S1" and attached["qc"]["counted_cells"] == 9
    assert main(["render", "--sample", "S1", "--db", str(db), "--out", str(out)]) == 2  # never overwrites
    assert main(["render", "--sample", "NOPE", "--db", str(db), "--out", str(tmp_path / "x.pdf")]) == 2
