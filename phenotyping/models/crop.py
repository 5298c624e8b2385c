"""A square crop around a stained cell's nucleus, so cells from analysers and cameras of different magnification
reach a model at about the same scale.

A CellaVision frame (360 px) shows a leukocyte at a third of its width among red cells; a BCCD crop is filled by
the cell. Scale augmentation alone does not bridge a factor of 2–3, so a model meant for several sites can carry
``crop="nucleus"`` in its preprocessing: every cell, in training and in every prediction, is first cropped to a
square centred on its stained nucleus, sized from the nucleus's extent, then fitted to the model's input size.

The nucleus is found from the stain, not learned: in Romanowsky-type stains (May-Grünwald-Giemsa, Wright, Leishman)
chromatin is the darkest and bluest structure, so per pixel ``s = (B − G) + ½(max(R, G, B) − G)`` is high in the
nucleus, low in red cells (pink: G below R, B near R) and in background. ``s`` is scaled to the image's own 2nd–99.5th
percentiles (any bit depth, any exposure), split in three by Otsu's method (the top class is chromatin), and the connected parts whose centre lies
within 30 % of the frame from its centre are kept (the lobes of a segmented neutrophil are separate parts). The crop
is centred on their bounding box and its half-side is 1.7 × the box's half-side, kept between 6 % and 50 % of the
frame: a cell's diameter is about 1.3–2 × its nucleus's. Where nothing stains, the crop is the
whole frame. Pixels the square reaches beyond the frame get each channel's border median (the background).
"""

from __future__ import annotations

import numpy as np

#: Values of ``Preprocess.crop``.
CROPS = ("none", "nucleus")
#: The crop's half-side relative to the half-side of the nucleus's bounding box, and its bounds (share of the frame).
_SCALE, _MIN_HALF, _MAX_HALF = 1.7, 0.06, 0.5
#: How each crop mode brings a cell to the input size (the card's ``input.resize``).
RESIZE_TEXT = {
    "none": "longer side scaled to img_size by area averaging (never enlarged), then centre-padded with each "
            "channel's border median",
    "nucleus": "square crop centred on the stained nucleus, 1.7 × the nucleus's extent (phenotyping.models.crop), "
               "scaled to img_size (area averaging down, bilinear up)",
}


def border_median(a: np.ndarray) -> np.ndarray:
    """Each channel's median over the outermost rows and columns of every plane of ``a`` (``(C, H, W)`` or
    ``(C, Z, H, W)``): the background level used to pad or refill a frame. Returns ``(C,)``."""
    h, w = a.shape[-2:]
    flat = a.reshape(a.shape[0], -1, h, w)
    border = np.concatenate([flat[..., 0, :], flat[..., -1, :], flat[..., :, 0], flat[..., :, -1]], -1)
    return np.median(border.reshape(a.shape[0], -1), 1)


