"""Input that must be bounded (issue 16, items 8-13): codec headers checked before decoding, manifest rows refused
one by one, zip members that share a name, the channel count of a set, the number of files in a set, numeric
manifest columns."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from phenotyping.errors import ImageError, IngestError
from phenotyping.ingest import ingest_set, read_image, read_manifest
from phenotyping.jobs import INGEST_EVENT, ingest_and_record, ingest_runs
from phenotyping.schemas import Sample, Specimen
from tests.conftest import cell_array, png_bytes


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reasons(result) -> dict[str, str]:
    return {Path(r.file).name if "line" not in r.file else r.file: r.reason for r in result.rejected}


def grey_tiff(compression: str, side: int = 64) -> bytearray:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8),
                     compression=compression)
    return bytearray(buf.getvalue())


# -- item 8: declared sizes checked before decoding --------------------------------------------------------------------
@pytest.mark.parametrize("declared", [256, 60000])
def test_item8_jpeg_tiff_whose_stream_declares_more_than_its_strip_is_refused(declared):
    data = grey_tiff("jpeg")
    sof = data.find(b"\xff\xc0")
    assert sof > 0 and struct.unpack_from(">HH", data, sof + 5) == (64, 64)
    struct.pack_into(">HH", data, sof + 5, declared, declared)  # the JPEG's frame header, not the TIFF tags
    assert len(data) < 6000
    with pytest.raises(ImageError) as e:
        read_image(bytes(data), "bomb.tif")
    assert f"{declared}×{declared}" in e.value.reason and "64×64" in e.value.reason
    assert "before decoding" in e.value.reason


def test_item8_jpeg2000_tiff_whose_codestream_declares_more_is_refused():
    data = grey_tiff("jpeg2000")
    assert read_image(bytes(data), "ok.tif").shape == (1, 64, 64)  # the unpatched file decodes
    siz = data.find(b"\xff\x51")
    struct.pack_into(">II", data, siz + 6, 60000, 60000)  # Xsiz, Ysiz
    with pytest.raises(ImageError) as e:
        read_image(bytes(data), "bomb.tif")
    assert "JPEG 2000" in e.value.reason and "60000×60000" in e.value.reason


def test_item8_unbounded_tiff_codec_is_refused_by_name():
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((64, 64), np.uint8), compression="jpegxl")  # decodes to what its stream says
    with pytest.raises(ImageError) as e:
        read_image(buf.getvalue(), "cell.tif")
    assert "compression" in e.value.reason and "not accepted" in e.value.reason


def test_item8_tiles_larger_than_the_image_are_refused():
    data = bytearray(grey_tiff("zlib"))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((32, 32), np.uint8), tile=(32, 32), compression="zlib")
    data = bytearray(buf.getvalue())
    tf = tifffile.TiffFile(io.BytesIO(bytes(data)))
    for tag_code in (322, 323):  # TileWidth, TileLength: a 32×32 image in 4096×4096 tiles
        tag = tf.pages[0].tags[tag_code]
        fmt = "<H" if tag.dtype == 3 else "<I"
        struct.pack_into(fmt, data, tag.valueoffset, 4096)
    with pytest.raises(ImageError) as e:
        read_image(bytes(data), "tiles.tif")
    assert "4096×4096" in e.value.reason


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bmp"])
def test_item8_standalone_images_are_refused_on_their_declared_size(fmt):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(cell_array()[0]).save(buf, format=fmt.upper())
    data = bytearray(buf.getvalue())
    if fmt == "png":
        struct.pack_into(">II", data, 16, 60000, 60000)  # IHDR width, height, and its CRC
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    elif fmt == "jpeg":
        sof = data.find(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, 60000, 60000)
    else:
        struct.pack_into("<ii", data, 18, 60000, 60000)  # BITMAPINFOHEADER width, height
    with pytest.raises(ImageError) as e:
        read_image(bytes(data), f"bomb.{fmt}")
    assert "megapixels" in e.value.reason or "bomb" in e.value.reason


def test_item8_bomb_tiff_in_a_set_is_refused_and_the_rest_ingested(store, sample, tmp_path):
    data = grey_tiff("jpeg")
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)
    d = tmp_path / "set"
    write(d / "bomb.tif", bytes(data))
    write(d / "ok.png", png_bytes(cell_array()))
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 1
    assert "60000×60000" in reasons(r)["bomb.tif"]


# -- item 9: manifest rows that cannot be read are refused one by one --------------------------------------------------
def bad_manifest(d: Path) -> None:
    for i in range(3):
        write(d / f"c{i}.png", png_bytes(cell_array(seed=i)))
    long_field = "x" * (129 * 1024)
    text = ("path,label\n"
            "c0.png,neutrophil\n"
            "c1.png,lymphocyte,\n"            # a trailing comma: one field more than the header
            f"c2.png,{long_field}\n"           # a field above csv's 128 KiB limit
            "c2.png,monocyte\n")
    write(d / "manifest.csv", text.encode())


def test_item9_trailing_comma_and_huge_field_are_row_rejections_and_the_run_is_recorded(store, sample, tmp_path):
    d = tmp_path / "set"
    bad_manifest(d)
    r = ingest_and_record(store, d, "S1", actor="t", source_name="set")
    assert r.ingested == 2  # c0 and the second row naming c2
    by_line = {x.file: x.reason for x in r.rejected}
    assert "manifest.csv line 3" in by_line and "trailing comma" in by_line["manifest.csv line 3"]
    assert "manifest.csv line 4" in by_line and "not readable CSV" in by_line["manifest.csv line 4"]
    runs = ingest_runs(store, "S1")
    assert len(runs) == 1 and runs[0].outcome == "ok" and runs[0].rejected_total == 2


def test_item9_zip_manifest_rows_are_refused_one_by_one(store, sample, tmp_path):
    d = tmp_path / "set"
    bad_manifest(d)
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(d.iterdir()):
            zf.write(p, p.name)
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 2
    assert {x.file for x in r.rejected} == {"manifest.csv line 3", "manifest.csv line 4"}


def test_item9_read_manifest_names_the_bad_line(tmp_path):
    d = tmp_path / "set"
    bad_manifest(d)
    with pytest.raises(ValueError, match="line 3 has 3 fields but the header has 2"):
        read_manifest(d / "manifest.csv")


def test_item9_an_unexpected_failure_is_recorded_too(store, sample, tmp_path, monkeypatch):
    from phenotyping import ingest

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest, "ingest_set", broken)
    with pytest.raises(RuntimeError):
        ingest_and_record(store, tmp_path, "S1", actor="t", source_name="x")
    (run,) = ingest_runs(store, "S1")
    assert run.outcome == "failed" and "disk on fire" in run.error


# -- item 10: zip members with the same name ---------------------------------------------------------------------------
@pytest.mark.parametrize("second", ["set/a.png", "set\\a.png"])
def test_item10_zip_members_sharing_a_path_are_refused_naming_both(store, sample, tmp_path, second):
    z = tmp_path / "set.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(z, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns "Duplicate name" and writes it anyway
        zf.writestr("set/a.png", png_bytes(cell_array(seed=1)))
        zf.writestr("set/b.png", png_bytes(cell_array(seed=2)))
        zf.writestr(second, png_bytes(cell_array(seed=3)))
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 1 and [c.source_file for c in store.list_cells("S1")] == ["set/b.png"]
    (clash,) = r.rejected
    assert "2 archive members have this path" in clash.reason
    assert "'set/a.png' (entry 1" in clash.reason and f"{second!r} (entry 3" in clash.reason


def test_item10_manifest_row_naming_a_shared_path_and_a_doubled_manifest(store, sample, tmp_path):
    z = tmp_path / "set.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(z, "w") as zf:
        warnings.simplefilter("ignore")
        zf.writestr("manifest.csv", "path\na.png\nb.png\n")
        zf.writestr("a.png", png_bytes(cell_array(seed=1)))
        zf.writestr("a.png", png_bytes(cell_array(seed=2)))
        zf.writestr("b.png", png_bytes(cell_array(seed=3)))
    r = ingest_set(store, z, "S1", actor="t")
    assert r.ingested == 1
    assert "2 archive members" in reasons(r)["a.png"] and "line 2" in reasons(r)["a.png"]
    z2 = tmp_path / "two-manifests.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(z2, "w") as zf:
        warnings.simplefilter("ignore")
        zf.writestr("manifest.csv", "path\na.png\n")
        zf.writestr("manifest.csv", "path\nb.png\n")
        zf.writestr("a.png", png_bytes(cell_array(seed=1)))
    with pytest.raises(IngestError, match="manifest.csv: 2 archive members"):
        ingest_set(store, z2, "S1", actor="t")


# -- item 11: the channel count of a set -------------------------------------------------------------------------------
def test_item11_majority_not_file_order_decides_the_channel_count(store, tmp_path):
    d = tmp_path / "set"
    write(d / "_overview.png", png_bytes(cell_array(c=3, seed=99)))  # sorts first
    for i in range(4):
        write(d / f"cell_{i}.png", png_bytes(cell_array(seed=i)))
    new = Sample(id="N1", specimen=Specimen.blood)
    r = ingest_set(store, d, "N1", actor="t", create=new)
    assert r.ingested == 4
    why = reasons(r)
    assert set(why) == {"_overview.png"}
    assert "3 channel(s)" in why["_overview.png"]
    assert "most of this set's images (4 of 5) have 1" in why["_overview.png"]


def test_item11_a_set_without_a_majority_is_refused_and_nothing_created(store, tmp_path):
    d = tmp_path / "set"
    for i in range(2):
        write(d / f"rgb_{i}.png", png_bytes(cell_array(c=3, seed=i)))
        write(d / f"grey_{i}.png", png_bytes(cell_array(seed=10 + i)))
    with pytest.raises(IngestError, match=r"2 with 1 channel\(s\), 2 with 3 channel\(s\)"):
        ingest_and_record(store, d, "N1", actor="t", source_name="set",
                          create=Sample(id="N1", specimen=Specimen.blood))
    assert not store.sample_exists("N1")


def test_item11_a_sample_with_cells_keeps_its_channel_count(store, sample, tmp_path):
    first = tmp_path / "first"
    write(first / "rgb.png", png_bytes(cell_array(c=3, seed=50)))
    assert ingest_set(store, first, "S1", actor="t").ingested == 1
    d = tmp_path / "set"
    write(d / "rgb2.png", png_bytes(cell_array(c=3, seed=51)))
    for i in range(3):
        write(d / f"grey_{i}.png", png_bytes(cell_array(seed=i)))
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 1
    assert all("this sample's cells have 3" in reason for reason in reasons(r).values())


# -- item 12: the number of files in a set -----------------------------------------------------------------------------
def no_reads(monkeypatch) -> None:
    """Fail the test if any image file is read or decoded from now on."""
    import phenotyping.ingest._ingest as ing

    def refuse(*args, **kwargs):
        raise AssertionError("a file was read although the set is over the limit")

    monkeypatch.setattr(ing, "read_image", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)
    monkeypatch.setattr(Path, "read_bytes", refuse)


def many_files(tmp_path: Path, n: int, kind: str) -> Path:
    d = tmp_path / "set"
    data = png_bytes(cell_array())
    for i in range(n):
        write(d / f"c{i:03d}.png", data)
    if kind == "manifest":
        write(d / "list.csv", ("path\n" + "".join(f"c{i:03d}.png\n" for i in range(n))).encode())
        return d / "list.csv"
    if kind == "zip":
        z = tmp_path / "set.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for i in range(n):
                zf.writestr(f"c{i:03d}.png", data)
        return z
    return d


@pytest.mark.parametrize("kind", ["folder", "zip", "manifest"])
def test_item12_max_files_per_set_is_enforced_before_reading(store, sample, tmp_path, kind, monkeypatch):
    src = many_files(tmp_path, 12, kind)
    no_reads(monkeypatch)
    with pytest.raises(IngestError, match="more than 10 .*LEUKO_MAX_FILES_PER_SET"):
        ingest_and_record(store, src, "S1", actor="t", source_name=kind, max_files=10)
    (run,) = ingest_runs(store, "S1")
    assert run.outcome == "failed" and "more than 10" in run.error
    assert store.count_cells("S1") == 0


def test_item12_zip_over_the_limit_is_counted_from_its_directory(tmp_path):
    from phenotyping.ingest._zipcount import zip_entry_count

    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(70_000):  # past 65,535: the zip64 end records
            zf.writestr(f"{i}.png", b"")
    assert zip_entry_count(z, stop_after=10**6) == 70_000
    assert zip_entry_count(z, stop_after=100) == 101


def test_item12_the_audit_row_of_a_run_is_bounded(store, sample, tmp_path, monkeypatch):
    from phenotyping import jobs
    from phenotyping.ingest import _runs

    monkeypatch.setattr(_runs, "MAX_RECORDED_REJECTIONS", 5)  # the ingest record moved there from jobs
    d = tmp_path / "set"
    write(d / "ok.png", png_bytes(cell_array()))
    for i in range(12):
        write(d / (f"junk_{i:02d}_" + "n" * 200 + ".txt"), b"not an image")
    r = ingest_and_record(store, d, "S1", actor="t", source_name="set")
    assert len(r.rejected) == 12  # the result itself lists every file
    (event,) = store.list_audit(sample_id="S1", action=INGEST_EVENT)
    after = event.after
    assert len(after["rejected"]) == 5 and after["rejected_total"] == 12
    assert all(len(x["file"]) <= jobs.MAX_RECORDED_CHARS for x in after["rejected"])
    assert after["rejected_by_reason"] == {"not an image: the file is not PNG, JPEG, BMP or TIFF": 12}
    assert ingest_runs(store, "S1")[0].rejected_total == 12
    assert len(json.dumps(after)) < 3000


# -- item 13: numeric manifest columns ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "NA"])
def test_item13_one_bad_value_keeps_the_column_numeric_and_refuses_its_row(store, sample, tmp_path, bad):
    d = tmp_path / "set"
    for i in range(3):
        write(d / f"c{i}.png", png_bytes(cell_array(seed=i)))
    write(d / "manifest.csv", f"path,cd16,donor\nc0.png,1.5,A\nc1.png,{bad},B\nc2.png,2.25,C\n".encode())
    r = ingest_set(store, d, "S1", actor="t")
    assert r.ingested == 2
    cells = {c.source_file: c for c in store.list_cells("S1")}
    assert cells["c0.png"].targets == {"cd16": 1.5} and cells["c2.png"].targets == {"cd16": 2.25}
    assert "cd16" not in cells["c0.png"].extra and cells["c0.png"].extra["donor"] == "A"
    why = reasons(r)["c1.png"]
    assert "'cd16'" in why and repr(bad) in why and "line 3" in why
