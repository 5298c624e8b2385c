"""What the review screens show of a cell: a display image, an explanation overlay, and a 2D map of a sample's cells.

UI-free: functions return NumPy arrays (uint8 images ``(H, W)`` grey or ``(H, W, 3)`` RGB; z-stacks add a leading
plane axis) and plain records; the app only lays them out. The model work (Grad-CAM, occlusion, penultimate features) is done by
:mod:`phenotyping.analysis.explain` on the model's own input (sized and normalised as its card says).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXPLANATIONS = ("gradcam", "occlusion")
_RGB_NAMES = (("red", "green", "blue"), ("r", "g", "b"))


def is_rgb(channels: Sequence[str] | None) -> bool:
    """Whether a model card's channel names (``input.channels``) are the red, green and blue of a colour camera
    (a stained smear), in that order; other three-channel inputs (e.g. label-free DPC directions) are not colour."""
    names = tuple(str(c).strip().casefold() for c in channels or ())
    return names in _RGB_NAMES


def _stretch(a: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 copy of channel-first ``a`` (C, …), each channel stretched between its ``low`` and ``high`` percentiles
    over all its pixels (a flat channel becomes mid-grey)."""
    out = np.empty(a.shape, np.uint8)
    for i, p in enumerate(a.astype(np.float32)):
        lo, hi = np.percentile(p, [low, high])
        out[i] = 128 if hi <= lo else np.clip((p - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return out


def to_display(image: np.ndarray, *, low: float = 1.0, high: float = 99.0, rgb: bool | None = None) -> np.ndarray:
    """A channel-first cell ``(C, H, W)`` or z-stack ``(C, Z, H, W)`` as a uint8 display image.

    Three channels are shown as RGB, any other count as the first channel in grey; a z-stack shows its middle
    plane. Each channel is stretched between its ``low`` and ``high`` percentiles (a flat channel becomes mid-grey).
    ``rgb=True`` says the channels are a colour camera's red, green and blue (a stained smear, :func:`is_rgb` of
    the card's channel names): one stretch over all three keeps the stain's hues; ``rgb=False`` shows grey.
    """
    a = np.asarray(image)
    if a.ndim == 4:
        a = a[:, a.shape[1] // 2]
    if a.ndim != 3:
        raise ValueError(f"expected (C, H, W) or (C, Z, H, W), got shape {a.shape}")
    colour = a.shape[0] == 3 if rgb is None else rgb
    if colour and a.shape[0] != 3:
        raise ValueError(f"a colour display needs 3 channels (red, green, blue), the image has {a.shape[0]}")
    if rgb:
        out = _stretch(a[None], low, high)[0]  # one stretch over (3, H, W)
    else:
        out = _stretch(a[:3] if colour else a[:1], low, high)
    return np.moveaxis(out, 0, -1) if out.shape[0] == 3 else out[0]


def stack_display(stack: np.ndarray, *, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Every plane of a z-stack ``(C, Z, H, W)`` as uint8 ``(Z, H, W)`` grey or ``(Z, H, W, 3)`` RGB (channels as in
    :func:`to_display`), stretched with percentiles of the whole stack so planes compare and the maximum over Z of
    the planes is the display of the stack's maximum projection."""
    a = np.asarray(stack)
    if a.ndim != 4:
        raise ValueError(f"expected a z-stack (C, Z, H, W), got shape {a.shape}")
    out = _stretch(a[:3] if a.shape[0] == 3 else a[:1], low, high)     # (C', Z, H, W)
    return np.moveaxis(out, 0, -1) if out.shape[0] == 3 else out[0]


def cell_image(store: Any, cell: Any) -> np.ndarray:
    """The stored cell's original image (native dtype, channel-first)."""
    from phenotyping.ingest import read_image

    return read_image(store.read_cell_bytes(cell), cell.source_file)


def cell_display(store: Any, cell: Any) -> np.ndarray:
    """:func:`to_display` of the stored cell."""
    return to_display(cell_image(store, cell))


def overlay(display: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45, scale: float | None = None) -> np.ndarray:
    """Blend a heat map ``(H, W)`` (divided by ``scale``, default its own maximum; negative values shown as 0) over a
    display image, red = high. Returns RGB uint8 ``(H, W, 3)``."""
    base = np.repeat(display[..., None], 3, -1) if display.ndim == 2 else display
    if base.shape[:2] != heat.shape:
        raise ValueError(f"heat map {heat.shape} does not match the image {base.shape[:2]}")
    h = np.clip(heat, 0, None)
    top = h.max() if scale is None else scale
    h = np.clip(h / top, 0, 1) if top > 0 else h
    colour = np.stack([255 * h, 64 * (1 - h), 255 * (1 - h) * 0.3], -1)
    return np.clip((1 - alpha * h[..., None]) * base + alpha * h[..., None] * colour, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Explanation:
    """An explanation of one cell's prediction, on the model's input grid.

    For a z-stack every array has a leading plane axis Z: ``display`` ``(Z, H, W)`` or ``(Z, H, W, 3)``, ``heat``
    ``(Z, H, W)``, ``image`` ``(Z, H, W, 3)`` (each plane's overlay scaled to the stack's maximum, so planes
    compare). :meth:`view` gives one plane or the maximum projection.
    """

    method: str
    target: str
    display: np.ndarray  # the cell as the model saw it (sized), uint8
    heat: np.ndarray  # (H, W) or (Z, H, W) float32
    image: np.ndarray  # overlay of heat on display, RGB uint8

    @property
    def planes(self) -> int:
        """Number of planes: 0 for a 2D cell."""
        return int(self.heat.shape[0]) if self.heat.ndim == 3 else 0

    def view(self, plane: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(display, overlay)`` of plane ``plane`` (0-based), or with ``None`` the maximum projection over Z of the
        display and of the heat map; a 2D explanation is its own view."""
        if not self.planes:
            return self.display, self.image
        if plane is None:
            disp = self.display.max(0)
            return disp, overlay(disp, self.heat.max(0), scale=max(float(self.heat.max()), 0.0))
        if not 0 <= plane < self.planes:
            raise ValueError(f"plane {plane} is outside this z-stack's planes 0…{self.planes - 1}")
        return self.display[plane], self.image[plane]


def build_explanation(method: str, target: str, sized: np.ndarray, heat: np.ndarray) -> Explanation:
    """The :class:`Explanation` of a sized cell ``(C, H, W)`` or z-stack ``(C, Z, H, W)`` (raw values) and its heat
    map ``(H, W)`` or ``(Z, H, W)``."""
    if heat.shape != sized.shape[1:]:
        raise ValueError(f"heat map {heat.shape} does not match the cell's grid {sized.shape[1:]}")
    if sized.ndim == 3:
        disp = to_display(sized)
        return Explanation(method, target, disp, heat, overlay(disp, heat))
    disp = stack_display(sized)
    top = max(float(heat.max()), 0.0)
    image = np.stack([overlay(d, h, scale=top) for d, h in zip(disp, heat)])   # (Z, H, W, 3)
    return Explanation(method, target, disp, heat, image)


def explain_cell(store: Any, cell: Any, model_dir: str | Path, *, method: str = "gradcam",
                 target: str | None = None) -> Explanation:
    """Grad-CAM or occlusion map of ``cell`` for class ``target`` (default: the model's top class for it).

    A z-stack ``(C, Z, H, W)`` gets a ``(Z, H, W)`` map (occlusion hides one plane's square at a time). The model
    must take the cell's kind: a 2D model cannot explain a z-stack, nor a 3D model a 2D cell.
    """
    from phenotyping.analysis.explain import grad_cam, occlusion_map
    from phenotyping.models.checkpoint import load_model_cached

    if method not in EXPLANATIONS:
        raise ValueError(f"unknown explanation {method!r}; choose one of {EXPLANATIONS}")
    lm = load_model_cached(model_dir)
    sized = lm.preprocess.size(cell_image(store, cell))
    dims = int(lm.model.config.get("dims", 2)) if getattr(lm.model, "config", None) else 2
    if sized.ndim - 1 != dims:
        kind = {2: "a 2D cell (C, H, W)", 3: "a z-stack (C, Z, H, W)"}
        raise ValueError(f"cell {cell.id} ({cell.source_file}) is {kind[sized.ndim - 1]} but model {lm.id} takes "
                         f"{kind.get(dims, dims)}; explain it with a model of its kind")
    x = lm.preprocess.normalise(sized)
    if target is None:
        from phenotyping.models.forward import predict_arrays

        idx = int(predict_arrays(lm.model, x[None])["logits"].argmax(1)[0])
    elif target in lm.classes:
        idx = lm.classes.index(target)
    else:
        raise ValueError(f"class {target!r} is not one of the model's classes {lm.classes}")
    heat = grad_cam(lm.model, x, idx) if method == "gradcam" else occlusion_map(lm.model, x, idx)
    return build_explanation(method, lm.classes[idx], sized, heat)


def cell_features(store: Any, cells: Sequence[Any], model_dir: str | Path, *, batch_size: int = 256) -> np.ndarray:
    """Penultimate features ``(N, D)`` of the model for ``cells`` (2D or 3D, sized and normalised per the card)."""
    from phenotyping.models.forward import predict_arrays
    from phenotyping.models.checkpoint import load_model_cached

    lm = load_model_cached(model_dir)
    out = []
    for i in range(0, len(cells), batch_size):
        batch = np.stack([lm.preprocess.size(cell_image(store, c)) for c in cells[i:i + batch_size]])
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


def embedding_figure(cell_ids: Sequence[int], xy: np.ndarray, labels: Sequence[str]) -> Any:
    """The Review screen's embedding map: one point per cell (its id as ``customdata``), coloured by its label.

    Drawn as SVG, not WebGL, at any size (the map holds at most ``embedding_map``'s 2,000 cells): a click on an SVG
    point is reported with its customdata in every browser, while WebGL traces (plotly's choice above 1,000 points)
    send none and lost point clicks in headless Chromium.
    """
    import plotly.express as px

    fig = px.scatter(x=xy[:, 0], y=xy[:, 1], color=list(labels), custom_data=[list(cell_ids)],
                     labels={"x": "t-SNE 1", "y": "t-SNE 2", "color": "label"}, template="plotly_white",
                     height=520, render_mode="svg")
    fig.update_traces(marker={"size": 6})
    return fig
