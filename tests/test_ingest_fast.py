"""Fast ingest (issue 17): one pack file per committed batch, parallel decoding, and commands that run no model
starting without torch. Durability and the per-file rejections stay as they were."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

from phenotyping.__main__ import COMMANDS
from phenotyping.schemas import Sample, Specimen
from phenotyping.store import Store
from tests.conftest import PROJECT_ROOT, cell_array, png_bytes


def write_set(root, n, *, seed=0, size=16):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"{i:05d}.png").write_bytes(png_bytes(cell_array(h=size, w=size, seed=seed + i)))
    return root


SMALL_BATCH = 64  # cells per batch in these tests (the default is far larger)


def test_a_batch_is_one_pack_file_and_every_cell_reads_back(store, sample, tmp_path, monkeypatch):
    import phenotyping.ingest._ingest as ing
    from phenotyping.ingest import ingest_set

    monkeypatch.setattr(ing, "BATCH", SMALL_BATCH)
    src = write_set(tmp_path / "set", SMALL_BATCH + 10)
    res = ingest_set(store, src, sample.id, actor="tester", workers=4)
    files = [p for p in store.image_dir.rglob("*") if p.is_file()]
    assert len(files) == 2 and all(p.suffix == ".pack" for p in files), files   # two batches, two packs
    cells = store.list_cells(sample.id)
    assert [c.id for c in cells] == res.cell_ids == sorted(res.cell_ids)
    assert [c.source_file for c in cells] == sorted(p.name for p in src.iterdir())   # the set's order
    for c in cells:
        data = store.read_cell_bytes(c)
        assert data == (src / c.source_file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == c.content_hash
        assert c.blob_path.endswith(".png")   # the format stays visible in the path


def test_a_damaged_pack_is_named_when_read(store, sample, tmp_path):
    from phenotyping.errors import StoreError
    from phenotyping.ingest import ingest_set

    ingest_set(store, write_set(tmp_path / "set", 3), sample.id, actor="tester")
    last = store.list_cells(sample.id)[-1]
    pack = next(store.image_dir.rglob("*.pack"))
    pack.write_bytes(pack.read_bytes()[:-5])
    with pytest.raises(StoreError, match=r"image pack .*\.pack holds .* bytes at offset"):
        store.read_cell_bytes(last)


def _bad_set(root):
    """Good cells, one of each kind of bad file, a duplicate and an RGB odd one out, in a known order."""
    root.mkdir()
    for i in range(150):
        (root / f"a{i:04d}.png").write_bytes(png_bytes(cell_array(h=12, w=12, seed=i)))
    (root / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "b_notes.txt").write_text("not an image")
    (root / "b_dup.png").write_bytes((root / "a0003.png").read_bytes())
    (root / "b_rgb.png").write_bytes(png_bytes(cell_array(h=12, w=12, c=3, seed=999)))
    (root / "b_empty.png").write_bytes(b"")
    return root


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_rejections_are_the_same_with_and_without_decoding_threads(tmp_path, kind):
    from phenotyping.ingest import ingest_set

    src = _bad_set(tmp_path / "set")
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
            for p in sorted(src.iterdir()):
                zf.write(p, p.name)
        src = tmp_path / "set.zip"
    results = []
    for workers in (1, 4):
        with Store(":memory:", image_dir=tmp_path / f"img{workers}") as s:
            s.create_sample(Sample(id="S", specimen=Specimen.blood), actor="t")
            r = ingest_set(s, src, "S", actor="t", workers=workers)
            results.append((r.ingested, r.duplicates,
                            [(x.file, re.sub(r" at 0x[0-9a-f]+", "", x.reason)) for x in r.rejected],
                            [c.cell_key for c in s.list_cells("S")]))
    assert results[0] == results[1]
    ingested, duplicates, rejected, keys = results[0]
    assert ingested == 150 and duplicates == 1 and len(keys) == 150
    reasons = dict(rejected)
    assert set(reasons) == {"b_broken.png", "b_notes.txt", "b_dup.png", "b_rgb.png", "b_empty.png"}
    assert reasons["b_dup.png"] == "duplicate: same content as a0003.png"
    assert reasons["b_rgb.png"].startswith("3 channel(s), but most of this set's images")


def test_the_second_pass_reads_again_what_the_first_let_go(store, sample, tmp_path, monkeypatch):
    """Above the first pass's memory budget the set is read again; the result is the same."""
    import phenotyping.ingest._ingest as ing

    src = _bad_set(tmp_path / "set")
    monkeypatch.setattr(ing, "SURVEY_KEEP_BYTES", 2000)
    res = ing.ingest_set(store, src, sample.id, actor="tester", workers=3)
    assert res.ingested == 150 and res.duplicates == 1 and len(res.rejected) == 5
    for c in store.list_cells(sample.id):
        assert store.read_cell_bytes(c) == (src / c.source_file).read_bytes()


