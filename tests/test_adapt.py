"""Fine-tuning a model on a lab's cells (``train --init-from``, issue 15 part 5): what is kept, what is refused, and the
card's lineage. Tiny synthetic discs and rings, ``test_hybrid``, a few epochs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode  # noqa: E402


def _cell(rng: np.random.Generator, cls: str, *, bright: float) -> np.ndarray:
    """2-channel 20×20 uint16: 'disc' a filled disc, 'ring' a ring; ``bright`` sets the site's signal."""
    yy, xx = np.mgrid[:20, :20]
    r = np.hypot(yy - 9.5, xx - 9.5)
    mask = r < 6 if cls == "disc" else (r > 3.5) & (r < 7)
    img = rng.normal(1000, 50, size=(2, 20, 20))
    img[:, mask] += bright
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_site(root: Path, n: int, *, seed: int, bright: float = 3000.0, labels: list[str] | None = None) -> Path:
    """manifest.csv (cell_id, path, cell_type, sample) of ``n`` alternating discs and rings."""
    rng = np.random.default_rng(seed)
    (root / "cells").mkdir(parents=True)
    rows = []
    for i in range(n):
        cls = ("disc", "ring")[i % 2]
        (root / "cells" / f"c{i:03d}.tif").write_bytes(encode(_cell(rng, cls, bright=bright), "tiff"))
        rows.append({"cell_id": f"{root.name}-{i:03d}", "path": f"cells/c{i:03d}.tif",
                     "cell_type": labels[i] if labels else cls, "sample": f"S{i % 3}"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A tiny model trained on site A (per-image normalisation, one regression target absent at site B)."""
    from phenotyping.training.train import TrainConfig, train

    base = tmp_path_factory.mktemp("siteA")
    manifest = write_site(base / "a", 40, seed=0)
    out = tmp_path_factory.mktemp("models") / "parent"
    train(manifest, "cell_type", out, config=TrainConfig(arch="test_hybrid", epochs=2, batch_size=16, seed=0,
                                                         normalisation="per_image", test_fraction=0.0),
          log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def site_b(tmp_path_factory) -> Path:
    return write_site(tmp_path_factory.mktemp("siteB") / "b", 30, seed=1, bright=1500.0)


@pytest.fixture(scope="module")
def child(parent, site_b, tmp_path_factory) -> tuple[Path, dict]:
    from phenotyping.training.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("models") / "child"
    card = finetune(parent, site_b, "cell_type", out, config=FinetuneConfig(epochs=2, batch_size=8),
                    sample_column="sample", log=lambda m: None)
    return out, card


def test_init_from_keeps_classes_and_preprocessing(parent, child):
    from phenotyping.models.checkpoint import load_model_dir

    out, card = child
    p, c = load_model_dir(parent), load_model_dir(out)
    assert c.classes == p.classes == ["disc", "ring"]
    assert c.preprocess.to_dict() == p.preprocess.to_dict()          # channels, size, per-image normalisation
    assert c.model.config == p.model.config
    assert card["input"]["normalisation"]["mode"] == "per_image"
    assert card["qc"] == p.card["qc"] and card["specimens"] == p.card["specimens"]
    # the weights moved: the child is a fine-tuned copy, not the parent saved again
    pw, cw = p.model.state_dict(), c.model.state_dict()
    assert any(not torch.equal(pw[k], cw[k]) for k in pw)


def test_card_lineage_records_parent_data_and_held_out_metrics(parent, site_b, child):
    from phenotyping.models.checkpoint import file_sha256, load_card

    out, card = child
    lin = json.loads((out / "model_card.json").read_text())["lineage"]
    assert lin["parent"]["id"] == load_card(parent)["id"]
    assert lin["parent"]["checkpoint_sha256"] == file_sha256(parent / "checkpoint.pt")
    assert lin["data_added"]["manifest_sha256"] == file_sha256(site_b)
    assert lin["data_added"]["n_cells"] == 30 and lin["data_added"]["per_class"] == {"disc": 15, "ring": 15}
    assert lin["data_added"]["samples"] == ["S0", "S1", "S2"]
    for side in ("before", "after"):
        assert set(lin[side]) >= {"accuracy", "macro_f1", "recall", "n"} and set(lin[side]["recall"]) == {"disc",
                                                                                                         "ring"}
    # held out: the test cells of split.csv, and none of them trained on or used for early stopping
    with (out / "split.csv").open() as fh:
        split = {r["cell_id"]: r["split"] for r in csv.DictReader(fh)}
    held = lin["held_out"]["cell_ids"]
    assert held and lin["before"]["n"] == lin["after"]["n"] == len(held) == lin["held_out"]["n"]
    assert {split[c] for c in held} == {"test"} and sum(v == "test" for v in split.values()) == len(held)
    assert card["id"] != load_card(parent)["id"]


def test_before_metrics_are_the_parents_on_the_held_out_cells(parent, child, site_b):
    """``before`` is what the parent scores on exactly the held-out cells (recomputed here independently)."""
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.training.data import load_images, load_rows

    out, card = child
    lin = card["lineage"]
    p = load_model_dir(parent)
    rows = {str(r["cell_id"]): r for r in load_rows(site_b)}
    held = [rows[c] for c in lin["held_out"]["cell_ids"]]
    x = p.preprocess.normalise(load_images([r["path"] for r in held], p.preprocess.img_size), batched=True)
    with torch.no_grad():
        pred = p.model(torch.from_numpy(x)).logits.argmax(1).numpy()
    truth = np.array([p.classes.index(r["cell_type"]) for r in held])
    assert lin["before"]["accuracy"] == pytest.approx(float((pred == truth).mean()))


def test_refuses_a_label_the_parent_lacks_naming_the_row(parent, tmp_path):
    from phenotyping.training.finetune import finetune

    labels = ["disc", "ring"] * 4
    labels[5] = "blob"
    manifest = write_site(tmp_path / "c", 8, seed=2, labels=labels)
    with pytest.raises(ValueError, match=r"row 7 \(cell 'c-005'\): label 'blob'.*classes are \['disc', 'ring'\]"):
        finetune(parent, manifest, "cell_type", tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_refuses_out_equal_to_the_parent(parent, site_b, tmp_path, capsys):
    import shutil

    from phenotyping.__main__ import main
    from phenotyping.models.checkpoint import file_sha256

    before = file_sha256(parent / "checkpoint.pt")
    assert main(["train", "--init-from", str(parent), "--manifest", str(site_b), "--label-column", "cell_type",
                 "--out", str(parent)]) == 2
    assert "never replaces its parent" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(parent, copy)
    assert main(["train", "--init-from", str(parent), "--manifest", str(site_b), "--label-column", "cell_type",
                 "--out", str(copy)]) == 2
    assert "parent model's own checkpoint" in capsys.readouterr().err
    assert file_sha256(parent / "checkpoint.pt") == before


def test_cli_refuses_options_that_change_what_is_kept(parent, site_b, tmp_path, capsys):
    from phenotyping.__main__ import main

    assert main(["train", "--init-from", str(parent), "--manifest", str(site_b), "--label-column", "cell_type",
                 "--out", str(tmp_path / "x"), "--img-size", "32", "--classes", "disc,ring"]) == 2
    assert "drop --classes, --img-size" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_init_from_prints_before_and_after(parent, site_b, tmp_path, capsys):
    from phenotyping.__main__ import main

    out = tmp_path / "child-cli"
    assert main(["train", "--init-from", str(parent), "--manifest", str(site_b), "--label-column", "cell_type",
                 "--epochs", "1", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    card = json.loads((out / "model_card.json").read_text())
    assert res["parent"] == card["lineage"]["parent"]["id"] and res["id"] == card["id"]
    assert card["lineage"]["finetune"]["epochs"] == 1 and card["lineage"]["finetune"]["lr"] == 3e-4
    assert card["training"]["config"]["lr"] == 3e-4 and card["training"]["epochs_run"] == 1


def test_held_out_split_keeps_a_training_cell_per_class():
    from phenotyping.training.finetune import held_out_split

    y = np.array([0] * 10 + [1] * 2 + [2])
    s = held_out_split(y, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(len(y)))
    assert set(y[s["train"]]) == {0, 1, 2} and len(s["val"]) and len(s["test"])
    with pytest.raises(ValueError, match="too few"):
        held_out_split(np.array([0, 1, 2]), val_fraction=0.2, test_fraction=0.2, seed=0)
