"""Domain check: the card's reference of the training distribution, the per-sample verdict of predict, its storage,
the report's statement and the signer's acknowledgement; on real data, own-site cells in and other sites out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import encode, save_tiny_model, shared_data, synthetic_cell

CLASSES = ["disc", "ring"]


def _gaussian_cells(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 12) of two classes around ±2 on the first axis, optionally shifted on every axis."""
    y = np.arange(n) % 2
    f = rng.normal(0, 1, size=(n, 12))
    f[:, 0] += np.where(y == 0, -2.0, 2.0)
    return f + shift, y


def _section(rng: np.random.Generator, stats: np.ndarray | None = None) -> dict:
    from phenotyping.analysis.domain import build_section

    f, y = _gaussian_cells(rng, 400)
    held, _ = _gaussian_cells(rng, 200)
    stats = stats if stats is not None else rng.normal([100, 50, 10, 5, 40, 40], [5, 3, 1, 0.5, 0.01, 0.01],
                                                       size=(400, 6))
    return build_section(train_features=f, train_y=y, classes=CLASSES, heldout_features=held,
                         train_image_stats=stats, channels=2)


def test_the_card_section_is_compact_and_round_trips_through_json():
    from phenotyping.analysis.domain import DomainReference, fit_reference

    rng = np.random.default_rng(0)
    section = _section(rng)
    text = json.dumps({"id": "m", "domain": section})
    assert len(text) < 8000  # a few KB in the card
    ref = DomainReference.from_card(json.loads(text))
    assert ref is not None and ref.channels == 2 and ref.threshold == section["calibration"]["threshold"]
    rng = np.random.default_rng(0)
    f, y = _gaussian_cells(rng, 400)
    direct = fit_reference(f, y, 2)
    probe, _ = _gaussian_cells(np.random.default_rng(5), 50)
    assert ref.features.distances(probe) == pytest.approx(direct.distances(probe), rel=2e-2, abs=2e-2)
    assert DomainReference.from_card({"id": "old"}) is None
    with pytest.raises(ValueError, match="domain section version"):
        DomainReference.from_card({"id": "m", "domain": {**section, "version": "domain/0"}})


def test_in_distribution_cells_are_in_and_shifted_cells_are_out_with_the_distance():
    from phenotyping.analysis.domain import DomainReference

    rng = np.random.default_rng(1)
    ref = DomainReference.from_card({"domain": _section(rng)})
    stats = rng.normal([100, 50, 10, 5, 40, 40], [5, 3, 1, 0.5, 0.01, 0.01], size=(60, 6))
    same, _ = _gaussian_cells(rng, 60)
    ok = ref.verdict(ref.features.distances(same), stats)
    assert ok.in_distribution is True and ok.score <= ok.threshold and ok.n_cells == 60
    moved, _ = _gaussian_cells(rng, 60, shift=3.0)
    bad = ref.verdict(ref.features.distances(moved), stats)
    assert bad.in_distribution is False and bad.score > bad.threshold
    assert "features far from the training cells: median distance" in bad.reason
    assert set(bad.to_dict()) >= {"in_distribution", "score", "threshold", "reason"}


def test_image_intensity_outside_the_training_range_is_out():
    from phenotyping.analysis.domain import DomainReference

    rng = np.random.default_rng(2)
    ref = DomainReference.from_card({"domain": _section(rng)})
    same, _ = _gaussian_cells(rng, 30)
    bright = rng.normal([300, 50, 10, 5, 40, 40], [5, 3, 1, 0.5, 0.01, 0.01], size=(30, 6))
    check = ref.verdict(ref.features.distances(same), bright)
    assert check.in_distribution is False
    assert check.reason.startswith("image intensity outside the training range: median_ch0 ")
    assert "median_ch1" not in check.reason and "features far" not in check.reason


def test_other_sites_move_the_threshold_between_own_and_other_cells():
    from phenotyping.analysis.domain import build_section

    rng = np.random.default_rng(3)
    f, y = _gaussian_cells(rng, 400)
    held, _ = _gaussian_cells(rng, 200)
    other, _ = _gaussian_cells(rng, 100, shift=4.0)
    stats = rng.normal(0, 1, size=(400, 6))
    sec = build_section(train_features=f, train_y=y, classes=CLASSES, heldout_features=held, train_image_stats=stats,
                        channels=2, other_sites={"site-b": (other, None)})
    cal = sec["calibration"]
    assert cal["heldout_q95"] < cal["threshold"] < cal["other_sites"]["site-b"]
    assert "geometric middle" in cal["rule"]


