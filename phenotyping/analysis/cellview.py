"""What the review screens show of a cell: a display image, an explanation overlay, and a 2D map of a sample's cells.

UI-free: functions return NumPy arrays (uint8 images ``(H, W)`` grey or ``(H, W, 3)`` RGB) and plain records; the
app only lays them out. The model work (Grad-CAM, occlusion, penultimate features) is done by
:mod:`phenotyping.analysis.explain` on the model's own input (sized and normalised as its card says).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXPLANATIONS = ("gradcam", "occlusion")


def to_display(image: np.ndarray, *, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """A channel-first cell ``(C, H, W)`` or z-stack ``(C, Z, H, W)`` as a uint8 display image.

    Three channels are shown as RGB, any other count as the first channel in grey; a z-stack shows its middle plane.
    Each channel is stretched between its ``low`` and ``high`` percentiles (a flat channel becomes mid-grey).
    """
    a = np.asarray(image)
    if a.ndim == 4:
        a = a[:, a.shape[1] // 2]
    if a.ndim != 3:
        raise ValueError(f"expected (C, H, W) or (C, Z, H, W), got shape {a.shape}")
    planes = a[:3] if a.shape[0] == 3 else a[:1]
    out = np.empty(planes.shape, np.uint8)
    for i, p in enumerate(planes.astype(np.float32)):
        lo, hi = np.percentile(p, [low, high])
        out[i] = 128 if hi <= lo else np.clip((p - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, -1) if out.shape[0] == 3 else out[0]


def cell_image(store: Any, cell: Any) -> np.ndarray:
    """The stored cell's original image (native dtype, channel-first)."""
    from phenotyping.ingest import read_image

    return read_image(store.read_cell_bytes(cell), cell.source_file)


def cell_display(store: Any, cell: Any) -> np.ndarray:
    """:func:`to_display` of the stored cell."""
    return to_display(cell_image(store, cell))


def overlay(display: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map ``(H, W)`` (scaled to its own maximum; negative values shown as 0) over a display image,
    red = high. Returns RGB uint8 ``(H, W, 3)``."""
    base = np.repeat(display[..., None], 3, -1) if display.ndim == 2 else display
    if base.shape[:2] != heat.shape:
        raise ValueError(f"heat map {heat.shape} does not match the image {base.shape[:2]}")
    h = np.clip(heat, 0, None)
    h = h / h.max() if h.max() > 0 else h
    colour = np.stack([255 * h, 64 * (1 - h), 255 * (1 - h) * 0.3], -1)
    return np.clip((1 - alpha * h[..., None]) * base + alpha * h[..., None] * colour, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Explanation:
    """An explanation of one cell's prediction, on the model's input grid."""

    method: str
    target: str
    display: np.ndarray  # the cell as the model saw it (sized), uint8
    heat: np.ndarray  # (H, W) float32
    image: np.ndarray  # overlay of heat on display, RGB uint8


def explain_cell(store: Any, cell: Any, model_dir: str | Path, *, method: str = "gradcam",
                 target: str | None = None) -> Explanation:
    """Grad-CAM or occlusion map of ``cell`` for class ``target`` (default: the model's top class for it)."""
    from phenotyping.models.preprocess import fit_to_size
    from phenotyping.analysis.explain import grad_cam, occlusion_map
    from phenotyping.models.checkpoint import load_model_cached

    if method not in EXPLANATIONS:
        raise ValueError(f"unknown explanation {method!r}; choose one of {EXPLANATIONS}")
    lm = load_model_cached(model_dir)
    sized = fit_to_size(cell_image(store, cell), lm.preprocess.img_size)
    if sized.ndim != 3:
        raise ValueError("explanations are drawn for 2D cells; this cell is a z-stack")
    x = lm.preprocess.normalise(sized)
    if target is None:
        from phenotyping.models.forward import predict_arrays

        idx = int(predict_arrays(lm.model, x[None])["logits"].argmax(1)[0])
    elif target in lm.classes:
        idx = lm.classes.index(target)
    else:
        raise ValueError(f"class {target!r} is not one of the model's classes {lm.classes}")
    heat = grad_cam(lm.model, x, idx) if method == "gradcam" else occlusion_map(lm.model, x, idx)
    disp = to_display(sized)
    return Explanation(method, lm.classes[idx], disp, heat, overlay(disp, heat))


def cell_features(store: Any, cells: Sequence[Any], model_dir: str | Path, *, batch_size: int = 256) -> np.ndarray:
    """Penultimate features ``(N, D)`` of the model for ``cells`` (2D or 3D, sized and normalised per the card)."""
    from phenotyping.models.preprocess import fit_to_size
    from phenotyping.models.forward import predict_arrays
    from phenotyping.models.checkpoint import load_model_cached

    lm = load_model_cached(model_dir)
    out = []
    for i in range(0, len(cells), batch_size):
        batch = np.stack([fit_to_size(cell_image(store, c), lm.preprocess.img_size) for c in cells[i:i + batch_size]])
        out.append(predict_arrays(lm.model, lm.preprocess.normalise(batch, batched=True))["features"])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embedding_map(store: Any, cells: Sequence[Any], model_dir: str | Path, *, method: str = "tsne",
                  max_cells: int = 2000, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """2D embedding of the cells' penultimate features: ``(cell ids, (N, 2) coordinates)``.

    Above ``max_cells`` an evenly spaced subset (every k-th cell by id) is embedded, so the map stays quick.
    ``method`` is one of :data:`phenotyping.analysis.explain.EMBEDDING_METHODS` (checked before any cell is read).
    """
    from phenotyping.analysis.explain import EMBEDDING_METHODS, embed_2d

    if method not in EMBEDDING_METHODS:
        raise ValueError(f"unknown embedding method {method!r}; choose one of {list(EMBEDDING_METHODS)}")
    chosen = list(cells)
    if len(chosen) > max_cells:
        step = len(chosen) / max_cells
        chosen = [chosen[int(i * step)] for i in range(max_cells)]
    feats = cell_features(store, chosen, model_dir)
    return [c.id for c in chosen], embed_2d(feats, method=method, seed=seed)
