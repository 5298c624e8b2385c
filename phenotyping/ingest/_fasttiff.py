"""A fast path for the simple TIFFs that single-cell exports produce.

tifffile handles every TIFF but spends ~0.3 ms of Python per small file; a 10,000-cell set is decoded at ingest and
again at prediction. This reader handles only the common case — classic TIFF, one sample per pixel, strips,
uncompressed or deflate, optional horizontal predictor, unsigned 8/16-bit or float32, every page the same shape,
pages as channels — and returns ``None`` for anything else (tiles, LZW, OME-XML, ImageJ hyperstacks, z-axes…), so the
caller falls back to tifffile. The output equals tifffile's for every file it accepts (tests/test_fasttiff.py).
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8 (value arrays we need)
_TAG_WIDTH, _TAG_LENGTH, _TAG_BITS, _TAG_COMPRESSION, _TAG_PHOTOMETRIC = 256, 257, 258, 259, 262
_TAG_DESCRIPTION, _TAG_OFFSETS, _TAG_SPP, _TAG_ROWS, _TAG_COUNTS = 270, 273, 277, 278, 279
_TAG_PLANAR, _TAG_PREDICTOR, _TAG_TILE_WIDTH, _TAG_SAMPLE_FORMAT = 284, 317, 322, 339


class _Unsupported(Exception):
    pass


def _ifd(data: bytes, offset: int, bo: str) -> tuple[dict[int, object], int]:
    (n,) = struct.unpack_from(bo + "H", data, offset)
    tags: dict[int, object] = {}
    for i in range(n):
        tag, typ, count, value = struct.unpack_from(bo + "HHI4s", data, offset + 2 + 12 * i)
        if tag == _TAG_DESCRIPTION and typ == 2:
            start = struct.unpack(bo + "I", value)[0] if count > 4 else None
            raw = value[:count] if start is None else data[start:start + count]
            tags[tag] = raw.rstrip(b"\x00").decode("latin-1")
            continue
        fmt = _TYPES.get(typ)
        if fmt is None:
            continue  # rationals, ASCII other than the description…: not needed here
        size = struct.calcsize(fmt) * count
        if size <= 4:
            vals = struct.unpack_from(bo + fmt * count, value)
        else:
            (ptr,) = struct.unpack(bo + "I", value)
            if ptr + size > len(data):
                raise _Unsupported
            vals = struct.unpack_from(bo + fmt * count, data, ptr)
        tags[tag] = vals
    (next_offset,) = struct.unpack_from(bo + "I", data, offset + 2 + 12 * n)
    return tags, next_offset


def _one(tags: dict[int, object], tag: int, default: int | None = None) -> int:
    v = tags.get(tag)
    if v is None:
        if default is None:
            raise _Unsupported
        return default
    if isinstance(v, str) or len(v) != 1:  # type: ignore[arg-type]
        raise _Unsupported
    return int(v[0])  # type: ignore[index]


def _description_ok(desc: str | None, n_pages: int) -> bool:
    """Accept no description, tifffile's shaped JSON with plain (C)YX axes, or ImageJ without z/time."""
    if not desc:
        return True
    if desc.startswith("{"):
        try:
            meta = json.loads(desc)
        except json.JSONDecodeError:
            return False
        axes = str(meta.get("axes", "")).upper()
        shape = meta.get("shape")
        if axes and axes not in ("YX", "CYX", "QYX", "IYX"):
            return False
        return shape is None or int(np.prod(shape[:-2], dtype=np.int64) if len(shape) > 2 else 1) == n_pages
    if desc.startswith("ImageJ="):
        fields = dict(line.split("=", 1) for line in desc.splitlines() if "=" in line)
        return int(fields.get("slices", 1)) == 1 and int(fields.get("frames", 1)) == 1
    return not desc.lstrip().startswith("<")  # OME-XML and other XML: let tifffile read the axes


def read_simple_tiff(data: bytes, *, max_pixels: int, max_voxels: int) -> np.ndarray | None:
    """Decode ``data`` as ``(C, H, W)`` if it is a simple TIFF, else return None.

    Returns None (never raises) for anything unusual or malformed: tifffile then decodes it or reports the error.
    """
    try:
        return _read(data, max_pixels, max_voxels)
    except (_Unsupported, struct.error, zlib.error, ValueError, IndexError):
        return None


def _read(data: bytes, max_pixels: int, max_voxels: int) -> np.ndarray | None:
    if data[:4] == b"II*\x00":
        bo = "<"
    elif data[:4] == b"MM\x00*":
        bo = ">"
    else:
        return None
    (offset,) = struct.unpack_from(bo + "I", data, 4)
    pages: list[dict[int, object]] = []
    seen: set[int] = set()
    while offset:
        if offset in seen or offset >= len(data) or len(pages) > 64:
            return None
        seen.add(offset)
        tags, offset = _ifd(data, offset, bo)
        pages.append(tags)
    if not pages:
        return None
    desc = pages[0].get(_TAG_DESCRIPTION)
    if not _description_ok(desc if isinstance(desc, str) else None, len(pages)):
        return None
    planes = []
    first_key = None
    for tags in pages:
        if _TAG_TILE_WIDTH in tags or _one(tags, _TAG_SPP, 1) != 1 or _one(tags, _TAG_PLANAR, 1) != 1:
            return None
        w, h, bits = _one(tags, _TAG_WIDTH), _one(tags, _TAG_LENGTH), _one(tags, _TAG_BITS, 1)
        compression, predictor = _one(tags, _TAG_COMPRESSION, 1), _one(tags, _TAG_PREDICTOR, 1)
        sample_format, photometric = _one(tags, _TAG_SAMPLE_FORMAT, 1), _one(tags, _TAG_PHOTOMETRIC, 1)
        if photometric not in (0, 1) or compression not in (1, 8, 32946) or predictor not in (1, 2):
            return None
        if (sample_format, bits) == (1, 8):
            dtype = np.dtype("u1")
        elif (sample_format, bits) == (1, 16):
            dtype = np.dtype(bo + "u2")
        elif (sample_format, bits) == (3, 32) and predictor == 1:
            dtype = np.dtype(bo + "f4")
        else:
            return None
        key = (w, h, dtype, compression, predictor)
        if first_key is None:
            first_key = key
            if w * h > max_pixels or w * h * len(pages) > max_voxels:
                return None  # let the full reader produce the size error
        elif key != first_key:
            return None
        offsets, counts = tags.get(_TAG_OFFSETS), tags.get(_TAG_COUNTS)
        if not offsets or not counts or len(offsets) != len(counts) or len(offsets) > h:  # type: ignore[arg-type]
            return None  # a strip holds at least one row: more strips than rows is malformed
        expected = w * h * dtype.itemsize
        chunks = []
        for off, cnt in zip(offsets, counts):  # type: ignore[call-overload]
            raw = data[off:off + cnt]
            if len(raw) != cnt:
                return None
            if compression != 1:
                d = zlib.decompressobj()
                raw = d.decompress(raw, expected + 1)
            chunks.append(raw)
        buf = b"".join(chunks)
        if len(buf) < expected:
            return None
        plane = np.frombuffer(buf, dtype=dtype, count=w * h).reshape(h, w)
        if predictor == 2:
            plane = np.cumsum(plane, axis=1, dtype=dtype)
        planes.append(plane)
    out = np.stack(planes)
    return out.astype(out.dtype.newbyteorder("="), copy=False) if out.dtype.byteorder == ">" else out
