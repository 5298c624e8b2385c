"""Cells and the content-addressed folder that holds their original image bytes.

Cell images are kept as the original file bytes, not as database blobs: the database stays small and fast to copy,
and the bytes a lab received are kept verbatim. Two layouts share the folder:

- one file per image, ``<image_dir>/ab/<sha256><ext>`` (:meth:`CellRepository.put_blob`);
- one pack file per committed batch, ``<image_dir>/packs/ab/<sha256 of the pack>.pack`` holding the batch's images
  back to back (:meth:`CellRepository.put_pack`, what ingest writes). A cell's ``blob_path`` is then
  ``packs/ab/<sha>.pack@<offset>+<length><ext>``: the pack, where its bytes start and how many there are, and the
  extension of the original file (so ``Path(blob_path).suffix`` still names the format).

Creating a file costs about 1 ms on ext4 here, against 0.1 ms to read one, so a file per cell bounds ingest near
1,000 cells/s; a pack per batch (ingest's are up to 2,048 cells) costs one create and one fsync.
:meth:`CellRepository.read_blob` reads either layout. Files are written to a temporary name and renamed;
:meth:`CellRepository.add` fsyncs every file its rows point to (a pack once), and their folders, *before* it commits
the rows, so a process killed mid-ingest (or a power cut) leaves at worst an unreferenced file, never a row without its
image. A file's folder is fsynced each time; the folders above it only until each is durable in its parent
(:meth:`CellRepository.sync_blobs`). One system-wide ``sync()`` per batch would wait for every other process's writes,
and outside Linux need not wait for the disk at all.

A batch's rows are inserted from NumPy columns (a DuckDB scan of a dict of arrays), not row by row and without
pandas, whose import alone took 0.7 s of an ingest here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.errors import NotFoundError, StoreError
from phenotyping.schemas import Cell, QCState, Sample, utcnow
from phenotyping.store._db import CELL_DIGEST_COLUMNS, Database, _json, rows_digest
from phenotyping.store.samples import SampleRepository


PACK_FOLDER = "packs/"
PACK_SUFFIX = ".pack"
_PACKED = re.compile(r"(?P<file>.+\.pack)@(?P<offset>\d+)\+(?P<length>\d+)(\.[a-z0-9]{1,8})?")


def _safe_suffix(suffix: str) -> str:
    return suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix or "") else ".bin"


def _split_packed(rel: str) -> tuple[str, tuple[int, int] | None]:
    """``packs/ab/x.pack@100+20.tif`` → ``("packs/ab/x.pack", (100, 20))``; a plain file's path → ``(rel, None)``."""
    m = _PACKED.fullmatch(rel)
    if m is None:
        return rel, None
    return m["file"], (int(m["offset"]), int(m["length"]))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CELL_COLUMNS = ("cell_key", "content_hash", "source_file", "blob_path", "shape", "dtype", "reference_label",
                 "targets", "extra")


def _objects(values: Sequence[Any]) -> np.ndarray:
    """``values`` as a 1-D object array (text or None each), the form DuckDB scans as a VARCHAR column."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _cell_columns(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The cells' insert values as NumPy columns (text as object arrays; ``channels`` from each shape). The JSON
    columns are written by ``_json`` as everywhere in the store; a shape seen before reuses its text."""
    values: dict[str, list[Any]] = {c: [] for c in _CELL_COLUMNS}
    channels: list[int] = []
    shapes: dict[tuple[int, ...], str] = {}
    for c in cells:
        shape = tuple(int(x) for x in c["shape"])
        text = shapes.get(shape)
        if text is None:
            text = shapes[shape] = _json(list(shape))
        channels.append(shape[0])
        values["shape"].append(text)
        for k in ("cell_key", "content_hash", "source_file", "blob_path", "dtype"):
            values[k].append(c[k])
        values["reference_label"].append(c.get("reference_label"))
        targets, extra = c.get("targets"), c.get("extra")
        values["targets"].append(_json(targets) if targets else "{}")
        values["extra"].append(_json(extra) if extra else "{}")
    out: dict[str, Any] = {k: _objects(v) for k, v in values.items()}
    out["channels"] = np.asarray(channels, dtype=np.int32)
    return out


