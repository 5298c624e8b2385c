"""Prediction over a stored sample with a tiny model: storage, QC exclusion, resume after interruption, predict CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import cell_array, encode, save_tiny_model, synthetic_cell  # noqa: E402

CLASSES = ["disc", "ring"]


_cell = synthetic_cell


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", CLASSES)


def _fill(store, n: int = 10, blanks: int = 2, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    cells = []
    kinds = ["disc", "ring"] * (n // 2) + ["blank"] * blanks
    for i, kind in enumerate(kinds):
        data = encode(_cell(kind, rng), "tiff")
        digest, rel = store.put_blob(data, suffix=".tif")
        cells.append({"cell_key": f"c{i:03d}", "content_hash": digest, "source_file": f"c{i:03d}.tif",
                      "blob_path": rel, "shape": (2, 20, 20), "dtype": "uint16", "reference_label": kind})
    return store.add_cells("S1", cells, actor="tester")


def test_predict_sample_stores_calibrated_predictions_and_excludes_blanks(store, sample, model_dir):
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.schemas import QCState

    ids = _fill(store)
    seen = []
    run = predict_sample(store, "S1", model_dir, device="cpu", batch_size=4,
                         progress=lambda d, t, r: seen.append((d, t)))
    assert (run.predicted, run.excluded, run.total_cells) == (10, 2, 12)
    assert run.qc_counts["empty"] == 2
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    preds = {p.cell_id: p for p in store.list_predictions("S1", "tiny-0001")}
    assert set(preds) == set(ids[:10])
    for p in preds.values():
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert p.confidence == pytest.approx(max(p.probabilities.values()))
        assert p.predicted_class == max(p.probabilities, key=p.probabilities.get)
        assert set(p.targets) == {"cd16"} and p.model_version == "tiny-0001"
    states = {c.id: c for c in store.list_cells("S1")}
    assert all(states[i].qc_state == QCState.excluded and "empty frame" in states[i].qc_reason for i in ids[10:])
    assert all(states[i].qc_state == QCState.passed for i in ids[:10])


def test_probabilities_are_temperature_scaled(store, sample, model_dir):
    from phenotyping.models.forward import softmax
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.models.preprocess import fit_to_size
    from phenotyping.ingest import read_image
    from phenotyping.analysis.inference import predict_sample

    ids = _fill(store, n=2, blanks=0)
    predict_sample(store, "S1", model_dir, device="cpu")
    lm = load_model_dir(model_dir)
    cell = store.get_cell(ids[0])
    arr = fit_to_size(read_image(store.read_cell_bytes(cell), cell.source_file), 20)[None]
    with torch.inference_mode():
        logits = lm.model(torch.from_numpy(lm.preprocess.normalise(arr, batched=True))).logits.numpy()
    expect = softmax(logits, 1.5)[0]
    got = store.list_predictions("S1", "tiny-0001")[0].probabilities
    assert [got[c] for c in CLASSES] == pytest.approx(expect.tolist(), abs=1e-5)


def test_interrupted_run_resumes_and_predicts_each_cell_once(store, sample, model_dir):
    from phenotyping.analysis.inference import predict_sample

    ids = _fill(store, n=10, blanks=0)

    class Stop(Exception):
        pass

    def interrupt(done: int, total: int, rate: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        predict_sample(store, "S1", model_dir, device="cpu", batch_size=4, progress=interrupt)
    first = store.list_predictions("S1", "tiny-0001")
    assert len(first) == 4  # the first batch was committed before the interruption
    run = predict_sample(store, "S1", model_dir, device="cpu", batch_size=4)
    assert (run.already_done, run.predicted) == (4, 6)
    after = store.list_predictions("S1", "tiny-0001")
    assert sorted(p.cell_id for p in after) == sorted(ids)
    kept = {p.cell_id: p.created_at for p in first}
    assert all(p.created_at == kept[p.cell_id] for p in after if p.cell_id in kept)  # not predicted twice
    again = predict_sample(store, "S1", model_dir, device="cpu")
    assert again.predicted == 0 and again.already_done == 10


def test_unknown_device_and_missing_calibration_fail_loudly(store, sample, model_dir, tmp_path):
    from phenotyping.analysis.inference import predict_sample, resolve_device

    with pytest.raises(ValueError, match="tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    card = json.loads((model_dir / "model_card.json").read_text())
    del card["calibration"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes((model_dir / "checkpoint.pt").read_bytes())
    (broken / "model_card.json").write_text(json.dumps(card))
    _fill(store, n=2, blanks=0)
    with pytest.raises(ValueError, match="unidentified_threshold"):
        predict_sample(store, "S1", broken, device="cpu")


def _copy_model(model_dir: Path, dest: Path, **card_changes) -> Path:
    card = json.loads((model_dir / "model_card.json").read_text())
    for key, value in card_changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    dest.mkdir()
    (dest / "checkpoint.pt").write_bytes((model_dir / "checkpoint.pt").read_bytes())
    (dest / "model_card.json").write_text(json.dumps(card))
    return dest


def test_card_without_qc_thresholds_is_refused(store, sample, model_dir, tmp_path):
    from phenotyping.analysis.inference import predict_sample

    no_qc = _copy_model(model_dir, tmp_path / "no-qc", qc=None)
    _fill(store, n=2, blanks=0)
    with pytest.raises(ValueError, match="no qc section.*phenotyping calibrate"):
        predict_sample(store, "S1", no_qc, device="cpu")


def test_image_qc_is_rechecked_with_each_models_thresholds(store, sample, model_dir, tmp_path):
    """A cell excluded by one model's QC is checked again by a model whose card allows it (and vice versa)."""
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.analysis.qc import QCConfig
    from phenotyping.schemas import QCState

    _fill(store, n=4, blanks=0)
    strict = _copy_model(model_dir, tmp_path / "strict", id="strict-1",
                         qc=QCConfig(min_focus=1e6).to_dict())  # nothing is sharp enough
    run = predict_sample(store, "S1", strict, device="cpu")
    assert (run.predicted, run.excluded) == (0, 4)
    assert all(c.qc_state == QCState.excluded for c in store.list_cells("S1"))
    run = predict_sample(store, "S1", model_dir, device="cpu")  # the default thresholds pass these cells
    assert (run.predicted, run.excluded) == (4, 0)
    assert all(c.qc_state == QCState.passed for c in store.list_cells("S1"))


