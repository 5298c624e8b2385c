"""Enumerate the files of an image set: a folder, a .zip, a manifest.csv or a single image.

Every entry carries its name inside the set, a way to read its bytes (bounded), and what the set says about it
(a label from an ImageFolder layout, manifest columns). Problems found while listing (a path escaping the archive,
a manifest row whose file is missing) become entries with an ``error`` so they are reported like any bad file.

A folder or zip with a ``manifest.csv`` is ingested as the manifest says; every image file beside it that no column
of the manifest names (``path``, or another column such as ``mask_path``) is reported, one entry per file, as "not
listed in manifest.csv": a set whose manifest misses files is usually a stale manifest, and a per-file list says
exactly which. A manifest given directly (``SOURCE`` is the .csv) is taken as a deliberate selection (a train/test
split beside other splits), so its folder is not searched for unlisted files.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from phenotyping.errors import IngestError
from phenotyping.ingest._entry import Entry
from phenotyping.ingest._image import IMAGE_SUFFIXES
from phenotyping.ingest._zipcount import zip_entry_count
from phenotyping.ingest.bsccm import INDEX_CSV as BSCCM_INDEX
from phenotyping.ingest.bsccm import is_bsccm_root, iter_bsccm

MANIFEST_NAME = "manifest.csv"
_JUNK_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_LABEL_COLUMNS = ("label", "cell_type", "class", "phase")
_ID_COLUMNS = ("cell_id", "id")
_NON_DATA_COLUMNS = {"path"}
# A single-cell image is small; a zip member that claims to inflate this much more than it stores is refused.
MAX_COMPRESSION_RATIO = 200
# Default of Settings.max_files_per_set: the most files (or manifest rows) one set may hold.
MAX_FILES_PER_SET = 200_000


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(p in _JUNK_PARTS or p.startswith("._") for p in parts)


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's path if it stays inside the archive, else None (absolute, drive letter or '..')."""
    name = name.replace("\\", "/")
    p = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in p.parts:
        return None
    return p


# A relative path with nothing to normalise: no backslash, no empty, "." or ".." part, no drive letter (a part
# starting with "." is sent the slow way, which is also correct)
_PLAIN_RELATIVE = re.compile(r"[^/\\:.][^/\\:]*(?:/[^/\\.][^/\\]*)*")


def _safe_member_text(name: str) -> str | None:
    """:func:`_safe_member_path` as a posix string (``str`` of the path), without building the path object for a
    name that needs no normalising."""
    if _PLAIN_RELATIVE.fullmatch(name):
        return name
    p = _safe_member_path(name)
    return None if p is None else str(p)


def _strip_common_root(paths: list[PurePosixPath]) -> int:
    """How many leading folders to ignore when reading labels from the layout.

    A zip of a folder wraps everything in one top folder: that folder is not a class. Folders shared by all files
    are stripped, but one folder above the files is always kept when files sit two or more folders deep, so a
    single-class ImageFolder (``set/eosinophil/a.png``) keeps its class.
    """
    if not paths:
        return 0
    common = 0
    while True:
        heads = {p.parts[common] if len(p.parts) > common + 1 else None for p in paths}
        if len(heads) != 1 or None in heads:
            break
        common += 1
    min_dirs = min(len(p.parts) - 1 for p in paths)
    return min(common, min_dirs - 1) if min_dirs >= 2 else common


def _label_from_layout(rel: PurePosixPath) -> str | None:
    """ImageFolder layout: the folder holding the file names its class."""
    return rel.parts[-2] if len(rel.parts) >= 2 else None


class ManifestRow(NamedTuple):
    """One data row of a manifest: the line it starts on, its values by column, and why it is unusable (or None)."""

    line: int
    values: dict[str, str]
    error: str | None = None


