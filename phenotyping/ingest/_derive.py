"""Channels derived at ingest from a cell's own channels: today quantitative DPC phase (and absorption).

A derivation finds its input channels by name (the reader's ``channel_names``, e.g. BSCCM's, a manifest's
``channel_names`` column, or the TIFF's own metadata), computes the new channels, and either keeps or replaces the
raw channels it used: the choice is explicit, so a model can be trained on phase, on the raw DPC images, or on both.
The stored cell is a float32 TIFF that names every channel, so training reads the names back like any other file's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from phenotyping.errors import ImageError
from phenotyping.ingest._channels import channel_names_in
from phenotyping.ingest.qdpc import (
    ABSORPTION_CHANNEL,
    HALF_PUPIL_CHANNELS,
    PHASE_CHANNEL,
    REG_ABSORPTION,
    REG_PHASE,
    OpticalSetup,
    reconstruct,
)

RAW_CHOICES = ("keep", "replace")


@dataclass(frozen=True)
class QdpcDerivation:
    """Add ``qdpc_phase`` (radians; and ``qdpc_absorption`` when ``absorption``) computed by
    :func:`phenotyping.ingest.qdpc.reconstruct` from a cell's ``DPC_Left``, ``DPC_Right``, ``DPC_Top`` and
    ``DPC_Bottom`` channels (names matched ignoring case).

    ``raw="keep"`` stores the half-pupil images and the derived channels; ``raw="replace"`` drops the four
    half-pupil images (other channels, e.g. brightfield, are always kept, in their order, before the derived ones).
    """

    setup: OpticalSetup
    raw: Literal["keep", "replace"]
    absorption: bool = False
    reg_phase: float = REG_PHASE
    reg_absorption: float = REG_ABSORPTION

    def __post_init__(self) -> None:
        if self.raw not in RAW_CHOICES:
            raise ValueError(f"raw must be 'keep' (store the half-pupil images and the phase) or 'replace' (store "
                             f"the phase instead of them), not {self.raw!r}")
        if not isinstance(self.setup, OpticalSetup):
            raise TypeError(f"setup must be an OpticalSetup, not {type(self.setup).__name__}")
        if not (self.reg_phase > 0 and self.reg_absorption > 0):
            raise ValueError(f"regularisation weights must be above 0, got reg_phase={self.reg_phase}, "
                             f"reg_absorption={self.reg_absorption}")

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the derived channels, in the order they are appended."""
        return (PHASE_CHANNEL, ABSORPTION_CHANNEL) if self.absorption else (PHASE_CHANNEL,)

    def describe(self) -> str:
        """What was derived and how (kept with every derived cell)."""
        return (f"{', '.join(self.outputs)} by qDPC (Tian & Waller 2015, Opt. Express 23:11394) from "
                f"{', '.join(HALF_PUPIL_CHANNELS)}; {self.setup.describe()}; reg_phase={self.reg_phase:g}"
                + (f", reg_absorption={self.reg_absorption:g}" if self.absorption else "")
                + f"; raw channels {'kept' if self.raw == 'keep' else 'replaced'}")

    def apply(self, arr: np.ndarray, names: list[str], *, file: str) -> tuple[np.ndarray, list[str]]:
        """The cell's channels after derivation: a float32 ``(C', H, W)`` array and its channel names.

        Raises:
            ImageError: a z-stack, a half-pupil image missing (named), or images qDPC cannot use.
        """
        if arr.ndim != 3:
            raise ImageError(file, f"qdpc-phase takes 2D half-pupil images (C, H, W); this file has shape "
                                   f"{tuple(arr.shape)}")
        low = [n.lower() for n in names]
        missing = [c for c in HALF_PUPIL_CHANNELS if c.lower() not in low]
        if missing:
            raise ImageError(file, f"qdpc-phase needs the four half-pupil images {', '.join(HALF_PUPIL_CHANNELS)}; "
                                   f"this file has {', '.join(names)}: missing {', '.join(missing)}")
        clash = [o for o in self.outputs if o in low]
        if clash:
            raise ImageError(file, f"already has channel(s) {', '.join(clash)}; it was derived before")
        picks = [low.index(c.lower()) for c in HALF_PUPIL_CHANNELS]
        try:
            result = reconstruct(arr[picks], self.setup, reg_phase=self.reg_phase, absorption=self.absorption,
                                 reg_absorption=self.reg_absorption)
        except ValueError as e:
            raise ImageError(file, f"qdpc-phase: {e}") from e
        kept = list(range(len(names))) if self.raw == "keep" else [i for i in range(len(names)) if i not in picks]
        derived = [result.phase] + ([result.absorption] if self.absorption else [])
        out = np.concatenate([arr[kept].astype(np.float32), np.stack(derived).astype(np.float32)])
        return out, [names[i] for i in kept] + list(self.outputs)


def cell_channel_names(extra: dict[str, str], data: bytes, channels: int, *, file: str) -> list[str]:
    """A cell's channel names: the reader's or manifest's ``channel_names`` (comma-separated), else the TIFF's own.

    Raises:
        ImageError: no names anywhere, the two sources disagree, or the count differs from the image's channels.
    """
    given = [n.strip() for n in extra.get("channel_names", "").split(",") if n.strip()] or None
    try:
        stored = channel_names_in(data)
    except Exception as e:  # tifffile raises TiffFileError, ValueError… for a corrupt header
        raise ImageError(file, f"cannot read the TIFF metadata: {e}") from e
    if given and stored and [g.lower() for g in given] != [s.lower() for s in stored]:
        raise ImageError(file, f"the manifest names its channels {', '.join(given)} but the file's metadata "
                               f"names them {', '.join(stored)}; fix one so they agree")
    names = given or stored
    if not names:
        raise ImageError(file, "carries no channel names, so the half-pupil images cannot be found: name them in "
                               "the TIFF metadata or in a channel_names column of the manifest (e.g. "
                               f"{','.join(HALF_PUPIL_CHANNELS)})")
    if len(names) != channels:
        raise ImageError(file, f"names {len(names)} channel(s) ({', '.join(names)}) but the image has {channels}")
    return names