_SLOW_THIRD_COMMIT = textwrap.dedent(f"""
    import sys, time
    import phenotyping.ingest._ingest as ing
    ing.BATCH = {SMALL_BATCH}
    from phenotyping.store import Store
    add, calls = Store.add_cells, []
    def slow_add(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third batch's pack is written; the first two batches are committed
            open(sys.argv[1], "w").close()
            time.sleep(120)
        return add(self, *args, **kwargs)
    Store.add_cells = slow_add
    from phenotyping.__main__ import main
    sys.exit(main(sys.argv[2:]))
""")


def test_kill_9_during_a_parallel_ingest_keeps_complete_committed_cells_and_a_rerun_resumes(tmp_path):
    from phenotyping.ingest import read_image

    BATCH = SMALL_BATCH
    n = 3 * BATCH + 40
    src = write_set(tmp_path / "set", n)
    db, marker = tmp_path / "lab.duckdb", tmp_path / "third-batch"
    argv = ["ingest", str(src), "--sample", "K", "--specimen", "blood", "--db", str(db)]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_THIRD_COMMIT, str(marker), *argv], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no third batch in 240 s"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = Store(db)
    committed = s.list_cells("K")
    assert len(committed) == 2 * BATCH
    assert [c.source_file for c in committed] == [f"{i:05d}.png" for i in range(2 * BATCH)]
    for c in committed:
        data = s.read_cell_bytes(c)
        assert hashlib.sha256(data).hexdigest() == c.content_hash
        assert read_image(data, c.source_file).shape == c.shape == (1, 16, 16)
    s.close()
    p = subprocess.run([sys.executable, "-m", "phenotyping", *argv], cwd=PROJECT_ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["ingested"] == n - 2 * BATCH and out["duplicates"] == 2 * BATCH
    s = Store(db)
    cells = s.list_cells("K")
    assert len(cells) == n and len({c.cell_key for c in cells}) == n
    assert all(s.read_cell_bytes(c) == (src / c.source_file).read_bytes() for c in cells)
    assert s.verify_audit().bottom_line == "intact"
    s.close()


_NO_TORCH = textwrap.dedent("""
    import json, sys
    from phenotyping.__main__ import main
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as e:
        code = e.code
    print(json.dumps({"code": code, "torch": "torch" in sys.modules, "timm": "timm" in sys.modules,
                      "pandas": "pandas" in sys.modules}))
""")


def _run_main(argv, tmp_path):
    env = {**os.environ, "LEUKO_DB_PATH": str(tmp_path / "leuko.duckdb")}
    p = subprocess.run([sys.executable, "-c", _NO_TORCH, json.dumps(argv)], cwd=PROJECT_ROOT, capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_no_command_imports_torch_for_its_help(tmp_path):
    for name in COMMANDS:
        out = _run_main([name, "--help"], tmp_path)
        assert out["code"] == 0 and not out["torch"] and not out["timm"], (name, out)


def test_commands_that_run_no_model_do_their_work_without_torch(tmp_path):
    src = write_set(tmp_path / "set", 5)
    for argv in (["ingest", str(src), "--sample", "S1", "--specimen", "blood"], ["samples"],
                 ["audit", "verify"], ["bench", "ingest", "--cells", "20"]):
        out = _run_main(argv, tmp_path)
        assert out["code"] == 0 and not out["torch"], (argv, out)
        if argv[0] in ("ingest", "bench"):   # the batch insert scans NumPy columns: importing pandas took 0.7 s
            assert not out["pandas"], (argv, out)


def test_predict_manifest_takes_the_channels_from_the_card_and_checks_them_against_the_checkpoint(tmp_path, capsys):
    """predict --manifest ingests while the model loads, with the card's channel count; a card that disagrees with
    its checkpoint is named."""
    from phenotyping.__main__ import main
    from tests.conftest import encode, save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model", ["a", "b"])
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card["input"] = {"channels": ["brightfield", "darkfield", "extra"]}
    card_path.write_text(json.dumps(card))
    src = tmp_path / "set"
    src.mkdir()
    for i in range(3):
        (src / f"c{i}.tif").write_bytes(encode(cell_array(h=20, w=20, c=3, dtype=np.uint16, seed=i), "tiff"))
    rc = main(["predict", "--model", str(model_dir), "--manifest", str(src), "--bootstrap", "0", "--device", "cpu"])
    assert rc == 2
    assert "model card lists 3 input channel(s) but its checkpoint 2" in capsys.readouterr().err


def _entries_and_count(source):
    from phenotyping.ingest._sources import iter_source

    counts = []
    entries = list(iter_source(source, max_bytes=1 << 20, on_count=counts.append))
    return len(entries), counts


@pytest.mark.parametrize("kind", ["folder", "folder+manifest", "manifest", "zip", "zip+manifest"])
def test_each_source_counts_the_entries_it_yields(tmp_path, kind):
    """The first pass settles the majority from this count, so it must never be below what the source yields."""
    src = _bad_set(tmp_path / "set")
    if "manifest" in kind:
        names = sorted(p.name for p in src.iterdir())
        (src / "manifest.csv").write_text("path\n" + "".join(f"{n}\n" for n in names[:-3]) + "missing.png\n")
    if kind.startswith("zip"):
        with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
            for p in sorted(src.iterdir()):
                zf.write(p, f"top/{p.name}")
            zf.writestr("../escapes.png", b"x")
        src = tmp_path / "set.zip"
    elif kind == "manifest":
        src = src / "manifest.csv"
    n, counts = _entries_and_count(src)
    assert counts == [n]


def _decodes_before_first_commit(monkeypatch, store, sample, src):
    import phenotyping.ingest._ingest as ing

    decoded, at_first_commit = [], []
    decode, add = ing.decode_entry, type(store).add_cells

    def counting_decode(*args, **kwargs):
        decoded.append(1)
        return decode(*args, **kwargs)

    def noting_add(self, *args, **kwargs):
        at_first_commit.append(len(decoded))
        return add(self, *args, **kwargs)

    monkeypatch.setattr(ing, "decode_entry", counting_decode)
    monkeypatch.setattr(ing, "BATCH", 16)
    monkeypatch.setattr(type(store), "add_cells", noting_add)
    result = ing.ingest_set(store, src, sample.id, actor="tester", workers=1)
    return result, at_first_commit[0]


def test_the_majority_is_settled_early_and_worded_as_after_the_whole_set(store, sample, tmp_path, monkeypatch):
    """Once more than half of the set's files have one count, cells are committed while the rest is decoded; the
    odd file's refusal still gives the counts of the whole set."""
    src = tmp_path / "set"
    src.mkdir()
    for i in range(100):
        (src / f"c{i:03d}.png").write_bytes(png_bytes(cell_array(h=12, w=12, seed=i)))
    (src / "z_rgb.png").write_bytes(png_bytes(cell_array(h=12, w=12, c=3, seed=999)))   # last in the order
    result, decoded = _decodes_before_first_commit(monkeypatch, store, sample, src)
    assert decoded < 101   # without the early settling, all 101 files are decoded before the first commit
    assert result.ingested == 100 and [r.file for r in result.rejected] == ["z_rgb.png"]
    assert result.rejected[0].reason == ("3 channel(s), but most of this set's images (100 of 101) have 1; a "
                                         "sample's images must all have the same channels")


def test_a_set_without_an_early_majority_is_decoded_whole_first(store, sample, tmp_path, monkeypatch):
    src = tmp_path / "set"
    src.mkdir()
    for i in range(60):
        c = 1 if i % 2 else 3   # 30 and 30: only the last file settles it, for the grey ones
        (src / f"c{i:03d}.png").write_bytes(png_bytes(cell_array(h=12, w=12, c=c, seed=i)))
    (src / "d.png").write_bytes(png_bytes(cell_array(h=12, w=12, seed=500)))
    result, decoded = _decodes_before_first_commit(monkeypatch, store, sample, src)
    assert decoded == 61 and result.ingested == 31
    assert {r.reason for r in result.rejected} == {"3 channel(s), but most of this set's images (31 of 61) have 1; "
                                                   "a sample's images must all have the same channels"}


def test_a_failed_commit_stops_the_ingest_and_later_batches_are_not_committed(store, sample, tmp_path, monkeypatch):
    import phenotyping.ingest._ingest as ing
    from phenotyping.errors import StoreError

    add, calls = type(store).add_cells, []

    def failing_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise StoreError("disk full (test)")
        return add(self, *args, **kwargs)

    monkeypatch.setattr(ing, "BATCH", 16)
    monkeypatch.setattr(type(store), "add_cells", failing_second)
    with pytest.raises(StoreError, match="disk full"):
        ing.ingest_set(store, write_set(tmp_path / "set", 80), sample.id, actor="tester", workers=2)
    assert len(calls) == 2 and store.count_cells(sample.id) == 16
    assert store.verify_audit().bottom_line == "intact"


def test_folders_are_fsynced_until_each_is_durable_in_its_parent(tmp_path, monkeypatch):
    import phenotyping.store.cells as cells

    synced = []
    monkeypatch.setattr(cells, "_fsync", synced.append)
    s = Store(tmp_path / "a.duckdb")
    images = s.image_dir
    first = s.put_pack([(b"one", ".png")])[0]
    s.sync_blobs([first])
    pack = images / first.split("@")[0]
    assert synced == [pack, pack.parent, pack.parent.parent, images, images.parent]
    synced.clear()
    s.sync_blobs([first])   # the same folders: only the file and the folder that names it
    assert synced == [pack, pack.parent]
    s.close()


def test_a_file_that_grew_after_listing_is_read_to_the_limit(tmp_path):
    from phenotyping.ingest._sources import read_bounded

    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 5000)
    assert read_bounded(f, max_bytes=100_000, size_hint=10) == b"x" * 5000
    assert read_bounded(f, max_bytes=1000, size_hint=10) == b"x" * 1001   # one over: the caller refuses it
    assert read_bounded(f, max_bytes=1000, size_hint=5000) == b"x" * 1001
    f.write_bytes(b"")
    assert read_bounded(f, max_bytes=1000, size_hint=0) == b""


def test_the_store_json_is_what_json_dumps_wrote():
    """Digests recorded by earlier versions are recomputed with ``_json``: its text must not change."""
    from datetime import datetime, timezone

    from phenotyping.store._db import _json

    for v in ([1, "a", None, 2.5, {"b": 1, "a": [1, 2]}], {"z": "é", "at": datetime(2020, 1, 1, tzinfo=timezone.utc)},
              [2, 40, 40], {}, {"cell_id": "c1", "x": 1e-320}, ["☃", True]):
        assert _json(v) == json.dumps(v, sort_keys=True, default=str, allow_nan=False)
    with pytest.raises(ValueError):
        _json(float("nan"))
