"""Ingest one image set into one sample: every usable file becomes a cell, every other file is reported."""

from __future__ import annotations

import functools
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from phenotyping.errors import ImageError, IngestError
from phenotyping.ingest._channels import tiff_bytes
from phenotyping.ingest._decode import decode_stream
from phenotyping.ingest._derive import QdpcDerivation, cell_channel_names
from phenotyping.ingest._entry import Entry
from phenotyping.ingest._image import MAX_PLANE_PIXELS, read_image, sniff_format
from phenotyping.ingest._sources import MAX_FILES_PER_SET, _parse_manifest, _safe_member_path, iter_source
from phenotyping.ingest.bsccm import DPC_CHANNELS, is_bsccm_root
from phenotyping.schemas import IngestResult, RejectedFile, Sample

_SUFFIX = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "tiff": ".tif"}
BATCH = 2048  # cells per committed batch (one pack file, one transaction, one cells.ingest audit event)
BATCH_BYTES = 64 * 1024 * 1024  # or fewer cells, once their image bytes reach this
SURVEY_KEEP_BYTES = 256 * 1024 * 1024  # file bytes the first pass keeps for the second (the rest is read again)

ProgressFn = Callable[[int, int | None], None]


def ingest_set(
    store,  # phenotyping.store.Store (not imported here, so this module stays free of duckdb)
    source: str | Path,
    sample_id: str,
    *,
    actor: str,
    label_column: str | None = None,
    expected_channels: int | None = None,
    max_pixels: int = MAX_PLANE_PIXELS,
    max_bytes: int = 64 * 1024 * 1024,
    max_files: int = MAX_FILES_PER_SET,
    progress: ProgressFn | None = None,
    bsccm_options: dict | None = None,
    create: Sample | None = None,
    derive: QdpcDerivation | None = None,
    workers: int | None = None,
    on_commit: Callable[[list[int]], None] | None = None,
    first_batch: int | None = None,
) -> IngestResult:
    """Ingest a folder, .zip, manifest.csv or single image into a sample.

    Cells are committed in batches of :data:`BATCH` (fewer once their bytes reach :data:`BATCH_BYTES`), each after
    its images are durably written (one pack file per batch,
    :meth:`phenotyping.store.cells.CellRepository.put_pack`), so an interrupted ingest keeps every committed cell,
    and running it again skips what is already there (reported as duplicates). Files are read and decoded in this
    thread (or ``workers`` threads, :mod:`._decode`) while a writer thread commits the batch before; cells keep the
    set's order.

    Args:
        create: a sample that does not exist yet (id ``sample_id``): it is created in the same transaction as the
            first batch of cells, so a set of which nothing can be used leaves no empty sample behind. Without it,
            the sample must exist.
        expected_channels: channels every cell must have; default: the sample's existing cells, else the count
            most of the set's decodable images have (the set is then read twice: a first pass only decodes).
        max_files: most files (zip entries, manifest rows) the set may hold; checked before any file is read.
        progress: called as ``progress(files_seen, total_or_None)``.
        bsccm_options: for a BSCCM folder, keyword arguments of :func:`phenotyping.ingest.bsccm.iter_bsccm`
            (``contrast``, ``channels``, ``marker_columns``).
        derive: compute channels from each cell's own (quantitative DPC phase) before storing it; a file without
            the channels it needs is rejected, naming what is missing. The stored cell is then a float32 TIFF that
            names its channels (also in ``extra["channel_names"]``), ``extra["derived"]`` says how it was made, and
            ``content_hash`` stays the hash of the file as given, so the same raw cell is still a duplicate.
        workers: decoding threads (default :func:`phenotyping.ingest._decode.decode_workers`; 1: none).
        on_commit: called with the ids of each batch of cells just after it committed (``predict --manifest``
            predicts them while the rest is ingested); an exception it raises ends the ingest there.
        first_batch: cells in the first committed batch (default :data:`BATCH`), so that ``on_commit`` hears of
            cells, and its consumer starts, before a whole batch of :data:`BATCH` is read; later batches are full.
            No further file is read until ``on_commit`` has returned for that first batch (a consumer that holds
            the ingest there has the interpreter to itself).

    Raises:
        IngestError: the source cannot be read, holds more than ``max_files`` files, its images have no majority
            channel count, or not one file of it is usable (the message lists the reasons).
        SampleLocked: the sample's latest report version is signed.
    """
    run = _start(store, sample_id, actor=actor, create=create, expected_channels=expected_channels)
    run.derive = derive
    run.on_commit = on_commit
    if first_batch is not None:
        if first_batch < 1:
            raise ValueError(f"first_batch must be at least 1, got {first_batch}")
        run.first_batch = first_batch

    def entries(on_count: Callable[[int], None] | None = None) -> Iterator[Entry]:
        return iter_source(Path(source), label_column=label_column, max_bytes=max_bytes,
                           bsccm_options=bsccm_options, max_files=max_files, on_count=on_count)

    decoded = _decoded(run, entries, source, bsccm_options, max_bytes=max_bytes, max_pixels=max_pixels,
                       progress=progress, workers=workers)
    seen = _commit_all(run, decoded, progress)
    if not run.ids:
        raise _nothing_ingested(source, sample_id, seen, run.rejected, created=create is not None,
                                duplicates=run.duplicates)
    summary = [f"{note}: {len(files)} file(s), e.g. {files[0]}" for note, files in run.noted.items()]
    return IngestResult(sample_id=sample_id, ingested=len(run.ids), duplicates=run.duplicates, rejected=run.rejected,
                        notes=summary, cell_ids=run.ids)


