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
