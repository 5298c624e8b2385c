"""Decoding a set's files in parallel threads, in the set's order.

Reading a file, hashing it (``hashlib`` releases the GIL for buffers above 2 KiB), inflating it (zlib) and
decoding it (numpy, PIL, tifffile) run partly outside the GIL, so a small thread pool overlaps the files' I/O and
decoding with one another and with the caller's writes. Results come back in the order of the entries whatever the
order the threads finish in, so cell ids follow the set's order.
"""

from __future__ import annotations

import os
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
    """Threads for decoding: two per core this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, 2 * cores))


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