def _otsu_upper(s: np.ndarray, bins: int = 64) -> float:
    """The upper threshold of a three-class Otsu split of ``s`` on [0, 1] (Liao et al. 2001: the two thresholds
    that maximise the between-class variance). A smear has three levels of stain, background, red cells and
    cytoplasm, and chromatin, so the upper class is the nucleus; a two-class split would take the cytoplasm too."""
    hist, edges = np.histogram(s, bins, (0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    cw = np.concatenate([[0.0], np.cumsum(p)])                    # cw[k]: weight of bins < k
    cm = np.concatenate([[0.0], np.cumsum(p * np.arange(bins))])  # cm[k]: first moment of bins < k
    a, b = np.meshgrid(np.arange(1, bins), np.arange(1, bins), indexing="ij")
    ok = b > a                                                    # classes [0, a), [a, b), [b, bins)
    w0, w1, w2 = cw[a], cw[b] - cw[a], 1.0 - cw[b]
    m0, m1, m2 = cm[a], cm[b] - cm[a], cm[bins] - cm[b]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = m0 ** 2 / w0 + m1 ** 2 / w1 + m2 ** 2 / w2
    score = np.where(ok & (w0 > 0) & (w1 > 0) & (w2 > 0), score, -np.inf)
    _, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(edges[int(b[0, j])])


def nucleus_box(rgb: np.ndarray) -> tuple[float, float, float]:
    """``(centre row, centre column, half-side)`` in pixels of the crop square for one RGB cell ``(3, H, W)``."""
    from scipy import ndimage

    a = np.asarray(rgb, np.float32)
    h, w = a.shape[-2:]
    side = max(h, w)
    g = a[1]
    s = (a[2] - g) + 0.5 * (a.max(0) - g)
    lo, hi = np.percentile(s, [2.0, 99.5])
    if hi - lo <= 1e-6 * max(abs(float(hi)), 1.0):
        return (h - 1) / 2, (w - 1) / 2, side / 2
    s = (s - lo) / (hi - lo)
    mask = s > _otsu_upper(np.clip(s, 0.0, 1.0))
    lab, n = ndimage.label(mask)
    if n == 0:
        return (h - 1) / 2, (w - 1) / 2, side / 2
    idx = np.arange(1, n + 1)
    cy, cx = np.asarray(ndimage.center_of_mass(mask, lab, idx)).reshape(-1, 2).T
    area = np.asarray(ndimage.sum(mask, lab, idx))
    off = np.hypot((cy - (h - 1) / 2) / h, (cx - (w - 1) / 2) / w)
    keep = idx[(off < 0.3) & (area > 0.002 * h * w)]
    if len(keep) == 0:
        keep = idx[[int(np.argmin(off))]]
    ys, xs = np.nonzero(np.isin(lab, keep))
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    half = max(y1 - y0 + 1, x1 - x0 + 1) / 2 * _SCALE
    half = min(max(half, _MIN_HALF * side), _MAX_HALF * side)
    return (y0 + y1) / 2, (x0 + x1) / 2, half


def crop_nucleus(img: np.ndarray) -> np.ndarray:
    """The square crop of one RGB cell ``(3, H, W)`` around its nucleus (see the module docstring), float32.

    Raises:
        ValueError: ``img`` is not a 2D image with 3 channels (red, green, blue).
    """
    a = np.asarray(img, np.float32)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"the nucleus crop needs an RGB cell (3, H, W) from a stained smear; got shape {a.shape}")
    h, w = a.shape[1:]
    cy, cx, half = nucleus_box(a)
    n = max(2, int(round(2 * half)))
    y0, x0 = int(round(cy - half)), int(round(cx - half))
    out = np.empty((3, n, n), np.float32)
    out[...] = border_median(a)[:, None, None]
    ys, xs, ye, xe = max(0, y0), max(0, x0), min(h, y0 + n), min(w, x0 + n)
    out[:, ys - y0:ye - y0, xs - x0:xe - x0] = a[:, ys:ye, xs:xe]
    return out


def resize_square(a: np.ndarray, size: int) -> np.ndarray:
    """A square ``(C, n, n)`` array scaled to ``(C, size, size)``: area averaging to shrink, bilinear to enlarge (a
    crop is brought to the model's scale whichever way; unlike ``fit_to_size``, which never enlarges)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]
    mode = "area" if a.shape[-1] >= size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=(size, size), mode=mode, **kw)[0].numpy()


def crop_and_size(img: np.ndarray, crop: str, size: int) -> np.ndarray:
    """``img`` cropped as ``crop`` names (one of :data:`CROPS`) and scaled to ``(C, size, size)``.

    Raises:
        ValueError: an unknown crop, or an image the crop cannot take (see :func:`crop_nucleus`).
    """
    if crop == "nucleus":
        return resize_square(crop_nucleus(img), size)
    raise ValueError(f"unknown crop {crop!r}; choose one of {CROPS}")
