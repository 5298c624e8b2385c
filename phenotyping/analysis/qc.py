"""Image-level QC pre-filter and the model-side "unidentified" flag.

Before a cell is classified it is checked for an empty frame, debris, several cells in one frame, and defocus (the
pre-filter high-throughput time-stretch imaging studies apply before classifying); after classification, a cell whose largest
calibrated class probability is below the model card's threshold is sent to the "unidentified" review queue.
Every exclusion keeps a code and a human-readable reason.

Label-free images (brightfield, DPC, darkfield) show cells both darker and brighter than the background, so detection
works on the absolute deviation from the frame's border median, in units of the border's robust noise SD
(1.4826 × MAD), never on raw intensity.

That border estimate assumes the border is background. A crop cut tightly out of a stained smear (BCCD: the frame
edge crosses red cells and the leukocyte itself) breaks it: the border's spread is then the contrast between plasma and
red cells, nothing deviates by 4 such "noise SDs", the frame reads ``empty``, and subtracting the border's variance
from the object's leaves nothing, so focus reads 0. ``QCConfig(noise="residual")`` measures noise from the image
itself instead: the robust SD of its second-difference residual over the whole plane (Immerkær 1996, Comput. Vis.
Image Underst. 64:300, with the median of the absolute response in place of its mean so that edges do not count),
and removes the noise's share of the focus measure analytically (white noise of SD σ adds σ² to the intensity
variance and 20σ² to that of the 5-point Laplacian). Nothing then depends on what the border holds; the border
median still gives the background level. Cards without the key keep the border estimate.

Images are channel-first arrays of native dtype: ``(C, H, W)`` or z-stacks ``(C, Z, H, W)``. Pure numpy/scipy.

The focus measure is the variance of the Laplacian (Pech-Pacheco et al. 2000, ICPR; operator LAP4 in Pertuz et al.
2013, Pattern Recognit. 46:1415) inside the detected object, minus the same quantity in the background (the noise's
share), divided by the object's intensity variance minus the background's. The ratio does not change when the image
is scaled or offset, and falls as a Gaussian blur removes high spatial frequencies; its value depends on the pixel
size, so the threshold belongs to the model card of a given imaging set-up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

EMPTY = "empty"
DEBRIS = "debris"
MULTIPLE_CELLS = "multiple_cells"
OUT_OF_FOCUS = "out_of_focus"
UNIDENTIFIED = "unidentified"
#: Every exclusion code, in the order a cell's primary reason is chosen.
REASONS = (EMPTY, DEBRIS, MULTIPLE_CELLS, OUT_OF_FOCUS, UNIDENTIFIED)
#: Pixels (images × planes × H × W) checked in one vectorised batch; bounds the memory of the float64 copies.
_BATCH_PIXELS = 8_000_000
#: How the noise SD is estimated (:attr:`QCConfig.noise`).
NOISE_ESTIMATES = ("border", "residual")


@dataclass(frozen=True)
class QCConfig:
    """Thresholds of the image QC; saved in a model card (``to_dict``/``from_dict``). ``None`` disables a check.

    Attributes:
        border_px: width of the frame border (px) that estimates background level and noise.
        smooth_sigma: Gaussian smoothing (px) applied before detection; noise is measured after smoothing.
        noise_sigmas: a pixel is signal when it deviates from the border median by more than this many noise SDs
            in any channel (and any z-plane).
        min_signal_fraction: a frame with a smaller fraction of signal pixels is ``empty``.
        min_cell_area_fraction: an object smaller than this fraction of the frame is not cell-sized; a frame whose
            largest object is smaller is ``debris``.
        max_cells: a frame with more cell-sized objects than this is ``multiple_cells``.
        min_focus: a frame whose best channel/plane focus score is lower is ``out_of_focus``.
        channels: channel indices to check (default: all).
        noise: ``"border"`` (robust SD of the border pixels: right for frames whose border is background) or
            ``"residual"`` (robust SD of the image's second-difference residual: right for tight crops whose border
            crosses other cells; see the module docstring).

    The defaults suit label-free single-cell crops like the imaging-flow-cytometry Jurkat set (40×40 px,
    brightfield + darkfield): on every 5th of its 2,735 cells none is flagged empty, debris or multiple (the largest
    object covers 32% of the frame at the 1st percentile, a second object at most 0.2%), the focus
    score's 1st percentile is 0.40, and after a Gaussian blur of σ = 1.5 px its 95th percentile is 0.26, hence
    ``min_focus = 0.3``. Stained smear crops (RGB, red cells around the leukocyte, 120–260 px) need their own
    card values: there red cells count as extra objects and the focus scale is about ten times smaller.
    """

    border_px: int = 2
    smooth_sigma: float = 1.0
    noise_sigmas: float = 4.0
    min_signal_fraction: float | None = 0.02
    min_cell_area_fraction: float | None = 0.06
    max_cells: int | None = 1
    min_focus: float | None = 0.3
    channels: tuple[int, ...] | None = None
    noise: str = "border"

    def __post_init__(self) -> None:
        if self.noise not in NOISE_ESTIMATES:
            raise ValueError(f"noise={self.noise!r}: choose one of {', '.join(NOISE_ESTIMATES)}")
        if self.border_px < 1:
            raise ValueError(f"border_px={self.border_px} must be >= 1")
        if self.smooth_sigma < 0 or self.noise_sigmas <= 0:
            raise ValueError(
                f"smooth_sigma={self.smooth_sigma} must be >= 0 and noise_sigmas={self.noise_sigmas} > 0"
            )
        for name in ("min_signal_fraction", "min_cell_area_fraction"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"{name}={v} is a fraction of the frame: give a value in [0, 1) or None")
        if self.max_cells is not None:
            if self.max_cells < 1:
                raise ValueError(f"max_cells={self.max_cells} must be >= 1 or None")
            if self.min_cell_area_fraction is None:
                raise ValueError("max_cells needs min_cell_area_fraction to decide which objects are cell-sized")
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = None if self.channels is None else list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QCConfig:
        """Build from a model card's ``qc`` section; unknown keys are an error (a typo would disable nothing)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown QC settings {sorted(unknown)}; known: {sorted(known)}")
        kw = dict(d)
        if kw.get("channels") is not None:
            kw["channels"] = tuple(kw["channels"])
        return cls(**kw)


