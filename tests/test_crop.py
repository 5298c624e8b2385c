"""The nucleus crop: stained cells from frames of different magnification reach the model at one scale."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from phenotyping.errors import ImageError
from phenotyping.models.crop import crop_nucleus, nucleus_box
from phenotyping.models.preprocess import Preprocess, fit_to_size, size_cell
from phenotyping.training.data import load_images

BACKGROUND = (235.0, 225.0, 230.0)   # plasma: pale
RED_CELL = (215.0, 160.0, 170.0)     # pink
CYTOPLASM = (205.0, 185.0, 215.0)    # pale lilac
NUCLEUS = (95.0, 55.0, 150.0)        # dark purple


def smear(frame: int, *, cell_r: float, centre: tuple[float, float] | None = None, seed: int = 0,
          lobes: bool = False) -> np.ndarray:
    """A frame × frame RGB smear: a leukocyte (nucleus of radius cell_r / 2 inside cytoplasm of radius cell_r) among
    red cells, with noise. ``lobes``: the nucleus as three separate lobes (a segmented neutrophil)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:frame, :frame].astype(np.float32)
    cy, cx = centre or ((frame - 1) / 2, (frame - 1) / 2)
    img = np.empty((3, frame, frame), np.float32)
    img[:] = np.array(BACKGROUND)[:, None, None]
    for _ in range(int(frame * frame / (cell_r * cell_r * 6))):
        ry, rx = rng.uniform(0, frame, 2)
        if np.hypot(ry - cy, rx - cx) > 1.6 * cell_r:
            img[:, np.hypot(yy - ry, xx - rx) < 0.8 * cell_r] = np.array(RED_CELL)[:, None]
    r = np.hypot(yy - cy, xx - cx)
    img[:, r < cell_r] = np.array(CYTOPLASM)[:, None]
    if lobes:
        for k in range(3):
            a = 2 * np.pi * k / 3
            ly, lx = cy + 0.3 * cell_r * np.sin(a), cx + 0.3 * cell_r * np.cos(a)
            img[:, np.hypot(yy - ly, xx - lx) < 0.22 * cell_r] = np.array(NUCLEUS)[:, None]
    else:
        img[:, r < cell_r / 2] = np.array(NUCLEUS)[:, None]
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.float32)


def test_the_box_is_centred_on_the_nucleus_and_sized_from_it():
    img = smear(200, cell_r=24, centre=(90, 110))
    cy, cx, half = nucleus_box(img)
    assert abs(cy - 90) < 2 and abs(cx - 110) < 2
    assert 1.5 * 12 < half < 1.9 * 12   # 1.7 × the nucleus's half-side


def test_separate_lobes_are_one_nucleus():
    img = smear(160, cell_r=30, lobes=True)
    _, _, half_lobes = nucleus_box(img)
    _, _, half_one = nucleus_box(smear(160, cell_r=30))
    assert half_lobes > 0.8 * half_one  # the box spans all three lobes, not one


def test_the_same_cell_at_two_magnifications_comes_out_alike():
    """A cell filling a small frame and the same cell at a third of a large frame: after the crop and sizing to 48 px
    the two inputs nearly match, while plain fitting leaves them at different scales."""
    small = smear(120, cell_r=40, seed=1)
    large = smear(360, cell_r=40, seed=2)
    a, b = size_cell(small, 48, crop="nucleus"), size_cell(large, 48, crop="nucleus")
    dark_a, dark_b = (a[1] < 120).mean(), (b[1] < 120).mean()
    assert dark_b == pytest.approx(dark_a, rel=0.25)
    plain_a, plain_b = fit_to_size(small, 48), fit_to_size(large, 48)
    assert (plain_b[1] < 120).mean() < 0.5 * (plain_a[1] < 120).mean()
    assert a.shape == b.shape == (3, 48, 48) and a.dtype == np.float32


def test_crop_reaching_past_the_frame_is_filled_with_the_background():
    img = smear(100, cell_r=20, centre=(20, 20))
    out = crop_nucleus(img)
    corner = out[:, :3, :3].reshape(3, -1).mean(1)
    assert np.allclose(corner, BACKGROUND, atol=12)


def test_unstained_frame_keeps_the_whole_frame():
    flat = np.full((3, 64, 80), 200.0, np.float32)
    assert crop_nucleus(flat).shape == (3, 80, 80)


