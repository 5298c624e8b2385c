"""Dihedral test-time augmentation (models/tta.py): the views a model's channels allow, the transforms on normalised
inputs, the averaging wrapper, and `predict --tta` / `evaluate --tta`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode, save_tiny_model, synthetic_cell  # noqa: E402

from phenotyping.models.preprocess import ChannelSpec, Preprocess, channel_specs  # noqa: E402
from phenotyping.analysis.inference import tta_version, version_tta_views  # noqa: E402
from phenotyping.models.tta import DihedralTTA, ViewTransform, dihedral_views, tta_info  # noqa: E402

CLASSES = ["disc", "ring"]


def _names(specs) -> list[str]:
    return [v.name for v in dihedral_views(specs)]


def test_symmetric_channels_get_the_eight_dihedral_views():
    names = _names(channel_specs(["brightfield", "darkfield"]))
    assert len(names) == 8 == len(set(names)) and names[0] == "identity"
    assert {"rot90", "rot90+rot90+rot90", "hflip", "hflip+rot90"} <= set(names)


def test_dpc_gets_the_flips_and_their_composition_only():
    assert _names(channel_specs(["dpc_lr"])) == ["identity", "hflip", "vflip", "hflip+vflip"]
    assert _names(channel_specs(["brightfield", "dpc_lr"])) == ["identity", "hflip", "vflip", "hflip+vflip"]


def test_half_pupil_images_swap_and_a_lone_half_loses_its_flip():
    assert _names(channel_specs(["DPC_Left", "DPC_Right"])) == ["identity", "hflip", "vflip", "hflip+vflip"]
    assert _names(channel_specs(["DPC_Left", "Brightfield"])) == ["identity", "vflip"]
    assert _names(channel_specs(["led_119"])) == ["identity"]
    pre = Preprocess(8, ["led_119"], [0.0], [1.0], [vars(s) for s in channel_specs(["led_119"])])
    with pytest.raises(ValueError, match="no flip or rotation keeps the meaning"):
        tta_info("dihedral", pre)
    with pytest.raises(ValueError, match="not one of none, dihedral"):
        tta_info("d4", pre)


def _raw_view(raw: np.ndarray, ops, specs: list[ChannelSpec]) -> np.ndarray:
    """A view applied in raw intensity, channel by channel, as the specs describe (the reference)."""
    index = {s.name: i for i, s in enumerate(specs)}
    x = raw
    for op in ops:
        if op == "rot90":
            x = np.rot90(x, 1, axes=(-2, -1))
            continue
        g = np.flip(x, -1 if op == "hflip" else -2)
        out = np.empty_like(g)
        for c, s in enumerate(specs):
            rule = getattr(s, op)
            out[:, c] = -g[:, c] if rule == "negate" else g[:, index[rule[5:]]] if rule.startswith("swap:") else g[:, c]
        x = out
    return np.ascontiguousarray(x)


@pytest.mark.parametrize("mode", ["dataset", "per_image"])
@pytest.mark.parametrize("channels", [["dpc_lr", "brightfield"], ["DPC_Left", "DPC_Right", "DF_50"],
                                      ["brightfield", "darkfield"]])
@pytest.mark.parametrize("shape", [(3, 12, 12), (3, 4, 12, 12)], ids=["2d", "3d"])
def test_a_view_of_the_normalised_input_is_the_normalised_raw_view(mode, channels, shape):
    rng = np.random.default_rng(1)
    specs = channel_specs(channels)
    c = len(channels)
    raw = rng.normal(0, 1, size=(2, c, *shape[1:])) * rng.uniform(5, 50, (1, c) + (1,) * (len(shape) - 1)) + \
        rng.uniform(-200, 800, (1, c) + (1,) * (len(shape) - 1))
    raw = raw.astype(np.float32)
    pre = Preprocess(shape[-1], channels, list(rng.uniform(-100, 500, c)), list(rng.uniform(3, 60, c)),
                     [vars(s) for s in specs], mode)
    xn = torch.from_numpy(pre.normalise(raw, batched=True))
    transform = ViewTransform(pre)
    views = dihedral_views(specs)
    assert len(views) in (4, 8)
    for view in views:
        want = pre.normalise(_raw_view(raw, view.ops, specs), batched=True)
        got = transform(xn, view).numpy()
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=f"{mode} {channels} {view.name}")
    if any(s.hflip == "negate" for s in specs):  # the negation of a raw channel in dataset mode, written out
        h = next(v for v in views if v.ops == ("hflip",))
        m, sd = pre.mean[0], pre.std[0]
        np.testing.assert_allclose(transform(xn, h)[:, 0].numpy(),
                                   -np.flip(xn[:, 0].numpy(), -1) - 2 * m / sd, atol=2e-4)


def _tiny_net(in_chans: int = 2, dims: int = 2):
    from phenotyping.models import create_model

    torch.manual_seed(0)
    name = "test_hybrid3d" if dims == 3 else "test_hybrid"
    return create_model(name, in_chans=in_chans, num_classes=3, num_targets=1, img_size=16).eval()


class _Invariant(torch.nn.Module):
    """``net`` over the input averaged across the views: exactly invariant to them."""

    def __init__(self, net, pre):
        super().__init__()
        self.net, self.transform, self.views = net, ViewTransform(pre), dihedral_views(pre.specs())

    def forward(self, x):
        return self.net(sum(self.transform(x, v) for v in self.views) / len(self.views))


def _pre(channels, size=16, dims=2):
    specs = channel_specs(channels)
    return Preprocess(size, channels, [100.0 * (i + 1) for i in range(len(channels))],
                      [10.0 * (i + 2) for i in range(len(channels))], [vars(s) for s in specs])


@pytest.mark.parametrize("channels", [["brightfield", "darkfield"], ["dpc_lr", "brightfield"]])
def test_the_wrapper_leaves_an_invariant_model_unchanged(channels):
    pre = _pre(channels)
    inv = _Invariant(_tiny_net(), pre)
    x = torch.randn(3, 2, 16, 16)
    with torch.inference_mode():
        plain, tta = inv(x), DihedralTTA(inv, pre)(x)
    for a, b in zip(plain[:3], tta[:3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels,dims", [(["brightfield", "darkfield"], 2), (["dpc_lr", "brightfield"], 2),
                                           (["brightfield", "darkfield"], 3)])
def test_tta_differs_from_one_view_but_not_between_views_of_the_input(channels, dims):
    pre = _pre(channels)
    net = _tiny_net(dims=dims)
    tta = DihedralTTA(net, pre).eval()
    x = torch.randn(3, 2, *((4,) if dims == 3 else ()), 16, 16)
    with torch.inference_mode():
        ref, plain = tta(x), net(x)
        assert not torch.allclose(ref.logits, plain.logits, atol=1e-4)
        for view in tta.views:
            o = tta(tta.transform(x, view))
            for a, b in zip(ref[:3], o[:3]):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_versions_say_how_many_views():
    assert tta_version("m-1", {"mode": "none", "views": 1}) == "m-1"
    assert tta_version("m-1", {"mode": "dihedral", "views": 8}) == "m-1+tta8"
    assert [version_tta_views(v) for v in ("m-1", "m-1+tta8", "m-1+tta4", "+tta8", "m+ttax")] == [1, 8, 4, 1, 1]


def test_the_version_check_imports_no_torch():
    """The app's job thread refuses a mixed sample before the worker process runs, and imports no torch for it."""
    import subprocess
    import sys

    code = ("import sys; from phenotyping.analysis.inference import _refuse_mixed_tta as r\n"
            "class S:\n    def prediction_versions(self, s, m): return {'m+tta8': 3}\n"
            "try:\n    r(S(), 'S1', 'm', 'm')\nexcept ValueError as e:\n    print('refused', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "refused False"


# -- predict and evaluate -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", CLASSES)


def _manifest(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(3)
    root.mkdir()
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path", "label", "cd16"])
        for i, kind in enumerate(["disc", "ring"] * (n // 2)):
            (root / f"c{i}.tif").write_bytes(encode(synthetic_cell(kind, rng), "tiff"))
            w.writerow([f"k{i}", f"c{i}.tif", kind, 4.0 + i])
    return root / "manifest.csv"


def test_predict_manifest_with_tta_records_it_and_its_version(model_dir, tmp_path, capsys):
    from phenotyping.__main__ import main

    manifest = _manifest(tmp_path / "set")
    got = {}
    for mode in ("none", "dihedral"):
        out = tmp_path / f"{mode}.csv"
        assert main(["predict", "--model", str(model_dir), "--manifest", str(manifest), "--bootstrap", "0",
                     "--device", "cpu", "--tta", mode, "--out", str(out)]) == 0
        got[mode] = (json.loads(capsys.readouterr().out), list(csv.DictReader(out.open())))
    plain, tta = got["none"][0], got["dihedral"][0]
    assert plain["tta"] == {"mode": "none", "views": 1} and plain["run"]["model_version"] == "tiny-0001"
    assert tta["tta"] == {"mode": "dihedral", "views": 8} == tta["run"]["tta"]
    assert tta["run"]["model_version"] == "tiny-0001+tta8"
    p_plain = [float(r["p_disc"]) for r in got["none"][1]]
    p_tta = [float(r["p_disc"]) for r in got["dihedral"][1]]
    assert len(p_tta) == 6 and not np.allclose(p_plain, p_tta, atol=1e-6)


def _fill(store, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    cells = []
    for i, kind in enumerate(["disc", "ring"] * (n // 2)):
        digest, rel = store.put_blob(encode(synthetic_cell(kind, rng), "tiff"), suffix=".tif")
        cells.append({"cell_key": f"c{i:03d}", "content_hash": digest, "source_file": f"c{i:03d}.tif",
                      "blob_path": rel, "shape": (2, 20, 20), "dtype": "uint16"})
    store.add_cells("S1", cells, actor="tester")


def test_predict_sample_with_tta_stores_its_version_and_refuses_to_mix(store, sample, model_dir):
    from phenotyping.analysis.inference import predict_sample

    _fill(store)
    run = predict_sample(store, "S1", model_dir, device="cpu", batch_size=4, tta="dihedral")
    assert run.tta == {"mode": "dihedral", "views": 8} and run.model_version == "tiny-0001+tta8"
    assert {p.model_version for p in store.list_predictions("S1", "tiny-0001")} == {"tiny-0001+tta8"}
    assert store.prediction_versions("S1", "tiny-0001") == {"tiny-0001+tta8": 6}
    assert store.domain_check("S1", "tiny-0001")["model_version"] == "tiny-0001+tta8"
    with pytest.raises(ValueError, match="made another way .*6 cell\\(s\\) as version 'tiny-0001\\+tta8'"):
        predict_sample(store, "S1", model_dir, device="cpu", tta="none")
    again = predict_sample(store, "S1", model_dir, device="cpu", tta="dihedral")  # the same way: resumes
    assert again.predicted == 0 and again.already_done == 6


def test_predict_cli_sample_with_tta(model_dir, tmp_path, capsys, monkeypatch):
    from argon2 import PasswordHasher

    from phenotyping.__main__ import main
    from phenotyping.auth import create_first_admin
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.settings import Settings
    from phenotyping.store import Store

    monkeypatch.delenv("LEUKO_PASSWORD", raising=False)
    monkeypatch.setattr("phenotyping.auth._hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    db = tmp_path / "lab.duckdb"
    with Store(db, image_dir=Settings(db_path=db).image_dir()) as store:
        create_first_admin(store, "admin", "correct horse battery staple 1")
        store.create_sample(Sample(id="S1", specimen=Specimen.blood), actor="admin")
        _fill(store)
    (tmp_path / "pw").write_text("correct horse battery staple 1\n")
    rc = main(["predict", "--model", str(model_dir), "--sample", "S1", "--db", str(db), "--tta", "dihedral",
               "--bootstrap", "0", "--device", "cpu", "--user", "admin", "--user-password-file", str(tmp_path / "pw")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] == {"mode": "dihedral", "views": 8}
    with Store(db, image_dir=Settings(db_path=db).image_dir(), read_only=True) as store:
        assert store.prediction_versions("S1", "tiny-0001") == {"tiny-0001+tta8": 6}


def test_evaluate_with_tta_uses_the_wrapper(model_dir, tmp_path):
    from phenotyping.training.evaluate import evaluate_model_dir

    manifest = _manifest(tmp_path / "set")
    plain = evaluate_model_dir(model_dir, manifest, label_column="label", log=lambda m: None)
    tta = evaluate_model_dir(model_dir, manifest, label_column="label", log=lambda m: None, tta="dihedral")
    assert plain["tta"] == {"mode": "none", "views": 1} and tta["tta"] == {"mode": "dihedral", "views": 8}
    assert plain["n"] == tta["n"] == 6
    assert tta["targets"]["cd16"]["mae"] != pytest.approx(plain["targets"]["cd16"]["mae"], abs=1e-6)


def test_bench_times_the_model_and_the_pipeline_with_tta(model_dir):
    from phenotyping.analysis.bench import end_to_end, model_speed
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.models.tta import with_tta

    lm = load_model_dir(model_dir)
    speed = model_speed(with_tta(lm.model, lm.preprocess, "dihedral"), (2, 20, 20), batch_size=4, min_seconds=0.0,
                        warmup=0)
    assert speed.arch == "test_hybrid" and speed.cells_per_s > 0
    e2e = end_to_end(model_dir, n_cells=4, batch_size=4, tta="dihedral")
    assert e2e["tta"]["views"] == 8 and e2e["tta"]["model_version"] == "tiny-0001+tta8"
    assert e2e["tta"]["predicted"] == e2e["predicted"]
    assert "tta" not in end_to_end(model_dir, n_cells=4, batch_size=4)  # a plain bench's record is unchanged


def test_calibration_metrics_on_four_cells_worked_by_hand():
    from phenotyping.training.calibration import calibration_metrics

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    m = calibration_metrics(probs, np.array([0, 1, 1, 1]), threshold=0.65)
    # one cell per bin: |1 − 0.9|, |0 − 0.6|, |1 − 0.7|, |1 − 0.8|, each weighted 1/4
    assert m["ece"] == pytest.approx(0.3) and m["accuracy"] == 0.75 and m["mean_confidence"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-np.log([0.9, 0.4, 0.7, 0.8]).mean())
    assert m["below_threshold"] == 0.25 and m["accuracy_above_threshold"] == 1.0


def test_the_app_worker_refuses_a_sample_predicted_with_tta(store, sample, model_dir):
    """The app's prediction job runs without TTA: on a sample the CLI predicted with it, it stops before the worker
    process is started (the job thread's check, as predict_sample's)."""
    from phenotyping.analysis.inference import predict_sample
    from phenotyping.jobs.worker import ProcessWorker

    _fill(store)
    predict_sample(store, "S1", model_dir, device="cpu", tta="dihedral")
    worker = ProcessWorker()
    with pytest.raises(ValueError, match="without test-time augmentation, version 'tiny-0001'"):
        worker.predict(store, "S1", model_dir, device="cpu")
    assert worker.pid is None and worker.starts == 0


def test_a_refused_input_still_says_which_tta_was_asked_for(store, sample, model_dir):
    from phenotyping.analysis.inference import predict_sample

    rng = np.random.default_rng(0)
    img = np.concatenate([synthetic_cell("disc", rng), synthetic_cell("ring", rng)[:1]])  # 3 channels
    digest, rel = store.put_blob(encode(img, "tiff"), suffix=".tif")
    store.add_cells("S1", [{"cell_key": "c3", "content_hash": digest, "source_file": "c3.tif", "blob_path": rel,
                            "shape": (3, 20, 20), "dtype": "uint16"}], actor="tester")
    from phenotyping.models.checkpoint import load_model_dir

    lm = load_model_dir(model_dir)
    lm.card["input"] = {"channels": ["brightfield", "darkfield"], "dims": 2}  # what input_check compares with
    run = predict_sample(store, "S1", lm, device="cpu", tta="dihedral")
    assert run.predicted == 0 and run.domain_check["in_distribution"] is False
    assert run.tta == {"mode": "dihedral", "views": 8} and run.model_version == "tiny-0001+tta8"