def _commit_all(run: _Run, decoded: Iterable[tuple[Entry, Decoded | str]], progress: ProgressFn | None) -> int:
    """Queue or reject every decoded entry, committing full batches as they fill; the number of entries seen.

    A batch is committed by one writer thread while this one goes on with the next batch (at most one batch in
    flight, committed in order), so a batch's writes and fsyncs overlap the decoding of the next. Every batch is
    committed (or its error raised here) before this returns."""
    seen = 0
    last_report = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-commit") as writer:
        run.writer = writer
        try:
            for entry, result in decoded:
                seen += 1
                if progress and time.monotonic() - last_report > 0.2:
                    progress(seen, None)
                    last_report = time.monotonic()
                _add_entry(run, entry, result)
                full = BATCH if run.batches or run.first_batch is None else min(run.first_batch, BATCH)
                if len(run.pending) >= full or run.pending_bytes >= BATCH_BYTES:
                    run.flush()
                    if run.batches == 1 and run.first_batch is not None:
                        run.wait()  # nothing more is read until the first batch's on_commit has returned
            run.flush()
        finally:
            _settle_majority(run)
            run.wait()  # the batch in flight is committed, or its error raised (before the loop's own)
            run.writer = None
    if progress:
        progress(seen, seen)
    return seen


@dataclass
class Decoded:
    """One decoded file: the bytes as given and as stored (the same object unless channels were derived), what the
    stored image is, and the SHA-256 of the bytes as given (the duplicate key)."""

    data: bytes
    stored: bytes
    shape: tuple[int, ...]
    dtype: str
    digest: str
    suffix: str
    notes: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)