def test_device_setting_is_used_when_none_is_given(monkeypatch):
    from phenotyping.analysis.inference import resolve_device
    from phenotyping.settings import get_settings

    monkeypatch.setenv("LEUKO_DEVICE", "cpu")
    get_settings.cache_clear()
    try:
        assert resolve_device(None) == "cpu"
        if not torch.cuda.is_available():
            monkeypatch.setenv("LEUKO_DEVICE", "cuda")
            get_settings.cache_clear()
            with pytest.raises(ValueError, match="no CUDA"):
                resolve_device(None)
    finally:
        get_settings.cache_clear()


def test_predict_cli_without_bootstrap_prints_valid_json(model_dir, tmp_path, capsys):
    """--bootstrap 0 leaves the corrected CIs empty: they print as null (JSON has no NaN), not as a crash."""
    from phenotyping.__main__ import main

    rng = np.random.default_rng(4)
    root = tmp_path / "set"
    root.mkdir()
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path"])
        for i, kind in enumerate(["disc", "ring"] * 3):
            (root / f"c{i}.tif").write_bytes(encode(_cell(kind, rng), "tiff"))
            w.writerow([f"k{i}", f"c{i}.tif"])
    rc = main(["predict", "--model", str(model_dir), "--manifest", str(root / "manifest.csv"), "--bootstrap", "0",
               "--device", "cpu"])
    assert rc == 0
    diff = json.loads(capsys.readouterr().out)["differential"]
    acc = diff["corrected"]["adjusted_count"]
    if acc is not None:
        assert all(c["ci_low"] is None and c["ci_high"] is None for c in acc["classes"])
        assert all(isinstance(c["percent"], float) for c in acc["classes"])


