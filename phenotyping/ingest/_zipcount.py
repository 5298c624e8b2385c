"""Count a zip archive's entries from its central directory without building ``zipfile``'s index.

``zipfile.ZipFile`` reads the whole central directory and makes one ``ZipInfo`` per entry before anything can be
checked: a 200 MB upload of empty entries is four million objects. The count here walks the directory's fixed-size
headers and stops as soon as it passes the limit. It does not trust the entry count of the end record (an archive
can state any number there), only the directory itself.

Reference: PKWARE APPNOTE.TXT 6.3, §4.3.12 (central directory header), §4.3.14–4.3.16 (zip64 end records).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

_EOCD, _ZIP64_EOCD, _CENTRAL = b"PK\x05\x06", b"PK\x06\x06", b"PK\x01\x02"
_EOCD_SIZE, _ZIP64_EOCD_SIZE, _LOCATOR_SIZE, _CENTRAL_SIZE = 22, 56, 20, 46


def zip_entry_count(source: Path | BinaryIO, *, stop_after: int) -> int | None:
    """Entries (files and folders) in the central directory, counted up to ``stop_after + 1``.

    Returns None when the directory cannot be located; ``zipfile`` then reports the archive as unreadable.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            return _count(fh, stop_after)
    pos = source.tell()
    try:
        return _count(source, stop_after)
    finally:
        source.seek(pos)


def _directory(fh: BinaryIO) -> tuple[int, int] | None:
    """``(start, size)`` of the central directory, measured back from the end record (so data prepended to the
    archive does not matter)."""
    end = fh.seek(0, io.SEEK_END)
    tail_start = max(0, end - _EOCD_SIZE - 65535)  # the end record is followed by a comment of up to 64 KiB
    fh.seek(tail_start)
    tail = fh.read()
    at = tail.rfind(_EOCD)
    if at < 0 or at + _EOCD_SIZE > len(tail):
        return None
    eocd = tail_start + at
    entries, size, offset = struct.unpack_from("<HII", tail, at + 10)
    if entries != 0xFFFF and size != 0xFFFFFFFF and offset != 0xFFFFFFFF:
        return eocd - size, size
    record = eocd - _LOCATOR_SIZE - _ZIP64_EOCD_SIZE
    if record < 0:
        return None
    fh.seek(record)
    head = fh.read(_ZIP64_EOCD_SIZE)
    if len(head) < _ZIP64_EOCD_SIZE or not head.startswith(_ZIP64_EOCD):
        return None
    (size,) = struct.unpack_from("<Q", head, 40)
    return record - size, size


def _count(fh: BinaryIO, stop_after: int) -> int | None:
    found = _directory(fh)
    if found is None:
        return None
    start, size = found
    if start < 0:
        return None
    fh.seek(start)
    n, read = 0, 0
    while read + _CENTRAL_SIZE <= size:
        header = fh.read(_CENTRAL_SIZE)
        if len(header) < _CENTRAL_SIZE or not header.startswith(_CENTRAL):
            return None
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", header, 28)
        skip = name_len + extra_len + comment_len
        fh.seek(skip, io.SEEK_CUR)
        read += _CENTRAL_SIZE + skip
        n += 1
        if n > stop_after:
            break
    return n