# ------------------------------------------------------------------------------------------- with a tiny model
def _write_cells(root: Path, kinds: list[str], seed: int, *, gain: float = 1.0, channels: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path", "cell_type"])
        for i, kind in enumerate(kinds):
            a = synthetic_cell(kind, rng).astype(np.float64) * gain
            if channels != 2:
                a = np.concatenate([a] * 2)[:channels]
            (root / f"c{i:03d}.tif").write_bytes(encode(np.clip(a, 0, 65535).astype(np.uint16), "tiff"))
            w.writerow([f"c{i:03d}", f"c{i:03d}.tif", kind])
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """A tiny model whose card names a training manifest and split, calibrated by the command."""
    from phenotyping.__main__ import main

    base = tmp_path_factory.mktemp("domain")
    manifest = _write_cells(base / "train", CLASSES * 30, seed=0)
    out = save_tiny_model(base / "tiny", CLASSES)
    card = json.loads((out / "model_card.json").read_text())
    card["training"].update({"manifest": str(manifest), "label_column": "cell_type"})
    card["input"] = {"channels": ["brightfield", "darkfield"], "dims": 2}
    (out / "model_card.json").write_text(json.dumps(card))
    with (out / "split.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "split"])
        for i in range(60):
            w.writerow([f"c{i:03d}", "train" if i < 44 else "val"])
    assert main(["calibrate", "--model", str(out), "--domain-reference"]) == 0
    return out


def test_calibrate_writes_the_domain_section_and_keeps_the_rest(calibrated, capsys):
    card = json.loads((calibrated / "model_card.json").read_text())
    sec = card["domain"]
    assert sec["version"] == "domain/1" and sec["input"] == {"channels": 2, "dims": 2}
    assert sec["calibration"]["heldout_cells"] == 16 and sec["calibration"]["threshold"] > 0
    assert card["id"] == "tiny-0001" and card["calibration"]["temperature"] == 1.5


def _predict(model: Path, manifest: Path, capsys) -> dict:
    from phenotyping.__main__ import main

    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--manifest", str(manifest), "--bootstrap", "0",
                 "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_json_says_in_for_own_cells_and_out_for_shifted_ones(calibrated, tmp_path, capsys):
    same = _predict(calibrated, _write_cells(tmp_path / "same", CLASSES * 10, seed=7), capsys)
    check = same["domain_check"]
    assert check["in_distribution"] is True and check["n_cells"] == 20
    assert check["score"] <= check["threshold"] and same["run"]["domain_check"] == check
    shifted = _predict(calibrated, _write_cells(tmp_path / "bright", CLASSES * 10, seed=8, gain=4.0), capsys)
    out = shifted["domain_check"]
    assert out["in_distribution"] is False and "outside the training range" in out["reason"]


def test_channel_mismatch_is_out_without_running_the_model(calibrated, tmp_path, capsys):
    res = _predict(calibrated, _write_cells(tmp_path / "rgb", CLASSES * 3, seed=9, channels=3), capsys)
    assert res["domain_check"]["in_distribution"] is False
    assert res["domain_check"]["reason"] == "channels differ: model takes 2, sample has 3"
    assert res["run"]["predicted"] == 0 and res["run"]["excluded"] == 0  # the model never ran


def test_the_verdict_is_stored_with_the_run_and_audited(calibrated, store, sample):
    from phenotyping.analysis.domain import stored_check
    from phenotyping.analysis.inference import predict_sample

    rng = np.random.default_rng(11)
    cells = []
    for i, kind in enumerate(CLASSES * 4):
        digest, rel = store.put_blob(encode(synthetic_cell(kind, rng), "tiff"), suffix=".tif")
        cells.append({"cell_key": f"k{i}", "content_hash": digest, "source_file": f"k{i}.tif", "blob_path": rel,
                      "shape": (2, 20, 20), "dtype": "uint16"})
    store.add_cells("S1", cells[:4], actor="tester")
    first = predict_sample(store, "S1", calibrated, device="cpu", batch_size=2)
    assert first.domain_check["n_cells"] == 4
    store.add_cells("S1", cells[4:], actor="tester")
    again = predict_sample(store, "S1", calibrated, device="cpu", batch_size=2)  # resumes: the 4 new cells
    assert again.predicted == 4 and again.domain_check["n_cells"] == 8  # judged over all the sample's cells
    store.set_analysis_model("S1", "tiny-0001", actor="tester")
    saved = stored_check(store, "S1")
    assert saved is not None and saved.to_dict() == again.domain_check
    events = store.list_audit(sample_id="S1", action="domain_check.save", limit=10)
    assert len(events) == 2 and events[0].after["n_cells"] == 8


# ------------------------------------------------------------------------------------------ report and signing
from tests.test_reports_workflow import lab  # noqa: E402,F401  (the fixture: a sample with a toy model, a signer)

OUT = {"in_distribution": False, "score": 9.5, "threshold": 3.1, "n_cells": 10,
       "reason": "features far from the training cells: median distance 9.5 vs threshold 3.1"}


def test_the_stored_verdict_reaches_the_report(lab):
    from reports.context import build_context
    from reports.pdf import render_html

    store, settings, _, _ = lab
    assert build_context(store, "S1", settings=settings).domain_check is None  # no check stored: no statement
    store.save_domain_check("S1", "toy-1", "2025.1", OUT, {}, actor="rev")
    ctx = build_context(store, "S1", settings=settings, gallery_per_class=0, study_figures=False)
    assert ctx.out_of_distribution and ctx.domain_check.reason == OUT["reason"] and ctx.domain_check.score == 9.5
    assert ctx.results_json()["domain_check"]["in_distribution"] is False
    html = render_html(ctx)
    assert "Out of distribution:" in html and "median distance 9.5 vs threshold 3.1" in html
    store.save_domain_check("S1", "toy-1", "2025.1", {**OUT, "in_distribution": True, "reason": "fine"}, {},
                            actor="rev")
    assert "Out of distribution:" not in render_html(build_context(store, "S1", settings=settings,
                                                                   gallery_per_class=0, study_figures=False))


def test_signing_an_out_of_distribution_analysis_needs_an_acknowledgement(lab):
    from reports.pdf import RESULTS_ATTACHMENT, attachment
    from reports.workflow import SigningBlocked, domain_acknowledgement_needed, draft_report, sign_report

    store, settings, key, _ = lab
    draft_report(store, "S1", actor="rev", settings=settings)
    store.save_domain_check("S1", "toy-1", "2025.1", OUT, {}, actor="rev")
    assert domain_acknowledgement_needed(store, "S1").reason == OUT["reason"]
    for blank in (None, "  "):
        with pytest.raises(SigningBlocked, match="out of distribution .*features far.*acknowledge it with a reason"):
            sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings,
                        domain_acknowledgement=blank)
    assert store.get_report_version("S1").signed_at is None
    why = "Smear re-examined by microscopy; differential confirmed manually."
    out = sign_report(store, "S1", signer="sig", key_path=key, password=b"sig-secret-1", settings=settings,
                      domain_acknowledgement=why)
    ev = store.list_audit(sample_id="S1", action="report.domain_acknowledged")
    assert len(ev) == 1 and ev[0].actor == "sig" and ev[0].after["reason"] == why
    assert ev[0].entity_id == f"S1/v{out['version']}" and ev[0].after["domain_check"]["score"] == 9.5
    signed = json.loads(attachment(Path(out["pdf"]).read_bytes(), RESULTS_ATTACHMENT))
    assert signed["domain_check"]["acknowledgement"] == why


# ------------------------------------------------------------------------------------------------------ screens
from tests.test_app import app_env  # noqa: E402,F401  (the fixture: a fresh app database)


@pytest.fixture
def screens(app_env):  # noqa: F811
    """An app database with a reviewer, sample S1 analysed by a toy model and an out-of-distribution check."""
    from phenotyping.auth import create_first_admin, create_user
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Prediction, Sample, Specimen
    from tests.test_app import CARD, CLASSES, PASSWORD, get_store_obj
    from conftest import cell_array, png_bytes

    store = get_store_obj()
    create_first_admin(store, "admin", PASSWORD)
    create_user(store, "rev", PASSWORD, "reviewer", actor="admin")
    (app_env / "toy-model").mkdir()
    (app_env / "toy-model" / "model_card.json").write_text(json.dumps(CARD))
    store.register_model("toy-1", path=str(app_env / "toy-model"), card=CARD, actor="admin", usable=True)
    store.create_sample(Sample(id="S1", specimen=Specimen.blood, patient_pseudonym="P-001"), actor="rev")
    (app_env / "set").mkdir()
    for i in range(4):
        (app_env / "set" / f"c{i}.png").write_bytes(png_bytes(cell_array(seed=i)))
    ids = ingest_set(store, app_env / "set", "S1", actor="rev").cell_ids
    store.add_predictions([Prediction(cell_id=c, model_id="toy-1", model_version="1", predicted_class=CLASSES[0],
                                      confidence=0.9, probabilities={CLASSES[0]: 0.9, CLASSES[1]: 0.1})
                           for c in ids], sample_id="S1", actor="rev")
    store.set_analysis_model("S1", "toy-1", actor="rev")
    store.save_domain_check("S1", "toy-1", "1", OUT, {}, actor="rev")
    return store


@pytest.mark.parametrize("page", ["analyse", "review"])
def test_analyse_and_review_show_the_out_of_distribution_banner(screens, page):
    from tests.test_app import app

    at = app("rev", page)
    assert not at.exception
    shown = [e.value.replace("\\", "") for e in at.error]  # md() escapes Markdown punctuation
    assert any(s.startswith("Out of distribution:") and "median distance 9.5 vs threshold 3.1" in s
               for s in shown), shown


# -------------------------------------------------------------------------------------------------- real data
def _subset(tmp: Path, name: str, paths: list[Path]) -> Path:
    """A manifest of copies of ``paths`` in ``tmp/name`` (a manifest's files must lie in its folder)."""
    import shutil

    folder = tmp / name
    folder.mkdir(parents=True)
    with (folder / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path"])
        for i, p in enumerate(paths):
            dest = f"{i:04d}{Path(p).suffix}"
            shutil.copyfile(p, folder / dest)
            w.writerow([f"{name}-{i:04d}", dest])
    return folder / "manifest.csv"


def _split_paths(model: Path, manifest: Path, split: str, n: int, *, site: str | None = None) -> list[Path]:
    from phenotyping.training.data import load_rows

    with (model / "split.csv").open(newline="") as fh:
        ids = {r["cell_id"] for r in csv.DictReader(fh) if r["split"] == split}
    return [r["path"] for r in load_rows(manifest) if r["cell_id"] in ids and site in (None, r.get("site"))][:n]


@pytest.mark.slow
def test_shipped_models_say_in_for_their_own_held_out_cells_and_out_for_other_sites(tmp_path, capsys):
    from conftest import PROJECT_ROOT, three_site_wbc_manifest
    from phenotyping.training.data import load_rows

    jurkat = shared_data("ifc-jurkat-labelfree", "manifest.csv")
    segwbc = shared_data("wbc-smear", "segwbc-d1", "manifest.csv")
    bccd = shared_data("wbc-smear", "bccd")
    jm, wm = PROJECT_ROOT / "models" / "jurkat-hybrid", PROJECT_ROOT / "models" / "wbc-hybrid"
    jc = PROJECT_ROOT / "models" / "jurkat-cnn"       # trained on all labelled cells: its validation cells held out
    wbc = three_site_wbc_manifest(tmp_path / "wbc3")
    cases = [
        (jm, _subset(tmp_path, "jurkat-test", _split_paths(jm, jurkat, "test", 200)), True, "features like"),
        (jc, _subset(tmp_path, "jurkat-val", _split_paths(jc, jurkat, "val", 200)), True, "features like"),
        (jc, _subset(tmp_path, "bccd-c", [r["path"] for r in load_rows(bccd)][:20]), False,
         "channels differ: model takes 2, sample has 3"),
        (jm, _subset(tmp_path, "bccd", [r["path"] for r in load_rows(bccd)][:20]), False,
         "channels differ: model takes 2, sample has 3"),
        (jm, _subset(tmp_path, "segwbc", [r["path"] for r in load_rows(segwbc)][:20]), False,
         "channels differ: model takes 2, sample has 3"),
        (wm, _subset(tmp_path, "jurkat", [r["path"] for r in load_rows(jurkat)][:20]), False,
         "channels differ: model takes 3, sample has 2"),
    ] + [  # held-out cells of each of the WBC model's three sites
        (wm, _subset(tmp_path, f"{site}-val", _split_paths(wm, wbc, "val", 200, site=site)), True, "features like")
        for site in ("segwbc-d1", "bccd", "pbc")]
    for model, manifest, expected, reason in cases:
        check = _predict(model, manifest, capsys)["domain_check"]
        assert check["in_distribution"] is expected and check["reason"].startswith(reason), (model.name, check)


def test_train_writes_the_domain_section_for_a_new_model(tmp_path):
    from phenotyping.analysis.domain import DomainReference
    from phenotyping.training.train import TrainConfig, train
    from tests.test_train import _write_set

    root = _write_set(tmp_path / "cells", n_per_class=16)
    card = train(root, "cell_type", tmp_path / "m", config=TrainConfig(arch="test_hybrid", epochs=1, seed=0,
                                                                       batch_size=16), log=lambda m: None)
    saved = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert saved["domain"] == card["domain"] and saved["domain"]["calibration"]["heldout_cells"] > 0
    assert DomainReference.from_card(saved).channels == 2
