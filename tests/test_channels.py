"""Channel names: read from image metadata (BSCCM reader, ImageJ, OME), DPC-aware presets, and what training does."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BSCCM_LED, build_bsccm, encode

DPC4 = ["DPC_Left", "DPC_Right", "DPC_Top", "DPC_Bottom"]
LED = BSCCM_LED


def _bsccm_root(root: Path, n: int = 24) -> Path:
    """A tiny BSCCM folder with random LED-array stacks and computed DPC images (no markers)."""
    return build_bsccm(root, n, random_leds=True, dpc=True, markers=False)


def _export(root: Path, out: Path, contrast: str) -> Path:
    """Write every cell the BSCCM reader yields as a TIFF plus a manifest.csv (two classes by slide parity)."""
    from phenotyping.ingest.bsccm import iter_bsccm

    (out / "cells").mkdir(parents=True)
    rows = []
    for e in iter_bsccm(root, contrast=contrast):
        assert e.error is None
        (out / "cells" / f"cell_{e.cell_key}.tif").write_bytes(e.read())
        rows.append([e.cell_key, f"cells/cell_{e.cell_key}.tif", "a" if int(e.cell_key) % 2 else "b"])
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path", "cell_type"])
        w.writerows(rows)
    return out / "manifest.csv"


# ---------------------------------------------------------------- reading names
def test_names_from_tifffile_imagej_and_ome_metadata(tmp_path):
    import tifffile

    from phenotyping.training.data import image_channel_names

    a = np.zeros((2, 3, 8, 8), np.uint16)                                  # (C, Z, H, W)
    tifffile.imwrite(tmp_path / "json.tif", a[:, 0], photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["brightfield", "darkfield"]}})
    tifffile.imwrite(tmp_path / "ij.tif", a.transpose(1, 0, 2, 3), imagej=True,
                     metadata={"axes": "ZCYX", "Labels": ["BF", "DF"] * 3})
    tifffile.imwrite(tmp_path / "ome.ome.tif", a, ome=True, metadata={"axes": "CZYX", "Channel": {"Name": ["A", "B"]}})
    tifffile.imwrite(tmp_path / "plain.tif", a[:, 0], photometric="minisblack", metadata={"axes": "CYX"})
    (tmp_path / "rgb.png").write_bytes(encode(np.zeros((3, 8, 8), np.uint8), "png"))
    assert image_channel_names(tmp_path / "json.tif") == ["brightfield", "darkfield"]
    assert image_channel_names(tmp_path / "ij.tif") == ["BF", "DF"]
    assert image_channel_names(tmp_path / "ome.ome.tif") == ["A", "B"]
    assert image_channel_names(tmp_path / "plain.tif") is None
    assert image_channel_names(tmp_path / "rgb.png") is None


def test_disagreeing_images_name_both_files(tmp_path):
    import tifffile

    from phenotyping.training.data import channel_names_from_images

    a = np.zeros((2, 8, 8), np.uint16)
    for name, chans in (("one.tif", ["bf", "df"]), ("two.tif", ["bf", "df"]), ("three.tif", ["df", "bf"])):
        tifffile.imwrite(tmp_path / name, a, photometric="minisblack",
                         metadata={"axes": "CYX", "Channel": {"Name": chans}})
    tifffile.imwrite(tmp_path / "bare.tif", a, photometric="minisblack", metadata={"axes": "CYX"})
    assert channel_names_from_images([tmp_path / "one.tif", tmp_path / "two.tif"]) == ["bf", "df"]
    with pytest.raises(ValueError, match=r"one\.tif.*three\.tif"):
        channel_names_from_images([tmp_path / n for n in ("one.tif", "two.tif", "three.tif")])
    with pytest.raises(ValueError, match=r"one\.tif.*bare\.tif"):
        channel_names_from_images([tmp_path / "one.tif", tmp_path / "bare.tif"])


def test_bsccm_reader_names_are_read_back_for_both_contrasts(tmp_path):
    from phenotyping.training.data import channel_names_from_images, read_cell

    root = _bsccm_root(tmp_path / "BSCCM-tiny", n=4)
    led = _export(root, tmp_path / "led", "led_array")
    dpc = _export(root, tmp_path / "dpc", "dpc")
    assert channel_names_from_images(sorted((led.parent / "cells").iterdir())) == DPC4
    assert channel_names_from_images(sorted((dpc.parent / "cells").iterdir())) == ["DPC"]
    assert read_cell(dpc.parent / "cells" / "cell_0.tif").shape == (1, 16, 16)


# ---------------------------------------------------------------- presets
def test_presets_cover_every_dpc_name_the_bsccm_reader_writes():
    from phenotyping.models.preprocess import channel_specs

    s = {c.name: c for c in channel_specs(DPC4 + ["DPC", "Brightfield", "DF_50"])}
    assert s["DPC_Left"].hflip == "swap:DPC_Right" and s["DPC_Right"].hflip == "swap:DPC_Left"
    assert s["DPC_Top"].vflip == "swap:DPC_Bottom" and s["DPC_Bottom"].vflip == "swap:DPC_Top"
    assert s["DPC_Left"].vflip == "same" and s["DPC_Top"].hflip == "same"
    assert (s["DPC"].hflip, s["DPC"].vflip) == ("negate", "same")                 # left−right difference image
    assert not any(s[n].rot90 for n in DPC4 + ["DPC"])
    assert s["Brightfield"].rot90 and s["DF_50"].hflip == "same"
    half = {c.name: c for c in channel_specs(["DF_50_Bottom", "DF_50_Top", "led_119"])}
    assert half["DF_50_Bottom"].vflip == "swap:DF_50_Top" and not half["DF_50_Bottom"].rot90
    assert half["led_119"].hflip == half["led_119"].vflip == "never"            # one LED: unknown direction


def test_augmented_dpc_equals_dpc_of_augmented_half_images():
    """Flipping the raw left/right images and recomputing (L − R)/(L + R) gives the flipped DPC channel."""
    from phenotyping.training.data import augment
    from phenotyping.models.preprocess import channel_specs

    rng = np.random.default_rng(3)
    left, right = rng.uniform(100, 900, (2, 7, 7)).astype(np.float32)
    dpc = (left - right) / (left + right)
    x = np.stack([left, right, dpc])
    specs = channel_specs(["DPC_Left", "DPC_Right", "DPC"])
    flipped_h = 0
    for seed in range(40):
        a = augment(x, specs, np.random.default_rng(seed))
        assert np.allclose(a[2], (a[0] - a[1]) / (a[0] + a[1]), atol=1e-6)
        flipped_h += np.array_equal(np.sort(a[0], None), np.sort(right, None))   # "left" now holds the right image
    assert 0 < flipped_h < 40


# ---------------------------------------------------------------- training
def test_training_reads_bsccm_channel_names_and_uses_dpc_presets(tmp_path):
    from phenotyping.training.train import TrainConfig, train

    manifest = _export(_bsccm_root(tmp_path / "BSCCM-tiny"), tmp_path / "led", "led_array")
    logs: list[str] = []
    card = train(manifest, "cell_type", tmp_path / "m", log=logs.append,
                 config=TrainConfig(arch="test_hybrid", epochs=1, seed=0, batch_size=8))
    assert card["input"]["channels"] == DPC4
    assert card["input"]["channel_names_from"] == "image metadata"
    specs = {s["name"]: s for s in card["input"]["channel_specs"]}
    assert specs["DPC_Left"]["hflip"] == "swap:DPC_Right" and specs["DPC_Bottom"]["vflip"] == "swap:DPC_Top"
    assert any("DPC_Left ↔ DPC_Right" in m and "no 90° rotations" in m for m in logs)
    assert not any("treated as symmetric" in m for m in logs)


def test_training_without_names_says_channels_are_treated_as_symmetric(tmp_path, capsys):
    from phenotyping.__main__ import main

    (tmp_path / "cells").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        img = rng.integers(0, 60000, size=(2, 12, 12)).astype(np.uint16)
        (tmp_path / "cells" / f"c{i}.tif").write_bytes(encode(img, "tiff"))      # axes only, no channel names
        rows.append(f"c{i},cells/c{i}.tif,{'ab'[i % 2]}")
    (tmp_path / "manifest.csv").write_text("cell_id,path,cell_type\n" + "\n".join(rows) + "\n")
    assert main(["train", "--manifest", str(tmp_path / "manifest.csv"), "--label-column", "cell_type",
                 "--arch", "test_cnn", "--epochs", "1", "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "no channel names" in err and "treated as symmetric" in err
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card["input"]["channels"] == ["ch0", "ch1"] and card["input"]["channel_names_from"].startswith("generic")


def test_channels_option_wins_and_a_mismatch_with_the_metadata_is_said(tmp_path):
    import tifffile

    from phenotyping.training.train import TrainConfig, _channel_names

    a = np.zeros((2, 8, 8), np.uint16)
    for i in range(3):
        tifffile.imwrite(tmp_path / f"{i}.tif", a, photometric="minisblack",
                         metadata={"axes": "CYX", "Channel": {"Name": ["DPC_Right", "DPC_Left"]}})
    paths = sorted(tmp_path.glob("*.tif"))
    logs: list[str] = []
    assert _channel_names(TrainConfig(), paths, 2, logs.append) == (["DPC_Right", "DPC_Left"], "image metadata")
    names = _channel_names(TrainConfig(channels=("dpc_left", "dpc_right")), paths, 2, logs.append)
    assert names == (["dpc_left", "dpc_right"], "--channels")
    assert "differ from the names in the images' metadata (DPC_Right, DPC_Left)" in logs[-1]
    with pytest.raises(ValueError, match="3 channels"):
        _channel_names(TrainConfig(channels=("a", "b", "c")), paths, 2, logs.append)
