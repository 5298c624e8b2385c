"""Image QC on synthetic cells: blank, blurred, sharp, two cells, debris; the unidentified flag; reason counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from phenotyping.analysis.qc import (
    DEBRIS,
    EMPTY,
    MULTIPLE_CELLS,
    OUT_OF_FOCUS,
    REASONS,
    UNIDENTIFIED,
    QCConfig,
    calibration_from_card,
    check_image,
    check_images,
    count_reasons,
    reason_code,
    unidentified_flags,
)


def _scene(discs, size=40, channels=2, seed=0, dtype=np.uint16, bright=True):
    """A noisy flat background with textured discs ``(row, col, radius)``; channel-first ``(C, H, W)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(680, 6, size=(channels, size, size))  # background level and noise like the IFC brightfield
    for r, c, rad in discs:
        disc = (yy - r) ** 2 + (xx - c) ** 2 < rad**2
        texture = rng.normal(0, 60, size=(channels, int(disc.sum())))
        img[:, disc] += (120 if bright else -120) + texture
    return np.clip(img, 0, None).round().astype(dtype)


def _blur(img, sigma):
    return ndimage.gaussian_filter(img.astype(float), (0, sigma, sigma)).round().astype(img.dtype)


def test_sharp_single_cell_passes():
    r = check_image(_scene([(20, 20, 9)]))
    assert r.passed, r.reason
    assert r.code is None and r.reason is None
    # Smoothing and closing grow the mask by about a pixel: between radius 9 and 11.
    assert np.pi * 81 / 1600 <= r.measures.object_areas[0] <= np.pi * 121 / 1600


def test_dark_cell_on_bright_background_passes():
    # Label-free contrast can be negative: detection uses the deviation from the border median, not intensity.
    assert check_image(_scene([(20, 20, 9)], bright=False)).passed


def test_blank_frame_is_empty():
    blank = _scene([])
    r = check_image(blank)
    assert r.code == EMPTY and len(r.flags) == 1
    assert "empty frame" in r.reason
    flat = np.full((1, 32, 32), 17, np.uint8)  # no noise at all
    assert check_image(flat).code == EMPTY


def test_blurred_cell_is_out_of_focus_and_sharp_scores_higher():
    sharp = _scene([(20, 20, 9)])
    blurred = _blur(sharp, 2.5)
    r = check_image(blurred)
    assert r.code == OUT_OF_FOCUS, r.to_dict()
    assert "focus score" in r.reason
    scores = [check_image(_blur(sharp, s) if s else sharp).measures.focus for s in (0, 1, 2, 3)]
    assert scores == sorted(scores, reverse=True)  # monotone in blur


def test_focus_score_is_invariant_to_gain_and_offset():
    img = _scene([(20, 20, 9)]).astype(np.float64)
    a = check_image(img).measures.focus
    b = check_image(3.0 * img + 1000.0).measures.focus
    assert b == pytest.approx(a, rel=1e-6)


def test_two_cells_are_multiple():
    r = check_image(_scene([(12, 12, 7), (28, 28, 7)]))
    assert MULTIPLE_CELLS in [f.code for f in r.flags]
    assert "2 cell-sized objects" in r.reason
    relaxed = QCConfig(max_cells=2)
    assert check_image(_scene([(12, 12, 7), (28, 28, 7)]), relaxed).passed


def test_small_fragment_is_debris():
    r = check_image(_scene([(20, 20, 2.5)]))
    assert r.code == DEBRIS, r.to_dict()
    assert "debris" in r.reason


def test_disabled_checks_do_not_flag():
    cfg = QCConfig(min_focus=None, min_cell_area_fraction=None, max_cells=None)
    assert check_image(_blur(_scene([(20, 20, 2.5)]), 2.5), cfg).code in (None, EMPTY)


def test_z_stack_uses_best_plane():
    sharp = _scene([(20, 20, 9)], channels=1)
    stack = np.stack([_blur(sharp, 3)[0], sharp[0], _blur(sharp, 3)[0]])[None]  # (C=1, Z=3, H, W)
    assert check_image(stack).passed
    all_blurred = np.stack([_blur(sharp, 3)[0]] * 3)[None]
    assert check_image(all_blurred).code == OUT_OF_FOCUS


def test_channel_selection_and_errors():
    img = _scene([(20, 20, 9)])
    assert check_image(img, QCConfig(channels=(1,))).passed
    with pytest.raises(ValueError, match=r"channels \[5\]"):
        check_image(img, QCConfig(channels=(5,)))
    with pytest.raises(ValueError, match="channel-first"):
        check_image(img[0, 0])
    with pytest.raises(ValueError, match="fraction"):
        QCConfig(min_signal_fraction=2.0)


