"""Training, checkpoints, evaluation and the train/evaluate CLI: a tiny synthetic set, then a real-data slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode, shared_data  # noqa: E402


def _write_set(root: Path, n_per_class: int = 24, seed: int = 0) -> Path:
    """ImageFolder layout: class 'disc' has a bright disc, class 'ring' a bright ring; 2-channel 20×20 TIFFs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:20, :20]
    r = np.hypot(yy - 9.5, xx - 9.5)
    shapes = {"disc": r < 6, "ring": (r > 4) & (r < 7)}
    for cls, mask in shapes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.normal(1000, 50, size=(2, 20, 20))
            img[:, mask] += 3000
            data = encode(np.clip(img, 0, 65535).astype(np.uint16), "tiff")
            (root / cls / f"{cls}-{i:03d}.tif").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from phenotyping.train import TrainConfig, train

    root = _write_set(tmp_path_factory.mktemp("set") / "cells")
    out = tmp_path_factory.mktemp("models") / "tiny"
    card = train(root, "cell_type", out, config=TrainConfig(arch="test_hybrid", epochs=2, seed=1, batch_size=16),
                 log=lambda m: None)
    return root, out, card


def test_model_folder_and_card(trained):
    _, out, card = trained
    assert (out / "checkpoint.pt").is_file() and (out / "model_card.json").is_file() and (out / "split.csv").is_file()
    on_disk = json.loads((out / "model_card.json").read_text())
    assert on_disk["classes"] == ["disc", "ring"]
    assert on_disk["intended_use"] == "research model, not clinically validated"
    for key in ("architecture", "input", "targets", "training", "split", "validation", "calibration", "software"):
        assert key in on_disk
    cal = on_disk["calibration"]
    assert cal["temperature"] > 0 and 0 <= cal["unidentified_threshold"] <= 1
    assert len(on_disk["validation"]["confusion"]) == 2
    assert sum(on_disk["training"]["class_proportions"].values()) == pytest.approx(1.0)
    assert len(on_disk["input"]["normalisation"]["mean"]) == 2


def test_checkpoint_round_trip_reproduces_outputs(trained):
    from phenotyping.checkpoint import load_model_dir
    from phenotyping.models import create_model

    _, out, card = trained
    a, b = load_model_dir(out), load_model_dir(out)
    x = torch.randn(3, 2, 20, 20, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        oa, ob = a.model(x), b.model(x)
    assert torch.equal(oa.logits, ob.logits)
    fresh = create_model(card["architecture"]["name"], **card["architecture"]["config"]).eval()
    with torch.inference_mode():
        assert not torch.allclose(fresh(x).logits, oa.logits)   # the weights, not the init, were restored


def test_training_is_reproducible_on_cpu(trained, tmp_path):
    from phenotyping.checkpoint import load_model_dir
    from phenotyping.train import TrainConfig, train

    root, out, _ = trained
    train(root, "cell_type", tmp_path / "again", config=TrainConfig(arch="test_hybrid", epochs=2, seed=1,
                                                                     batch_size=16), log=lambda m: None)
    sa = load_model_dir(out).model.state_dict()
    sb = load_model_dir(tmp_path / "again").model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_missing_checkpoint_names_what_exists(trained, tmp_path):
    from phenotyping.checkpoint import load_model_dir

    _, out, _ = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_card.json").write_text((out / "model_card.json").read_text())
    with pytest.raises(FileNotFoundError, match="model_card.json"):
        load_model_dir(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_dir(tmp_path / "nowhere")


def test_classical_model_round_trip(trained, tmp_path):
    from phenotyping.checkpoint import load_model_dir
    from phenotyping.train import TrainConfig, train

    root, _, _ = trained
    card = train(root, "cell_type", tmp_path / "knn", config=TrainConfig(arch="test_knn", seed=0), log=lambda m: None)
    assert card["validation"]["accuracy"] > 0.8
    lm = load_model_dir(tmp_path / "knn")
    assert lm.model(np.zeros((1, 2, 20, 20), np.float32)).logits.shape == (1, 2)


def test_evaluate_cli_prints_the_contract_keys(trained, capsys):
    from phenotyping.__main__ import main

    root, out, _ = trained
    assert main(["evaluate", "--model", str(out), "--manifest", str(root), "--label-column", "cell_type"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"n", "accuracy", "balanced_accuracy", "macro_f1", "kappa", "per_class", "confusion",
                        "predicted_proportions", "true_proportions", "targets"}
    assert res["n"] == 48 and set(res["per_class"]["disc"]) == {"precision", "recall", "f1", "n"}
    assert sum(map(sum, res["confusion"])) == 48


def test_evaluate_refuses_unknown_labels(trained, tmp_path, capsys):
    from phenotyping.__main__ import main

    root, out, _ = trained
    other = _write_set(tmp_path / "other", n_per_class=2)
    (other / "ring").rename(other / "blob")
    assert main(["evaluate", "--model", str(out), "--manifest", str(other), "--label-column", "cell_type"]) == 2
    err = capsys.readouterr().err
    assert "'blob'" in err and "disc" in err
    assert main(["evaluate", "--model", str(out), "--manifest", str(other), "--label-column", "cell_type",
                 "--drop-unknown"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


@pytest.mark.slow
def test_two_epochs_on_real_jurkat_slice_beat_chance(tmp_path, capsys):
    from phenotyping.__main__ import main

    manifest = shared_data("ifc-jurkat-labelfree", "manifest.csv")
    out = tmp_path / "jurkat"
    assert main(["train", "--manifest", str(manifest), "--label-column", "phase", "--target-columns", "dna_content",
                 "--arch", "hybrid", "--epochs", "2", "--seed", "0", "--fraction", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--manifest", str(manifest), "--split", "test"]) == 0
    res = json.loads(capsys.readouterr().out)
    majority = max(res["true_proportions"].values())
    assert res["n"] > 300
    assert res["accuracy"] > majority + 0.05            # better than always answering the largest class
    assert res["balanced_accuracy"] > 1 / 7 + 0.05      # better than guessing among 7 phases
    assert res["targets"]["dna_content"]["pearson"] > 0.5
