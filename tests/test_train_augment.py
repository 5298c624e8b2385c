"""Appearance augmentation for stained cells from several sites: scale, stain colour, blur, background."""

from __future__ import annotations

import numpy as np
import pytest

from phenotyping.models.preprocess import Preprocess, channel_specs
from phenotyping.training.data import CellDataset, augment_appearance


def _cell(size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.broadcast_to(np.array([220.0, 210.0, 215.0])[:, None, None], (3, size, size)).copy()
    disc = np.hypot(yy - size / 2, xx - size / 2) < size / 4
    img[:, disc] = np.array([120.0, 70.0, 150.0])[:, None] + rng.normal(0, 10, (3, int(disc.sum())))
    return img.astype(np.float32)


def test_appearance_augmentation_is_seeded_and_keeps_shape():
    x = _cell()
    a = augment_appearance(x, np.random.default_rng(1))
    b = augment_appearance(x, np.random.default_rng(1))
    c = augment_appearance(x, np.random.default_rng(2))
    assert a.shape == x.shape and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert not np.allclose(a, x)
    with pytest.raises(ValueError, match="2D cell"):
        augment_appearance(x[:, None], np.random.default_rng(0))


def test_appearance_augmentation_creates_no_structure_in_a_flat_frame():
    """Zoom refills with the background, stain and blur act on levels: a flat frame stays flat up to the ±8 % ramp."""
    flat = np.full((3, 24, 24), 200.0, np.float32)
    for seed in range(10):
        out = augment_appearance(flat, np.random.default_rng(seed))
        assert (out.std(axis=(1, 2)) <= 0.05 * out.mean(axis=(1, 2))).all()


def test_zoom_keeps_the_cell_centred_and_changes_its_size():
    x = _cell(size=40)
    dark = [(augment_appearance(x, np.random.default_rng(s))[1] < 150).sum() for s in range(12)]
    assert max(dark) > 1.2 * min(dark)  # cell area follows the zoom
    for s in range(12):
        g = augment_appearance(x, np.random.default_rng(s))[1]
        yy, xx = np.nonzero(g < 150)
        assert abs(yy.mean() - 19.5) < 2 and abs(xx.mean() - 19.5) < 2


def test_dataset_applies_it_only_when_asked_and_before_per_image_normalisation():
    x = np.stack([_cell(seed=s) for s in range(4)])
    pre = Preprocess.fit(x, ["red", "green", "blue"], channel_specs(["red", "green", "blue"]), mode="per_image")
    plain = CellDataset(x, np.zeros(4, np.int64), np.zeros((4, 0)), pre, augment_seed=0)
    varied = CellDataset(x, np.zeros(4, np.int64), np.zeros((4, 0)), pre, augment_seed=0, appearance=True)
    a, b = plain[0][0], varied[0][0]
    assert a.shape == b.shape and not np.allclose(a, b)
    assert abs(float(b.mean())) < 0.2  # still standardised per image


def test_hue_matrix_keeps_grey_and_a_third_turn_permutes_the_channels():
    from phenotyping.training.data import hue_saturation_matrix

    grey = np.array([0.4, 0.4, 0.4])
    for theta, sat in ((0.7, 1.3), (-2.0, 0.5), (3.1, 0.0)):
        assert np.allclose(hue_saturation_matrix(theta, sat) @ grey, grey)
    third = hue_saturation_matrix(2 * np.pi / 3, 1.0)
    assert np.allclose(third @ np.array([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-9)
    assert np.allclose(hue_saturation_matrix(1.0, 0.0) @ np.array([0.9, 0.3, 0.0]), [0.4, 0.4, 0.4])


def test_hue_augmentation_keeps_brightness_and_changes_hue():
    from phenotyping.training.data import augment_hue

    x = _cell()
    outs = [augment_hue(x, np.random.default_rng(s)) for s in range(20)]
    for o in outs:
        assert o.shape == x.shape and o.dtype == np.float32
        assert np.allclose(o.sum(0), x.sum(0), rtol=1e-4)  # the grey-axis component is kept pixel by pixel
    nucleus = x[:, 16, 16]
    hues = {tuple(np.round(o[:, 16, 16] - o[:, 16, 16].mean()).astype(int)) for o in outs}
    assert len(hues) > 10  # the nucleus colour is drawn anew
    assert any(np.allclose(o[:, 16, 16], o[:, 16, 16].mean()) for o in outs)  # some draws remove the colour
    assert np.array_equal(augment_hue(x, np.random.default_rng(3)), augment_hue(x, np.random.default_rng(3)))
    assert not np.allclose(outs[0][:, 16, 16], nucleus)
    with pytest.raises(ValueError, match="RGB cell"):
        augment_hue(x[:2], np.random.default_rng(0))


def test_dataset_shifts_hue_only_when_asked():
    x = np.stack([_cell(seed=s) for s in range(4)])
    pre = Preprocess.fit(x, ["red", "green", "blue"], channel_specs(["red", "green", "blue"]), mode="per_image")
    plain = CellDataset(x, np.zeros(4, np.int64), np.zeros((4, 0)), pre, augment_seed=0, appearance=True)
    hued = CellDataset(x, np.zeros(4, np.int64), np.zeros((4, 0)), pre, augment_seed=0, appearance=True, hue=True)
    assert not np.allclose(plain[0][0], hued[0][0])
    assert np.array_equal(hued[1][0], hued[1][0])


def test_train_refuses_hue_shift_on_cells_that_are_not_rgb(tmp_path):
    from phenotyping.training.train import TrainConfig, train
    from test_adapt import write_site

    manifest = write_site(tmp_path / "a", 12, seed=0)
    with pytest.raises(ValueError, match="2D RGB cells.*2 channel"):
        train(manifest, "cell_type", tmp_path / "m", config=TrainConfig(
            arch="test_hybrid", epochs=1, augment_appearance=True, augment_hue=True), log=lambda m: None)
    assert not (tmp_path / "m").exists()


def test_cli_hue_shift_needs_appearance_augmentation(tmp_path, capsys):
    from phenotyping.__main__ import main
    from test_adapt import write_site

    manifest = write_site(tmp_path / "a", 12, seed=0)
    rc = main(["train", "--manifest", str(manifest), "--label-column", "cell_type", "--arch", "test_hybrid",
               "--epochs", "1", "--augment-hue", "--out", str(tmp_path / "m")])
    assert rc != 0 and "--augment-hue" in capsys.readouterr().err


def test_hue_share_sets_how_often_the_shift_is_drawn(monkeypatch):
    import phenotyping.training.data as data

    calls = []
    monkeypatch.setattr(data, "augment_hue", lambda a, rng: calls.append(1) or a)
    x = _cell()
    for share, lo, hi in ((0.0, 0, 0), (0.5, 60, 140), (1.0, 200, 200)):
        calls.clear()
        for s in range(200):
            data.augment_appearance(x, np.random.default_rng(s), hue=share)
        assert lo <= len(calls) <= hi, (share, len(calls))


def test_hue_share_outside_zero_to_one_is_refused(tmp_path, capsys):
    from phenotyping.__main__ import main
    from phenotyping.training.data import check_hue_augmentation
    from test_adapt import write_site

    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check_hue_augmentation(-0.1, True, 3, 2)
    check_hue_augmentation(0.5, True, 3, 2)
    manifest = write_site(tmp_path / "a", 12, seed=0)
    rc = main(["train", "--manifest", str(manifest), "--label-column", "cell_type", "--arch", "test_hybrid",
               "--epochs", "1", "--augment-appearance", "--augment-hue", "1.5", "--out", str(tmp_path / "m")])
    assert rc != 0 and "SHARE must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_the_training_log_line_names_the_appearance_augmentation():
    from phenotyping.training.data import describe_augmentation

    specs = channel_specs(["red", "green", "blue"])
    assert "stain" not in describe_augmentation(specs)
    assert describe_augmentation(specs, True).endswith("; scale, stain, blur and background")
    assert describe_augmentation(specs, True, 0.5).endswith("stain hue over the whole circle (50% of draws)")