def test_config_round_trips_through_a_card_and_rejects_typos():
    cfg = QCConfig(min_focus=0.01, channels=(0, 2))
    assert QCConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="min_focuss"):
        QCConfig.from_dict({"min_focuss": 0.1})


def test_unidentified_below_threshold():
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.6, 0.4, 0.0]])
    flags = unidentified_flags(p, threshold=0.6)
    assert flags[0] is None and flags[2] is None  # 0.6 is not below 0.6
    assert flags[1].code == UNIDENTIFIED and "0.40" in flags[1].reason
    with pytest.raises(ValueError, match="threshold"):
        unidentified_flags(p, threshold=1.5)


def test_calibration_from_card():
    assert calibration_from_card({"calibration": {"temperature": 1.7, "unidentified_threshold": 0.5}}) == (1.7, 0.5)
    with pytest.raises(ValueError, match="calibrate"):
        calibration_from_card({"id": "m1"})


def test_count_reasons_keeps_every_reason():
    counts = count_reasons([None, EMPTY, EMPTY, UNIDENTIFIED, None])
    assert list(counts) == list(REASONS)
    assert counts[EMPTY] == 2 and counts[UNIDENTIFIED] == 1 and counts[DEBRIS] == 0
    with pytest.raises(ValueError, match="bogus"):
        count_reasons(["bogus"])


def test_batched_checks_equal_single_checks_with_mixed_shapes():
    images = [_scene([(20, 20, 9)]), _scene([]), _scene([(12, 12, 7), (28, 28, 7)], seed=3),
              _scene([(16, 16, 8)], size=32, channels=1), _blur(_scene([(20, 20, 9)]), 2.5)]
    batched = check_images(images)
    for img, b in zip(images, batched):
        s = check_image(img)
        assert s.flags == b.flags
        assert s.measures.object_areas == pytest.approx(b.measures.object_areas)
    assert [r.code for r in batched] == [None, EMPTY, MULTIPLE_CELLS, None, OUT_OF_FOCUS]


def test_stored_reasons_map_back_to_codes():
    blurred = check_image(_blur(_scene([(20, 20, 9)]), 2.5))
    two = check_image(_scene([(12, 12, 7), (28, 28, 7)]))
    assert reason_code(blurred.reason) == OUT_OF_FOCUS
    assert reason_code(two.reason) == two.code
    assert reason_code(unidentified_flags(np.array([[0.5, 0.5]]), threshold=0.9)[0].reason) == UNIDENTIFIED
    assert reason_code("unreadable image: truncated") is None and reason_code(None) is None


