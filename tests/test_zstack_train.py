"""Z-stack models end to end: train the tiny ResNet3D/ViT3D through the CLI, predict, explain per plane, and grouped
K-fold cross-validation (any architecture) with its argument errors. Tiny synthetic (2, 5, 24, 24) TIFF stacks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode  # noqa: E402

CLASSES = ("disc", "ring", "core")
PATIENTS = ("p1", "p2", "p3", "p4")
SHAPE = (2, 5, 24, 24)          # (C, Z, H, W)


def _stack(rng: np.random.Generator, cls: str) -> np.ndarray:
    """A (2, 5, 24, 24) uint16 z-stack: 'disc' a bright disc in every plane, 'ring' a ring in every plane, 'core' a
    disc only in the middle three planes."""
    c, z, h, w = SHAPE
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2 + 0.5, xx - w / 2 + 0.5)
    radius = rng.uniform(5.0, 7.0)
    img = rng.normal(1000, 40, size=SHAPE)
    for k in range(z):
        if cls == "disc":
            img[:, k, r < radius] += 3000
        elif cls == "ring":
            img[:, k, (r > radius - 2) & (r < radius + 1)] += 3000
        elif 1 <= k <= 3:
            img[:, k, r < radius] += 3000
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_zstack_set(root: Path, n_per_class: int = 8, seed: int = 0) -> Path:
    """manifest.csv of 3 classes × ``n_per_class`` z-stack TIFFs, columns cell_id, path, cell_type, patient (each
    of 4 patients holds 2 cells of every class) and 'depth' (a number the classes differ in, to regress)."""
    rng = np.random.default_rng(seed)
    (root / "cells").mkdir(parents=True)
    rows = []
    for ci, cls in enumerate(CLASSES):
        for i in range(n_per_class):
            name = f"cells/{cls}-{i:02d}.tif"
            (root / name).write_bytes(encode(_stack(rng, cls), "tiff"))
            rows.append({"cell_id": f"{cls}{i:02d}", "path": name, "cell_type": cls,
                         "patient": PATIENTS[i % len(PATIENTS)], "depth": f"{ci * 2 + rng.normal(0, 0.3):.3f}"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def zset(tmp_path_factory) -> Path:
    return write_zstack_set(tmp_path_factory.mktemp("zset"))


def _train_cli(manifest: Path, out: Path, arch: str, *extra: str) -> int:
    from phenotyping.__main__ import main

    return main(["train", "--manifest", str(manifest), "--label-column", "cell_type", "--arch", arch,
                 "--epochs", "2", "--batch-size", "8", "--out", str(out), *extra])


@pytest.fixture(scope="module", params=["test_resnet3d", "test_vit3d"])
def trained3d(request, zset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / request.param
    assert _train_cli(zset, out, request.param) == 0
    return out


def test_train_3d_writes_a_z_stack_model(trained3d):
    from phenotyping.models.checkpoint import load_model_dir

    card = json.loads((trained3d / "model_card.json").read_text())
    assert card["architecture"]["name"] == trained3d.name
    assert card["input"]["dims"] == 3 and card["input"]["img_size"] == 24
    assert card["classes"] == sorted(CLASSES)
    assert card["training"]["epochs_run"] == 2
    lm = load_model_dir(trained3d)
    assert lm.model.config["dims"] == 3
    x = np.zeros((1, *SHAPE), np.float32)
    assert lm.model(torch.from_numpy(x)).logits.shape == (1, 3)


def test_predict_3d_through_the_cli(trained3d, zset, capsys):
    from phenotyping.__main__ import main

    capsys.readouterr()
    rc = main(["predict", "--model", str(trained3d), "--manifest", str(zset), "--bootstrap", "0", "--device", "cpu",
               "--out", str(trained3d.parent / f"{trained3d.name}-cells.csv")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    with (trained3d.parent / f"{trained3d.name}-cells.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 * 8
    predicted = [r for r in table if r["predicted_class"]]
    assert predicted and {r["predicted_class"] for r in predicted} <= set(CLASSES)
    assert result["differential"]["raw"]["n_counted"] == 3 * 8 - result["qc_counts"]["unidentified"]


def _ingested(store, manifest: Path):
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen

    store.create_sample(Sample(id="Z1", specimen=Specimen.blood), actor="tester")
    ids = ingest_set(store, manifest, "Z1", actor="tester").cell_ids
    return [store.get_cell(i) for i in ids]


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_explain_a_z_stack_per_plane_and_as_projection(trained3d, zset, store, method):
    from phenotyping.analysis.cellview import explain_cell

    cell = _ingested(store, zset)[0]
    ex = explain_cell(store, cell, trained3d, method=method, target="disc")
    z, h, w = SHAPE[1:]
    assert ex.target == "disc" and ex.planes == z
    assert ex.heat.shape == (z, h, w) and np.isfinite(ex.heat).all()
    assert ex.display.shape == (z, h, w) and ex.display.dtype == np.uint8      # 2 channels: shown grey
    assert ex.image.shape == (z, h, w, 3) and ex.image.dtype == np.uint8
    if method == "gradcam":
        assert ex.heat.min() >= 0 and ex.heat.max() <= 1
    disp, over = ex.view(2)
    assert np.array_equal(disp, ex.display[2]) and np.array_equal(over, ex.image[2])
    mip_disp, mip = ex.view(None)
    assert np.array_equal(mip_disp, ex.display.max(0)) and mip.shape == (h, w, 3)
    with pytest.raises(ValueError, match="outside"):
        ex.view(z)


def test_explanation_of_a_stack_scales_planes_together():
    """Planes share one colour scale: a plane with half the heat of another is drawn less red, not as red."""
    from phenotyping.analysis.cellview import build_explanation

    stack = np.full((1, 3, 8, 8), 100, np.uint16)
    stack[:, :, 2:6, 2:6] = 900
    heat = np.zeros((3, 8, 8), np.float32)
    heat[0, 2:6, 2:6], heat[1, 2:6, 2:6] = 1.0, 0.5
    ex = build_explanation("gradcam", "x", stack, heat)
    red = ex.image[..., 0].astype(int) - ex.image[..., 1].astype(int)
    assert red[0, 3, 3] > red[1, 3, 3] > red[2, 3, 3]
    with pytest.raises(ValueError, match="does not match"):
        build_explanation("gradcam", "x", stack, heat[:2])


@pytest.mark.parametrize("arch", ["test_resnet3d", "test_vit3d"])
def test_gradcam_and_occlusion_maps_match_the_stack(arch):
    from phenotyping.analysis.explain import grad_cam, occlusion_map
    from phenotyping.models import create_model

    torch.manual_seed(0)
    m = create_model(arch, in_chans=2, num_classes=3, img_size=24).eval()
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    cam = grad_cam(m, x, 1)
    occ = occlusion_map(m, x, 1, patch=8, stride=8)
    assert cam.shape == occ.shape == SHAPE[1:]
    assert np.isfinite(cam).all() and np.isfinite(occ).all()
    assert np.abs(occ).max() > 0          # hiding a box changes the probability somewhere


def test_explaining_needs_a_model_of_the_cells_kind(trained3d, store, tmp_path):
    """A 2D cell given to a z-stack model is refused with both kinds named (not a shape error from inside torch)."""
    from phenotyping.analysis.cellview import explain_cell
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen

    flat = np.random.default_rng(0).integers(900, 1100, size=(2, 24, 24)).astype(np.uint16)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.tif").write_bytes(encode(flat, "tiff"))
    store.create_sample(Sample(id="F1", specimen=Specimen.blood), actor="tester")
    cid = ingest_set(store, tmp_path / "flat", "F1", actor="tester").cell_ids[0]
    with pytest.raises(ValueError, match=r"2D cell .* z-stack"):
        explain_cell(store, store.get_cell(cid), trained3d)


# -- cross-validation -------------------------------------------------------------------------------------------------

def test_grouped_cv_through_the_cli(zset, tmp_path, capsys):
    """--cv 2 --group-column patient: no patient in two folds, every cell held out once, per-fold and mean ± SD of
    the metrics (and of r for a target) in the JSON and the final model's card; the final model uses all cells."""
    capsys.readouterr()
    out = tmp_path / "cv-model"
    assert _train_cli(zset, out, "test_cnn3d", "--cv", "2", "--group-column", "patient",
                      "--target-columns", "depth") == 0
    printed = json.loads(capsys.readouterr().out)["cross_validation"]
    card = json.loads((out / "model_card.json").read_text())
    cv = card["cross_validation"]
    assert printed["summary"] == cv["summary"] and printed["folds"] == cv["folds"]
    assert cv["k"] == 2 and len(cv["folds"]) == 2 and "StratifiedGroupKFold by patient" in cv["method"]
    held = [set(f["test_groups"]) for f in cv["folds"]]
    assert not held[0] & held[1] and held[0] | held[1] == set(PATIENTS)
    assert sum(f["n"]["test"] for f in cv["folds"]) == 3 * 8
    for f in cv["folds"]:
        assert f["n"]["train"] + f["n"]["val"] + f["n"]["test"] == 3 * 8
    for m in ("accuracy", "balanced_accuracy", "macro_f1"):
        vals = [f[m] for f in cv["folds"]]
        assert cv["summary"][m]["mean"] == pytest.approx(np.mean(vals))
        assert cv["summary"][m]["sd"] == pytest.approx(np.std(vals, ddof=1))
    shares = [f["unidentified_share"] for f in cv["folds"]]
    assert all(0 <= v <= 1 for v in shares) and cv["summary"]["unidentified_share"]["mean"] == pytest.approx(
        np.mean(shares))
    r = cv["summary"]["pearson"]["depth"]
    assert r["n_folds"] == sum(f["pearson"]["depth"] is not None for f in cv["folds"])
    assert sum(card["split"]["n"].values()) == 3 * 8          # the final model: all cells, the usual split


