"""Decoding a set's files, in the set's order, in the calling thread or a pool of threads.

Reading a file, hashing it (``hashlib`` releases the GIL for buffers above 2 KiB), inflating it (zlib) and
decoding it (numpy, PIL, tifffile) run partly outside the GIL, so threads can overlap large files' I/O and decoding.
For single-cell images they do not: parsing a small TIFF's tags or a small PNG's chunks is Python (or holds the GIL),
and every read or hash that lets the GIL go then waits to get it back from another decoding thread. Measured on the
2-core development machine (docs/BENCHMARKS.md, "Ingest"), ingest of 4,500 two-channel 40×40 TIFFs took 0.95–1.21 s
decoding in the calling thread against 1.37–1.48 s with two threads and 1.47 s with four (3,000 RGB 64×64 PNGs:
1.12–1.25 s against 1.47–1.55 s with four), so the default is the calling thread; ``workers=N`` remains for large
images. Results come back in the order of the entries whatever the order the threads finish in, so cell ids follow
the set's order. Ingest's commits run in a thread of their own either way (``_ingest._commit_all``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from itertools import islice
from typing import TypeVar

from phenotyping.ingest._entry import Entry

CHUNK = 64  # entries one task decodes: large enough that the pool's overhead is small
T = TypeVar("T")


def decode_workers() -> int:
    """Threads for decoding by default: none (1, the calling thread), which is fastest for single-cell images (see
    the module docstring)."""
    return 1


def decode_stream(entries: Iterable[Entry], decode: Callable[[Entry], T], *, max_bytes: int,
                  workers: int | None = None) -> Iterator[tuple[Entry, T]]:
    """``(entry, decode(entry))`` for every entry, in the entries' order, decoded by ``workers`` threads.

    At most ``2 × workers`` chunks of :data:`CHUNK` entries are in flight, so memory stays bounded however large
    the set is. ``workers=1`` decodes in the calling thread. Entries that are not files on disk (zip members) are
    read in the calling thread before they are handed on, while their reader is still open.
    """
    workers = decode_workers() if workers is None else workers

    def chunk_of(batch: list[Entry]) -> list[tuple[Entry, T]]:
        return [(e, decode(e)) for e in batch]

    it = iter(entries)
    if workers <= 1:
        for e in it:  # each entry decoded before the next is asked for, while its reader is open
            yield e, decode(e)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-decode") as pool:
        inflight: deque[Future] = deque()
        try:
            while True:
                while len(inflight) < 2 * workers:
                    batch = [_in_memory(e, max_bytes) for e in islice(it, CHUNK)]
                    if not batch:
                        break
                    inflight.append(pool.submit(chunk_of, batch))
                if not inflight:
                    return
                yield from inflight.popleft().result()
        finally:
            for f in inflight:
                f.cancel()


def _in_memory(entry: Entry, max_bytes: int) -> Entry:
    """The entry with its bytes already read when it is not a file on disk (a zip member: the archive closes when
    the reader moves past it), else the entry itself."""
    if entry.path is not None or entry.error or entry.read is None or entry.size > max_bytes:
        return entry
    data = entry.read()
    return replace(entry, read=lambda: data)
