"""Post-fit card sections: image-QC thresholds learned from training images, confident confusion, and the
calibrate command that brings an older card up to date."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from phenotyping.training.postfit import calibrate_qc, confident_confusion
from phenotyping.analysis.prior import posterior_prior
from phenotyping.analysis.qc import QCConfig, check_images


def _disc(rng: np.random.Generator, size: int = 40, blur: float = 0.0, extra: bool = False) -> np.ndarray:
    """A textured cell on a noisy background (uint16, 1 channel); ``extra`` adds a second cell-sized object."""
    if extra:
        size = 48
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    img = rng.normal(1000, 10, size=(size, size))
    cell = np.hypot(yy - c, xx - (14 if extra else c)) < 8
    img[cell] += 2000 + rng.normal(0, 600, size=int(cell.sum()))
    if extra:
        other = np.hypot(yy - c, xx - 36) < 7
        img[other] += 1500 + rng.normal(0, 400, size=int(other.sum()))
    if blur:
        img = ndimage.gaussian_filter(img, blur)
    return np.clip(img, 0, 65535).astype(np.uint16)[None]


def test_qc_thresholds_pass_the_training_cells_and_catch_blur():
    rng = np.random.default_rng(0)
    train = [_disc(rng) for _ in range(200)]
    cfg, info = calibrate_qc(train)
    assert info["training_pass_rate"] >= 0.98
    assert cfg.min_focus is not None and cfg.min_focus <= 0.75 * info["measured"]["focus"] + 1e-12
    blurred = check_images([_disc(rng, blur=2.0) for _ in range(20)], cfg)
    assert sum(r.code == "out_of_focus" for r in blurred) >= 18
    assert cfg.max_cells == 1 and not info["disabled"]


def test_qc_disables_checks_the_training_set_contradicts():
    """Smear-like crops always hold a second object: the multiple-cells check cannot apply to that set-up."""
    rng = np.random.default_rng(1)
    train = [_disc(rng, extra=True) for _ in range(100)]
    cfg, info = calibrate_qc(train)
    assert cfg.max_cells is None and "max_cells" in info["disabled"]
    assert info["training_pass_rate"] >= 0.98
    with pytest.raises(ValueError, match="no training images"):
        calibrate_qc([])


def test_confident_confusion_counts_only_cells_above_the_threshold():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 1, 1])
    assert confident_confusion(probs, y, 0.6, 2) == [[1, 0], [1, 1]]
    with pytest.raises(ValueError):
        confident_confusion(probs, y[:3], 0.6, 2)


def test_posterior_prior_follows_the_class_weighting():
    balanced = posterior_prior(["a", "b", "c"], [80, 20, 0], "balanced class weights n/(K·n_k)")
    assert balanced["classes"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    natural = posterior_prior(["a", "b"], [80, 20], "none (kNN)")
    assert natural["classes"] == pytest.approx({"a": 0.8, "b": 0.2})


@pytest.mark.slow
def test_train_writes_the_sections_and_calibrate_rewrites_them(tmp_path, capsys):
    from phenotyping.__main__ import main
    from phenotyping.training.train import TrainConfig, train
    from tests.test_train import _write_set

    root = _write_set(tmp_path / "cells", n_per_class=16)
    out = tmp_path / "m"
    card = train(root, "cell_type", out, config=TrainConfig(arch="test_hybrid", epochs=1, seed=0, batch_size=16),
                 log=lambda m: None)
    assert card["training"]["posterior_prior"]["classes"] == {"disc": 0.5, "ring": 0.5}
    conf = np.asarray(card["validation"]["confusion_confident"])
    assert conf.shape == (2, 2) and conf.sum() <= np.asarray(card["validation"]["confusion"]).sum()
    QCConfig.from_dict(card["qc"])  # a valid QC section
    assert card["qc_calibration"]["training_pass_rate"] > 0.9

    stripped = {k: v for k, v in card.items() if k not in ("qc", "qc_calibration")}
    del stripped["training"]["posterior_prior"]
    (out / "model_card.json").write_text(json.dumps(stripped))
    assert main(["calibrate", "--model", str(out), "--manifest", str(root)]) == 0
    printed = json.loads(capsys.readouterr().out)
    again = json.loads((out / "model_card.json").read_text())
    assert again["id"] == card["id"] and again["qc"] == printed["qc"]
    assert again["validation"]["confusion_confident"] == card["validation"]["confusion_confident"]
    assert again["postfit"]["by"] == "python -m phenotyping calibrate"
