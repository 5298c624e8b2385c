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
        write(d / "masks" / f"{i}.png", png_bytes(cell_array(seed=50 + i)))
        rows.append({"cell_id": f"cell-{i}", "path": f"img/{i}.tif", "cell_type": "monocyte", "cd16": str(1.5 * i),
                     "slide": "A", "mask_path": f"masks/{i}.png"})
    rows.append({"cell_id": "cell-x", "path": "img/missing.tif", "cell_type": "monocyte", "cd16": "1", "slide": "A",
                 "mask_path": ""})
    rows.append({"cell_id": "cell-y", "path": "../../etc/passwd", "cell_type": "monocyte", "cd16": "1", "slide": "A",
                 "mask_path": ""})
    with open(d / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write(d / "img" / "unlisted.png", b"junk that is not listed and so not read")
    write(d / "other" / "stray.tif", encode(cell_array(c=2, dtype=np.uint16, seed=7), "tiff"))
    write(d / "README.txt", b"not an image: neither read nor reported")
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 3
    why = {x.file: x.reason for x in r.rejected}
    assert set(why) == {"img/missing.tif", "../../etc/passwd", "img/unlisted.png", "other/stray.tif"}
    assert "not found" in why["img/missing.tif"]
    assert "escapes" in why["../../etc/passwd"]
    # images that no manifest column names are reported, one entry each; masks named in mask_path are not
    assert why["img/unlisted.png"] == why["other/stray.tif"] == "not listed in manifest.csv"
    cells = {c.cell_key: c for c in store.list_cells("S1")}
    assert set(cells) == {"cell-0", "cell-1", "cell-2"}
    assert cells["cell-2"].targets == {"cd16": 3.0}
    assert cells["cell-2"].reference_label == "monocyte"
    assert cells["cell-2"].extra["slide"] == "A"
    assert cells["cell-2"].shape == (2, 32, 32) and cells["cell-2"].dtype == "uint16"


def test_manifest_symlinks_are_followed_and_checked(store, sample, tmp_path):
    """A listed symbolic link counts where it leads: inside the manifest's folder it is read, outside it is refused."""
    outside = tmp_path / "outside.tif"
    write(outside, encode(cell_array(c=2, dtype=np.uint16, seed=3), "tiff"))
    d = tmp_path / "set"
    write(d / "img" / "0.tif", encode(cell_array(c=2, dtype=np.uint16, seed=0), "tiff"))
    (d / "img" / "inside.tif").symlink_to(d / "img" / "0.tif")
    (d / "img" / "leak.tif").symlink_to(outside)
    (d / "img" / "dangling.tif").symlink_to(d / "img" / "gone.tif")
    (d / "manifest.csv").write_text("path\nimg/0.tif\nimg/inside.tif\nimg/leak.tif\nimg/dangling.tif\nimg\n")
    r = ingest_set(store, d, "S1", actor="t")
    why = {x.file: x.reason for x in r.rejected}
    assert r.ingested == 1  # 0.tif; the link to it is the same image
    assert "escapes" in why["img/leak.tif"]
    assert "not found" in why["img/dangling.tif"] and "not found" in why["img"]
    assert "duplicate" in why["img/inside.tif"]


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
        zf.writestr("c/3.png", png_bytes(cell_array(seed=3)))
        zf.writestr("notes.txt", b"not an image")
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 2
    assert [(x.file, x.reason) for x in r.rejected] == [("c/3.png", "not listed in manifest.csv")]
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
    with pytest.raises(IngestError, match="none of its 2 file") as e:
        ingest_set(store, d, "S1", actor="t")
    assert "not created" not in str(e.value)
    assert store.count_cells("S1") == 0 and store.sample_exists("S1")  # an existing sample stays


def test_new_sample_is_created_with_its_first_cells_only(store, tmp_path):
    from phenotyping.schemas import Sample, Specimen

    bad = tmp_path / "bad"
    write(bad / "a.txt", b"x")
    new = Sample(id="N1", specimen=Specimen.balf, patient_pseudonym="P-9")
    with pytest.raises(IngestError, match="sample N1 was not created"):
        ingest_set(store, bad, "N1", actor="t", create=new)
    assert not store.sample_exists("N1") and store.list_audit(sample_id="N1") == []
    good = tmp_path / "good"
    write(good / "a.png", png_bytes(cell_array(seed=1)))
    r = ingest_set(store, good, "N1", actor="t", create=new)
    assert r.ingested == 1 and store.get_sample("N1").patient_pseudonym == "P-9"
    assert [e.action for e in store.list_audit(sample_id="N1")] == ["cells.ingest", "sample.create"]
    with pytest.raises(ValueError, match="already exists"):
        ingest_set(store, good, "N1", actor="t", create=new)


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
    return subprocess.run([sys.executable, "-m", "phenotyping", *args], cwd=cwd, check=False, capture_output=True,
                          text=True, timeout=120)


def test_cli_json_contract_and_exit_codes(tmp_path):
    d = tmp_path / "set"
    write(d / "a.png", png_bytes(cell_array(seed=1)))
    write(d / "bad.png", b"\x89PNG\r\n\x1a\ngarbage")
    db = tmp_path / "lab.duckdb"
    p = run_cli("ingest", str(d), "--sample", "S-9", "--specimen", "balf", "--db", str(db))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"sample_id", "ingested", "duplicates", "rejected"}
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


