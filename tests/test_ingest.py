"""Ingesting image sets: every layout, every bad case reported by name, the rest kept."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phenotyping.errors import IngestError
from phenotyping.ingest import ingest_set
from phenotyping.schemas import QCState
from tests.conftest import PROJECT_ROOT, cell_array, encode, png_bytes


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reasons(result) -> dict[str, str]:
    return {Path(r.file).name: r.reason for r in result.rejected}


def test_folder_of_mixed_formats(store, sample, tmp_path):
    d = tmp_path / "set"
    for i, fmt in enumerate(["png", "bmp", "tiff", "jpeg"]):
        write(d / f"c{i}.{fmt}", encode(cell_array(seed=i), fmt))
    r = ingest_set(store, d, "S1", actor="t")
    assert (r.ingested, r.duplicates, r.rejected) == (4, 0, [])
    cells = store.list_cells("S1")
    assert {c.source_file for c in cells} == {"c0.png", "c1.bmp", "c2.tiff", "c3.jpeg"}
    assert all(c.shape == (1, 32, 32) and c.qc_state == QCState.pending for c in cells)
    # the original bytes are kept verbatim, content-addressed
    c = cells[0]
    assert store.read_cell_bytes(c) == (d / c.source_file).read_bytes()


def test_every_bad_file_is_reported_and_the_rest_ingested(store, sample, tmp_path):
    d = tmp_path / "set"
    good = [write(d / f"good{i}.png", png_bytes(cell_array(seed=i))) for i in range(3)]
    write(d / "zdup.png", good[0].read_bytes())
    write(d / "empty.png", b"")
    write(d / "notes.txt", b"not an image")
    data = png_bytes(cell_array(h=64, w=64, seed=9))
    write(d / "truncated.png", data[: len(data) // 2])
    write(d / "corrupt.tif", b"II*\x00" + bytes(range(200)))
    write(d / "rgb.png", png_bytes(cell_array(c=3)))
    bomb = io.BytesIO()
    Image.new("1", (7100, 7100)).save(bomb, format="PNG")
    write(d / "bomb.png", bomb.getvalue())
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 3
    assert r.duplicates == 1
    why = reasons(r)
    assert set(why) == {"zdup.png", "empty.png", "notes.txt", "truncated.png", "corrupt.tif", "rgb.png", "bomb.png"}
    assert "duplicate" in why["zdup.png"]
    assert "empty" in why["empty.png"]
    assert "not an image" in why["notes.txt"]
    assert "PNG" in why["truncated.png"]
    assert "TIFF" in why["corrupt.tif"]
    assert "3 channel(s)" in why["rgb.png"] and "1" in why["rgb.png"]
    assert "megapixels" in why["bomb.png"]


def test_imagefolder_labels(store, sample, tmp_path):
    d = tmp_path / "wrapper" / "set"
    for cls in ("neutrophil", "lymphocyte"):
        for i in range(2):
            write(d / cls / f"{i}.png", png_bytes(cell_array(seed=hash((cls, i)) % 1000)))
    r = ingest_set(store, tmp_path / "wrapper", "S1", actor="t")
    assert r.ingested == 4
    labels = sorted(c.reference_label for c in store.list_cells("S1"))
    assert labels == ["lymphocyte", "lymphocyte", "neutrophil", "neutrophil"]


def test_manifest_columns_kept(store, sample, tmp_path):
    d = tmp_path / "set"
    rows = []
    for i in range(3):
        write(d / "img" / f"{i}.tif", encode(cell_array(c=2, dtype=np.uint16, seed=i), "tiff"))
        rows.append({"cell_id": f"cell-{i}", "path": f"img/{i}.tif", "cell_type": "monocyte", "cd16": str(1.5 * i),
                     "slide": "A"})
    rows.append({"cell_id": "cell-x", "path": "img/missing.tif", "cell_type": "monocyte", "cd16": "1", "slide": "A"})
    rows.append({"cell_id": "cell-y", "path": "../../etc/passwd", "cell_type": "monocyte", "cd16": "1", "slide": "A"})
    with open(d / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write(d / "img" / "unlisted.png", b"junk that is not listed and so not read")
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 3
    why = reasons(r)
    assert "not found" in why["missing.tif"]
    assert "escapes" in why["passwd"]
    cells = {c.cell_key: c for c in store.list_cells("S1")}
    assert set(cells) == {"cell-0", "cell-1", "cell-2"}
    assert cells["cell-2"].targets == {"cd16": 3.0}
    assert cells["cell-2"].reference_label == "monocyte"
    assert cells["cell-2"].extra["slide"] == "A"
    assert cells["cell-2"].shape == (2, 32, 32) and cells["cell-2"].dtype == "uint16"


def test_zip_with_slip_and_labels(store, sample, tmp_path):
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("set/eosinophil/a.png", png_bytes(cell_array(seed=1)))
        zf.writestr("set/eosinophil/b.png", png_bytes(cell_array(seed=2)))
        zf.writestr("../evil.png", png_bytes(cell_array(seed=3)))
        zf.writestr("/abs.png", png_bytes(cell_array(seed=4)))
        zf.writestr("__MACOSX/set/._a.png", b"resource fork")
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 2
    assert {x.file for x in r.rejected} == {"../evil.png", "/abs.png"}
    assert all("escapes the archive" in x.reason for x in r.rejected)
    assert {c.reference_label for c in store.list_cells("S1")} == {"eosinophil"}


def test_zip_with_manifest(store, sample, tmp_path):
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("manifest.csv", "path,label,cd16\nc/1.png,neutrophil,2.5\nc/2.png,lymphocyte,0.1\n")
        zf.writestr("c/1.png", png_bytes(cell_array(seed=1)))
        zf.writestr("c/2.png", png_bytes(cell_array(seed=2)))
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 2
    cells = {c.cell_key: c for c in store.list_cells("S1")}
    assert cells["c/1.png"].reference_label == "neutrophil" and cells["c/1.png"].targets == {"cd16": 2.5}


def test_zip_bomb_member_is_refused(store, sample, tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.png", png_bytes(cell_array()))
        zf.writestr("zeros.tif", b"\x00" * 80_000_000)
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 1
    assert "limit" in reasons(r)["zeros.tif"] or "ratio" in reasons(r)["zeros.tif"]


def test_whole_set_unusable_is_a_clear_error(store, sample, tmp_path):
    d = tmp_path / "set"
    write(d / "a.txt", b"x")
    write(d / "b.png", b"")
    with pytest.raises(IngestError, match="none of its 2 file"):
        ingest_set(store, d, "S1", actor="t")
    assert store.count_cells("S1") == 0


def test_reingest_adds_nothing_and_reports_duplicates(store, sample, tmp_path):
    d = tmp_path / "set"
    write(d / "a.png", png_bytes(cell_array(seed=1)))
    write(d / "b.png", png_bytes(cell_array(seed=2)))
    ingest_set(store, d, "S1", actor="t")
    write(d / "c.png", png_bytes(cell_array(seed=3)))
    r = ingest_set(store, d, "S1", actor="t")
    assert (r.ingested, r.duplicates) == (1, 2)
    assert store.count_cells("S1") == 3


def run_cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phenotyping", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_json_contract_and_exit_codes(tmp_path):
    d = tmp_path / "set"
    write(d / "a.png", png_bytes(cell_array(seed=1)))
    write(d / "bad.png", b"\x89PNG\r\n\x1a\ngarbage")
    db = tmp_path / "lab.duckdb"
    p = run_cli("ingest", str(d), "--sample", "S-9", "--specimen", "balf", "--db", str(db))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["sample_id"] == "S-9" and out["ingested"] == 1 and out["duplicates"] == 0
    assert out["rejected"] == [{"file": "bad.png", "reason": out["rejected"][0]["reason"]}]
    p = run_cli("ingest", str(tmp_path / "nothing-here"), "--sample", "S-9", "--specimen", "balf", "--db", str(db))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "no such file" in p.stderr
    p = run_cli("samples", "--db", str(db))
    assert p.returncode == 0
    listed = json.loads(p.stdout)
    assert [(s["id"], s["specimen"], s["n_cells"], s["status"]) for s in listed] == [("S-9", "balf", 1, "new")]
    for cmd in ("ingest", "samples"):
        assert run_cli(cmd, "--help").returncode == 0


def test_cli_all_files_bad_exits_2(tmp_path):
    d = tmp_path / "set"
    write(d / "a.txt", b"x")
    p = run_cli("ingest", str(d), "--sample", "S", "--specimen", "blood", "--db", str(tmp_path / "x.duckdb"))
    assert p.returncode == 2
    assert "none of its 1 file" in p.stderr and "Traceback" not in p.stderr