@dataclass(frozen=True)
class QCFlag:
    """One reason to exclude a cell: a code from :data:`REASONS` and a sentence for the reviewer."""

    code: str
    reason: str


@dataclass(frozen=True)
class QCMeasures:
    """What the checks measured: signal fraction, object areas (fractions of the frame, largest first), focus."""

    signal_fraction: float
    object_areas: tuple[float, ...]
    focus: float | None


@dataclass(frozen=True)
class QCResult:
    """The outcome for one image. ``flags`` is empty when the image passed; the first flag is the primary reason."""

    flags: tuple[QCFlag, ...]
    measures: QCMeasures

    @property
    def passed(self) -> bool:
        return not self.flags

    @property
    def code(self) -> str | None:
        """The primary exclusion code, or ``None`` when the image passed."""
        return self.flags[0].code if self.flags else None

    @property
    def reason(self) -> str | None:
        """All reasons as one sentence (for ``Cell.qc_reason``), or ``None`` when the image passed."""
        return "; ".join(f.reason for f in self.flags) if self.flags else None

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "flags": [asdict(f) for f in self.flags], "measures": asdict(self.measures)}


def check_image(image: np.ndarray, config: QCConfig | None = None) -> QCResult:
    """Run the image checks on one cell image ``(C, H, W)`` or ``(C, Z, H, W)`` of any numeric dtype.

    An empty frame gets only the ``empty`` flag (nothing else can be measured); otherwise every failed check is
    listed, in the order of :data:`REASONS`.
    """
    return check_images([image], config)[0]


