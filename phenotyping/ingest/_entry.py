"""One file of a set, as every reader (folder, zip, manifest, BSCCM) yields it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Entry:
    """One file of a set."""

    name: str  # path inside the set (posix), shown to the user
    read: Callable[[], bytes] | None = None
    size: int = 0
    cell_key: str | None = None
    label: str | None = None
    targets: dict[str, float] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    path: str | None = None  # the file on disk, for readers in other processes (folder and manifest entries)
