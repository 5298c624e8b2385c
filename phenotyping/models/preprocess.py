"""What travels with a model between a decoded image and its input: channel behaviour, size, normalisation, targets.

Everything here is saved in the checkpoint and the model card (never typed into a page), so a model folder can be
rebuilt and fed exactly as it was trained. Axes: 2D cells are ``(C, H, W)``, z-stacks ``(C, Z, H, W)``; batches add a
leading ``N``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from phenotyping.models.crop import border_median, crop_and_size


@dataclass(frozen=True)
class ChannelSpec:
    """How one channel behaves under the geometric augmentations.

    ``hflip``/``vflip``: ``"same"`` (intensity unchanged, e.g. brightfield, darkfield, fluorescence),
    ``"negate"`` (a signed difference image along that axis, e.g. DPC left−right under a horizontal flip),
    ``"swap:<name>"`` (the flip turns this image into its partner's, e.g. raw left/right half-illumination images) or
    ``"never"`` (the flip would turn the image into one that is not among the channels, e.g. a left half-pupil image
    without its right partner: that flip is not applied to the cell at all).
    ``rot90``: whether a 90° rotation keeps the channel's meaning (false for any direction-dependent channel).
    """

    name: str
    hflip: str = "same"
    vflip: str = "same"
    rot90: bool = True


# Keys are lower-case channel names. The BSCCM reader (phenotyping.ingest.bsccm) writes the LED-array names
# (DPC_Left, DPC_Right, DPC_Top, DPC_Bottom, Brightfield, DF_<NA>…) and "DPC" for its computed DPC image, which is
# the left−right asymmetry image (I_L − I_R)/(I_L + I_R): a horizontal flip negates it, a vertical flip keeps it and
# a 90° rotation would turn it into a top−bottom image. Brightfield and full darkfield rings are symmetric (default).
CHANNEL_PRESETS: dict[str, ChannelSpec] = {
    "dpc": ChannelSpec("dpc", hflip="negate", rot90=False),
    "dpc_lr": ChannelSpec("dpc_lr", hflip="negate", rot90=False),
    "dpc_tb": ChannelSpec("dpc_tb", vflip="negate", rot90=False),
    "dpc_left": ChannelSpec("dpc_left", hflip="swap:dpc_right", rot90=False),
    "dpc_right": ChannelSpec("dpc_right", hflip="swap:dpc_left", rot90=False),
    "dpc_top": ChannelSpec("dpc_top", vflip="swap:dpc_bottom", rot90=False),
    "dpc_bottom": ChannelSpec("dpc_bottom", vflip="swap:dpc_top", rot90=False),
}


# Any other "<pattern>_Left/_Right/_Top/_Bottom" channel (e.g. BSCCM's half-annulus darkfield DF_50_Bottom) is a
# half-pattern image like the DPC ones; single-LED images (BSCCM-coherent "led_119") are lit from one unknown
# direction, so no flip or rotation keeps their meaning.
_HALVES = {"left": ("hflip", "right"), "right": ("hflip", "left"), "top": ("vflip", "bottom"),
           "bottom": ("vflip", "top")}


def _preset(name: str) -> ChannelSpec:
    import re

    low = name.lower()
    if low in CHANNEL_PRESETS:
        return CHANNEL_PRESETS[low]
    m = re.fullmatch(r"(.+)_(left|right|top|bottom)", low)
    if m:
        attr, other = _HALVES[m.group(2)]
        return ChannelSpec(low, rot90=False, **{attr: f"swap:{m.group(1)}_{other}"})
    if re.fullmatch(r"led_?\d+", low):
        return ChannelSpec(low, hflip="never", vflip="never", rot90=False)
    return ChannelSpec(name)


def channel_specs(names: Sequence[str]) -> list[ChannelSpec]:
    """Specs for channel ``names`` (matched case-insensitively): see :data:`CHANNEL_PRESETS`; anything else symmetric.

    Each spec keeps the channel's own spelling, and a swap names its partner as spelled in ``names``. A half-pattern
    channel whose partner is not among ``names`` gets ``"never"`` for that flip (the flip is then not applied).

    Raises:
        ValueError: two channels have the same name (ignoring case).
    """
    by_low = {n.lower(): n for n in names}
    if len(by_low) != len(names):
        raise ValueError(f"channel names must differ (ignoring case); got {list(names)}")
    specs = []
    for n in names:
        p = _preset(n)
        rules = {}
        for attr in ("hflip", "vflip"):
            rule = getattr(p, attr)
            if rule.startswith("swap:"):
                rule = f"swap:{by_low[rule[5:]]}" if rule[5:] in by_low else "never"
            rules[attr] = rule
        specs.append(ChannelSpec(n, rot90=p.rot90, **rules))
    return specs


def fit_to_size(img: np.ndarray, size: int) -> np.ndarray:
    """Scale so the longer side is at most ``size`` (area-averaging, aspect kept), then centre-pad to size × size.

    Padding uses each channel's border median (the background). Works on ``(C, H, W)`` and ``(C, Z, H, W)``.
    Returns float32.
    """
    import torch
    import torch.nn.functional as F

    a = np.asarray(img, dtype=np.float32)
    h, w = a.shape[-2:]
    if max(h, w) > size:
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        t = torch.from_numpy(a.reshape(-1, 1, h, w))
        a = F.interpolate(t, size=(nh, nw), mode="area").numpy().reshape(a.shape[:-2] + (nh, nw))
        h, w = nh, nw
    if (h, w) == (size, size):
        return np.ascontiguousarray(a)
    fill = border_median(a).astype(np.float32)
    out = np.empty(a.shape[:-2] + (size, size), np.float32)
    out[...] = fill.reshape((-1,) + (1,) * (a.ndim - 1))
    top, left = (size - h) // 2, (size - w) // 2
    out[..., top:top + h, left:left + w] = a
    return out


def size_cell(img: np.ndarray, size: int, *, crop: str = "none") -> np.ndarray:
    """A decoded cell to ``size`` × ``size``: :func:`fit_to_size`, or with ``crop`` (see
    :mod:`phenotyping.models.crop`) the crop scaled to that size. Returns float32."""
    if crop == "none":
        return fit_to_size(img, size)
    return crop_and_size(img, crop, size)


def _standardise_each(x: np.ndarray, *, batched: bool) -> np.ndarray:
    """Each cell's channels to zero mean, unit std over their own pixels (and z-planes)."""
    axes = tuple(range(2 if batched else 1, x.ndim))
    m = x.mean(axes, keepdims=True, dtype=np.float64)
    sd = np.maximum(x.std(axes, keepdims=True, dtype=np.float64), 1e-6)
    return ((x - m) / sd).astype(np.float32)


@dataclass(frozen=True)
class Preprocess:
    """Everything between a decoded image and the model input; saved in the model card.

    ``mode="dataset"``: ``mean``/``std`` are per channel, computed on the training split after :func:`fit_to_size`.
    ``mode="per_image"``: each cell is first standardised per channel by its own mean and std (robust to stain and
    illumination differences between sites), then by the training split's statistics of those standardised images.
    """

    img_size: int
    channels: list[str]
    mean: list[float]
    std: list[float]
    channel_specs: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "dataset"
    crop: str = "none"

    @classmethod
    def fit(cls, x: np.ndarray, channels: Sequence[str], specs: Sequence[ChannelSpec], *,
            mode: str = "dataset", crop: str = "none") -> Preprocess:
        """Per-channel statistics of ``x`` (N, C, …), already sized by :func:`size_cell` with the same ``crop``."""
        if mode not in ("dataset", "per_image"):
            raise ValueError(f"normalisation mode must be 'dataset' or 'per_image', got {mode!r}")
        if mode == "per_image":
            x = _standardise_each(x, batched=True)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        mean = x.mean(axes, dtype=np.float64)
        std = np.maximum(x.std(axes, dtype=np.float64), 1e-6)
        return cls(int(x.shape[-1]), list(channels), [float(v) for v in mean], [float(v) for v in std],
                   [asdict(s) for s in specs], mode, crop)

    def size(self, img: np.ndarray) -> np.ndarray:
        """One decoded cell to the model's input size: :func:`size_cell` with this model's size and crop."""
        return size_cell(img, self.img_size, crop=self.crop)

    def normalise(self, x: np.ndarray, *, batched: bool = False) -> np.ndarray:
        """``(x − mean) / std`` per channel; ``x`` is one cell ``(C, …)`` or, with ``batched``, ``(N, C, …)``."""
        shape = [1] * x.ndim
        shape[1 if batched else 0] = -1
        if x.shape[1 if batched else 0] != len(self.mean):
            raise ValueError(f"image has {x.shape[1 if batched else 0]} channels, the model expects "
                             f"{len(self.mean)} ({', '.join(self.channels)})")
        if self.mode == "per_image":
            x = _standardise_each(x, batched=batched)
        return ((x - np.array(self.mean, np.float32).reshape(shape)) /
                np.array(self.std, np.float32).reshape(shape)).astype(np.float32)

    def specs(self) -> list[ChannelSpec]:
        return [ChannelSpec(**s) for s in self.channel_specs] or [ChannelSpec(n) for n in self.channels]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(**d)


@dataclass(frozen=True)
class TargetScaler:
    """Standardises regression targets: ``z = (f(y) − mean) / std`` with ``f = log`` where ``log`` is set.

    Stored in the checkpoint and the card so predictions are mapped back to the manifest's units.
    """

    names: list[str]
    log: list[bool]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, y: np.ndarray, names: Sequence[str], log: Sequence[bool]) -> TargetScaler:
        y = cls._forward(np.asarray(y, np.float64), list(log), list(names))
        mean, std = np.nanmean(y, 0), np.nanstd(y, 0)
        return cls(list(names), [bool(v) for v in log], [float(v) for v in mean],
                   [float(max(v, 1e-12)) for v in std])

    @staticmethod
    def _forward(y: np.ndarray, log: list[bool], names: list[str]) -> np.ndarray:
        y = y.copy()
        for j, lg in enumerate(log):
            if lg:
                col = y[:, j]
                if np.nanmin(col) <= 0:
                    raise ValueError(f"target {names[j]!r} has values ≤ 0; a log transform needs positive values")
                y[:, j] = np.log(col)
        return y

    def transform(self, y: np.ndarray) -> np.ndarray:
        """Manifest units (N, M) → standardised (N, M) float32."""
        z = self._forward(np.asarray(y, np.float64).reshape(len(y), -1), self.log, self.names)
        return ((z - np.array(self.mean)) / np.array(self.std)).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Standardised (N, M) → manifest units (N, M) float64."""
        y = np.asarray(z, np.float64) * np.array(self.std) + np.array(self.mean)
        for j, lg in enumerate(self.log):
            if lg:
                y[:, j] = np.exp(y[:, j])
        return y

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