def check_images(images: Sequence[np.ndarray], config: QCConfig | None = None) -> list[QCResult]:
    """:func:`check_image` for many images at once (vectorised over images of equal shape and dtype kind).

    Returns one result per image, in order. Images of different shapes may be mixed; each shape is one batch.
    """
    cfg = config or QCConfig()
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, img in enumerate(images):  # group by plane shape and dtype kind; pixels are converted per batch below
        a = np.asarray(img)
        n_chan = len(cfg.channels) if cfg.channels is not None and a.ndim in (3, 4) else (a.shape[0] if a.ndim else 0)
        n_planes = n_chan * (a.shape[1] if a.ndim == 4 else 1)
        groups.setdefault((n_planes, a.shape[-2:], bool(np.issubdtype(a.dtype, np.integer))), []).append(i)
    results: list[QCResult | None] = [None] * len(images)
    for (n_planes, hw, _), idx in groups.items():
        step = max(1, _BATCH_PIXELS // max(1, n_planes * int(np.prod(hw))))  # bounded memory per batch
        for start in range(0, len(idx), step):
            chunk = idx[start:start + step]
            prepared = [_planes(images[i], cfg) for i in chunk]  # (P, H, W) float64, one per channel × z-plane
            batch = np.stack([p for p, _ in prepared])  # (N, P, H, W)
            for i, r in zip(chunk, _check_batch(batch, prepared[0][1], cfg)):
                results[i] = r
    return results  # type: ignore[return-value]


def _check_batch(raw: np.ndarray, integer: bool, cfg: QCConfig) -> list[QCResult]:
    n_img, _, h, w = raw.shape
    if min(h, w) <= 2 * cfg.border_px + 2:
        raise ValueError(f"image of {h}×{w} px is too small for a {cfg.border_px}-px border; lower QCConfig.border_px")
    planes = raw
    if cfg.smooth_sigma > 0:
        planes = ndimage.gaussian_filter(raw, sigma=(0, 0, cfg.smooth_sigma, cfg.smooth_sigma), mode="reflect")
    border = _border_mask(h, w, cfg.border_px)
    level = np.median(planes[..., border], axis=-1)  # (N, P)
    floor = _noise_floor(level, integer, cfg.smooth_sigma)  # (N, P)
    if cfg.noise == "residual":
        raw_noise = _residual_sd(raw)  # (N, P) noise SD of the unsmoothed planes
        noise = np.maximum(raw_noise * _smoothing_gain(cfg.smooth_sigma), floor)
    else:
        raw_noise = None
        noise = _robust_sd(planes[..., border], level, floor)  # (N, P)
    dev = np.abs(planes - level[..., None, None]) / noise[..., None, None]  # (N, P, H, W) in noise SDs
    signal = (dev > cfg.noise_sigmas).any(axis=1)  # (N, H, W)
    mask = _fill_holes(_erode_cross(_dilate_cross(signal)))  # closing, then holes filled (4-connected, per image)
    signal_fraction = mask.mean(axis=(1, 2))  # (N,)

    labels, n_obj = ndimage.label(mask, structure=_in_plane(np.ones((3, 3), bool)))  # 8-connected within each image
    area = np.bincount(labels.ravel(), minlength=n_obj + 1)[1:] / (h * w)  # (n_obj,)
    owner = np.zeros(n_obj + 1, np.int64)
    owner[labels.ravel()] = np.repeat(np.arange(n_img), h * w)
    order = np.lexsort((-area, owner[1:]))  # by image, then largest first
    areas_of: list[list[float]] = [[] for _ in range(n_img)]
    for j in order:
        areas_of[owner[j + 1]].append(float(area[j]))

    focus = _focus(raw, mask, border, raw_noise)  # unsmoothed: smoothing would mimic defocus
    return [_flags(cfg, float(signal_fraction[i]), areas_of[i], float(focus[i])) for i in range(n_img)]


def _flags(cfg: QCConfig, signal_fraction: float, areas: list[float], focus: float) -> QCResult:
    flags: list[QCFlag] = []
    if cfg.min_signal_fraction is not None and signal_fraction < cfg.min_signal_fraction:
        flags.append(QCFlag(EMPTY, (
            f"empty frame: {100 * signal_fraction:.1f}% of pixels differ from the background by more than "
            f"{cfg.noise_sigmas:g} noise SD (at least {100 * cfg.min_signal_fraction:.1f}% expected)"
        )))
        return QCResult(tuple(flags), QCMeasures(signal_fraction, tuple(areas), None))
    if cfg.min_cell_area_fraction is not None:
        largest = areas[0] if areas else 0.0
        if largest < cfg.min_cell_area_fraction:
            flags.append(QCFlag(DEBRIS, (
                f"debris or fragment: the largest object covers {100 * largest:.1f}% of the frame "
                f"(a cell covers at least {100 * cfg.min_cell_area_fraction:.1f}%)"
            )))
        if cfg.max_cells is not None:
            n_cells = sum(a >= cfg.min_cell_area_fraction for a in areas)
            if n_cells > cfg.max_cells:
                flags.append(QCFlag(MULTIPLE_CELLS, (
                    f"multiple cells: {n_cells} cell-sized objects in the frame (at most {cfg.max_cells} allowed)"
                )))
    if cfg.min_focus is not None and focus < cfg.min_focus:
        flags.append(QCFlag(OUT_OF_FOCUS, (
            f"out of focus: focus score {focus:.3f} below {cfg.min_focus:g} "
            "(normalised variance of the Laplacian, best channel/plane)"
        )))
    return QCResult(tuple(flags), QCMeasures(signal_fraction, tuple(areas), focus))


def focus_score(image: np.ndarray, config: QCConfig | None = None) -> float:
    """The focus score :func:`check_image` uses (higher is sharper); 0 for an empty frame."""
    return check_image(image, config).measures.focus or 0.0


def unidentified_flags(probabilities: np.ndarray, *, threshold: float) -> list[QCFlag | None]:
    """Flag cells whose largest calibrated class probability is below ``threshold``.

    Args:
        probabilities: ``(N, K)`` temperature-scaled (calibrated) class probabilities.
        threshold: the model card's ``calibration.unidentified_threshold``, in [0, 1].

    Returns:
        One entry per cell: a ``QCFlag`` with code ``unidentified``, or ``None`` when the model is sure enough.
    """
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"unidentified threshold {threshold} must lie in [0, 1]")
    top = p.max(axis=1) if p.shape[1] else np.zeros(p.shape[0])
    return [
        QCFlag(UNIDENTIFIED, f"unidentified: the model's highest calibrated probability is {t:.2f} "
                             f"(below {threshold:.2f}); needs review")
        if t < threshold else None
        for t in top
    ]