# ------------------------------------------------------------------------------------------ tight smear crops
def _smear_crop(seed=0, size=64, blur=0.0, nucleus=True):
    """A tight crop out of a stained smear (RGB uint8, slightly JPEG-smooth): pale plasma, red cells of varied
    density that the frame edge cuts through on every side, and a dark purple leukocyte nucleus in the middle (``nucleus`` False: none)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    plasma = np.array([225.0, 215.0, 215.0])
    red = np.array([200.0, 140.0, 150.0])
    img = np.broadcast_to(plasma[:, None, None], (3, size, size)).copy()
    for k in range(10):  # red cells centred on the frame edge, so that half the border is red-cell
        t = 2 * np.pi * (k + rng.uniform(0, 0.3)) / 10
        cy, cx = size / 2 + 0.55 * size * np.sin(t), size / 2 + 0.55 * size * np.cos(t)
        img[:, np.hypot(yy - cy, xx - cx) < 0.16 * size] = (red * rng.uniform(0.75, 1.1))[:, None]
    if nucleus:
        cell = np.hypot(yy - size / 2, xx - size / 2) < 0.25 * size
        lobes = np.sin(yy / 2.0) * np.cos(xx / 2.3) > -0.2
        img[:, cell] = np.array([190.0, 170.0, 200.0])[:, None]
        img[:, cell & lobes] = np.array([110.0, 60.0, 140.0])[:, None]
    img = ndimage.gaussian_filter(img, (0, 0.7 + blur, 0.7 + blur)) + rng.normal(0, 0.8, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def test_tight_smear_crop_is_empty_by_the_border_noise_but_passes_by_the_residual():
    """Why BCCD crops read "empty" and focus 0: their border is red cells and plasma, not background, so its spread
    is stain contrast rather than noise. The residual estimate measures the noise itself."""
    crop = _smear_crop()
    border = check_image(crop, QCConfig(min_focus=None))
    assert border.code == EMPTY, border.to_dict()
    cfg = QCConfig(noise="residual", min_focus=None, max_cells=None)
    r = check_image(crop, cfg)
    assert r.passed, r.to_dict()
    assert r.measures.focus is not None and r.measures.focus > 0


def test_residual_noise_keeps_blank_blur_and_invariance():
    cfg = QCConfig(noise="residual", max_cells=None, min_focus=None)
    assert check_image(_scene([]), cfg).code == EMPTY
    assert check_image(np.full((1, 32, 32), 17, np.uint8), cfg).code == EMPTY
    sharp = _smear_crop(seed=2)
    scores = [check_image(_smear_crop(seed=2, blur=b), cfg).measures.focus for b in (0.0, 0.8, 1.6, 2.4)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.5 * scores[0]
    x = sharp.astype(np.float64)
    a, b = check_image(x, cfg).measures.focus, check_image(2.5 * x + 40.0, cfg).measures.focus
    assert b == pytest.approx(a, rel=1e-6)
    assert QCConfig.from_dict(QCConfig(noise="residual").to_dict()).noise == "residual"
    assert QCConfig.from_dict({}).noise == "border"  # cards written before the option keep their behaviour
    with pytest.raises(ValueError, match="noise='mad'.*border, residual"):
        QCConfig(noise="mad")


def test_calibration_on_smear_crops_keeps_the_checks_and_passes_each_site():
    """Two sites, one small and blurrier: thresholds from the pooled quantiles would exclude the small site's valid
    cells far more often; the per-site minimum passes about 99 % of each, and blank frames stay empty."""
    from phenotyping.training.postfit import calibrate_qc

    big = [_smear_crop(seed=s) for s in range(100)]
    small = [_smear_crop(seed=1000 + s, size=48, blur=1.6) for s in range(20)]
    groups = ["big"] * len(big) + ["small"] * len(small)
    cfg, info = calibrate_qc(big + small, groups=groups)
    assert cfg.noise == "residual" and "noise_choice" in info
    assert cfg.min_focus is not None and cfg.min_signal_fraction is not None
    assert min(info["training_pass_rate_by_group"].values()) >= 0.96
    pooled, _ = calibrate_qc(big + small, base=QCConfig(noise="residual"))
    small_excluded = sum(not r.passed for r in check_images(small, pooled))
    assert small_excluded > sum(not r.passed for r in check_images(small, cfg))
    blank = _smear_crop(seed=7, nucleus=False)[:, 20:44, 20:44]  # plasma only: nothing but noise
    assert check_image(np.full_like(blank, 220) + blank % 2, cfg).code == EMPTY
    with pytest.raises(ValueError, match="one group per image"):
        calibrate_qc(big, groups=["a"])


@pytest.mark.parametrize("shape", [(3, 7, 9), (6, 40, 40), (2, 63, 31)])
def test_morphology_by_shifts_is_ndimages_bit_for_bit(shape):
    """QC's closing, hole filling and dilation with the in-plane cross equal scipy.ndimage's with that structure,
    on noise, blobs (holes, objects touching the frame's edge), and empty and full frames."""
    from scipy import ndimage

    from phenotyping.analysis.qc import _dilate_cross, _erode_cross, _fill_holes, _in_plane

    cross = _in_plane(ndimage.generate_binary_structure(2, 1))
    rng = np.random.default_rng(shape[1])
    masks = [rng.random(shape) > p for p in (0.3, 0.5, 0.8)]
    masks.append(ndimage.gaussian_filter(rng.random(shape), (0, 1.5, 1.5)) > 0.5)
    masks.append(ndimage.gaussian_filter(rng.random(shape), (0, 1.5, 1.5)) < 0.5)
    masks += [np.zeros(shape, bool), np.ones(shape, bool)]
    for m in masks:
        assert np.array_equal(_dilate_cross(m), ndimage.binary_dilation(m, structure=cross))
        assert np.array_equal(_erode_cross(m), ndimage.binary_erosion(m, structure=cross))
        closed = _erode_cross(_dilate_cross(m))
        assert np.array_equal(closed, ndimage.binary_closing(m, structure=cross, iterations=1))
        assert np.array_equal(_fill_holes(closed), ndimage.binary_fill_holes(closed, structure=cross))
        assert np.array_equal(_dilate_cross(_dilate_cross(m)), ndimage.binary_dilation(m, structure=cross,
                                                                                        iterations=2))
