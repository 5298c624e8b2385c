"""The size a compressed image stream declares, read from its header without decoding it.

A TIFF's tags give the size of each strip or tile, but a JPEG, JPEG 2000 or PNG stream inside a strip carries its own
frame header, and the codec allocates what that header says (a 4.7 kB strip declaring 60000×60000 made libjpeg
allocate 3.6 GB before tifffile cropped the result to the tile). These readers return ``(height, width)`` as the
stream declares it, or raise ``ValueError`` when no frame header can be found; the caller compares the size with the
chunk the stream must fill.

References: ITU-T T.81 (JPEG markers and the SOFn segment), ITU-T T.800 annex A.5.1 (JPEG 2000 SIZ marker) and
ISO/IEC 15444-1 annex I (JP2 boxes), the PNG specification §11.2.2 (IHDR).
"""

from __future__ import annotations

import struct

# SOFn markers: 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM stand alone


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from the first frame header (SOFn) of a JPEG stream; a height of 0 (set later by a DNL
    marker) is returned as 0."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return height, width
        pos += 2 + length
    raise ValueError("JPEG stream has no frame header (SOFn) before its scan data")


def jpeg2000_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of the image area (Ysiz - YOsiz, Xsiz - XOsiz) from the SIZ marker of a JPEG 2000
    codestream, bare or inside a JP2 file's ``jp2c`` box."""
    if data[:4] == b"\xff\x4f\xff\x51":
        return _siz(data, 4)
    pos = 0
    while pos + 8 <= len(data):  # JP2 boxes: length (4), type (4), payload; length 1 = 64-bit length follows
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        if kind == b"jp2c":
            start = pos + header
            if data[start:start + 4] != b"\xff\x4f\xff\x51":
                break
            return _siz(data, start + 4)
        if length < header:  # 0 = "to the end of the file", anything smaller than the header is malformed
            break
        pos += length
    raise ValueError("not a JPEG 2000 stream (no codestream with a SIZ marker)")


def _siz(data: bytes, pos: int) -> tuple[int, int]:
    # Lsiz (2), Rsiz (2), Xsiz, Ysiz, XOsiz, YOsiz (4 each)
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, pos + 4)
    return max(ysiz - yo, 0), max(xsiz - xo, 0)


def png_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from a PNG stream's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG stream (no IHDR chunk)")
    width, height = struct.unpack_from(">II", data, 16)
    return height, width