def calibration_from_card(card: Mapping[str, Any]) -> tuple[float, float]:
    """``(temperature, unidentified_threshold)`` from a model card's ``calibration`` section.

    Raises:
        ValueError: the card has no calibration, or the values are out of range; the message says how to fix it.
    """
    cal = card.get("calibration")
    if not isinstance(cal, Mapping) or "temperature" not in cal or "unidentified_threshold" not in cal:
        raise ValueError(
            f"model card of {card.get('id', '?')!r} has no calibration.temperature/unidentified_threshold; "
            "calibrate the model on its validation split before predicting"
        )
    t, thr = float(cal["temperature"]), float(cal["unidentified_threshold"])
    if not t > 0 or not 0.0 <= thr <= 1.0:
        raise ValueError(f"calibration temperature {t} must be > 0 and unidentified_threshold {thr} in [0, 1]")
    return t, thr


_REASON_PREFIX = {
    "empty frame:": EMPTY,
    "debris or fragment:": DEBRIS,
    "multiple cells:": MULTIPLE_CELLS,
    "out of focus:": OUT_OF_FOCUS,
    "unidentified:": UNIDENTIFIED,
}


def reason_code(reason: str | None) -> str | None:
    """The code of a stored reason written by this module (``"out of focus: …"`` → ``"out_of_focus"``).

    Several reasons joined by ``"; "`` give the first one's code (the primary reason); a reason this module did not
    write gives ``None``.
    """
    if not reason:
        return None
    for prefix, code in _REASON_PREFIX.items():
        if reason.startswith(prefix):
            return code
    return None


