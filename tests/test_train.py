"""Training, checkpoints, evaluation and the train/evaluate CLI: a tiny synthetic set, then a real-data slice."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode, shared_data  # noqa: E402


GPL3_HEADER = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies
 of this license document, but changing it is not allowed.
"""


def _cell(rng: np.random.Generator, cls: str, radius: float = 6.0) -> np.ndarray:
    """2-channel 20×20 uint16 cell: 'disc' a bright disc, 'ring' a bright ring of outer radius ``radius``."""
    yy, xx = np.mgrid[:20, :20]
    r = np.hypot(yy - 9.5, xx - 9.5)
    mask = r < radius if cls == "disc" else (r > radius - 2.5) & (r < radius + 1)
    img = rng.normal(1000, 50, size=(2, 20, 20))
    img[:, mask] += 3000
    return np.clip(img, 0, 65535).astype(np.uint16)


def _write_set(root: Path, n_per_class: int = 24, seed: int = 0) -> Path:
    """ImageFolder layout (disc/, ring/) of 2-channel 20×20 TIFFs. Both folders use the same file names
    (``cell-000.tif``…), so cell ids must include the class folder to stay unique."""
    rng = np.random.default_rng(seed)
    for cls in ("disc", "ring"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            (root / cls / f"cell-{i:03d}.tif").write_bytes(encode(_cell(rng, cls), "tiff"))
    return root


def _write_manifest_set(root: Path, n: int = 64, seed: int = 0, *, random_labels: bool = False) -> Path:
    """manifest.csv with cell_id, path, cell_type, 'size' (disc/ring outer radius² in px², positive) and 'slide'
    (8 slides, each holding both classes). ``random_labels`` draws the label independently of the image."""
    rng = np.random.default_rng(seed)
    (root / "cells").mkdir(parents=True)
    lines = ["cell_id,path,cell_type,size,slide"]
    for i in range(n):
        cls = ("disc", "ring")[i % 2]
        radius = float(rng.uniform(4.0, 8.0))
        (root / "cells" / f"c{i:03d}.tif").write_bytes(encode(_cell(rng, cls, radius), "tiff"))
        label = ("disc", "ring")[int(rng.integers(2))] if random_labels else cls
        lines.append(f"c{i:03d},cells/c{i:03d}.tif,{label},{radius ** 2:.3f},s{(i // 2) % 8}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def _spy_on_saves(mp: pytest.MonkeyPatch) -> list:
    """Record the in-memory model each ``save_model_dir`` call writes (train imports it at call time)."""
    import phenotyping.models.checkpoint as ck

    saved: list = []
    real = ck.save_model_dir

    def spy(out, model, card, **kw):
        saved.append(model)
        return real(out, model, card, **kw)

    mp.setattr(ck, "save_model_dir", spy)
    return saved


@dataclass
class Trained:
    root: Path
    out: Path
    card: dict
    model: object          # the in-memory model train() saved


def _train(root, out, *, target_columns=(), group_column=None, **cfg) -> Trained:
    from phenotyping.training.train import TrainConfig, train

    with pytest.MonkeyPatch.context() as mp:
        saved = _spy_on_saves(mp)
        card = train(root, "cell_type", out, target_columns=target_columns, group_column=group_column,
                     config=TrainConfig(**cfg), log=lambda m: None)
    assert len(saved) == 1
    return Trained(Path(root), Path(out), card, saved[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    base = tmp_path_factory.mktemp("set")
    (base / "LICENSE").write_text(GPL3_HEADER)
    root = _write_set(base / "cells")
    return _train(root, tmp_path_factory.mktemp("models") / "tiny", arch="test_hybrid", epochs=2, seed=1,
                  batch_size=16)


@pytest.fixture(scope="module")
def trained_reg(tmp_path_factory) -> Trained:
    """A model with a log-transformed regression target, trained through the CLI."""
    from phenotyping.__main__ import main

    manifest = _write_manifest_set(tmp_path_factory.mktemp("regset"))
    out = tmp_path_factory.mktemp("models") / "reg"
    with pytest.MonkeyPatch.context() as mp:
        saved = _spy_on_saves(mp)
        assert main(["train", "--manifest", str(manifest), "--label-column", "cell_type", "--target-columns", "size",
                     "--log-targets", "size", "--arch", "test_hybrid", "--epochs", "2", "--batch-size", "16",
                     "--out", str(out)]) == 0
    return Trained(manifest, out, json.loads((out / "model_card.json").read_text()), saved[0])


def _inputs(lm, paths) -> torch.Tensor:
    from phenotyping.training.data import load_images

    return torch.from_numpy(lm.preprocess.normalise(load_images(paths, lm.preprocess.img_size), batched=True))


def test_model_folder_and_card(trained):
    out = trained.out
    assert (out / "checkpoint.pt").is_file() and (out / "model_card.json").is_file() and (out / "split.csv").is_file()
    on_disk = json.loads((out / "model_card.json").read_text())
    assert on_disk == json.loads(json.dumps(trained.card))
    assert on_disk["classes"] == ["disc", "ring"]
    assert on_disk["intended_use"] == "research model, not clinically validated"
    for key in ("architecture", "input", "targets", "training", "split", "validation", "calibration", "software"):
        assert key in on_disk
    cal = on_disk["calibration"]
    assert cal["temperature"] > 0 and 0 <= cal["unidentified_threshold"] <= 1
    assert len(on_disk["validation"]["confusion"]) == 2
    assert sum(on_disk["training"]["class_proportions"].values()) == pytest.approx(1.0)
    assert len(on_disk["input"]["normalisation"]["mean"]) == 2
    assert on_disk["training"]["loss_weights"]["kind"] == "uncertainty"


def test_card_names_the_data_licence_and_notes_copyleft(trained):
    t = trained.card["training"]
    assert t["data_licence"].startswith("GPL-3.0 (from ") and t["data_licence"].endswith("LICENSE)")
    terms = t["data_licence_terms"]
    assert terms["spdx"] == "GPL-3.0" and terms["copyleft"] is True
    assert "copyleft" in terms["note"] and "not legal advice" in terms["note"]


@pytest.mark.parametrize("text, spdx", [
    (GPL3_HEADER, "GPL-3.0"),
    ("GNU LESSER GENERAL PUBLIC LICENSE\n Version 2.1, February 1999\n", "LGPL-2.1"),
    ("This program is free software: you can redistribute it and/or modify it under the terms of the GNU Affero "
     "General Public License as published by the Free Software Foundation, either version 3 of the License, or\n"
     "(at your option) any later version.", "AGPL-3.0-or-later"),
    ("BSD 3-Clause License\n\nRedistribution and use in source and binary forms, with or without modification, are "
     "permitted provided that ... 3. Neither the name of the copyright holder nor the names of its contributors may "
     "be used to endorse or promote products", "BSD-3-Clause"),
    ("Redistribution and use in source and binary forms, with or without modification, are permitted provided "
     "that the following conditions are met: 1. ... 2. ... THIS SOFTWARE IS PROVIDED", "BSD-2-Clause"),
    ("MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy of this software",
     "MIT"),
    ("                    Apache License\n              Version 2.0, January 2004", "Apache-2.0"),
    # a bundle that starts with BSD and mentions the GPL later (numpy, scipy) is BSD
    ("Redistribution and use in source and binary forms ... Neither the name of the NumPy Developers nor ...\n\n"
     "Bundled: libgfortran, GNU GENERAL PUBLIC LICENSE Version 3, 29 June 2007", "BSD-3-Clause"),
    ("Creative Commons Attribution-ShareAlike 4.0 International Public License", "CC-BY-SA-4.0"),
    ("SPDX-License-Identifier: MPL-2.0", "MPL-2.0"),
    ("Some words about the data, no licence", None),
])
def test_detect_licence(text, spdx):
    from phenotyping.training.licence import detect_licence, licence_terms

    assert detect_licence(text) == spdx
    copyleft = spdx is not None and spdx.split("-")[0] in ("GPL", "LGPL", "AGPL", "MPL") or spdx == "CC-BY-SA-4.0"
    assert licence_terms(spdx)["copyleft"] is copyleft


def test_image_folder_ids_are_unique_across_class_folders(trained):
    from phenotyping.training.data import load_rows

    rows = load_rows(trained.root, label_column="cell_type")
    ids = [r["cell_id"] for r in rows]
    assert "disc/cell-000.tif" in ids and "ring/cell-000.tif" in ids and len(set(ids)) == len(ids) == 48
    with (trained.out / "split.csv").open() as fh:
        split_ids = [r["cell_id"] for r in csv.DictReader(fh)]
    assert sorted(split_ids) == sorted(ids)


def test_manifest_cell_ids_are_kept_and_must_be_unique(tmp_path):
    from phenotyping.training.data import load_rows
    from phenotyping.training.train import TrainConfig, train

    manifest = _write_manifest_set(tmp_path / "set", n=8)
    assert [r["cell_id"] for r in load_rows(manifest)][:2] == ["c000", "c001"]
    lines = manifest.read_text().splitlines()
    lines[2] = lines[2].replace("c001,", "c000,", 1)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"'c000' is used twice.*c000\.tif.*c001\.tif"):
        train(manifest, "cell_type", tmp_path / "m", config=TrainConfig(arch="test_knn"), log=lambda m: None)


def test_old_split_csv_with_bare_stems_still_selects_cells(trained, tmp_path):
    from phenotyping.errors import PhenotypingError
    from phenotyping.training.evaluate import _select_split
    from phenotyping.training.data import load_rows

    rows = load_rows(trained.root, label_column="cell_type")
    old = tmp_path / "old"
    old.mkdir()
    (old / "split.csv").write_text("cell_id,split\ncell-000,val\ncell-001,train\n")
    with pytest.raises(PhenotypingError, match="more than one class folder"):   # disc/ and ring/ both hold cell-000
        _select_split(rows, old, "val")
    unique = [r for r in rows if r["cell_type"] == "disc"]
    assert [r["cell_id"] for r in _select_split(unique, old, "val")] == ["disc/cell-000.tif"]


def test_reloaded_model_reproduces_the_trained_model(trained):
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.models import create_model

    lm = load_model_dir(trained.out)
    x = _inputs(lm, sorted(trained.root.glob("*/cell-00[0-4].tif")))
    mem = trained.model.eval()
    with torch.inference_mode():
        a, b = mem(x), lm.model(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)
    assert all(torch.equal(a.gates[k], b.gates[k]) for k in a.gates)
    fresh = create_model(trained.card["architecture"]["name"], **trained.card["architecture"]["config"]).eval()
    with torch.inference_mode():
        assert not torch.allclose(fresh(x).logits, b.logits)   # the weights, not the init, were restored


def test_evaluate_on_the_validation_split_reproduces_the_card(trained):
    from phenotyping.training.evaluate import evaluate_model_dir

    res = evaluate_model_dir(trained.out, trained.root, split="val", log=lambda m: None)
    val = trained.card["validation"]
    assert res["n"] == trained.card["split"]["n"]["val"] == val["n"]
    assert res["accuracy"] == val["accuracy"] and res["confusion"] == val["confusion"]
    assert res["macro_f1"] == val["macro_f1"]


def test_training_is_reproducible_on_cpu(trained, tmp_path):
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.training.train import TrainConfig, train

    train(trained.root, "cell_type", tmp_path / "again",
          config=TrainConfig(arch="test_hybrid", epochs=2, seed=1, batch_size=16), log=lambda m: None)
    sa = load_model_dir(trained.out).model.state_dict()
    sb = load_model_dir(tmp_path / "again").model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_missing_checkpoint_names_what_exists(trained, tmp_path):
    from phenotyping.models.checkpoint import load_model_dir

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_card.json").write_text((trained.out / "model_card.json").read_text())
    with pytest.raises(FileNotFoundError, match="model_card.json"):
        load_model_dir(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_dir(tmp_path / "nowhere")


# ---------------------------------------------------------------- regression targets
def test_target_scaling_is_stored_and_inverts_predictions(trained_reg):
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.training.data import load_rows, parse_targets
    from phenotyping.training.evaluate import evaluate_model_dir

    card = trained_reg.card
    rows = load_rows(trained_reg.root)
    with (trained_reg.out / "split.csv").open() as fh:
        train_ids = {r["cell_id"] for r in csv.DictReader(fh) if r["split"] == "train"}
    train_sizes = parse_targets([r for r in rows if r["cell_id"] in train_ids], ["size"])[:, 0]
    (tgt,) = card["targets"]
    assert tgt["name"] == "size" and tgt["log"] is True
    assert tgt["mean"] == pytest.approx(np.log(train_sizes).mean())
    assert tgt["std"] == pytest.approx(np.log(train_sizes).std())
    lm = load_model_dir(trained_reg.out)
    assert (lm.targets.names, lm.targets.log, lm.targets.mean, lm.targets.std) == (
        ["size"], [True], [tgt["mean"]], [tgt["std"]])
    # evaluate's MAE is in manifest units: exp(z · std + mean) of the network's standardised output z
    res = evaluate_model_dir(trained_reg.out, trained_reg.root, split="test", log=lambda m: None)
    test_rows = [r for r in rows if r["cell_id"] in _split_ids(trained_reg.out, "test")]
    with torch.inference_mode():
        z = lm.model(_inputs(lm, [r["path"] for r in test_rows])).regression[:, 0].double().numpy()
    true = parse_targets(test_rows, ["size"])[:, 0]
    expect = np.abs(np.exp(z * tgt["std"] + tgt["mean"]) - true).mean()
    assert res["targets"]["size"]["mae"] == pytest.approx(expect, rel=1e-9)
    assert abs(np.abs(z - true).mean() - expect) > 1.0            # the raw output is not in manifest units


def _split_ids(model_dir: Path, split: str) -> set[str]:
    with (model_dir / "split.csv").open() as fh:
        return {r["cell_id"] for r in csv.DictReader(fh) if r["split"] == split}


def test_regression_ccc_is_the_agreement_module_ccc():
    from phenotyping.agreement.stats import ccc
    from phenotyping.training.evaluate import regression_metrics

    true = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    pred = np.array([[1.2], [1.9], [3.3], [3.8], [5.4]])
    m = regression_metrics(true, pred, ["t"])["t"]
    x, y = true[:, 0], pred[:, 0]
    lin = 2 * np.mean((x - x.mean()) * (y - y.mean())) / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert m["ccc"] == pytest.approx(lin, rel=1e-12) == ccc(x, y).ccc


# ---------------------------------------------------------------- training options
def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path):
    """Labels independent of the images: validation stops improving; the saved model is the best epoch's."""
    import phenotyping.models.forward as ev
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.training.train import TrainConfig, train

    manifest = _write_manifest_set(tmp_path / "set", n=64, random_labels=True)
    logs: list[str] = []
    states: list[dict] = []          # the weights at each validation pass: one per epoch, then the final model's
    real = ev.predict_arrays

    def spy(model, x, **kw):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, x, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "predict_arrays", spy)
        card = train(manifest, "cell_type", tmp_path / "m", log=logs.append, config=TrainConfig(
            arch="test_cnn", epochs=20, patience=2, seed=0, batch_size=16, lr=1e-2, test_fraction=0.0))
    t = card["training"]
    n = t["epochs_run"]
    assert n < 20 and any(m.startswith("early stop") for m in logs)
    assert t["best_epoch"] == n - 2 and len(states) >= n + 1

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert all(same(s, states[n]) for s in states[n + 1:])  # later passes (the card's domain section): final model

    assert same(states[n], states[t["best_epoch"] - 1])             # restored: the best epoch's weights …
    assert not same(states[n], states[n - 1])                       # … not the last epoch's
    assert same(load_model_dir(tmp_path / "m").model.state_dict(), states[n])
    best = t["history"][t["best_epoch"] - 1]
    assert card["validation"]["macro_f1"] == pytest.approx(best["val_macro_f1"])
    assert card["validation"]["accuracy"] == pytest.approx(best["val_accuracy"])


def test_group_column_keeps_every_group_in_one_split(tmp_path, capsys):
    from phenotyping.__main__ import main
    from phenotyping.training.data import load_rows

    manifest = _write_manifest_set(tmp_path / "set", n=64)
    out = tmp_path / "m"
    assert main(["train", "--manifest", str(manifest), "--label-column", "cell_type", "--group-column", "slide",
                 "--arch", "test_cnn", "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    slide = {r["cell_id"]: r["slide"] for r in load_rows(manifest)}
    where: dict[str, set[str]] = {}
    with (out / "split.csv").open() as fh:
        for r in csv.DictReader(fh):
            where.setdefault(slide[r["cell_id"]], set()).add(r["split"])
    assert len(where) == 8 and all(len(v) == 1 for v in where.values())
    assert {s for v in where.values() for s in v} == {"train", "val", "test"}
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["group_column"] == "slide" and "slide" in card["split"]["method"]


def test_fixed_loss_through_train(tmp_path, capsys):
    from phenotyping.__main__ import main

    manifest = _write_manifest_set(tmp_path / "set", n=48)
    assert main(["train", "--manifest", str(manifest), "--label-column", "cell_type", "--target-columns", "size",
                 "--loss", "fixed", "--arch", "test_cnn", "--epochs", "2", "--out", str(tmp_path / "m")]) == 0
    summary = json.loads(capsys.readouterr().out)
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card["training"]["config"]["loss"] == "fixed"
    assert card["training"]["loss_weights"] == {"kind": "fixed", "w_cls": 1.0, "w_reg": 1.0}
    assert summary["validation_targets"]["size"]["mae"] is not None


def test_train_writes_the_specimens_section_and_refuses_a_class_the_model_lacks(trained, tmp_path, capsys):
    """Default from the class names (disc/ring are no blood or BAL cells: none declared); ``--specimen`` declares
    one with the roles from the names; a section naming a class the model lacks stops before any training."""
    from phenotyping.__main__ import main

    assert trained.card["specimens"] == {}
    base = ["train", "--manifest", str(trained.root), "--label-column", "cell_type", "--arch", "test_knn"]
    assert main([*base, "--out", str(tmp_path / "a"), "--specimen", "blood"]) == 0
    assert json.loads(capsys.readouterr().out)["specimens"] == {"blood": {"counted": ["disc", "ring"]}}
    bad = json.dumps({"balf": {"counted": ["disc", "ring", "macrophage"]}})
    assert main([*base, "--out", str(tmp_path / "b"), "--specimen-classes", bad]) == 2
    assert "'macrophage', which is not one of the model's classes ['disc', 'ring']" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("arch", ["test_knn", "test_svm"])
def test_classical_model_through_train_round_trips_exactly(trained, tmp_path, arch):
    from phenotyping.models.checkpoint import load_model_dir

    t = _train(trained.root, tmp_path / arch, arch=arch, seed=0)
    assert t.card["validation"]["accuracy"] > 0.8
    assert t.card["training"]["class_weighting"] == ("SVM class_weight=balanced" if arch == "test_svm"
                                                     else "none (kNN)")
    lm = load_model_dir(tmp_path / arch)
    x = _inputs(lm, sorted(trained.root.glob("*/cell-01*.tif")))
    a, b = t.model(x), lm.model(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)


def test_evaluate_cli_prints_the_contract_keys(trained, capsys):
    from phenotyping.__main__ import main

    assert main(["evaluate", "--model", str(trained.out), "--manifest", str(trained.root),
                 "--label-column", "cell_type"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"n", "accuracy", "balanced_accuracy", "macro_f1", "kappa", "per_class", "confusion",
                        "predicted_proportions", "true_proportions", "targets", "calibration", "tta"}
    assert res["n"] == 48 and set(res["per_class"]["disc"]) == {"precision", "recall", "f1", "n"}
    assert sum(map(sum, res["confusion"])) == 48


def test_evaluate_refuses_unknown_labels(trained, tmp_path, capsys):
    from phenotyping.__main__ import main

    other = _write_set(tmp_path / "other", n_per_class=2)
    (other / "ring").rename(other / "blob")
    assert main(["evaluate", "--model", str(trained.out), "--manifest", str(other), "--label-column",
                 "cell_type"]) == 2
    err = capsys.readouterr().err
    assert "'blob'" in err and "disc" in err
    assert main(["evaluate", "--model", str(trained.out), "--manifest", str(other), "--label-column", "cell_type",
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


@pytest.mark.slow
@pytest.mark.parametrize("folder, data", [("jurkat-hybrid", ("ifc-jurkat-labelfree", "manifest.csv")),
                                          ("jurkat-cnn", ("ifc-jurkat-labelfree", "manifest.csv")),
                                          ("wbc-hybrid", None)])
def test_shipped_models_reproduce_their_cards_validation_metrics(folder, data, tmp_path):
    """The shipped checkpoints, loaded by this version of the code, still give the validation metrics their cards
    report (the WBC model on its three-site manifest, rebuilt here from ../shared/data)."""
    from conftest import three_site_wbc_manifest
    from phenotyping.training.evaluate import evaluate_model_dir

    model_dir = Path(__file__).resolve().parent.parent / "models" / folder
    if not (model_dir / "checkpoint.pt").is_file():
        pytest.skip(f"{model_dir} is not shipped in this checkout")
    manifest = shared_data(*data) if data else three_site_wbc_manifest(tmp_path)
    card = json.loads((model_dir / "model_card.json").read_text())
    res = evaluate_model_dir(model_dir, manifest, split="val", log=lambda m: None)
    assert res["n"] == card["validation"]["n"] and res["accuracy"] == card["validation"]["accuracy"]
    for name, v in card["validation"]["targets"].items():
        assert res["targets"][name]["pearson"] == pytest.approx(v["pearson"], abs=1e-6)


def test_training_fraction_keeps_two_cells_per_class():
    from phenotyping.training.data import stratified_fraction

    y = np.array([0] * 200 + [1] * 20 + [2] * 3 + [3])
    keep = stratified_fraction(y, 0.05, seed=0)
    counts = np.bincount(y[keep], minlength=4)
    assert counts.tolist() == [10, 2, 2, 1]  # 5 % of 200; at least two where a class has two
    assert np.array_equal(keep, stratified_fraction(y, 0.05, seed=0))


def test_svm_with_a_single_cell_class_names_the_problem():
    from phenotyping.models import create_model

    m = create_model("test_svm", in_chans=1, num_classes=3, img_size=8)
    x = np.random.default_rng(0).normal(size=(9, 1, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="at least 2 training cells per class"):
        m.fit(x, np.array([0, 0, 0, 0, 1, 1, 1, 1, 2]))