def test_review_queue_of_a_fold_uses_the_validation_threshold():
    """Validation: 80 sure and right, 20 unsure and wrong → the threshold queues the unsure; held-out: 10 sure and
    right, 10 less sure than any validation cell → half queued, the kept ones all right."""
    from phenotyping.training.cv import review_queue

    def logits(n, margin, right):
        z = np.zeros((n, 3))
        z[:, 0 if right else 1] = margin
        return z

    val = np.vstack([logits(80, 5.0, True), logits(20, 0.5, False)])
    test = np.vstack([logits(10, 5.0, True), logits(10, 0.2, True)])
    q = review_queue(val, np.zeros(100, int), test, np.zeros(20, int))
    assert q["unidentified_share"] == pytest.approx(0.5)
    assert q["confident_accuracy"] == 1.0
    q = review_queue(val, np.zeros(100, int), logits(4, 0.1, True), np.zeros(4, int))
    assert q == {"unidentified_share": 1.0, "confident_accuracy": None}


def test_ungrouped_folds_are_stratified_and_cover_every_cell():
    from phenotyping.training.cv import fold_indices

    labels = [c for c in CLASSES for _ in range(8)]
    folds = fold_indices(4, labels, None, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(24))
    for f in folds:
        assert sorted({labels[i] for i in f}) == sorted(CLASSES)