class CellRepository:
    def __init__(self, db: Database):
        self._db = db
        self._samples = SampleRepository(db)
        self._durable_folders: set[Path] = set()  # folders whose own entry in their parent has been fsynced

    # -- image files ---------------------------------------------------------------------------------------------
    def put_blob(self, data: bytes, *, suffix: str, folder: str = "") -> tuple[str, str]:
        """Write original image bytes to the content-addressed folder and return (sha256, relative path).

        Idempotent: the same bytes always land at the same path. A file already there is reused only if it holds
        exactly these bytes (one left half-written by a crash before its rows were committed is rewritten).
        The file is not yet durable: :meth:`sync_blobs` (called by :meth:`add_cells` before it commits) is.
        ``folder`` puts it under that subfolder of the image store (packs go to ``packs/``).
        """
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{folder}{digest[:2]}/{digest}{_safe_suffix(suffix)}"
        path = self._db.image_dir / rel
        try:
            intact = path.stat().st_size == len(data) and path.read_bytes() == data
        except FileNotFoundError:
            intact = False
        if not intact:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return digest, rel

    def put_pack(self, blobs: Sequence[tuple[bytes, str]]) -> list[str]:
        """Write a batch of images (``(bytes, suffix)`` each) into one pack file; return each image's ``blob_path``.

        Idempotent like :meth:`put_blob`: the pack is named by the SHA-256 of its content, and one already there is
        reused only if it holds exactly these bytes. Not yet durable: :meth:`sync_blobs` (called by :meth:`add`) is.
        """
        if not blobs:
            return []
        content = b"".join(data for data, _ in blobs)
        _, rel = self.put_blob(content, suffix=PACK_SUFFIX, folder=PACK_FOLDER)
        out, offset = [], 0
        for data, suffix in blobs:
            out.append(f"{rel}@{offset}+{len(data)}{_safe_suffix(suffix)}")
            offset += len(data)
        return out

    def sync_blobs(self, rels: Iterable[str]) -> None:
        """fsync image files (a pack once, however many cells point into it) and the folders that hold them, so rows
        may point to them.

        Each file's folder is fsynced every time (the file's name in it is new); a folder above is fsynced until
        it has been once after the folder below it existed, which this repository remembers (a folder made since,
        ``packs/cd/`` under ``packs/``, makes its parent be fsynced again).

        Raises:
            StoreError: a file is missing or the file system refused the fsync.
        """
        image_dir = self._db.image_dir
        files = sorted({image_dir / _split_packed(r)[0] for r in rels})
        if not files:
            return
        top = image_dir.parent
        try:
            for f in files:
                _fsync(f)
            if os.name == "nt":  # folders cannot be opened for fsync on Windows
                return
            for folder in sorted({f.parent for f in files}):
                _fsync(folder)
                child = folder
                while child != top and child not in self._durable_folders:
                    _fsync(child.parent)  # now ``child``'s own name in its parent is durable
                    self._durable_folders.add(child)
                    child = child.parent
        except OSError as e:
            raise StoreError(f"cannot make image files durable in {image_dir}: {e}; check the disk") from e

    def read_blob(self, rel: str) -> bytes:
        """The image bytes a ``blob_path`` points to (a file of its own, or a slice of a pack).

        Raises:
            StoreError: the file is missing or shorter than the slice says (a damaged image store).
        """
        file, span = _split_packed(rel)
        path = self._db.image_dir / file
        try:
            if span is None:
                return path.read_bytes()
            with open(path, "rb") as fh:
                fh.seek(span[0])
                data = fh.read(span[1])
        except FileNotFoundError as e:
            raise StoreError(f"image file {path} is missing from the image store {self._db.image_dir}") from e
        if len(data) != span[1]:
            raise StoreError(f"image pack {path} holds {len(data)} of the {span[1]} bytes at offset {span[0]} that "
                             f"{rel} points to: the image store is damaged")
        return data

    def read_bytes(self, cell: Cell) -> bytes:
        return self.read_blob(cell.blob_path)

    # -- cell rows -----------------------------------------------------------------------------------------------
    def known_hashes(self, sample_id: str) -> dict[str, str]:
        """content hash -> cell key, for duplicate detection within a sample."""
        return {h: k for h, k in self._db.cursor().execute(
            "SELECT content_hash, cell_key FROM cells WHERE sample_id = ?", [sample_id]).fetchall()}

    def known_keys(self, sample_id: str) -> set[str]:
        return {r[0] for r in self._db.cursor().execute(
            "SELECT cell_key FROM cells WHERE sample_id = ?", [sample_id]).fetchall()}

    def channel_count(self, sample_id: str) -> int | None:
        """Channels of the sample's cells so far (None before the first cell)."""
        row = self._db.cursor().execute(
            "SELECT channels FROM cells WHERE sample_id = ? LIMIT 1", [sample_id]).fetchone()
        return int(row[0]) if row else None

    def add(self, sample_id: str, cells: Iterable[dict[str, Any]], *, actor: str,
            create: Sample | None = None) -> list[int]:
        """Insert cells whose bytes are already in the image store; one transaction for the batch.

        Each dict has: cell_key, content_hash, source_file, blob_path, shape (tuple), dtype, and optionally
        reference_label, targets (dict[str, float]), extra (dict[str, str]).

        Args:
            create: a new sample to create in the same transaction (its id must be ``sample_id``), so that a
                sample never exists without the cells it was created for.
        """
        cells = list(cells)
        if not cells:
            return []
        if create is not None:
            if create.id != sample_id:
                raise ValueError(f"add_cells: create= is sample {create.id!r}, cells are for {sample_id!r}")
        else:
            self._samples.get(sample_id)
        batch = _cell_columns(cells)
        n = len(cells)
        if self._db.db_path != ":memory:":  # an in-memory database does not survive a crash either
            self.sync_blobs(batch["blob_path"])
        with self._db.tx() as cur:
            if create is not None:
                self._samples.insert(cur, create, actor)
            self._db.refuse_if_signed(cur, sample_id, f"adding {n} cell(s)")
            ids = [int(r[0]) for r in cur.execute(
                "SELECT nextval('cell_id_seq') FROM range(?)", [n]).fetchall()]
            batch["id"] = np.asarray(ids, dtype=np.int64)
            cur.register("_cells_batch", batch)  # a scan of NumPy columns: no row-by-row parameters
            try:
                cur.execute(
                    "INSERT INTO cells (id, sample_id, cell_key, content_hash, source_file, blob_path, channels, "
                    "shape, dtype, qc_state, qc_reason, reference_label, targets, extra, reviewed_label, created_at) "
                    "SELECT id, ?, cell_key, content_hash, source_file, blob_path, channels, shape, dtype, ?, NULL, "
                    "reference_label, targets, extra, NULL, ? FROM _cells_batch",
                    [sample_id, QCState.pending.value, utcnow()])
            finally:
                cur.unregister("_cells_batch")
            digest = rows_digest(cur.execute(  # the rows as stored; audit verify recomputes it from the table
                f"SELECT {CELL_DIGEST_COLUMNS} FROM cells WHERE sample_id = ? AND id BETWEEN ? AND ? ORDER BY id",
                [sample_id, ids[0], ids[-1]]).fetchall())
            self._db.audit(cur, actor=actor, action="cells.ingest", entity="sample", entity_id=sample_id,
                           sample_id=sample_id, after={"cells": len(ids), "first_id": ids[0], "last_id": ids[-1],
                                                       "digest": digest})
        return ids

    @staticmethod
    def _from_row(r: dict[str, Any]) -> Cell:
        return Cell(
            id=r["id"], sample_id=r["sample_id"], cell_key=r["cell_key"], content_hash=r["content_hash"],
            source_file=r["source_file"], blob_path=r["blob_path"], channels=r["channels"],
            shape=tuple(json.loads(r["shape"])), dtype=r["dtype"], qc_state=QCState(r["qc_state"]),
            qc_reason=r["qc_reason"], reference_label=r["reference_label"], targets=json.loads(r["targets"]),
            extra=json.loads(r["extra"]), reviewed_label=r["reviewed_label"],
        )

    def list(self, sample_id: str, *, qc_state: QCState | None = None, limit: int | None = None,
             offset: int = 0) -> list[Cell]:
        sql, params = "SELECT * FROM cells WHERE sample_id = ?", [sample_id]
        if qc_state is not None:
            sql += " AND qc_state = ?"
            params.append(qc_state.value)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        return [self._from_row(r) for r in self._db.rows(sql, params)]

    def count(self, sample_id: str) -> int:
        return int(self._db.cursor().execute(
            "SELECT count(*) FROM cells WHERE sample_id = ?", [sample_id]).fetchone()[0])

    def get(self, cell_id: int) -> Cell:
        rows = self._db.rows("SELECT * FROM cells WHERE id = ?", [int(cell_id)])
        if not rows:
            raise NotFoundError(f"no cell with id {cell_id}")
        return self._from_row(rows[0])

    def set_qc(self, results: Iterable[tuple[int, QCState, str | None]], *, sample_id: str, actor: str) -> None:
        """Record image-QC outcomes ``(cell_id, state, reason)``; one audit event summarises the batch."""
        results = list(results)
        if not results:
            return
        batch = {"id": np.asarray([int(i) for i, _, _ in results], dtype=np.int64),
                 "state": _objects([st.value for _, st, _ in results]),
                 "reason": _objects([r for _, _, r in results])}   # NumPy columns, as add(): no pandas import
        with self._db.tx() as cur:
            self._db.refuse_if_signed(cur, sample_id, f"changing the image QC of {len(results)} cell(s)")
            cur.register("_qc_batch", batch)
            try:
                cur.execute("UPDATE cells SET qc_state = b.state, qc_reason = b.reason FROM _qc_batch b "
                            "WHERE cells.id = b.id")
            finally:
                cur.unregister("_qc_batch")
            summary: dict[str, int] = {}
            for _, s, r in results:
                key = s.value if s != QCState.excluded else f"excluded: {(r or '').split(':')[0]}"
                summary[key] = summary.get(key, 0) + 1
            self._db.audit(cur, actor=actor, action="cells.qc", entity="sample", entity_id=sample_id,
                           sample_id=sample_id, after=summary)
