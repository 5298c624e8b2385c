"""Prediction over a sample while it is being ingested: each committed ingest batch is predicted as it arrives.

``predict --manifest`` ingests a set into a fresh, temporary sample and predicts it. Instead of waiting for the
whole set, :func:`predict_stream` consumes the cells the ingest commits (a :class:`CommittedCells` fed by
``ingest_set(on_commit=...)`` on another thread) and runs the same pipeline as
:func:`phenotyping.analysis.inference.predict_sample`: the same batches of ``batch_size`` cells in id order, decoded
and QC'd on a background thread, forwarded, committed, scored for the domain check, so the predictions, QC outcomes,
stored rows and verdict are those ``predict_sample`` gives once the ingest has finished.

The only thing ``predict_sample`` knows beforehand is the whole sample's shapes: a sample holding cells the model
cannot take is refused before any cell is predicted. Here a batch with such cells raises :class:`InputRefused`; the
caller then starts again the sequential way (ingest everything, then ``predict_sample``), which stores that refusal.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from phenotyping.analysis.domain import input_check
from phenotyping.analysis.inference import (DEFAULT_BATCH_SIZE, PredictionRun, ProgressFn, _Checked, _prepare,
                                            _read_and_check, _run_setup, _RunState, _StageTeller, _to_batch,
                                            cpu_threads, decode_workers, needs_qc, prediction_net,
                                            qc_config_from_card)
from phenotyping.analysis.qc import QCConfig


class InputRefused(Exception):
    """A committed batch holds cells whose channel count or image kind the model does not take (``reason``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StopIngest(Exception):
    """Raised into the ingest (from its ``on_commit`` hook) once the prediction side has stopped."""


class CommittedCells:
    """The hand-over between an ingest thread and :func:`predict_stream`: the ingest calls :meth:`committed` after
    each commit and :meth:`close` at the end (also when it fails); the prediction side takes the cells in commit
    order. After :meth:`stop` (the prediction failed or was refused), the next :meth:`committed` raises
    :class:`StopIngest` so the ingest ends after the batch it has just committed.

    With ``hold_after=N`` the ingest waits, once it has committed N cells, until :meth:`release`
    (:func:`predict_stream` releases it once its first batch is saved): the model's loading (imports hold the GIL)
    and then the first batch have the interpreter to themselves, so the first predictions come as soon as they can.
    """

    def __init__(self, store: Any, sample_id: str, *, hold_after: int | None = None):
        self.store, self.sample_id = store, sample_id
        self._ids: queue.Queue[list[int] | None] = queue.Queue()
        self._stopped = threading.Event()
        self._go = threading.Event()
        if hold_after is None:
            self._go.set()
        self._hold_after = hold_after or 0
        self._committed = 0
        self._seen = 0

    def committed(self, ids: Sequence[int]) -> None:
        """The ingest committed the cells ``ids`` (the hook ``ingest_set(on_commit=...)``)."""
        if self._stopped.is_set():
            raise StopIngest("the prediction stopped")
        self._ids.put(list(ids))
        self._committed += len(ids)
        if self._committed >= self._hold_after:
            self._go.wait()
        if self._stopped.is_set():
            raise StopIngest("the prediction stopped")

    def release(self) -> None:
        """Let a held ingest go on."""
        self._go.set()

    def close(self) -> None:
        """The ingest has ended (no more cells will come)."""
        self._ids.put(None)

    def stop(self) -> None:
        self._stopped.set()
        self._go.set()

    def take(self, *, block: bool) -> list[Any] | None:
        """The cells of the next commit (``[]`` when none is ready and ``block`` is false), None once the ingest
        has ended and everything was taken."""
        try:
            ids = self._ids.get(block=block)
        except queue.Empty:
            return []
        if ids is None:
            self._ids.put(None)  # stays ended for later calls
            return None
        cells = self.store.list_cells(self.sample_id, limit=len(ids), offset=self._seen)
        self._seen += len(ids)
        if [c.id for c in cells] != ids:  # cells are listed in id order and the sample was fresh
            raise AssertionError(f"committed cells {ids[:3]}… are not the sample's next cells")
        return cells


class _Chunks:
    """The committed cells regrouped into batches of ``size`` in commit order (the last one may be short): the
    batches ``predict_sample`` would form from the whole sample."""

    def __init__(self, source: CommittedCells, size: int):
        self.source, self.size = source, size
        self.buffer: list[Any] = []
        self.ended = False
        self.seen = 0

    def next(self, *, block: bool) -> list[Any] | None:
        """The next full batch (or the last, short one); ``[]`` when none is ready without blocking; None at the
        end."""
        while not self.ended and len(self.buffer) < self.size:
            cells = self.source.take(block=block)
            if cells is None:
                self.ended = True
            elif not cells:
                return []
            else:
                self.seen += len(cells)
                self.buffer.extend(c for c in cells if needs_qc(c))
        if not self.buffer:
            return None
        out, self.buffer = self.buffer[:self.size], self.buffer[self.size:]
        return out


def _stream_batches(store: Any, chunks: _Chunks, lm: Any, qc_cfg: QCConfig, *, pin: bool, workers: int,
                    tell: _StageTeller, first: _Checked | None = None) -> Iterator[Any]:
    """Prepared batches in order, ``workers`` background threads preparing up to ``workers + 1`` ahead; waits for
    the ingest only when nothing is prepared or pending. Raises :class:`InputRefused` for a batch the model cannot
    take, before it is prepared. ``first``: the first batch, already read and QC'd (fitted to the model here)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="phenotyping-decode")
    pending: deque[Any] = deque()
    if first is not None:
        pending.append(pool.submit(_to_batch, first, lm, pin))
    ahead = max(1, workers) + 1
    try:
        while True:
            while len(pending) < ahead:
                cells = chunks.next(block=not pending)
                if not cells:
                    break
                _refuse(lm.card, cells)
                pending.append(pool.submit(_prepare, store, cells, lm, qc_cfg, pin, tell))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _refuse(card: dict[str, Any], cells: Sequence[Any]) -> None:
    """Raise :class:`InputRefused` when ``cells`` hold shapes the model of ``card`` does not take."""
    check = input_check(card, sorted({tuple(c.shape) for c in cells}))
    if check is not None:
        raise InputRefused(check.reason)


def predict_stream(store: Any, sample_id: str, model: Any, cells: CommittedCells, *, device: str | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, qc_config: QCConfig | None = None,
                   progress: ProgressFn | None = None, actor: str = "system", threads: int | None = None,
                   tta: str = "none", card: dict[str, Any] | None = None) -> PredictionRun:
    """:func:`~phenotyping.analysis.inference.predict_sample` over a fresh sample that ``cells`` is filling.

    Returns once the ingest has closed ``cells`` and every cell is predicted. ``progress(done, total, rate)`` gets
    the cells committed so far as ``total``. A held ingest (``CommittedCells(hold_after=...)``) is released once the
    first batch is saved, or when this returns or raises. ``tta``: test-time augmentation, as for
    ``predict_sample``.

    ``model`` may be a :class:`concurrent.futures.Future` of the loaded model, with ``card`` its model card: the
    first batch is then read and QC'd (with the card's QC limits) while the model loads, so that only its forward
    pass waits for the model.

    Raises:
        InputRefused: a batch holds cells the model does not take; nothing is stored about it (predict the whole
            sample with ``predict_sample`` to store the refusal).
    """
    from concurrent.futures import Future

    chunks = _Chunks(cells, batch_size)
    tell = _StageTeller(None, 0, 0, 0)
    first = None
    try:
        if isinstance(model, Future):
            if card is None:
                raise ValueError("predict_stream: a model still loading needs its card (card=)")
            qc_config = qc_config or qc_config_from_card(card)  # what _run_setup takes from the loaded model's card
            first = _first_checked(store, chunks, card, qc_config, tell)
            model = model.result()
            if getattr(model, "card", {}).get("id") != card.get("id"):
                raise ValueError(f"predict_stream: card {card.get('id')!r} is not the loaded model's "
                                 f"({getattr(model, 'card', {}).get('id')!r})")
        return _predict_chunks(store, sample_id, model, chunks, first, device=device, batch_size=batch_size,
                               qc_config=qc_config, progress=progress, actor=actor, threads=threads, tta=tta,
                               release=cells.release, tell=tell)
    finally:
        cells.release()


def _first_checked(store: Any, chunks: _Chunks, card: dict[str, Any], qc_cfg: QCConfig,
                   tell: _StageTeller) -> _Checked | None:
    """The first batch (waiting for the ingest's first commit), read and QC'd; None when the ingest has ended
    without one."""
    cells = chunks.next(block=True)
    if not cells:
        return None
    _refuse(card, cells)
    return _read_and_check(store, cells, qc_cfg, tell)


def _predict_chunks(store: Any, sample_id: str, model: Any, chunks: _Chunks, first: _Checked | None, *,
                    device: str | None, batch_size: int, qc_config: QCConfig | None, progress: ProgressFn | None,
                    actor: str, threads: int | None, tta: str, release: Callable[[], None],
                    tell: _StageTeller) -> PredictionRun:
    """Predict the batches of ``chunks`` (``first`` already QC'd), calling ``release`` after the first is saved."""
    import torch

    lm, dev, qc_cfg, threshold, version = _run_setup(model, device, qc_config, batch_size, tta)
    t0 = time.perf_counter()
    net = prediction_net(lm, dev, tta)
    prev_threads = torch.get_num_threads()
    if dev == "cpu":
        torch.set_num_threads(threads or cpu_threads())
    run = _RunState(store, sample_id, lm, dev=dev, actor=actor, threshold=threshold, version=version, t0=t0,
                    already=0, progress=progress)
    try:
        for batch in _stream_batches(store, chunks, lm, qc_cfg, pin=dev == "cuda", workers=decode_workers(dev),
                                     tell=tell, first=first):
            run.step(batch, net, total=chunks.seen, todo=chunks.seen, tell=tell)
            release()  # the first batch is out: the ingest goes on (later calls do nothing)
    finally:
        if dev == "cpu":
            torch.set_num_threads(prev_threads)
    return run.finish(total=chunks.seen, batch_size=batch_size, qc_cfg=qc_cfg, tta=tta)