def count_reasons(codes: Iterable[str | None]) -> dict[str, int]:
    """Exclusions per primary reason, in the order of :data:`REASONS`; ``None`` (passed) is not counted.

    Every code of :data:`REASONS` appears, with 0 where no cell had it; unknown codes raise ``ValueError``.
    """
    counts = Counter(c for c in codes if c is not None)
    unknown = set(counts) - set(REASONS)
    if unknown:
        raise ValueError(f"unknown QC codes {sorted(unknown)}; known: {list(REASONS)}")
    return {r: counts.get(r, 0) for r in REASONS}


# --------------------------------------------------------------------------------------------------------------


def _planes(image: np.ndarray, cfg: QCConfig) -> tuple[np.ndarray, bool]:
    a = np.asarray(image)
    if a.ndim not in (3, 4):
        raise ValueError(f"QC expects a channel-first image (C, H, W) or (C, Z, H, W), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"QC expects a numeric image, got dtype {a.dtype}")
    if cfg.channels is not None:
        bad = [c for c in cfg.channels if not -a.shape[0] <= c < a.shape[0]]
        if bad:
            raise ValueError(f"QC channels {bad} do not exist in an image with {a.shape[0]} channels")
        a = a[list(cfg.channels)]
    integer = bool(np.issubdtype(a.dtype, np.integer))
    planes = a.reshape(-1, *a.shape[-2:]).astype(np.float64)
    if not np.isfinite(planes).all():
        raise ValueError("image contains NaN or infinite values; QC needs finite pixels")
    return planes, integer


def _border_mask(h: int, w: int, b: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[:b], m[-b:], m[:, :b], m[:, -b:] = True, True, True, True
    return m


def _noise_floor(level: np.ndarray, integer: bool, smooth_sigma: float) -> np.ndarray:
    """The least noise SD per plane, so that flat images do not divide by zero.

    For integer images one grey level (quantisation), reduced by the smoothing's noise gain; for float images 1e-6
    of the plane's border level or 1e-12.
    """
    if integer:
        return np.full(level.shape, min(1.0, _smoothing_gain(smooth_sigma)))
    return np.maximum(1e-6 * np.abs(level), 1e-12)


def _smoothing_gain(smooth_sigma: float) -> float:
    """How much a 2D Gaussian of ``smooth_sigma`` px shrinks the SD of white noise: ``1 / (2 sqrt(pi) sigma)``."""
    return 1.0 / (2 * np.sqrt(np.pi) * smooth_sigma) if smooth_sigma > 0 else 1.0


def _robust_sd(border: np.ndarray, level: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Noise SD per plane from the border (1.4826 × MAD), at least ``floor``."""
    mad = 1.4826 * np.median(np.abs(border - level[..., None]), axis=-1)
    return np.maximum(mad, floor)


#: Immerkær's mask: the difference of two Laplacians, blind to intensity ramps; white noise of SD σ gives 6σ.
_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def _residual_sd(raw: np.ndarray) -> np.ndarray:
    """Noise SD per plane from the second-difference residual over the whole plane: ``(N, P, H, W)`` → ``(N, P)``.

    1.4826 × the median absolute response to :data:`_IMMERKAER`, over interior pixels, divided by 6 (the mask's
    gain for white noise). The median ignores the minority of pixels on edges and texture.
    """
    r = ndimage.correlate(raw, _IMMERKAER[None, None], mode="reflect")[..., 1:-1, 1:-1]
    return 1.4826 * np.median(np.abs(r).reshape(*r.shape[:2], -1), axis=-1) / 6.0


def _focus(raw: np.ndarray, mask: np.ndarray, border: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """Noise-corrected normalised Laplacian variance per image, best over planes: ``(N, P, H, W)`` → ``(N,)``.

    The noise's share is the background's variances (``noise`` None) or, given the noise SD per plane ``(N, P)``,
    σ² of the intensity variance and 20σ² of the Laplacian's (white noise through the 5-point stencil).
    """
    n, p, h, w = raw.shape
    obj = _dilate_cross(_dilate_cross(mask)).reshape(n, h * w)  # (N, HW)
    bflat = border.ravel()
    bg = ~obj[:, bflat]  # (N, nb): border pixels outside the object
    bg[~bg.any(axis=1)] = True  # the object fills the frame: the whole border is the best background left
    lap = ndimage.correlate1d(raw, [1.0, -2.0, 1.0], axis=-1, mode="reflect")
    lap += ndimage.correlate1d(raw, [1.0, -2.0, 1.0], axis=-2, mode="reflect")  # (N, P, H, W) 5-point Laplacian
    x = raw.reshape(n, p, h * w)
    x = x - x[..., bflat].mean(axis=-1, keepdims=True)  # centre each plane so that E[x²] - E[x]² stays exact
    lap = lap.reshape(n, p, h * w)
    if noise is None:
        signal_var = _masked_var(x, obj) - _masked_var(x[..., bflat], bg)  # (N, P)
        lap_var = np.maximum(_masked_var(lap, obj) - _masked_var(lap[..., bflat], bg), 0.0)
    else:
        signal_var = _masked_var(x, obj) - noise**2
        lap_var = np.maximum(_masked_var(lap, obj) - 20.0 * noise**2, 0.0)
    ratio = np.where(signal_var > 0, lap_var / np.where(signal_var > 0, signal_var, 1.0), 0.0)
    return ratio.max(axis=1)


# Binary morphology with the 4-connected cross within each image of an (N, H, W) stack, by shifted copies: the
# results of ndimage.binary_dilation / binary_erosion (border 0) and binary_fill_holes with that structure, bit for
# bit (tests/test_qc.py compares them), at a fifth of the time on 40-px cells.

def _dilate_cross(m: np.ndarray) -> np.ndarray:
    """One dilation by the 4-connected cross; outside the frame counts as background."""
    out = m.copy()
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    out[:, :, 1:] |= m[:, :, :-1]
    out[:, :, :-1] |= m[:, :, 1:]
    return out


def _erode_cross(m: np.ndarray) -> np.ndarray:
    """One erosion by the 4-connected cross; outside the frame counts as background, so the frame's edge erodes."""
    out = m.copy()
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    out[:, :, 1:] &= m[:, :, :-1]
    out[:, :, :-1] &= m[:, :, 1:]
    out[:, 0] = out[:, -1] = False
    out[:, :, 0] = out[:, :, -1] = False
    return out


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """``m`` with every background region (4-connected) that does not reach the frame's edge filled."""
    labels, n = ndimage.label(~m, structure=_in_plane(ndimage.generate_binary_structure(2, 1)))
    reaches = np.zeros(n + 1, bool)
    for edge in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        reaches[edge] = True
    reaches[0] = True  # label 0: the mask itself
    return m | ~reaches[labels]


def _in_plane(s2: np.ndarray) -> np.ndarray:
    """A (3, 3) structuring element as (3, 3, 3) acting within each image of an (N, H, W) stack only."""
    s3 = np.zeros((3, 3, 3), bool)
    s3[1] = s2
    return s3


def _masked_var(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Population variance of ``x`` (N, P, K) over the pixels where ``m`` (N, K) is true → (N, P)."""
    mf = m.astype(x.dtype)
    cnt = np.maximum(mf.sum(axis=1), 1.0)[:, None]  # (N, 1)
    mean = np.einsum("npk,nk->np", x, mf) / cnt
    return np.einsum("npk,nk->np", x * x, mf) / cnt - mean * mean