def test_any_bit_depth_gives_the_same_box():
    img = smear(150, cell_r=25)
    assert nucleus_box(img * 257.0) == pytest.approx(nucleus_box(img), abs=0.5)


def test_wrong_images_are_refused_naming_the_shape():
    with pytest.raises(ValueError, match=r"RGB cell \(3, H, W\).*\(2, 40, 40\)"):
        crop_nucleus(np.zeros((2, 40, 40)))
    with pytest.raises(ValueError, match="unknown crop 'centre'"):
        size_cell(np.zeros((3, 40, 40)), 32, crop="centre")


def test_load_images_names_the_file_a_crop_cannot_take(tmp_path):
    p = tmp_path / "grey.png"
    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(p)
    with pytest.raises(ImageError, match="grey.png.*RGB cell"):
        load_images([p], 32, crop="nucleus")


def test_old_preprocessing_without_a_crop_loads_as_none():
    d = {"img_size": 16, "channels": ["a"], "mean": [0.0], "std": [1.0], "channel_specs": [], "mode": "dataset"}
    pre = Preprocess.from_dict(d)
    assert pre.crop == "none"
    x = np.random.default_rng(0).normal(size=(1, 30, 30)).astype(np.float32)
    assert np.array_equal(pre.size(x), fit_to_size(x, 16))


@pytest.fixture(scope="module")
def cropped_model(tmp_path_factory):
    """A tiny model trained with ``--crop nucleus`` on two classes of smear cells: round vs lobed nuclei."""
    from phenotyping.__main__ import main

    root = tmp_path_factory.mktemp("crop")
    rows = []
    for i in range(24):
        kind = ("round", "lobed")[i % 2]
        frame = (120, 300)[(i // 2) % 2]
        img = smear(frame, cell_r=30 + (i % 5), seed=i, lobes=kind == "lobed")
        name = f"c{i:02d}.png"
        Image.fromarray(img.transpose(1, 2, 0).astype(np.uint8)).save(root / name)
        rows.append({"cell_id": f"c{i:02d}", "path": name, "cell_type": kind})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = root / "model"
    rc = main(["train", "--manifest", str(root / "manifest.csv"), "--label-column", "cell_type", "--arch",
               "test_cnn", "--img-size", "24", "--epochs", "2", "--crop", "nucleus", "--normalisation", "per-image",
               "--test-fraction", "0", "--data-licence", "CC0-1.0", "--out", str(out)])
    assert rc == 0
    return root, out


def test_the_card_and_checkpoint_carry_the_crop_and_prediction_applies_it(cropped_model):
    from phenotyping.models.checkpoint import load_model_dir

    root, out = cropped_model
    card = json.loads((out / "model_card.json").read_text())
    assert card["input"]["crop"] == "nucleus" and "nucleus" in card["input"]["resize"]
    lm = load_model_dir(out)
    assert lm.preprocess.crop == "nucleus"
    img = np.asarray(Image.open(root / "c03.png"), np.float32).transpose(2, 0, 1)
    assert np.allclose(lm.preprocess.size(img), size_cell(img, 24, crop="nucleus"))
    assert not np.allclose(lm.preprocess.size(img), fit_to_size(img, 24))


def test_fine_tuning_refuses_another_crop(cropped_model, tmp_path, capsys):
    from phenotyping.__main__ import main

    root, out = cropped_model
    rc = main(["train", "--init-from", str(out), "--manifest", str(root / "manifest.csv"), "--label-column",
               "cell_type", "--crop", "none", "--out", str(tmp_path / "child")])
    assert rc != 0
    assert "crop nucleus" in capsys.readouterr().err and not (tmp_path / "child").exists()


def test_a_fine_tuned_child_keeps_the_crop(cropped_model, tmp_path):
    from phenotyping.__main__ import main
    from phenotyping.models.checkpoint import load_model_dir

    root, out = cropped_model
    rc = main(["train", "--init-from", str(out), "--manifest", str(root / "manifest.csv"), "--label-column",
               "cell_type", "--epochs", "1", "--out", str(tmp_path / "child")])
    assert rc == 0
    card = json.loads((tmp_path / "child" / "model_card.json").read_text())
    assert card["input"]["crop"] == "nucleus" and card["training"]["config"]["crop"] == "nucleus"
    assert load_model_dir(tmp_path / "child").preprocess.crop == "nucleus"