def test_predict_cli_on_a_tiny_manifest(model_dir, tmp_path, capsys):
    from phenotyping.__main__ import main

    rng = np.random.default_rng(3)
    root = tmp_path / "set"
    root.mkdir()
    rows = []
    for i, kind in enumerate(["disc", "ring"] * 3 + ["blank"]):
        name = f"cell{i}.tif"
        (root / name).write_bytes(encode(_cell(kind, rng), "tiff"))
        rows.append({"cell_id": f"k{i}", "path": name, "label": kind})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["cell_id", "path", "label"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "cells.csv"
    rc = main(["predict", "--model", str(model_dir), "--manifest", str(root / "manifest.csv"), "--out", str(out),
               "--bootstrap", "20", "--device", "cpu"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_id"] == "tiny-0001"
    assert result["qc_counts"]["empty"] == 1
    diff = result["differential"]
    n_unsure = result["qc_counts"]["unidentified"]
    assert diff["raw"]["n_counted"] == 6 - n_unsure
    assert diff["corrected"]["adjusted_count"] is None or diff["corrected"]["adjusted_count"]["n_bootstrap"] == 20
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 7
    assert set(table[0]) >= {"cell_id", "cell_key", "predicted_class", "p_disc", "p_ring", "cd16"}
    blank = next(r for r in table if r["cell_key"] == "k6")
    assert blank["qc_state"] == "excluded" and blank["predicted_class"] == "" and blank["counted"] == "0"


def test_predict_cli_rejects_db_with_manifest(model_dir, tmp_path, capsys):
    from phenotyping.__main__ import main

    rc = main(["predict", "--model", str(model_dir), "--manifest", str(tmp_path), "--db", str(tmp_path / "x.db")])
    assert rc == 2
    assert "--db goes with --sample" in capsys.readouterr().err


def test_bench_pieces_run_on_a_tiny_model(model_dir, tmp_path):
    from phenotyping.analysis.bench import end_to_end, flops_per_cell, model_speed
    from phenotyping.models import create_model

    m = create_model("test_hybrid", in_chans=2, num_classes=2, img_size=20)
    speed = model_speed(m, (2, 20, 20), batch_size=4, min_seconds=0.0, warmup=0)
    assert speed.batches_timed >= 3 and speed.cells_per_s > 0 and speed.parameters > 0
    f1 = flops_per_cell(m, (2, 20, 20))
    assert f1 is not None and 0 < f1 < flops_per_cell(m, (2, 40, 40))  # more pixels, more work
    e2e = end_to_end(model_dir, n_cells=6, batch_size=4)
    assert (e2e["ingested"], e2e["predicted"] + e2e["excluded"]) == (6, 6)


def test_bench_end_to_end_from_a_manifest_reads_its_first_rows(model_dir, tmp_path):
    """--from-files: the first N listed images are ingested and predicted; the source folder is left as it was."""
    from phenotyping.analysis.bench import end_to_end

    src = tmp_path / "set"
    (src / "img").mkdir(parents=True)
    lines = ["cell_id,path,cell_type"]
    for i in range(5):
        (src / "img" / f"{i}.tif").write_bytes(encode(cell_array(20, 20, c=2, dtype=np.uint16, seed=i), "tiff"))
        lines.append(f"c{i},img/{i}.tif,disc")
    (src / "manifest.csv").write_text("\n".join(lines) + "\n")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    e2e = end_to_end(model_dir, n_cells=3, batch_size=4, from_files=src)
    assert (e2e["cells"], e2e["ingested"], e2e["predicted"] + e2e["excluded"]) == (3, 3, 3)
    assert e2e["source"] == str(src / "manifest.csv")
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_fraction_of_peak_relates_model_flops_to_a_measured_matmul():
    from phenotyping.analysis.bench import ModelSpeed, fraction_of_peak, measured_peak_flops

    peak = measured_peak_flops("cpu", min_seconds=0.05)
    assert peak["flops_per_s"] > 0 and peak["matmul"].endswith("float32")
    speed = ModelSpeed(arch="x", input_shape=(2, 20, 20), parameters=1, batch_size=1, cells_per_s=1000.0,
                       ms_per_batch=1.0, batches_timed=3, flops_per_cell=2_000_000)
    assert fraction_of_peak(speed, 4e9) == pytest.approx(0.5)
    assert fraction_of_peak(ModelSpeed(**{**speed.__dict__, "flops_per_cell": None}), 4e9) is None
