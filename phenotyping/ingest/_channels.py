"""Channel names carried in TIFF metadata: written by the BSCCM reader and the qDPC derivation, read by ingest and
training (so a stored cell's channel names travel with its file)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def tiff_bytes(arr: np.ndarray, channel_names: Sequence[str]) -> bytes:
    """A channel-first ``(C, H, W)`` array as one TIFF whose tifffile JSON description names its channels."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": list(channel_names)}})
    return buf.getvalue()


def tiff_channel_names(tf: Any) -> list[str] | None:
    """Channel names in an open ``tifffile.TiffFile``'s metadata, or None.

    Reads tifffile's JSON description ``{"Channel": {"Name": [...]}}`` (what :func:`tiff_bytes` writes), ImageJ slice
    ``Labels`` (taken when the labels of the first plane's channels repeat in every z-plane/time point) and OME-XML
    ``Pixels/Channel/@Name``.
    """
    names: list[Any] | None = None
    shaped = tf.shaped_metadata
    if shaped and isinstance(shaped[0], dict) and isinstance(shaped[0].get("Channel"), dict):
        names = shaped[0]["Channel"].get("Name")
    elif tf.is_imagej and tf.imagej_metadata and tf.imagej_metadata.get("Labels"):
        ij = tf.imagej_metadata
        labels = list(ij["Labels"])
        c = int(ij.get("channels") or len(labels))
        if c and len(labels) % c == 0 and all(labels[i:i + c] == labels[:c] for i in range(0, len(labels), c)):
            names = labels[:c]
    elif tf.is_ome and tf.ome_metadata:
        names = _ome_channel_names(tf.ome_metadata)
    if isinstance(names, str):
        names = [names]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        return None
    return [n.strip() for n in names]


def _ome_channel_names(xml: str) -> list[str] | None:
    """``Name`` of each ``Channel`` of the first OME ``Image`` (None if any is unnamed)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    image = next((el for el in root if el.tag.endswith("}Image") or el.tag == "Image"), None)
    if image is None:
        return None
    pixels = next((el for el in image if el.tag.endswith("Pixels")), None)
    chans = [el for el in (pixels if pixels is not None else []) if el.tag.endswith("Channel")]
    names = [el.get("Name") for el in chans]
    return names if names and all(names) else None  # type: ignore[return-value]


def channel_names_in(data: bytes) -> list[str] | None:
    """Channel names in a TIFF file's bytes (see :func:`tiff_channel_names`); None for other formats or none named."""
    import tifffile

    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return None
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        return tiff_channel_names(tf)
