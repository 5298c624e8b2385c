"""Shared fixtures: tiny synthetic images and stores on tmp_path."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# The app's background model warm-up imports torch while AppTest parses pages; CPython 3.11's AST constructor is not
# thread-safe (gh-106905), so that race can fail a page with "AST constructor recursion depth mismatch".
os.environ.setdefault("LEUKO_WARM_UP_MODELS", "false")
# Prediction jobs run in the test's process (several tests replace predict_sample or the model loader there); the
# analysis worker process is exercised by tests/test_app_job_worker.py and the browser tests.
os.environ.setdefault("LEUKO_JOB_WORKER", "thread")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (the shared data sets live beside the project)")
    return p


def three_site_wbc_manifest(out_dir: Path) -> Path:
    """The three-site WBC manifest the shipped ``models/wbc-hybrid`` was trained on (``docs/make_wbc_manifest.py``:
    links to ../shared/data, no copies) written in ``out_dir``, or skip when a site's data are absent."""
    import subprocess
    import sys

    for parts in (("wbc-smear", "segwbc-d1"), ("wbc-smear", "bccd"), ("wbc-pbc",)):
        shared_data(*parts)
    out = out_dir / "manifest.csv"
    subprocess.run([sys.executable, str(PROJECT_ROOT / "docs" / "make_wbc_manifest.py"), "--out", str(out),
                    "--data", str(SHARED_DATA)], check=True, capture_output=True)
    return out


def cell_array(h: int = 32, w: int = 32, c: int = 1, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A textured disc on a flat background, channel-first."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 3) ** 2
    hi = 255 if dtype == np.uint8 else 60000
    img = np.full((c, h, w), hi // 5, dtype=np.float64)
    img[:, disc] = hi * 0.6 + rng.normal(0, hi * 0.05, size=(c, int(disc.sum())))
    return np.clip(img, 0, hi).astype(dtype)


def synthetic_cell(kind: str, rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """2-channel uint16 cell: a bright textured disc or ring on a noisy background, or a blank frame."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    img = rng.normal(1000, 20, size=(2, size, size))
    if kind == "disc":
        img[:, r < 6] += 3000 + rng.normal(0, 300, size=(2, int((r < 6).sum())))
    elif kind == "ring":
        m = (r > 4) & (r < 7)
        img[:, m] += 3000 + rng.normal(0, 300, size=(2, int(m.sum())))
    return np.clip(img, 0, 65535).astype(np.uint16)


def save_tiny_model(out: Path, classes: list[str]) -> Path:
    """An untrained ``test_hybrid`` (2 channels, 20 px, one target ``cd16``) saved as a model folder with a
    calibrated-looking card and label-free QC defaults (no training needed)."""
    import torch

    from phenotyping.analysis.qc import QCConfig
    from phenotyping.models import create_model
    from phenotyping.models.checkpoint import save_model_dir
    from phenotyping.models.preprocess import Preprocess, TargetScaler

    torch.manual_seed(0)
    model = create_model("test_hybrid", in_chans=2, num_classes=len(classes), num_targets=1, img_size=20).eval()
    pre = Preprocess(img_size=20, channels=["brightfield", "darkfield"], mean=[1500.0, 1500.0], std=[1000.0, 1000.0])
    scaler = TargetScaler(names=["cd16"], log=[False], mean=[5.0], std=[2.0])
    card = {
        "id": "tiny-0001", "classes": list(classes), "architecture": {"name": "test_hybrid"},
        "calibration": {"temperature": 1.5, "unidentified_threshold": 0.5},
        "training": {"class_proportions": {c: 1 / len(classes) for c in classes}},
        "validation": {"confusion": [[9, 1], [2, 8]]},
        "qc": QCConfig().to_dict(),  # the label-free defaults suit these 20×20 synthetic crops
    }
    save_model_dir(out, model, card, preprocess=pre, targets=scaler)
    return out


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    a = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    if fmt == "tiff":
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, photometric="minisblack", metadata={"axes": "CYX" if arr.ndim == 3 else "CZYX"})
        return buf.getvalue()
    a = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format={"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}[fmt])
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    from phenotyping.store import Store

    s = Store(":memory:", image_dir=tmp_path / "images")
    yield s
    s.close()


@pytest.fixture
def sample(store):
    from phenotyping.schemas import Sample, Specimen

    return store.create_sample(Sample(id="S1", specimen=Specimen.blood, patient_pseudonym="P-001"), actor="tester")


BSCCM_LED = ["Brightfield", "DF_50", "DPC_Bottom", "DPC_Left", "DPC_Right", "DPC_Top"]


def build_bsccm(root: Path, n: int = 6, *, drop: int | None = None, random_leds: bool = False, dpc: bool = False,
                markers: bool = True, led_arrays: dict[int, np.ndarray] | None = None) -> Path:
    """A tiny BSCCM folder in the bsccm package's layout: LED-array stacks (channel c at about 100·(c+1), or uniform
    random values), optionally the computed DPC images, and surface markers; cell ``drop`` is indexed but missing.
    ``led_arrays`` (cell index -> uint16 ``(len(BSCCM_LED), H, W)``) gives chosen cells their own LED-array stack."""
    import zarr

    root.mkdir(parents=True)
    (root / "BSCCM_global_metadata.json").write_text(json.dumps({
        "name": "BSCCM-tiny-test", "led_array": {"channel_names": BSCCM_LED},
        "fluorescence": {"channel_names": ["Fluor_690-"] if markers else []}}))
    g = zarr.open_group(str(root / "BSCCM_images.zarr"), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    with open(root / "BSCCM_index.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["global_index", "data_path", "batch", "slide_replicate", "antibodies"])
        for i in range(n):
            data_path = f"batch_0/slide_{i % 2}"
            w.writerow([i, data_path, 0, i % 2, "CD16"])
            if i == drop:
                continue
            if random_leds:
                led = rng.integers(100, 900, size=(len(BSCCM_LED), 16, 16)).astype(np.uint16)
            else:
                led = np.stack([np.full((16, 16), 100 * (c + 1), np.uint16) for c in range(len(BSCCM_LED))])
                led += rng.integers(0, 50, size=led.shape).astype(np.uint16)
            if led_arrays is not None and i in led_arrays:
                led = led_arrays[i]
            g.create_array(f"{data_path}/led_array/cell_{i}", data=led)
            if dpc:
                left = led[BSCCM_LED.index("DPC_Left")].astype(np.float32)
                right = led[BSCCM_LED.index("DPC_Right")].astype(np.float32)
                g.create_array(f"{data_path}/dpc/cell_{i}", data=((left - right) / (left + right)).astype(np.float32))
    if markers:
        with open(root / "BSCCM_surface_markers.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["global_index", "CD16_full_model_unmixed", "CD45_full_model_unmixed"])
            for i in range(n):
                w.writerow([i, 0.5 * i, 1.0])
    return root
