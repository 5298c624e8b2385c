"""Shared fixtures: tiny synthetic images and stores on tmp_path."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (the shared data sets live beside the project)")
    return p


def cell_array(h: int = 32, w: int = 32, c: int = 1, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A textured disc on a flat background, channel-first."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 3) ** 2
    hi = 255 if dtype == np.uint8 else 60000
    img = np.full((c, h, w), hi // 5, dtype=np.float64)
    img[:, disc] = hi * 0.6 + rng.normal(0, hi * 0.05, size=(c, int(disc.sum())))
    return np.clip(img, 0, hi).astype(dtype)


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
