"""Per-cell explanations (occlusion sensitivity, Grad-CAM) and 2D embeddings of penultimate features.

All functions return NumPy arrays; plotting is the app's job. Inputs are normalised model inputs ``(C, H, W)``, or
``(C, Z, H, W)`` for the 3D models (maps are then ``(Z, H, W)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _prob(model: Any, x: np.ndarray, target: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).logits, 1)[:, target].numpy()


def _check_cell(x: np.ndarray) -> None:
    if x.ndim not in (3, 4):
        raise ValueError(f"expected one normalised cell (C, H, W) or z-stack (C, Z, H, W), got shape {x.shape}")


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, plus a last window flush with the end."""
    last = max(size - patch, 0)
    out = list(range(0, last + 1, stride))
    if out[-1] != last:
        out.append(last)
    return out


def occlusion_map(model: Any, x: np.ndarray, target: int, *, patch: int = 6, stride: int = 3,
                  fill: float = 0.0, batch_size: int = 256, zpatch: int = 1, zstride: int = 1) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus 2014): drop in the target-class probability when a ``patch`` × ``patch``
    square (all channels) is set to ``fill`` (0 = the training mean after normalisation), averaged per pixel.

    Args:
        x: one normalised cell ``(C, H, W)``, or a z-stack ``(C, Z, H, W)``, where the occluded box also spans
            ``zpatch`` planes (default 1: each plane is hidden on its own) and moves by ``zstride`` planes.
        target: class index.
    Returns:
        ``(H, W)`` (or ``(Z, H, W)``) float32; positive where hiding the voxel lowers the target probability.
    """
    import itertools

    _check_cell(x)
    spatial = x.shape[1:]
    sizes = (patch, patch) if x.ndim == 3 else (zpatch, patch, patch)
    strides = (stride, stride) if x.ndim == 3 else (zstride, stride, stride)
    base = _prob(model, x[None], target)[0]
    boxes = list(itertools.product(*[_starts(n, p, st) for n, p, st in zip(spatial, sizes, strides)]))
    heat = np.zeros(spatial, np.float64)
    count = np.zeros(spatial, np.float64)
    for s in range(0, len(boxes), batch_size):
        chunk = boxes[s:s + batch_size]
        xb = np.repeat(x[None], len(chunk), 0).astype(np.float32)
        windows = [tuple(slice(o, o + p) for o, p in zip(box, sizes)) for box in chunk]
        for k, win in enumerate(windows):
            xb[(k, slice(None)) + win] = fill
        drop = base - _prob(model, xb, target)
        for k, win in enumerate(windows):
            heat[win] += drop[k]
            count[win] += 1
    return (heat / np.maximum(count, 1)).astype(np.float32)


def grad_cam(model: Any, x: np.ndarray, target: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) on the model's ``cam_layer``: ReLU of the gradient-weighted sum of its
    feature maps (weights: gradients averaged over the map's spatial axes), upsampled to the input size (bilinear in
    2D, trilinear for z-stacks) and scaled to [0, 1] (all zeros if the map is flat).

    Args:
        x: one normalised cell ``(C, H, W)`` or z-stack ``(C, Z, H, W)``. target: class index.
    Returns:
        ``(H, W)`` (or ``(Z, H, W)``) float32.
    """
    import torch
    import torch.nn.functional as F

    _check_cell(x)
    layer = getattr(model, "cam_layer", None)
    if layer is None:
        raise TypeError(f"{type(model).__name__} has no cam_layer; Grad-CAM needs a neural model")
    store: dict[str, torch.Tensor] = {}

    def hook(_m: Any, _i: Any, out: torch.Tensor) -> None:
        out.retain_grad()
        store["a"] = out

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        xt = torch.from_numpy(np.ascontiguousarray(x[None], np.float32)).requires_grad_(True)
        with torch.enable_grad():
            logit = model(xt).logits[0, target]
            logit.backward()
    finally:
        handle.remove()
        model.train(was_training)
    a, g = store["a"], store["a"].grad                          # (1, K, h, w) or (1, K, z, h, w)
    if a.ndim != x.ndim + 1:
        raise ValueError(f"cam_layer output has shape {tuple(a.shape)}; expected {x.ndim + 1} axes for an input "
                         f"of shape {x.shape}")
    axes = tuple(range(2, a.ndim))
    cam = F.relu((g.mean(axes, keepdim=True) * a).sum(1, keepdim=True))   # (1, 1, h, w) or (1, 1, z, h, w)
    mode = "bilinear" if x.ndim == 3 else "trilinear"
    cam = F.interpolate(cam, size=x.shape[1:], mode=mode, align_corners=False)[0, 0].detach().numpy()
    top = cam.max()
    return (cam / top if top > 0 else cam).astype(np.float32)


#: 2D embedding methods :func:`embed_2d` offers. UMAP is deliberately absent: umap-learn brings numba and llvmlite
#: (210 MB installed) and compiles for about 40 s in each new process before its first map (docs/BENCHMARKS.md).
EMBEDDING_METHODS = ("tsne",)


def embed_2d(features: np.ndarray, *, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2D embedding ``(N, 2)`` of penultimate features ``(N, D)`` by t-SNE (scikit-learn, PCA initialisation).

    Raises:
        ValueError: a method not in :data:`EMBEDDING_METHODS`, or fewer than 3 cells.
    """
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"unknown embedding method {method!r}; choose one of {list(EMBEDDING_METHODS)}"
                         + (" (UMAP is not offered: use 'tsne')" if method == "umap" else ""))
    f = np.asarray(features, np.float32)
    if len(f) < 3:
        raise ValueError(f"need at least 3 cells to embed, got {len(f)}")
    from sklearn.manifold import TSNE

    return TSNE(2, perplexity=min(30.0, (len(f) - 1) / 3), init="pca", random_state=seed).fit_transform(f)