def _parse_manifest(text: str, manifest_name: str, *,
                    max_rows: int = MAX_FILES_PER_SET) -> tuple[list[ManifestRow], list[str]]:
    """The manifest's rows and its (stripped) column names. A row that cannot be read as CSV (a field over the csv
    module's 128 KiB limit, a NUL byte) or that has more fields than the header is returned with an ``error``, so it
    is refused on its own; blank lines are skipped.

    Raises:
        IngestError: no header, no 'path' column, or more than ``max_rows`` rows.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise IngestError(f"{manifest_name} line 1: the header row is not readable CSV ({e})") from e
    if header is None:
        raise IngestError(f"{manifest_name}: the manifest is empty; it needs a header row with a 'path' column")
    cols = [c.strip() for c in header]
    if "path" not in cols:
        raise IngestError(f"{manifest_name}: no 'path' column (columns are {cols}); add a 'path' column holding "
                          "each image's path relative to the manifest")
    rows: list[ManifestRow] = []
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as e:
            rows.append(ManifestRow(start, {}, f"line {start} is not readable CSV ({e}); a value longer than "
                                               f"{csv.field_size_limit():,} characters or a stray quote or NUL"))
            start = reader.line_num + 1
            continue
        if fields is None:
            break
        line, start = start, reader.line_num + 1
        if not fields:
            continue
        if len(rows) >= max_rows:
            raise IngestError(f"{manifest_name}: more than {max_rows:,} rows, above the limit of files per set "
                              "(LEUKO_MAX_FILES_PER_SET); split the set into several manifests")
        if len(fields) > len(cols):
            extra = ", ".join(repr(f) for f in fields[len(cols):][:3])
            values = {c: v.strip() for c, v in zip(cols, fields)}  # kept so its file is not "not listed"
            rows.append(ManifestRow(line, values, f"line {line} has {len(fields)} fields but the header has "
                                              f"{len(cols)} columns (extra: {extra}; a trailing comma, or a comma "
                                              "inside an unquoted value): remove the extra field or quote the value"))
            continue
        fields += [""] * (len(cols) - len(fields))
        rows.append(ManifestRow(line, {c: v.strip() for c, v in zip(cols, fields)}))
    return rows, cols


def _manifest_meta(rows: list[ManifestRow], cols: list[str], label_column: str | None,
                   manifest_name: str) -> tuple[str | None, str | None, set[str]]:
    """Which column is the cell id, which the label, which are numeric targets.

    A column is numeric when it holds at least one finite number and every other non-empty value is a number too
    (``nan`` and ``inf`` included) or a missing-value mark (``NA``, ``N/A``): one such value must not turn a column
    of measurements into text; the rows holding them are refused (:func:`_bad_number`)."""
    if label_column is not None and label_column not in cols:
        raise IngestError(f"{manifest_name}: label column {label_column!r} not found; columns are {cols}")
    label_col = label_column or next((c for c in _LABEL_COLUMNS if c in cols), None)
    id_col = next((c for c in _ID_COLUMNS if c in cols), None)
    numeric: set[str] = set()
    for c in cols:
        if c in _NON_DATA_COLUMNS or c in (label_col, id_col):
            continue
        values = [r.values[c] for r in rows if r.values.get(c)]
        if any(_is_number(v) for v in values) and all(_is_number(v) or _bad_number(v) for v in values):
            numeric.add(c)
    return id_col, label_col, numeric


_MISSING_MARKS = {"na", "n/a"}


def _is_number(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _bad_number(v: str) -> bool:
    """A value that stands for a number but is not a finite one: nan, inf, NA, N/A."""
    if v.lower() in _MISSING_MARKS:
        return True
    try:
        return not math.isfinite(float(v))
    except ValueError:
        return False


NOT_LISTED = f"not listed in {MANIFEST_NAME}"
CountFn = Callable[[int], None]


def _referenced_paths(rows: list[ManifestRow]) -> set[PurePosixPath]:
    """Every value of every column that reads as a relative path: files the manifest accounts for."""
    out = set()
    for row in rows:
        for v in row.values.values():
            if v:
                p = _safe_member_path(v)
                if p is not None:
                    out.add(p)
    return out


def _manifest_entries(rows: list[ManifestRow], cols: list[str], manifest_name: str,
                      resolve: Callable[[str], Entry | str], label_column: str | None) -> Iterator[Entry]:
    """Entries of a manifest's rows; ``resolve`` takes a row's path (posix, normalised, inside the set) and gives its
    entry, or why it has none."""
    id_col, label_col, numeric = _manifest_meta(rows, cols, label_column, manifest_name)
    seen_ids: set[str] = set()
    for line, row, error in rows:
        where = f"{manifest_name} line {line}"
        if error:
            yield Entry(name=where, error=error)
            continue
        raw = row.get("path", "")
        if not raw:
            yield Entry(name=where, error="empty 'path'")
            continue
        rel = _safe_member_text(raw)
        if rel is None:
            yield Entry(name=raw, error=f"path escapes the set's folder ({where})")
            continue
        bad = [c for c in sorted(numeric) if _bad_number(row.get(c, ""))]
        if bad:
            yield Entry(name=raw, error=f"column {bad[0]!r} is {row[bad[0]]!r} ({where}), but the column holds "
                                        "numbers: give a finite number, or leave the cell empty when the value is "
                                        "unknown")
            continue
        found = resolve(rel)
        if isinstance(found, str):
            yield Entry(name=raw, error=f"{found} ({where})")
            continue
        key = row.get(id_col) if id_col else None
        key = key or raw
        if key in seen_ids:
            yield Entry(name=raw, error=f"cell id {key!r} appears twice in the manifest ({where})")
            continue
        seen_ids.add(key)
        found.cell_key = key
        found.label = row.get(label_col) or None if label_col else None
        found.targets = {c: float(row[c]) for c in numeric if row.get(c)}
        found.extra = {c: row[c] for c in cols if c not in numeric and c not in ("path",) and row.get(c)}
        yield found


def _too_many(source: object, max_files: int, what: str = "files") -> IngestError:
    return IngestError(f"{source}: more than {max_files:,} {what}, above the limit of files per set "
                       "(LEUKO_MAX_FILES_PER_SET); split the set into several")


def _list_files(root: Path, max_files: int) -> list[Path]:
    """The files under ``root`` (no folders, no junk), sorted; IngestError as soon as there are more than
    ``max_files``, so a huge folder is neither listed in full nor read."""
    out = []
    for p in root.rglob("*"):
        if p.is_dir() or _is_junk(p.relative_to(root).parts):
            continue
        out.append(p)
        if len(out) > max_files:
            raise _too_many(root, max_files)
    return sorted(out)


def iter_folder(root: Path, *, label_column: str | None = None, max_bytes: int,
                max_files: int = MAX_FILES_PER_SET, on_count: CountFn | None = None) -> Iterator[Entry]:
    files = _list_files(root, max_files)
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        referenced: set[PurePosixPath] = set()
        yield from iter_manifest(manifest, label_column=label_column, max_bytes=max_bytes, referenced=referenced,
                                 max_files=max_files,
                                 on_count=None if on_count is None else lambda rows: on_count(rows + sum(
                                     1 for p in files if p.suffix.lower() in IMAGE_SUFFIXES and PurePosixPath(
                                         p.relative_to(root).as_posix()) not in referenced)))
        for p in files:
            rel = PurePosixPath(p.relative_to(root).as_posix())
            if p.suffix.lower() in IMAGE_SUFFIXES and rel not in referenced:
                yield Entry(name=rel.as_posix(), error=NOT_LISTED)
        return
    if on_count is not None:
        on_count(len(files))
    rels = [PurePosixPath(p.relative_to(root).as_posix()) for p in files]
    strip = _strip_common_root(rels)
    for p, rel in zip(files, rels):
        inner = PurePosixPath(*rel.parts[strip:])
        if p.is_symlink():
            yield Entry(name=rel.as_posix(), error="symbolic link; copy the file itself into the set")
            continue
        yield _file_entry(p, rel.as_posix(), label=_label_from_layout(inner), max_bytes=max_bytes)


def read_bounded(path: str | Path, *, max_bytes: int, size_hint: int = 0) -> bytes:
    """A file's bytes, at most ``max_bytes + 1`` of them (so a caller can tell a file above the limit).

    The first read asks for ``size_hint + 1`` bytes (the size the file was listed with), so a small file costs one
    small read rather than a buffer of the limit's size; a file that grew since it was listed is read on, up to the
    limit. Plain ``os`` calls (which release the GIL).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        limit, got, chunks = max_bytes + 1, 0, []
        want = min(limit, max(size_hint, 0) + 1)
        while got < limit:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            want = min(limit - got, 1 << 16)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _file_entry(path: Path | str, name: str, *, label: str | None, max_bytes: int, size: int | None = None) -> Entry:
    size = os.stat(path).st_size if size is None else size
    path = str(path)

    def read() -> bytes:
        return read_bounded(path, max_bytes=max_bytes, size_hint=size)

    return Entry(name=name, read=read, size=size, cell_key=name, label=label, path=path)