def test_cli_all_files_bad_exits_2_and_leaves_no_sample(tmp_path):
    d = tmp_path / "set"
    write(d / "a.txt", b"x")
    db = tmp_path / "x.duckdb"
    p = run_cli("ingest", str(d), "--sample", "S", "--specimen", "blood", "--db", str(db))
    assert p.returncode == 2
    assert "none of its 1 file" in p.stderr and "sample S was not created" in p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    p = run_cli("samples", "--db", str(db))
    assert p.returncode == 0 and json.loads(p.stdout) == []


def test_cli_samples_on_a_missing_database_fails_without_creating_it(tmp_path):
    db = tmp_path / "typo.duckdb"
    p = run_cli("samples", "--db", str(db))
    assert p.returncode == 2 and str(db) in p.stderr and "does not exist" in p.stderr
    assert not db.exists() and not (tmp_path / "typo-images").exists()


def _flag_encrypted(path: Path, member: str) -> None:
    """Set the 'encrypted' bit of one member in its local header and central directory entry (zipfile cannot
    write encrypted members; ingestion refuses them by that bit before reading)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        i = data.find(sig)
        while i != -1:
            if data[i + name_at:i + name_at + len(name)] == name:
                data[i + flag_at] |= 0x1
            i = data.find(sig, i + 1)
    path.write_bytes(bytes(data))


def test_encrypted_and_symlink_zip_members_are_refused(store, sample, tmp_path):
    import stat

    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok1.png", png_bytes(cell_array(seed=1)))
        zf.writestr("secret.png", png_bytes(cell_array(seed=2)))
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3  # unix, so external_attr holds the mode
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("ok2.png", png_bytes(cell_array(seed=3)))
    _flag_encrypted(z, "secret.png")
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 2
    why = reasons(r)
    assert set(why) == {"secret.png", "link.png"}
    assert "encrypted" in why["secret.png"] and "password" in why["secret.png"]
    assert "symbolic link" in why["link.png"]
    assert {c.source_file for c in store.list_cells("S1")} == {"ok1.png", "ok2.png"}


def test_multipage_ome_and_imagej_tiffs_ingest(store, sample, tmp_path):
    import tifffile

    d = tmp_path / "set"
    d.mkdir()
    pages = cell_array(c=3, dtype=np.uint16, seed=1)
    with tifffile.TiffWriter(d / "pages.tif") as tw:
        for page in pages:
            tw.write(page, metadata=None)
    zcyx = np.stack([cell_array(c=3, dtype=np.uint16, seed=10 + z) for z in range(2)])
    tifffile.imwrite(d / "stack.ome.tif", zcyx, ome=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(d / "hyper.tif", zcyx[:, :, ::-1], imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(d / "lzw.tif", pages[::-1], imagej=True, compression="lzw", metadata={"axes": "CYX"})
    with tifffile.TiffWriter(d / "uneven.tif") as tw:
        tw.write(np.zeros((32, 32), np.uint16), metadata=None)
        tw.write(np.zeros((16, 16), np.uint16), metadata=None)
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 4
    assert [x.file for x in r.rejected] == ["uneven.tif"] and "16×16" in r.rejected[0].reason
    cells = {c.source_file: c for c in store.list_cells("S1")}
    assert cells["pages.tif"].shape == (3, 32, 32) and cells["pages.tif"].dtype == "uint16"
    assert cells["lzw.tif"].shape == (3, 32, 32)
    assert cells["stack.ome.tif"].shape == (3, 2, 32, 32)
    assert cells["hyper.tif"].shape == (3, 2, 32, 32)
    assert {c.channels for c in cells.values()} == {3}


def test_constant_alpha_is_dropped_and_reported(store, sample, tmp_path):
    d = tmp_path / "set"
    for i in range(2):
        la = np.stack([cell_array(seed=i)[0], np.full((32, 32), 255, np.uint8)], axis=-1)
        buf = io.BytesIO()
        Image.fromarray(la, "LA").save(buf, format="PNG")
        write(d / f"la{i}.png", buf.getvalue())
    write(d / "plain.png", png_bytes(cell_array(seed=5)))
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 3 and r.rejected == []
    assert r.notes == ["alpha channel dropped (the same value, 255, everywhere): 2 file(s), e.g. la0.png"]
    cells = {c.source_file: c for c in store.list_cells("S1")}
    assert cells["la1.png"].extra["image_note"].startswith("alpha channel dropped")
    assert "image_note" not in cells["plain.png"].extra
    assert {c.shape for c in cells.values()} == {(1, 32, 32)}


def test_a_signed_sample_takes_no_more_cells(store, sample, tmp_path):
    from phenotyping.errors import SampleLocked

    d = tmp_path / "set"
    write(d / "a.png", png_bytes(cell_array(seed=1)))
    store.add_report_version("S1", interpretation="x", source="template", actor="rev")
    store.mark_report_signed("S1", 1, signer="sig", status="final", pdf_path="r.pdf", pdf_hash="ab")
    with pytest.raises(SampleLocked, match="amend the report"):
        ingest_set(store, d, "S1", actor="t")
    assert store.count_cells("S1") == 0 and not any(store.image_dir.rglob("*.png"))