def test_grouped_folds_never_share_a_group():
    from phenotyping.training.cv import fold_indices

    rng = np.random.default_rng(1)
    labels = [CLASSES[i % 3] for i in range(60)]
    groups = [f"g{rng.integers(10)}" for _ in range(60)]
    folds = fold_indices(5, labels, groups, seed=0)
    owner = {}
    for k, f in enumerate(folds):
        for i in f:
            assert owner.setdefault(groups[i], k) == k


@pytest.mark.parametrize("argv, message", [
    (["--cv", "1"], "needs K ≥ 2"),
    (["--cv", "9"], "class 'core' has 8 cell(s)"),
    (["--cv", "5", "--group-column", "patient"], "class 'core' occurs in 4 of them; a grouped fold holds whole"),
])
def test_cv_refuses_unusable_k(zset, tmp_path, capsys, argv, message):
    capsys.readouterr()
    assert _train_cli(zset, tmp_path / "never", "test_cnn3d", *argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_cv_rows_show_every_recorded_figure_per_fold_and_skip_unrecorded_ones():
    from phenotyping.training.cv import cv_rows, summarise

    folds = [{"fold": 1, "accuracy": 0.7, "balanced_accuracy": 0.6, "macro_f1": 0.5, "pearson": {"dna": 0.9}},
             {"fold": 2, "accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.6, "pearson": {"dna": 0.95}}]
    rows = cv_rows({"cross_validation": {"k": 2, "folds": folds, "summary": summarise(folds, ["dna"])}})
    assert [r["figure"] for r in rows] == ["accuracy", "balanced accuracy", "macro-F1", "Pearson r (dna)"]
    assert rows[0]["mean"] == pytest.approx(0.75) and rows[0]["fold 1"] == 0.7 and rows[0]["fold 2"] == 0.8
    assert rows[-1]["fold 2"] == 0.95
    for f in folds:
        f.update(unidentified_share=0.2, confident_accuracy=None)
    rows = cv_rows({"cross_validation": {"k": 2, "folds": folds, "summary": summarise(folds, ["dna"])}})
    assert "unidentified share" in [r["figure"] for r in rows]
    assert "accuracy above the threshold" not in [r["figure"] for r in rows]   # no fold kept a cell
    assert cv_rows({}) == []


def test_cv_text_rows_show_the_share_of_cells_as_a_percentage_and_scores_as_decimals():
    from phenotyping.training.cv import cv_text_rows, summarise

    folds = [{"fold": 1, "accuracy": 0.7, "balanced_accuracy": 0.6, "macro_f1": 0.5, "unidentified_share": 0.18,
              "confident_accuracy": 0.8},
             {"fold": 2, "accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.6, "unidentified_share": 0.2,
              "confident_accuracy": None}]
    rows = {r["figure"]: r for r in cv_text_rows({"cross_validation": {"k": 2, "folds": folds,
                                                                        "summary": summarise(folds, [])}})}
    assert rows["unidentified share"]["mean"] == "19.0 %" and rows["unidentified share"]["fold 1"] == "18.0 %"
    assert rows["accuracy"]["mean"] == "0.750" and rows["accuracy"]["fold 2"] == "0.800"
    assert rows["accuracy above the threshold"]["fold 2"] == "—"