def decode_entry(entry: Entry, *, max_bytes: int, max_pixels: int,
                 derive: QdpcDerivation | None = None) -> Decoded | str:
    """Read, hash, decode (and derive) one entry; the reason it is unusable as a string instead."""
    if entry.error:
        return entry.error
    assert entry.read is not None
    try:
        if entry.size > max_bytes:
            raise ImageError(entry.name, f"{entry.size / 1e6:.1f} MB, above the per-file limit of "
                                         f"{max_bytes / 1e6:.0f} MB")
        data = entry.read()
        if len(data) > max_bytes:
            raise ImageError(entry.name, f"larger than the per-file limit of {max_bytes / 1e6:.0f} MB")
        notes: list[str] = []
        arr = read_image(data, entry.name, max_pixels=max_pixels, notes=notes)
        stored, extra = data, entry.extra
        if derive is not None:
            names = cell_channel_names(entry.extra, data, int(arr.shape[0]), file=entry.name)
            arr, names = derive.apply(arr, names, file=entry.name)
            stored = tiff_bytes(arr, names)
            extra = {**extra, "channel_names": ",".join(names), "derived": derive.describe()}
    except ImageError as e:
        return e.reason
    return Decoded(data=data, stored=stored, shape=tuple(map(int, arr.shape)), dtype=_dtype_name(arr.dtype),
                   digest=hashlib.sha256(data).hexdigest(), suffix=_SUFFIX[sniff_format(stored)], notes=notes,
                   extra=extra)


_DTYPE_NAMES: dict[Any, str] = {}


