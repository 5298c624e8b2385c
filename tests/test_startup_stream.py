"""`predict --manifest` predicts each committed ingest batch while the rest is ingested (analysis/stream.py), and
gives what ingesting everything first and then predicting gave: the same JSON, stored cells, QC, predictions,
domain verdict and audit events, also where it has to start again sequentially. Only the ingest's grouping differs
where the prediction batch is smaller than an ingest batch: the stream's first commit is one prediction batch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode, save_tiny_model, synthetic_cell  # noqa: E402

TIMING = ("seconds", "cells_per_second")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", ["disc", "ring"])


def _write_set(root: Path, kinds: list[str], *, three_channel: set[int] = frozenset(), dup: int | None = None) -> Path:
    """A manifest of synthetic 2-channel cells (``three_channel``: those rows get a third channel; ``dup``: that
    row repeats row 0's file content)."""
    rng = np.random.default_rng(5)
    root.mkdir()
    lines = ["cell_id,path,label"]
    first = None
    for i, kind in enumerate(kinds):
        img = synthetic_cell(kind, rng)
        if i in three_channel:
            img = np.concatenate([img, img[:1]])
        data = encode(img, "tiff")
        first = first or data
        (root / f"c{i:03d}.tif").write_bytes(first if i == dup else data)
        lines.append(f"k{i:03d},c{i:03d}.tif,{kind}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def _snapshot(store) -> dict:
    """What the temporary store holds when the report is made, without times."""
    from phenotyping.cli.predict import MANIFEST_SAMPLE

    cells = [c.model_dump(exclude={"created_at"}) for c in store.list_cells(MANIFEST_SAMPLE)]
    model_ids = sorted({e.after.get("model_id") for e in store.list_audit(action="predictions.save")})
    preds = {m: [p.model_dump(exclude={"created_at"}) for p in store.list_predictions(MANIFEST_SAMPLE, m)]
             for m in model_ids}
    events = Counter(e.action for e in store.list_audit(limit=10_000))
    saves = sorted(json.dumps({k: v for k, v in e.after.items()}, sort_keys=True)
                   for e in store.list_audit(action="predictions.save"))
    ingests = sorted(json.dumps({k: e.after.get(k) for k in ("first_id", "last_id", "digest", "cells")},
                                sort_keys=True) for e in store.list_audit(action="cells.ingest"))
    domain = {m: store.domain_check(MANIFEST_SAMPLE, m) for m in model_ids}
    for d in domain.values():
        if d:
            d.pop("checked_at", None)
    return {"cells": cells, "predictions": preds, "events": events, "saves": saves, "ingests": ingests,
            "domain": domain}


def _predict(monkeypatch, capsys, manifest: Path, model_dir: Path, *, stream: bool, batch: int = 5,
             ingest_batch: int = 4) -> dict:
    import phenotyping.cli.predict as cli
    import phenotyping.ingest._ingest as ingest
    from phenotyping.__main__ import main

    seen: dict = {}
    report = cli._report

    def spy(store, *a, **k):
        seen["store"] = _snapshot(store)
        return report(store, *a, **k)

    streamed: list[bool] = []
    stream_fn = cli._stream

    def stream_or_not(*a, **k):
        if not stream:
            return None
        out = stream_fn(*a, **k)
        streamed.append(out is not None)
        return out

    with monkeypatch.context() as m:
        m.setattr(ingest, "BATCH", ingest_batch)  # several commits, not aligned with the prediction batches
        m.setattr(cli, "_report", spy)
        m.setattr(cli, "_stream", stream_or_not)
        rc = main(["predict", "--model", str(model_dir), "--manifest", str(manifest), "--batch-size", str(batch),
                   "--bootstrap", "20", "--device", "cpu"])
    captured = capsys.readouterr()
    out = json.loads(captured.out) if rc == 0 else None
    for k in TIMING if out else ():
        out["run"].pop(k)
    return {"rc": rc, "json": out, "store": seen.get("store"), "streamed": streamed, "err": captured.err}


def test_streaming_gives_what_ingest_then_predict_gave(monkeypatch, capsys, model_dir, tmp_path):
    kinds = ["disc", "ring"] * 9 + ["blank", "disc"]
    manifest = _write_set(tmp_path / "set", kinds, three_channel={7}, dup=12)
    seq = _predict(monkeypatch, capsys, manifest, model_dir, stream=False)
    st = _predict(monkeypatch, capsys, manifest, model_dir, stream=True)
    assert st["streamed"] == [True] and seq["streamed"] == []
    assert st["rc"] == seq["rc"] == 0
    assert st["json"] == seq["json"]
    assert st["store"] == seq["store"]
    run = st["json"]["run"]
    assert run["total_cells"] == 18 and run["predicted"] + run["excluded"] == 18  # 20 rows: one 3-channel, one dup
    assert st["store"]["events"]["predictions.save"] == 4 and st["store"]["events"]["cells.ingest"] == 5
    assert "2 file(s) not ingested" in st["err"] and "2 file(s) not ingested" in seq["err"]


def test_the_stream_commits_one_prediction_batch_first(monkeypatch, capsys, model_dir, tmp_path):
    """With prediction batches (3) smaller than ingest batches (8) the stream's first commit is 3 cells, so that its
    first prediction need not wait for 8 files; then full ingest batches. What is predicted and stored is the same
    as ingesting everything first: only the ingest events' grouping and so the pack files differ."""
    manifest = _write_set(tmp_path / "set", ["disc", "ring"] * 10)
    seq = _predict(monkeypatch, capsys, manifest, model_dir, stream=False, batch=3, ingest_batch=8)
    st = _predict(monkeypatch, capsys, manifest, model_dir, stream=True, batch=3, ingest_batch=8)
    assert st["streamed"] == [True] and st["rc"] == seq["rc"] == 0 and st["json"] == seq["json"]
    cells = {k: [{f: v for f, v in c.items() if f != "blob_path"} for c in r["store"]["cells"]] for k, r in
             (("seq", seq), ("st", st))}
    assert cells["st"] == cells["seq"]
    for k in ("predictions", "saves", "domain"):
        assert st["store"][k] == seq["store"][k]
    sizes = lambda r: sorted((json.loads(e)["first_id"], json.loads(e)["cells"]) for e in r["store"]["ingests"])  # noqa: E731
    assert sizes(seq) == [(1, 8), (9, 8), (17, 4)]
    assert sizes(st) == [(1, 3), (4, 8), (12, 8), (20, 1)]


def test_the_ingest_waits_until_the_first_batch_is_saved(monkeypatch, capsys, model_dir, tmp_path):
    """Held after its first commit, the ingest goes on only once the first prediction batch is saved, so that
    the first batch does not share the interpreter with the ingest of the next ones."""
    import phenotyping.analysis.stream as stream
    import phenotyping.ingest._ingest as ingest
    from phenotyping.__main__ import main
    from phenotyping.store import Store

    order: list[str] = []
    committed, save = stream.CommittedCells.committed, Store.add_predictions

    def counting(self, ids):
        order.append(f"commit {len(ids)}")
        return committed(self, ids)

    def saving(self, preds, **k):
        order.append(f"save {len(preds)}")
        return save(self, preds, **k)

    manifest = _write_set(tmp_path / "set", ["disc", "ring"] * 6)
    monkeypatch.setattr(ingest, "BATCH", 4)
    monkeypatch.setattr(stream.CommittedCells, "committed", counting)
    monkeypatch.setattr(Store, "add_predictions", saving)
    rc = main(["predict", "--model", str(model_dir), "--manifest", str(manifest), "--batch-size", "2",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert order[:3] == ["commit 2", "save 2", "commit 4"]
    assert order.count("save 2") == 6 and sum(int(o.split()[1]) for o in order if o.startswith("commit")) == 12


def test_the_first_batch_is_checked_while_the_model_loads(model_dir, tmp_path):
    """Given a model still loading (a Future) and its card, predict_stream reads and QCs the first batch before
    the model is there, and predicts what predict_sample predicts."""
    import threading
    from concurrent.futures import Future

    import phenotyping.analysis.stream as stream
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.ingest import ingest_set
    from phenotyping.models.checkpoint import load_card, load_model_dir
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    manifest = _write_set(tmp_path / "set", ["disc", "ring"] * 5)
    lm = load_model_dir(model_dir)
    preds = {}
    for name in ("seq", "st"):
        with Store(tmp_path / f"{name}.duckdb", image_dir=tmp_path / f"img-{name}") as store:
            store.create_sample(Sample(id="S", specimen=Specimen.blood), actor="t")
            if name == "seq":
                ingest_set(store, manifest, "S", actor="t")
                predict_sample(store, "S", lm, device="cpu", batch_size=4)
            else:
                loading: Future = Future()
                checked = threading.Event()
                read_and_check = stream._read_and_check

                def spy(*a, **k):
                    out = read_and_check(*a, **k)
                    checked.set()
                    return out

                cells = stream.CommittedCells(store, "S", hold_after=4)
                feeder = threading.Thread(target=lambda: (ingest_set(store, manifest, "S", actor="t",
                                                                     on_commit=cells.committed, first_batch=4),
                                                          cells.close()))
                feeder.start()
                stream._read_and_check = spy
                try:
                    out: dict = {}
                    runner = threading.Thread(target=lambda: out.update(run=stream.predict_stream(
                        store, "S", loading, cells, card=load_card(model_dir), device="cpu", batch_size=4)))
                    runner.start()
                    assert checked.wait(30) and not loading.done()  # QC'd before the model was there
                    loading.set_result(lm)
                    runner.join(60)
                    feeder.join(60)
                finally:
                    stream._read_and_check = read_and_check
                assert out["run"].predicted + out["run"].excluded == 10
            preds[name] = [(p.cell_id, p.predicted_class, round(p.confidence, 6))
                           for p in store.list_predictions("S", lm.id)]
    assert preds["st"] == preds["seq"] and len(preds["seq"]) > 0


def test_a_set_of_another_channel_count_starts_again_sequentially(monkeypatch, capsys, model_dir, tmp_path):
    """Most files have 3 channels: ingest on its own takes those (and the 2-channel model then refuses them), so
    the stream, which expected 2, gives way to the sequential path and the command ends as it did."""
    kinds = ["disc", "ring"] * 4
    manifest = _write_set(tmp_path / "set", kinds, three_channel={0, 1, 2, 3, 4})
    seq = _predict(monkeypatch, capsys, manifest, model_dir, stream=False)
    st = _predict(monkeypatch, capsys, manifest, model_dir, stream=True)
    assert st["streamed"] == [False]
    assert (st["rc"], st["json"], st["store"]) == (seq["rc"], seq["json"], seq["store"])
    note = "only 3 of 8 readable files have the model's 2 channel(s): ingesting the whole set first, then predicting\n"
    assert st["err"].endswith(note + seq["err"])
    assert "most of this set's images (5 of 8) have 3" in seq["err"]


def test_a_minority_of_another_channel_count_streams(monkeypatch, capsys, model_dir, tmp_path):
    """3 files of 8 with 3 channels: both ways reject those 3 and predict the rest alike."""
    manifest = _write_set(tmp_path / "set", ["disc", "ring"] * 4, three_channel={1, 4, 6})
    seq = _predict(monkeypatch, capsys, manifest, model_dir, stream=False)
    st = _predict(monkeypatch, capsys, manifest, model_dir, stream=True)
    assert st["streamed"] == [True] and st["rc"] == seq["rc"] == 0
    assert st["json"] == seq["json"] and st["store"] == seq["store"]
    assert st["json"]["run"]["total_cells"] == 5


def test_a_set_without_one_usable_file_fails_as_before(monkeypatch, capsys, model_dir, tmp_path):
    from phenotyping.__main__ import main

    root = tmp_path / "set"
    root.mkdir()
    (root / "a.tif").write_bytes(b"not a tiff")
    (root / "manifest.csv").write_text("cell_id,path\nk0,a.tif\n")
    rc = main(["predict", "--model", str(model_dir), "--manifest", str(root / "manifest.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "a.tif" in err


def test_the_ingest_stops_when_the_prediction_fails(monkeypatch, capsys, model_dir, tmp_path):
    """An error on the prediction side ends the ingest thread at its next commit and is what the command reports."""
    import phenotyping.analysis.stream as stream
    import phenotyping.ingest._ingest as ingest
    from phenotyping.__main__ import main

    manifest = _write_set(tmp_path / "set", ["disc", "ring"] * 10)
    commits: list[int] = []
    committed = stream.CommittedCells.committed

    def counting(self, ids):
        commits.append(len(ids))
        return committed(self, ids)

    def broken(*a, **k):
        raise ValueError("model exploded")

    monkeypatch.setattr(ingest, "BATCH", 2)
    monkeypatch.setattr(stream.CommittedCells, "committed", counting)
    monkeypatch.setattr(stream, "_prepare", broken)
    rc = main(["predict", "--model", str(model_dir), "--manifest", str(manifest), "--batch-size", "2",
               "--device", "cpu"])
    assert rc == 2 and "model exploded" in capsys.readouterr().err
    assert 0 < len(commits) < 10  # the ingest did not go on to the end


def test_committed_cells_hold_the_ingest_until_released():
    import threading

    from phenotyping.analysis.stream import CommittedCells, StopIngest

    cells = CommittedCells(store=None, sample_id="S", hold_after=4)
    cells.committed([1, 2])  # below the hold: returns at once
    t = threading.Thread(target=cells.committed, args=([3, 4],))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # held
    cells.release()
    t.join(5)
    assert not t.is_alive()
    cells.stop()
    with pytest.raises(StopIngest):
        cells.committed([5])


@pytest.mark.parametrize("p", [1, 2, 37, 1600, 1601])
def test_image_stats_quartiles_are_numpys_percentiles(p):
    """The sort-based quartiles of the domain check's image statistics are np.percentile's numbers exactly (ties,
    odd and even lengths, NaN)."""
    from phenotyping.analysis.domain import _quartiles, image_stats

    rng = np.random.default_rng(p)
    for x in (rng.normal(680, 6, size=(6, 2, p)).round(), rng.integers(0, 3, size=(4, 3, p)).astype(float)):
        assert np.array_equal(_quartiles(x), np.percentile(x, [25, 50, 75], axis=-1))
    x = rng.random((3, 2, p))
    x[1, 0, 0] = np.nan
    assert np.array_equal(_quartiles(x), np.percentile(x, [25, 50, 75], axis=-1), equal_nan=True)
    cells = [rng.integers(0, 9, size=(2, 5, 7)).astype(np.uint16) for _ in range(3)] + [rng.random((2, 3, 4, 4))]
    want = [np.concatenate([np.percentile(c.reshape(2, -1).astype(float), 50, axis=1),
                            np.subtract(*np.percentile(c.reshape(2, -1).astype(float), [75, 25], axis=1)),
                            c.shape[-2:]]) for c in cells]
    assert np.array_equal(image_stats(cells), np.array(want))


def test_bench_first_batch_probe_reports_wall_and_cpu_seconds(model_dir, tmp_path):
    """The start-up bench's `predict --manifest` probe: first batch, end, CPU seconds, on a tiny set."""
    import os

    from phenotyping.analysis.bench import _first_batch

    manifest = _write_set(tmp_path / "set", ["disc", "ring"] * 3)
    root = Path(__file__).resolve().parent.parent
    out = _first_batch(model_dir, manifest, env={**os.environ, "LEUKO_DB_PATH": str(tmp_path / "x.duckdb")}, cwd=root)
    assert out["exit_ok"], out["stderr_tail"]
    assert 0 < out["first_batch_s"] <= out["end_to_end_s"] and out["cpu_s"] > 0


def test_bench_startup_warms_up_then_times_predict():
    """`bench startup`: help and work probes without torch, a warm-up predict on 64 cells, then the timed one."""
    from phenotyping.analysis.bench import startup_bench

    shipped = Path(__file__).resolve().parent.parent / "models" / "jurkat-hybrid"
    out = startup_bench(["samples"], model_dir=shipped, n_cells=20)
    assert out["help"]["samples"]["exit_ok"] and out["non_model_commands_without_torch"] is True
    warm, timed = out["predict_manifest_warmup_64_cells"], out["predict_manifest"]
    assert warm["exit_ok"] and timed["exit_ok"] and timed["cells"] == 20
    assert 0 < timed["first_batch_s"] <= timed["end_to_end_s"]


def test_first_batch_ingest_reads_nothing_more_until_its_commit_is_heard(monkeypatch, tmp_path):
    """ingest_set(first_batch=3): the first commit holds 3 cells, and no fourth file is decoded before on_commit
    has returned for it (a slow consumer there keeps the interpreter); every cell is then ingested as without it."""
    import time

    import phenotyping.ingest._ingest as ingest
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    manifest = _write_set(tmp_path / "set", ["disc", "ring"] * 6)
    decoded: list[str] = []
    decode = ingest.decode_entry

    def counting(entry, **k):
        decoded.append(entry.name)
        return decode(entry, **k)

    heard: list[tuple[int, int]] = []

    def on_commit(ids):
        heard.append((len(ids), len(decoded)))
        time.sleep(0.2 if len(heard) == 1 else 0)

    monkeypatch.setattr(ingest, "decode_entry", counting)
    monkeypatch.setattr(ingest, "BATCH", 4)
    with Store(tmp_path / "s.duckdb", image_dir=tmp_path / "img") as store:
        store.create_sample(Sample(id="S", specimen=Specimen.blood), actor="t")
        with pytest.raises(ValueError, match="first_batch"):
            ingest.ingest_set(store, manifest, "S", actor="t", first_batch=0)
        res = ingest.ingest_set(store, manifest, "S", actor="t", on_commit=on_commit, first_batch=3,
                                expected_channels=2)
    assert heard[0] == (3, 3) and [n for n, _ in heard] == [3, 4, 4, 1] and res.ingested == 12
