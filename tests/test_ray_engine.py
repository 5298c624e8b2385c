"""`predict --engine ray` (Ray Data in local mode) against the local engine on the same few hundred files, and
`import-predictions` bringing its result into a sample as the local engine would."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray", reason="Ray is the optional extra of requirements-ray.txt (CI installs it)")
pq = pytest.importorskip("pyarrow.parquet")

from conftest import encode, save_tiny_model, synthetic_cell  # noqa: E402

pytestmark = pytest.mark.slow
CLASSES = ["disc", "ring"]
N_CELLS = 240


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", CLASSES)


@pytest.fixture(scope="module")
def cell_set(tmp_path_factory) -> Path:
    """A manifest of N_CELLS 2-channel TIFFs (a few blanks for QC), plus an RGB file with the wrong channel count,
    a byte-identical duplicate and a listed file that does not exist."""
    root = tmp_path_factory.mktemp("set")
    rng = np.random.default_rng(3)
    rows = []
    for i in range(N_CELLS):
        kind = "blank" if i % 40 == 7 else ("disc" if i % 2 else "ring")
        name = f"cells/c{i:04d}.tif"
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(encode(synthetic_cell(kind, rng), "tiff"))
        rows.append({"path": name, "cell_id": f"k{i:04d}"})
    (root / "cells/rgb.png").write_bytes(encode(rng.integers(0, 255, (3, 20, 20)).astype(np.uint8), "png"))
    (root / "cells/dup.tif").write_bytes((root / "cells/c0003.tif").read_bytes())
    rows += [{"path": "cells/rgb.png", "cell_id": "rgb"}, {"path": "cells/dup.tif", "cell_id": "dup"},
             {"path": "cells/missing.tif", "cell_id": "missing"}]
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "cell_id"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def ray_result(tmp_path_factory, cell_set, model_dir) -> tuple[Path, dict]:
    from phenotyping.analysis.distributed import predict_with_ray

    out = tmp_path_factory.mktemp("out") / "results.parquet"
    summary = predict_with_ray(cell_set, model_dir, out, batch_size=64, num_cpus=2)
    return out, summary


def _local_store(tmp_path: Path, manifest: Path, model_dir: Path):
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    store = Store(tmp_path / "local.duckdb", image_dir=tmp_path / "images")
    store.create_sample(Sample(id="L", specimen=Specimen.blood), actor="tester")
    ingest_set(store, manifest, "L", actor="tester", expected_channels=2)
    predict_sample(store, "L", model_dir, device="cpu", batch_size=32, actor="tester")
    return store


def test_ray_engine_equals_the_local_engine_cell_by_cell(tmp_path, ray_result, cell_set, model_dir):
    out, summary = ray_result
    rows = {r["cell_key"]: r for r in pq.read_table(out).to_pylist()}
    assert summary["cells"] == len(rows) == N_CELLS + 3
    assert [r["row"] for r in pq.read_table(out).to_pylist()] == list(range(N_CELLS + 3))  # manifest order
    assert rows["rgb"]["qc_state"] == "rejected" and "channel" in rows["rgb"]["qc_reason"]
    assert rows["dup"]["qc_state"] == "rejected" and "cells/c0003.tif" in rows["dup"]["qc_reason"]
    missing = rows["cells/missing.tif"]  # a row the reader refused has no cell id: its name stands in
    assert missing["qc_state"] == "rejected" and "not found" in missing["qc_reason"]
    assert rows["dup"]["predicted_class"] is None and rows["rgb"]["confidence"] is None

    with _local_store(tmp_path, cell_set, model_dir) as store:
        cells = {c.cell_key: c for c in store.list_cells("L")}
        preds = {p.cell_id: p for p in store.list_predictions("L", "tiny-0001")}
    assert set(cells) == {k for k, r in rows.items() if r["qc_state"] != "rejected"}
    excluded = [k for k, c in cells.items() if c.qc_state.value == "excluded"]
    assert excluded and sorted(excluded) == sorted(k for k, r in rows.items() if r["qc_state"] == "excluded")
    for key, cell in cells.items():
        r = rows[key]
        assert r["content_hash"] == cell.content_hash
        if cell.id not in preds:
            assert r["predicted_class"] is None
            continue
        p = preds[cell.id]
        assert r["predicted_class"] == p.predicted_class, key
        for c in CLASSES:
            assert abs(r[f"p_{c}"] - p.probabilities[c]) < 1e-4, (key, c)
        assert abs(r["cd16"] - p.targets["cd16"]) < 1e-3


def test_import_predictions_loads_the_run_as_the_local_engine_would(tmp_path, ray_result, cell_set, model_dir):
    from phenotyping.analysis.distributed import import_predictions
    from phenotyping.analysis.results import sample_results
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    out, _ = ray_result
    with Store(tmp_path / "imported.duckdb", image_dir=tmp_path / "img") as store:
        store.create_sample(Sample(id="R", specimen=Specimen.blood), actor="tester")
        first = import_predictions(store, "R", out, actor="tester")
        again = import_predictions(store, "R", out, actor="tester")  # a rerun resumes: nothing twice
        imported = {store.get_cell(p.cell_id).cell_key: p for p in store.list_predictions("R", "tiny-0001")}
        qc = {c.cell_key: c.qc_state.value for c in store.list_cells("R")}
        assert store.analysis_model("R") == "tiny-0001"
        res = sample_results(store, "R", model_id="tiny-0001", card=json.loads(
            (model_dir / "model_card.json").read_text()), n_bootstrap=0)
    assert first["ingested"] == N_CELLS and first["rejected"] == 3
    assert first["predicted"] + first["excluded"] == N_CELLS and first["excluded"] > 0
    assert again["predicted"] == 0 and again["already_predicted"] == N_CELLS - first["excluded"]
    (tmp_path / "l").mkdir()
    with _local_store(tmp_path / "l", cell_set, model_dir) as local:
        local_preds = {local.get_cell(p.cell_id).cell_key: p for p in local.list_predictions("L", "tiny-0001")}
        local_qc = {c.cell_key: c.qc_state.value for c in local.list_cells("L")}
    assert qc == local_qc and set(imported) == set(local_preds)
    for key, p in imported.items():
        assert p.predicted_class == local_preds[key].predicted_class
        assert max(abs(p.probabilities[c] - local_preds[key].probabilities[c]) for c in CLASSES) < 1e-4
    assert res.differential is not None and res.differential.raw.n_counted > 0


def test_import_refuses_a_file_changed_since_the_run(tmp_path, ray_result, cell_set):
    from phenotyping.analysis.distributed import import_predictions
    from phenotyping.errors import PhenotypingError
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    out, _ = ray_result
    table = pq.read_table(out)
    rows = table.to_pylist()
    rows[0]["content_hash"] = "0" * 64  # as if c0000.tif had been rewritten after the run
    import pyarrow as pa

    tampered = tmp_path / "tampered.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tampered)
    with Store(tmp_path / "t.duckdb", image_dir=tmp_path / "img") as store:
        store.create_sample(Sample(id="T", specimen=Specimen.blood), actor="tester")
        ingest_set(store, cell_set, "T", actor="tester", expected_channels=2)
        with pytest.raises(PhenotypingError, match=r"cells/c0000\.tif"):
            import_predictions(store, "T", tampered, actor="tester")
        assert store.list_predictions("T", "tiny-0001") == []


def test_cli_ray_engine_needs_a_parquet_out_and_refuses_zips(tmp_path, model_dir, cell_set, capsys):
    from phenotyping.__main__ import main

    assert main(["predict", "--engine", "ray", "--model", str(model_dir), "--manifest", str(cell_set)]) == 2
    assert "--out results.parquet" in capsys.readouterr().err
    assert main(["predict", "--engine", "ray", "--model", str(model_dir), "--manifest", str(cell_set),
                 "--out", str(tmp_path / "r.csv")]) == 2
    assert "Parquet" in capsys.readouterr().err
    (tmp_path / "set.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert main(["predict", "--engine", "ray", "--model", str(model_dir), "--manifest", str(tmp_path / "set.zip"),
                 "--out", str(tmp_path / "r.parquet")]) == 2
    assert "unzip" in capsys.readouterr().err


def test_ray_engine_with_tta_equals_the_local_engine_with_tta(tmp_path, cell_set, model_dir):
    """--engine ray --tta dihedral: the actors average the same views; the file's version says +tta8."""
    from phenotyping.analysis.distributed import predict_with_ray, read_result_meta
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    small = cell_set.parent / "tta-small.csv"  # the first 40 cells (paths are relative to the set's folder)
    small.write_text("\n".join(cell_set.read_text().splitlines()[:41]) + "\n")
    out = tmp_path / "tta.parquet"
    summary = predict_with_ray(small, model_dir, out, batch_size=16, num_cpus=2, tta="dihedral")
    assert summary["tta"] == {"mode": "dihedral", "views": 8}
    assert read_result_meta(out)["model_version"] == "tiny-0001+tta8"
    rows = {r["cell_key"]: r for r in pq.read_table(out).to_pylist()}
    with Store(tmp_path / "local.duckdb", image_dir=tmp_path / "images") as store:
        store.create_sample(Sample(id="L", specimen=Specimen.blood), actor="tester")
        ingest_set(store, small, "L", actor="tester", expected_channels=2)
        predict_sample(store, "L", model_dir, device="cpu", batch_size=16, actor="tester", tta="dihedral")
        keys = {c.id: c.cell_key for c in store.list_cells("L")}
        preds = store.list_predictions("L", "tiny-0001")
    assert len(preds) > 30
    for p in preds:
        assert p.model_version == "tiny-0001+tta8"
        for c in CLASSES:
            assert abs(rows[keys[p.cell_id]][f"p_{c}"] - p.probabilities[c]) < 1e-4


def test_import_refuses_a_run_without_tta_into_a_sample_predicted_with_it(tmp_path, ray_result, cell_set, model_dir):
    from phenotyping.analysis.distributed import import_predictions
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    out, _ = ray_result
    with Store(tmp_path / "s.duckdb", image_dir=tmp_path / "images") as store:
        store.create_sample(Sample(id="T", specimen=Specimen.blood), actor="tester")
        ingest_set(store, cell_set, "T", actor="tester", expected_channels=2)
        predict_sample(store, "T", model_dir, device="cpu", actor="tester", tta="dihedral")
        before = store.prediction_versions("T", "tiny-0001")
        with pytest.raises(ValueError, match="made another way"):
            import_predictions(store, "T", out, actor="tester")
        assert store.prediction_versions("T", "tiny-0001") == before