def _dtype_name(dtype: Any) -> str:
    """``str(dtype)``, remembered (numpy builds the name anew on every call)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


def _decoded(run: _Run, entries: Callable[..., Iterator[Entry]], source: str | Path, bsccm_options: dict | None, *,
             max_bytes: int, max_pixels: int, progress: ProgressFn | None,
             workers: int | None) -> Iterator[tuple[Entry, Decoded | str]]:
    """The set's entries with their decoded images, in order; sets ``run.channels`` first where the set decides it
    (a BSCCM reader's fixed count, else the majority of a first pass that decodes until it is settled)."""
    derive = run.derive
    if run.channels is None and derive is None:
        run.channels = _known_channels(Path(source), bsccm_options)
        run.channel_basis = f"this set's images have {run.channels}"
    if run.channels is None and derive is None:  # derived channels: the first derived cell decides
        run.by_majority = True
        survey, rest, run.channels = _majority_channels(
            entries, source, max_bytes=max_bytes, max_pixels=max_pixels, progress=progress, workers=workers)
        return _after_survey(survey, rest, entries, max_bytes=max_bytes, max_pixels=max_pixels)
    decode = functools.partial(decode_entry, max_bytes=max_bytes, max_pixels=max_pixels, derive=derive)
    return decode_stream(entries(), decode, max_bytes=max_bytes, workers=workers)


def _known_channels(source: Path, bsccm_options: dict | None) -> int | None:
    """The channel count a reader fixes for every cell (a BSCCM folder: the chosen LED channels, or the one DPC
    image), so its images need no first pass; None for every other source."""
    if not (source.is_dir() and is_bsccm_root(source)):
        return None
    options = bsccm_options or {}
    return 1 if options.get("contrast") == "dpc" else len(options.get("channels") or DPC_CHANNELS)


def _majority_channels(entries: Callable[..., Iterator[Entry]], source: str | Path, *, max_bytes: int,
                       max_pixels: int, progress: ProgressFn | None, workers: int | None = None,
                       ) -> tuple[list[tuple[Entry, Decoded | str | None]], Iterator[tuple[Entry, Decoded | str]],
                                  int | None]:
    """A first pass that decodes the set until the channel count more than half of its decodable images have is
    settled: ``(its results, the rest of the decoded stream, the count)``.

    So that no file's place in the order (an RGB ``_overview.png`` sorting first) decides the count for the rest.
    The count is settled as soon as more images have it than half the entries the source holds in all (the
    source's count, :func:`iter_source`'s ``on_count``): no later file can change it, so the rest of the set is
    decoded as it is committed. Otherwise the pass decodes the whole set. Its results are returned for the second
    pass to reuse (the bytes of at most :data:`SURVEY_KEEP_BYTES` in all; files beyond are None: read and decoded
    again). The count is None when no file decodes (each is then refused for its own reason).

    Raises:
        IngestError: no channel count is shared by more than half of the decodable images.
    """
    counts: Counter[int] = Counter()
    survey: list[tuple[Entry, Decoded | str | None]] = []
    kept = 0
    last_report = time.monotonic()
    total: list[int] = []
    decode = functools.partial(decode_entry, max_bytes=max_bytes, max_pixels=max_pixels)
    stream = decode_stream(entries(on_count=total.append), decode, max_bytes=max_bytes, workers=workers)
    for seen, (entry, result) in enumerate(stream, start=1):
        if progress and time.monotonic() - last_report > 0.2:
            progress(seen, None)
            last_report = time.monotonic()
        channels = None
        if isinstance(result, Decoded):
            channels = result.shape[0]
            counts[channels] += 1
            kept += len(result.data)
            if kept > SURVEY_KEEP_BYTES:
                result = None  # decoded again in the second pass
        survey.append((entry, result))
        if channels is not None and total and 2 * counts[channels] > total[0]:
            return survey, stream, channels
    if not counts:
        return survey, iter(()), None
    n_decoded = sum(counts.values())
    top, n = counts.most_common(1)[0]
    if 2 * n <= n_decoded:
        groups = ", ".join(f"{k:,} with {c} channel(s)" for c, k in sorted(counts.items()))
        raise IngestError(f"{source}: its images have different channel counts and no count is shared by most of "
                          f"them ({groups}); a sample's images must all have the same channels: remove the odd "
                          "files (an overview image, a mask) or ingest each group into its own sample")
    return survey, iter(()), top


def _after_survey(survey: list[tuple[Entry, Decoded | str | None]], rest: Iterator[tuple[Entry, Decoded | str]],
                  entries: Callable[..., Iterator[Entry]], *, max_bytes: int,
                  max_pixels: int) -> Iterator[tuple[Entry, Decoded | str]]:
    """The first pass's results in order, then the rest of its stream; when it let some files' bytes go, the set is
    read again (same order) and those files are decoded anew."""
    fresh = entries() if any(r is None for _, r in survey) else None
    for i in range(len(survey)):
        entry, result = survey[i]
        survey[i] = (entry, "")  # the bytes are let go as the second pass moves on
        if fresh is not None:
            entry = next(fresh)
        yield entry, (decode_entry(entry, max_bytes=max_bytes, max_pixels=max_pixels) if result is None else result)
    yield from rest


@dataclass
class _Run:
    """One ingest's state: what the sample already holds, what was rejected, the batch not yet committed."""

    store: Any
    sample_id: str
    actor: str
    create: Sample | None
    channels: int | None
    hashes: dict[str, str]                 # content hash -> name of the first file with it
    keys: set[str]
    channel_basis: str = ""                # why ``channels`` is the count: "this sample's cells have 1", …
    by_majority: bool = False              # the count is the set's majority: the basis is known at the end
    decoded: Counter = field(default_factory=Counter)  # channel count -> decodable images seen
    off_count: list[int] = field(default_factory=list)  # places in ``rejected`` that await the majority's basis
    rejected: list[RejectedFile] = field(default_factory=list)
    noted: dict[str, list[str]] = field(default_factory=dict)  # decoding note -> files
    duplicates: int = 0
    pending: list[dict] = field(default_factory=list)
    pending_bytes: int = 0
    ids: list[int] = field(default_factory=list)
    derive: QdpcDerivation | None = None
    on_commit: Callable[[list[int]], None] | None = None
    first_batch: int | None = None  # cells in the first committed batch when not BATCH (see ingest_set)

    writer: ThreadPoolExecutor | None = None  # commits batches in order, one at a time (see _commit_all)
    in_flight: Future | None = None
    batches: int = 0

    def flush(self) -> None:
        """Hand the pending cells to the writer (creating the sample with the first batch when ``create`` is set),
        after the batch before them is committed; without a writer, commit them here."""
        if not self.pending:
            return
        batch, create = self.pending, None if self.batches else self.create
        self.pending, self.pending_bytes = [], 0
        self.batches += 1
        self.wait()
        if self.writer is None:
            self.ids.extend(self._commit(batch, create))
        else:
            self.in_flight = self.writer.submit(self._commit, batch, create)

    def wait(self) -> None:
        """Wait for the batch in flight; its cell ids join ``ids`` (its error is raised here)."""
        if self.in_flight is not None:
            done, self.in_flight = self.in_flight, None
            self.ids.extend(done.result())

    def _commit(self, batch: list[dict], create: Sample | None) -> list[int]:
        """Write the batch's pack, then its rows (which makes the pack durable before it commits)."""
        rels = self.store.put_pack([(c.pop("_bytes"), c.pop("_suffix")) for c in batch])
        for c, rel in zip(batch, rels):
            c["blob_path"] = rel
        ids = self.store.add_cells(self.sample_id, batch, actor=self.actor, create=create)
        if self.on_commit is not None:   # e.g. predict --manifest's stream: the batch is committed, predict it
            self.on_commit(list(ids))
        return ids


def _start(store, sample_id: str, *, actor: str, create: Sample | None, expected_channels: int | None) -> _Run:
    """Check the sample (new, or existing and unlocked) and read what it already holds."""
    if create is not None:
        if create.id != sample_id:
            raise ValueError(f"create= is sample {create.id!r} but the cells are for {sample_id!r}")
        if store.sample_exists(sample_id):
            raise ValueError(f"sample {sample_id!r} already exists; ingest into it without create=")
        return _Run(store, sample_id, actor, create, channels=expected_channels, hashes={}, keys=set(),
                    channel_basis=_basis(expected_channels, expected_channels))
    store.get_sample(sample_id)
    store.ensure_unlocked(sample_id, "ingesting more cells")
    channels = expected_channels or store.sample_channel_count(sample_id)
    return _Run(store, sample_id, actor, create, channels=channels, hashes=store.known_hashes(sample_id),
                keys=store.known_cell_keys(sample_id), channel_basis=_basis(expected_channels, channels))


def _settle_majority(run: _Run) -> None:
    """Word the refusals of images without the majority's channel count, now that the whole set was seen."""
    if not run.off_count:
        return
    basis = (f"most of this set's images ({run.decoded[run.channels]:,} of {sum(run.decoded.values()):,}) have "
             f"{run.channels}")
    for i in run.off_count:
        r = run.rejected[i]
        run.rejected[i] = RejectedFile(file=r.file, reason=f"{r.reason} channel(s), but {basis}; a sample's images "
                                                           "must all have the same channels")
    run.off_count.clear()


def _basis(expected_channels: int | None, channels: int | None) -> str:
    if expected_channels:
        return f"{expected_channels} are expected"
    return f"this sample's cells have {channels}" if channels else ""


def _add_entry(run: _Run, entry: Entry, result: Decoded | str) -> None:
    """Reject the entry (with its reason) or queue its cell, with its image bytes, for the next commit."""
    if isinstance(result, str):
        run.rejected.append(RejectedFile(file=entry.name, reason=result))
        return
    channels = result.shape[0]
    run.decoded[channels] += 1
    if run.channels is not None and channels != run.channels and run.by_majority:
        run.off_count.append(len(run.rejected))
        run.rejected.append(RejectedFile(file=entry.name, reason=str(channels)))  # worded by _settle_majority
        return
    if run.channels is not None and channels != run.channels:
        derived = " after derivation" if run.derive is not None else ""
        run.rejected.append(RejectedFile(file=entry.name, reason=(
            f"{channels} channel(s){derived}, but {run.channel_basis or f'the sample has {run.channels}'}; "
            "a sample's images must all have the same channels")))
        return
    if run.channels is None:  # only when the first pass decoded nothing that this pass could
        run.channels, run.by_majority = channels, False
    key = entry.cell_key or entry.name
    digest = result.digest
    if digest in run.hashes:
        run.duplicates += 1
        run.rejected.append(RejectedFile(file=entry.name, reason=f"duplicate: same content as {run.hashes[digest]}"))
        return
    if key in run.keys:
        run.duplicates += 1
        run.rejected.append(RejectedFile(file=entry.name,
                                         reason=f"cell id {key!r} is already in sample {run.sample_id}"))
        return
    run.hashes[digest] = entry.name
    run.keys.add(key)
    extra = result.extra
    if result.notes:
        extra = {**extra, "image_note": "; ".join(result.notes)}
        for n in result.notes:
            run.noted.setdefault(n, []).append(entry.name)
    run.pending_bytes += len(result.stored)
    run.pending.append({
        "cell_key": key, "content_hash": digest, "source_file": entry.name, "_bytes": result.stored,
        "_suffix": result.suffix, "shape": result.shape, "dtype": result.dtype, "reference_label": entry.label,
        "targets": entry.targets, "extra": extra,
    })


DUPLICATE_ID = "cell id already in the sample"


class NothingIngested(IngestError):
    """Not one file of a set could be used; ``rejected`` and ``duplicates`` say what happened to each file, so that
    the ingest record can count them."""

    def __init__(self, message: str, *, rejected: list[RejectedFile], duplicates: int):
        super().__init__(message)
        self.rejected = list(rejected)
        self.duplicates = duplicates


def _reason_kind(reason: str) -> str:
    """The kind of a refusal, without the file-specific part: ``"duplicate: same content as a.png"`` and
    ``"duplicate: same content as b.png"`` are both ``"duplicate"``; ``"not an image (…)"`` is ``"not an image"``."""
    if reason.startswith("cell id ") and " is already in sample " in reason:
        return DUPLICATE_ID
    return reason.split(" (")[0].split(":")[0].strip() or reason


def _nothing_ingested(source: str | Path, sample_id: str, seen: int, rejected: list[RejectedFile], *,
                      created: bool, duplicates: int = 0) -> NothingIngested:
    """The error for a set of which no file could be used: no files at all, or every kind of refusal with its count
    and an example (the five commonest kinds, then how many other kinds)."""
    not_created = f"; sample {sample_id} was not created" if created else ""
    if seen == 0:
        return NothingIngested(f"{source}: no files found{not_created}", rejected=rejected, duplicates=duplicates)
    kinds: dict[str, list[RejectedFile]] = {}
    for r in rejected:
        kinds.setdefault(_reason_kind(r.reason), []).append(r)
    ranked = sorted(kinds.items(), key=lambda kv: -len(kv[1]))
    parts = [f"{len(rs)}× {kind if len(rs) > 1 else rs[0].reason}" + (f", e.g. {rs[0].file}: {rs[0].reason}"
                                                                       if len(rs) > 1 else f" ({rs[0].file})")
             for kind, rs in ranked[:5]]
    if len(ranked) > 5:
        parts.append(f"{len(ranked) - 5} other kind(s) of refusal in the ingest record")
    hint = "; every file is already in the sample" if kinds and set(kinds) <= {"duplicate", DUPLICATE_ID} else ""
    return NothingIngested(f"{source}: none of its {seen} file(s) could be ingested into sample {sample_id} "
                           f"({'; '.join(parts)}){hint}{not_created}", rejected=rejected, duplicates=duplicates)


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a manifest.csv with ``path`` resolved against the manifest's folder (a ``Path``), other columns as str.

    Raises IngestError for a missing 'path' column and ValueError naming the line for a row that is not readable
    CSV, has more fields than the header, or whose path is empty or escapes the manifest's folder.
    """
    path = Path(path)
    rows, _ = _parse_manifest(path.read_text(encoding="utf-8-sig"), str(path))
    base = path.parent.resolve()
    out = []
    for line, r, error in rows:
        if error:
            raise ValueError(f"{path}: {error}")
        rel = _safe_member_path(r.get("path", ""))
        if rel is None or not r.get("path"):
            raise ValueError(f"{path} line {line}: path {r.get('path')!r} is empty or escapes the manifest's folder")
        out.append({**r, "path": base / Path(*PurePosixPath(rel).parts)})
    return out