def iter_manifest(manifest: Path, *, label_column: str | None = None, max_bytes: int,
                  referenced: set[PurePosixPath] | None = None, max_files: int = MAX_FILES_PER_SET,
                  on_count: CountFn | None = None) -> Iterator[Entry]:
    """Entries of a manifest's rows; ``referenced`` (when given) receives every relative path the manifest names."""
    if manifest.stat().st_size > max_bytes:
        raise IngestError(f"{manifest}: {manifest.stat().st_size / 1e6:.1f} MB, above the limit of "
                          f"{max_bytes / 1e6:.0f} MB for a manifest")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise IngestError(f"{manifest}: not UTF-8 text ({e}); save the manifest as UTF-8 CSV") from e
    rows, cols = _parse_manifest(text, str(manifest), max_rows=max_files)
    if referenced is not None:
        referenced |= _referenced_paths(rows)
    if on_count is not None:
        on_count(len(rows))
    base = manifest.parent.resolve()
    # a listed file's folder, resolved once (most sets share a few folders), and whether it is inside ``base``
    folders: dict[str, tuple[str, bool]] = {}

    def resolve(text: str) -> Entry | str:
        head, _, name = text.rpartition("/")
        found = folders.get(head)
        if found is None:
            folder = (base / head).resolve()
            found = folders[head] = (str(folder).rstrip("/"), folder.is_relative_to(base))
        folder, inside = found
        p = f"{folder}/{name}" if name else folder
        try:
            st = os.lstat(p)
        except OSError:
            return "listed in the manifest but not found"
        if stat.S_ISLNK(st.st_mode):  # follow it, then apply the same checks to where it leads
            target = Path(p).resolve()
            try:
                st = target.stat()
            except OSError:
                return "listed in the manifest but not found"
            p, inside = str(target), target.is_relative_to(base)
        if not inside:  # the folder resolved outside the manifest's (a link among the folders) or the link did
            return "path escapes the manifest's folder"
        if not stat.S_ISREG(st.st_mode):
            return "listed in the manifest but not found"
        return _file_entry(p, text, label=None, max_bytes=max_bytes, size=st.st_size)

    yield from _manifest_entries(rows, cols, manifest.name, resolve, label_column)


def _clash_reason(members: list[tuple[int, zipfile.ZipInfo]]) -> str:
    """Why archive members that share one path are all refused, naming each (position in the archive, size)."""
    named = ", ".join(f"{info.filename!r} (entry {pos}, {info.file_size:,} bytes)" for pos, info in members)
    return (f"{len(members)} archive members have this path: {named}; which one is the cell cannot be told, so none "
            "is ingested: rebuild the zip with unique file names")


def _member_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: PurePosixPath, label: str | None,
                  max_bytes: int) -> Entry:
    """The entry of one zip member, or its refusal (a link, encrypted, too large, a likely zip bomb)."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return Entry(name=name, error="symbolic link inside the archive; refused")
    if info.flag_bits & 0x1:
        return Entry(name=name, error="encrypted zip member; unpack it with its password first")
    if info.file_size > max_bytes:
        return Entry(name=name, error=f"{info.file_size / 1e6:.1f} MB uncompressed, above the per-file "
                                      f"limit of {max_bytes / 1e6:.0f} MB")
    if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO \
            and info.file_size > 1_000_000:
        return Entry(name=name, error=f"compression ratio {info.file_size / info.compress_size:.0f}:1 "
                                      "(possible zip bomb); refused")

    def read() -> bytes:
        with zf.open(info) as fh:  # reads at most max_bytes+1 whatever the header claims
            return fh.read(max_bytes + 1)

    return Entry(name=name, read=read, size=info.file_size, cell_key=rel.as_posix(), label=label)


def _read_zip_manifest(zf: zipfile.ZipFile, info: zipfile.ZipInfo, display: str, max_bytes: int) -> str:
    if info.file_size > max_bytes:
        raise IngestError(f"{display}: {MANIFEST_NAME} is {info.file_size / 1e6:.1f} MB, above the limit of "
                          f"{max_bytes / 1e6:.0f} MB")
    try:
        return zf.read(info).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise IngestError(f"{display}: {MANIFEST_NAME} is not UTF-8 text ({e})") from e


def iter_zip(path: Path | io.BufferedIOBase, *, label_column: str | None = None, max_bytes: int,
             display: str | None = None, max_files: int = MAX_FILES_PER_SET,
             on_count: CountFn | None = None) -> Iterator[Entry]:
    """Entries of a zip archive. Its size is checked before anything is read: more than ``max_files`` entries in
    the central directory refuse the set. Members that share a path (after '\\' becomes '/') are all refused, with
    one entry naming them."""
    display = display or str(path)
    try:
        count = zip_entry_count(path, stop_after=max_files)  # type: ignore[arg-type]
    except OSError as e:
        raise IngestError(f"{display}: not a readable zip archive ({e})") from e
    if count is not None and count > max_files:
        raise _too_many(display, max_files, "entries")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise IngestError(f"{display}: not a readable zip archive ({e})") from e
    with zf:
        groups: dict[PurePosixPath, list[tuple[int, zipfile.ZipInfo]]] = {}
        escaping = 0
        for pos, info in enumerate(zf.infolist(), start=1):
            if info.is_dir():
                continue
            rel = _safe_member_path(info.filename)
            if rel is None:
                escaping += 1
                yield Entry(name=info.filename, error="path escapes the archive (absolute or '..'); refused")
                continue
            if _is_junk(rel.parts):
                continue
            groups.setdefault(rel, []).append((pos, info))
        strip = _strip_common_root(list(groups))
        inner = {PurePosixPath(*r.parts[strip:]): found[0][1] for r, found in groups.items() if len(found) == 1}
        clashes = {PurePosixPath(*r.parts[strip:]): found for r, found in groups.items() if len(found) > 1}

        def member_entry(info: zipfile.ZipInfo, rel: PurePosixPath, label: str | None) -> Entry:
            return _member_entry(zf, info, rel, label, max_bytes)

        manifest_path = PurePosixPath(MANIFEST_NAME)
        if manifest_path in clashes:
            raise IngestError(f"{display}: {MANIFEST_NAME}: {_clash_reason(clashes[manifest_path])}")
        manifest_info = inner.get(manifest_path)
        if manifest_info is not None:
            text = _read_zip_manifest(zf, manifest_info, display, max_bytes)
            rows, cols = _parse_manifest(text, f"{display}:{MANIFEST_NAME}", max_rows=max_files)
            referenced = _referenced_paths(rows)
            if on_count is not None:
                on_count(escaping + len(rows) + sum(r not in referenced for r in clashes) + sum(
                    r.suffix.lower() in IMAGE_SUFFIXES and r not in referenced for r in inner))

            def resolve(text: str) -> Entry | str:
                rel = PurePosixPath(text)
                if rel in clashes:
                    return _clash_reason(clashes[rel])
                info = inner.get(rel)
                if info is None:
                    return "listed in the manifest but not in the archive"
                e = member_entry(info, rel, None)
                return e.error if e.error else e

            yield from _manifest_entries(rows, cols, MANIFEST_NAME, resolve, label_column)
            for rel_inner, found in sorted(clashes.items()):
                if rel_inner not in referenced:
                    yield Entry(name=found[0][1].filename, error=_clash_reason(found))
            for rel_inner, info in sorted(inner.items()):
                if rel_inner.suffix.lower() in IMAGE_SUFFIXES and rel_inner not in referenced:
                    yield Entry(name=info.filename, error=NOT_LISTED)
            return
        if on_count is not None:
            on_count(escaping + len(inner) + len(clashes))
        for rel_inner in sorted({*inner, *clashes}):
            if rel_inner in clashes:
                yield Entry(name=clashes[rel_inner][0][1].filename, error=_clash_reason(clashes[rel_inner]))
            else:
                yield member_entry(inner[rel_inner], rel_inner, _label_from_layout(rel_inner))


def _count_rows(csv_path: Path, max_rows: int) -> None:
    """IngestError when the CSV has more than ``max_rows`` lines after its header (counted, not parsed)."""
    with open(csv_path, "rb") as fh:
        for n, _ in enumerate(fh):
            if n > max_rows:
                raise _too_many(csv_path, max_rows, "rows")


def iter_source(source: Path, *, label_column: str | None = None, max_bytes: int,
                bsccm_options: dict | None = None, max_files: int = MAX_FILES_PER_SET,
                on_count: CountFn | None = None) -> Iterator[Entry]:
    """Entries of any supported source; raises IngestError when the source itself cannot be read, or holds more
    than ``max_files`` files (entries of a zip, rows of a manifest or BSCCM index), before any file is read.

    ``on_count`` (when given) is called once, as soon as the reader knows it (before the first entry but for a
    zip's members whose paths escape it), with the number of entries the source yields in all; not for a BSCCM
    folder. Ingest's first pass uses it to settle the majority channel count early.

    ``bsccm_options`` are passed to :func:`phenotyping.ingest.bsccm.iter_bsccm` when the folder is a BSCCM root.
    """
    source = Path(source)
    if not source.exists():
        raise IngestError(f"{source}: no such file or folder")
    if source.is_dir():
        if is_bsccm_root(source):
            _count_rows(source / BSCCM_INDEX, max_files)
            yield from iter_bsccm(source, **(bsccm_options or {}))
            return
        yield from iter_folder(source, label_column=label_column, max_bytes=max_bytes, max_files=max_files,
                               on_count=on_count)
    elif source.name.lower() == MANIFEST_NAME or source.suffix.lower() == ".csv":
        yield from iter_manifest(source, label_column=label_column, max_bytes=max_bytes, max_files=max_files,
                                 on_count=on_count)
    elif source.suffix.lower() == ".zip" or zipfile.is_zipfile(source):
        yield from iter_zip(source, label_column=label_column, max_bytes=max_bytes, max_files=max_files,
                            on_count=on_count)
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        if on_count is not None:
            on_count(1)
        yield _file_entry(source, source.name, label=None, max_bytes=max_bytes)
    else:
        raise IngestError(f"{source}: not a folder, .zip, manifest .csv or image file")
