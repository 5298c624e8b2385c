"""Batched prediction over a sample's cells: decode → image QC → model → calibrated probabilities → store.

The pipeline streams the sample's cells from the store in batches. Background threads read and decode the next
batches (file read, TIFF/PNG decode, QC, resize, normalise) while the model runs on the current one (one thread on
CPU, up to eight on CUDA), so the model does not wait on the decoder; on CUDA the batch is put in pinned memory and
copied asynchronously, and the forward pass runs under bf16 (or fp16) autocast. Each batch's QC outcomes and predictions are committed before the next batch starts:
an interrupted run keeps every committed batch, and running it again predicts only the cells that have no prediction
from this model yet.

Stored per cell (through :meth:`phenotyping.store.Store.set_qc` and :meth:`~phenotyping.store.Store.add_predictions`):
the image-QC state and reason, and for cells that pass it the temperature-scaled class probabilities, predicted
class, confidence (the largest calibrated probability), regression targets in the manifest's units, the model card's
id and version. Whether a cell is "unidentified" depends on the model, so it is not written on the cell: it follows
from the stored confidence and the card's ``calibration.unidentified_threshold`` (see :mod:`phenotyping.analysis.results`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.errors import ImageError
from phenotyping.analysis.domain import RunScores, image_stats, input_check
from phenotyping.analysis.qc import UNIDENTIFIED, QCConfig, QCResult, check_images, count_reasons, unidentified_flags

#: ``progress(cells_done, cells_total, cells_per_second)``; called after every batch.
ProgressFn = Callable[[int, int, float], None]
#: ``stage(what, cells_done, cells_total)``: what the run is doing now, e.g. ``"reading images 40/351"``, ``"image QC
#: of cells 1-256 of 351"``, ``"predicting cells 1-256 of 351"``, ``"saving cells 1-256 of 351"``. Called from the
#: decoding threads too, often: a receiver that writes somewhere should throttle.
StageFn = Callable[[str, int, int], None]

DEFAULT_BATCH_SIZE = 256
#: Reason prefix of a cell whose stored file could not be decoded (never re-checked).
UNREADABLE = "unreadable image"


def resolve_device(device: str | None = None) -> str:
    """``"cuda"`` when asked for or (``"auto"``) when available, else ``"cpu"``; ``None`` reads ``Settings.device``
    (``LEUKO_DEVICE``).

    Raises:
        ValueError: an unknown device name, or ``"cuda"`` requested where torch sees no CUDA device.
    """
    import torch

    if device is None:
        from phenotyping.settings import get_settings

        device = get_settings().device
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device (CPU build or no GPU); use --device cpu")
    return device


def cpu_threads(background_decoding: bool = True) -> int:
    """Intra-op threads for the model on CPU: the cores this process may use, minus one for the decoder thread."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - (1 if background_decoding else 0))


def model_version(card: dict[str, Any]) -> str:
    """The version stored with each prediction: the card's ``version`` if it has one, else its id."""
    return str(card.get("version") or card["id"])


def tta_version(version: str, tta: dict[str, Any]) -> str:
    """The model version stored with a run's predictions under test-time augmentation ``tta`` (``{"mode",
    "views"}``, :func:`phenotyping.models.tta.tta_info`): ``version`` without it, ``<version>+tta<views>`` with it,
    so a prediction made with TTA is never taken for one without."""
    return version if tta["mode"] == "none" else f"{version}+tta{tta['views']}"


def version_tta_views(version: str) -> int:
    """The views a stored model version was predicted with: ``N`` for ``…+ttaN``, else 1 (no torch import: the
    app's job thread checks this too)."""
    head, sep, tail = version.rpartition("+tta")
    return int(tail) if sep and head and tail.isdigit() else 1


def qc_config_from_card(card: dict[str, Any]) -> QCConfig:
    """The card's ``qc`` section (image-QC thresholds learned from the model's training images) as a QCConfig.

    Raises:
        ValueError: the card has none. QC thresholds depend on the imaging set-up (the Jurkat defaults exclude nearly
            every stained-smear crop as out of focus), so there is no silent default.
    """
    section = card.get("qc")
    if not section:
        raise ValueError(f"model card of {card.get('id', '?')!r} has no qc section (image-QC thresholds for its "
                         "imaging set-up); run `python -m phenotyping calibrate --model MODEL_DIR` once, or retrain")
    return QCConfig.from_dict(section)


@dataclass(frozen=True)
class PredictionRun:
    """What one call of :func:`predict_sample` did. ``qc_counts`` holds only this run's exclusions."""

    sample_id: str
    model_id: str
    model_version: str
    device: str
    batch_size: int
    total_cells: int
    already_done: int
    predicted: int
    excluded: int
    unidentified: int
    qc_counts: dict[str, int]
    seconds: float
    qc_config: dict[str, Any] = field(default_factory=dict)
    #: the verdict of :mod:`phenotyping.analysis.domain` over all the sample's checked cells (``DomainCheck.to_dict``)
    domain_check: dict[str, Any] | None = None
    #: test-time augmentation, ``{"mode", "views"}`` (:func:`phenotyping.models.tta.tta_info`)
    tta: dict[str, Any] = field(default_factory=lambda: {"mode": "none", "views": 1})

    @property
    def cells_per_second(self) -> float:
        processed = self.predicted + self.excluded
        return processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id, "model_id": self.model_id, "model_version": self.model_version,
            "device": self.device, "batch_size": self.batch_size, "total_cells": self.total_cells,
            "already_done": self.already_done, "predicted": self.predicted, "excluded": self.excluded,
            "unidentified": self.unidentified, "qc_counts": self.qc_counts, "seconds": round(self.seconds, 3),
            "cells_per_second": round(self.cells_per_second, 1), "qc_config": self.qc_config,
            "domain_check": self.domain_check, "tta": self.tta,
        }


@dataclass
class _Batch:
    cells: list[Any]  # phenotyping.schemas.Cell
    qc: list[QCResult | None]  # None: the file could not be decoded (see errors)
    errors: list[str | None]
    x: Any  # torch.Tensor (B_passed, C, …) normalised, pinned on CUDA; None when no cell passed
    passed: list[int]  # indices into cells of the rows of x
    stats: Any = None  # image statistics (B_passed, S) of the passed cells, for the domain check


def predict_sample(
    store: Any,
    sample_id: str,
    model: Any,
    *,
    device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    qc_config: QCConfig | None = None,
    progress: ProgressFn | None = None,
    actor: str = "system",
    threads: int | None = None,
    stage: StageFn | None = None,
    tta: str = "none",
) -> PredictionRun:
    """Run image QC and the model over every cell of ``sample_id`` that this model has not predicted yet.

    Args:
        store: a :class:`phenotyping.store.Store`.
        model: a :class:`phenotyping.models.checkpoint.LoadedModel`, or the path of a model folder.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, or ``None`` for the setting
            ``LEUKO_DEVICE`` (default ``auto``).
        batch_size: cells per forward pass and per committed batch.
        qc_config: image-QC thresholds (default: the card's ``qc`` section; a card without one is an error).
        progress: ``progress(done, total, cells_per_s)`` after each batch; an exception it raises stops the run
            after that batch was committed.
        actor: recorded in the audit trail.
        threads: CPU intra-op threads for torch (default: :func:`cpu_threads`).
        stage: told what the run is doing between the batches (:data:`StageFn`): reading images n/N, image QC,
            predicting, saving.
        tta: ``"none"`` or ``"dihedral"`` (outputs averaged over the views that keep the cell's meaning,
            :mod:`phenotyping.models.tta`); the predictions' model version then ends in ``+tta<views>``, and a
            sample holding this model's predictions made the other way is refused (the two would mix).

    Image QC is part of a model's input (its thresholds come from the card), so every cell without a prediction from
    this model is checked again, including cells another model's QC excluded; only cells whose file could not be
    decoded are skipped (they stay excluded with the decoder's reason).
    """
    import torch

    lm, dev, qc_cfg, threshold, version = _run_setup(model, device, qc_config, batch_size, tta)
    t0 = time.perf_counter()

    cells, todo = _cells_to_predict(store, sample_id, lm.id)
    _refuse_mixed_tta(store, sample_id, lm.id, version)
    already = len(cells) - len(todo)
    if (refused := _input_refused(store, sample_id, lm, todo, version, actor, t0, len(cells), batch_size, dev)):
        from phenotyping.models.tta import tta_info

        return replace(refused, tta=tta_info(tta, lm.preprocess))
    net = prediction_net(lm, dev, tta)
    prev_threads = torch.get_num_threads()
    if dev == "cpu":
        torch.set_num_threads(threads or cpu_threads())
    run = _RunState(store, sample_id, lm, dev=dev, actor=actor, threshold=threshold, version=version, t0=t0,
                    already=already, progress=progress)
    tell = _StageTeller(stage, already, len(cells), len(todo))
    try:
        for batch in _prefetch(store, todo, batch_size, lm, qc_cfg, pin=dev == "cuda", workers=decode_workers(dev),
                               tell=tell):
            run.step(batch, net, total=len(cells), todo=len(todo), tell=tell)
    finally:
        if dev == "cpu":
            torch.set_num_threads(prev_threads)
    return run.finish(total=len(cells), batch_size=batch_size, qc_cfg=qc_cfg, tta=tta)


def prediction_net(lm: Any, dev: str, tta: str = "none") -> Any:
    """The loaded model on ``dev`` in eval mode, wrapped for test-time augmentation ``tta``
    (:func:`phenotyping.models.tta.with_tta`)."""
    from phenotyping.models.tta import with_tta

    return with_tta(lm.model.to(dev).eval(), lm.preprocess, tta)


def _refuse_mixed_tta(store: Any, sample_id: str, model_id: str, version: str) -> None:
    """Refuse a run whose test-time augmentation differs from that of the model's predictions already stored for
    the sample: the run predicts only the cells without one, so the sample would count cells predicted both ways."""
    views = version_tta_views(version)
    other = {v: n for v, n in store.prediction_versions(sample_id, model_id).items() if version_tta_views(v) != views}
    if other:
        held = ", ".join(f"{n} cell(s) as version {v!r}" for v, n in other.items())
        how = "without test-time augmentation" if views == 1 else f"with {views}-view test-time augmentation"
        raise ValueError(f"sample {sample_id} holds predictions of model {model_id} made another way ({held}); this "
                         f"run ({how}, version {version!r}) would mix them. Predict with the same --tta as before")


class _RunState:
    """What a run has done so far, batch by batch: the counts, the QC codes and the domain scores; ``step``
    predicts and commits one prepared batch (shared by :func:`predict_sample` and
    :func:`phenotyping.analysis.stream.predict_stream`)."""

    def __init__(self, store: Any, sample_id: str, lm: Any, *, dev: str, actor: str, threshold: float, version: str,
                 t0: float, already: int, progress: ProgressFn | None):
        self.store, self.sample_id, self.lm, self.dev, self.actor = store, sample_id, lm, dev, actor
        self.threshold, self.version, self.t0, self.already, self.progress = threshold, version, t0, already, progress
        self.counts = {"predicted": 0, "excluded": 0, "unidentified": 0}
        self.domain = RunScores(lm.card, sample_id, version)
        self.codes: list[str | None] = []
        self.unreadable = 0

    def step(self, batch: _Batch, net: Any, *, total: int, todo: int, tell: _StageTeller) -> None:
        """Forward ``batch``, commit its QC outcomes and predictions, count them and report progress."""
        counts = self.counts
        first = counts["predicted"] + counts["excluded"] + 1
        span = f"cells {first}-{first + len(batch.cells) - 1} of {todo}"
        tell(f"predicting {span}", first - 1)
        qc_rows, preds, unsure = _run_batch(batch, net, self.lm, self.dev, self.version, self.threshold, self.domain)
        tell(f"saving {span}", first - 1)
        self.store.set_qc(qc_rows, sample_id=self.sample_id, actor=self.actor)
        self.store.add_predictions(preds, sample_id=self.sample_id, actor=self.actor)
        self.unreadable += _tally(counts, self.codes, batch, qc_rows, len(preds), unsure)
        if self.progress is not None:
            n_done = self.already + counts["predicted"] + counts["excluded"]
            rate = (counts["predicted"] + counts["excluded"]) / max(time.perf_counter() - self.t0, 1e-9)
            self.progress(n_done, total, rate)

    def finish(self, *, total: int, batch_size: int, qc_cfg: QCConfig, tta: str = "none") -> PredictionRun:
        """The run's record, after the domain verdict over the sample's scored cells is stored."""
        from phenotyping.models.tta import tta_info

        c = self.counts
        return PredictionRun(
            sample_id=self.sample_id, model_id=self.lm.id, model_version=self.version, device=self.dev,
            batch_size=batch_size, total_cells=total, already_done=self.already, predicted=c["predicted"],
            excluded=c["excluded"], unidentified=c["unidentified"],
            qc_counts={**count_reasons(self.codes), "unreadable": self.unreadable},
            seconds=time.perf_counter() - self.t0, qc_config=qc_cfg.to_dict(),
            domain_check=self.domain.finish(self.store, self.actor), tta=tta_info(tta, self.lm.preprocess),
        )


def _input_refused(store: Any, sample_id: str, lm: Any, todo: Sequence[Any], version: str, actor: str, t0: float,
                   total: int, batch_size: int, dev: str) -> PredictionRun | None:
    """A run that stops before the model, out of distribution, when the cells to predict have another channel
    count or image kind than the model takes (stored as the sample's domain check); None when they fit."""
    check = input_check(lm.card, sorted({tuple(c.shape) for c in todo}))
    if check is None:
        return None
    store.save_domain_check(sample_id, lm.id, version, check.to_dict(), {}, actor=actor)
    return PredictionRun(sample_id=sample_id, model_id=lm.id, model_version=version, device=dev,
                         batch_size=batch_size, total_cells=total, already_done=total - len(todo), predicted=0,
                         excluded=0, unidentified=0, qc_counts={}, seconds=time.perf_counter() - t0,
                         domain_check=check.to_dict())


def _tally(counts: dict[str, int], codes: list[str | None], batch: _Batch, qc_rows: list[tuple[int, Any, str | None]],
           n_predicted: int, unsure: int) -> int:
    """Add one saved batch to the run's ``counts`` and QC ``codes``; returns its undecodable files."""
    from phenotyping.schemas import QCState

    counts["predicted"] += n_predicted
    counts["excluded"] += sum(1 for _, s, _ in qc_rows if s == QCState.excluded)
    counts["unidentified"] += unsure
    codes += [q.code for q in batch.qc if q is not None]
    codes += [UNIDENTIFIED] * unsure
    return sum(e is not None for e in batch.errors)


class _StageTeller:
    """Passes a run's stages to a :data:`StageFn` (nothing without one), counting the images read across the
    decoding threads. ``done`` values are cells of this run; the receiver gets them offset by the cells analysed
    before, out of all the sample's cells."""

    def __init__(self, stage: StageFn | None, already: int, total: int, todo: int):
        import threading

        self.stage, self.already, self.total, self.todo = stage, already, total, todo
        self._read = 0
        self._lock = threading.Lock()
        self.read(0)

    def __call__(self, what: str, done: int) -> None:
        if self.stage is not None:
            self.stage(what, self.already + done, self.total)

    def read(self, n: int) -> None:
        """``n`` more images read and decoded."""
        with self._lock:
            self._read += n
            k = self._read
        self(f"reading images {k}/{self.todo}", 0)


def _prediction_model(model: Any) -> Any:
    """The :class:`~phenotyping.models.checkpoint.LoadedModel` to predict with (``model`` itself, or loaded from its
    folder); a classical baseline on pixels is refused."""
    from phenotyping.models.checkpoint import LoadedModel, load_model_dir

    lm: LoadedModel = model if isinstance(model, LoadedModel) else load_model_dir(Path(model))
    if not getattr(lm.model, "is_neural", True) and not getattr(lm.model, "takes_images", False):
        raise ValueError(f"model {lm.id} is a classical baseline on pixels ({lm.card['architecture']['name']}); "
                         "sample prediction runs the neural models and kNN/SVM on their embeddings only")
    return lm


def _run_setup(model: Any, device: str | None, qc_config: QCConfig | None, batch_size: int,
               tta: str = "none") -> tuple[Any, str, QCConfig, float, str]:
    """What a prediction run settles first: the loaded model, the device, the QC limits (the card's unless given),
    the unidentified threshold and the model version (with ``+tta<views>`` under test-time augmentation
    ``tta``); refuses a batch size below 1 and a ``tta`` the model's channels do not allow."""
    from phenotyping.models.tta import tta_info

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    lm = _prediction_model(model)
    _, threshold = _calibration(lm)
    version = tta_version(model_version(lm.card), tta_info(tta, lm.preprocess))
    return lm, resolve_device(device), qc_config or qc_config_from_card(lm.card), threshold, version


def _cells_to_predict(store: Any, sample_id: str, model_id: str) -> tuple[list[Any], list[Any]]:
    """The sample's cells, and those still to predict: no prediction from ``model_id`` yet, not excluded as
    undecodable, and not counted by a reviewer over an image-QC exclusion (QC again would undo the override)."""
    store.get_sample(sample_id)
    cells = store.list_cells(sample_id)
    done_ids = store.predicted_cell_ids(sample_id, model_id)
    return cells, [c for c in cells if c.id not in done_ids and needs_qc(c)]


def needs_qc(cell: Any) -> bool:
    """Whether a run checks and predicts ``cell`` (when its model has not predicted it yet): not when a reviewer
    counted it over an image-QC exclusion, nor when its file could not be decoded."""
    from phenotyping.schemas import QCState

    return cell.qc_state != QCState.overridden and not (
        cell.qc_state == QCState.excluded and (cell.qc_reason or "").startswith(UNREADABLE))


def _calibration(lm: Any) -> tuple[float, float]:
    cal = lm.card.get("calibration") or {}
    if "unidentified_threshold" not in cal:
        raise ValueError(f"model card of {lm.id} has no calibration.unidentified_threshold; "
                         "calibrate the model on its validation split (train does this) before predicting")
    return lm.temperature, float(cal["unidentified_threshold"])


def _prepare(store: Any, cells: Sequence[Any], lm: Any, qc_cfg: QCConfig, pin: bool,
             tell: _StageTeller | None = None) -> _Batch:
    """Read, decode, QC, fit and normalise one batch (runs on the background thread); ``tell`` hears each image
    read and the start of the batch's QC."""
    return _to_batch(_read_and_check(store, cells, qc_cfg, tell), lm, pin)


@dataclass
class _Checked:
    """A batch read and QC'd, not yet fitted to a model (:func:`_read_and_check`): needs only the QC limits."""

    cells: list[Any]
    arrays: list[np.ndarray | None]
    qc: list[QCResult | None]
    errors: list[str | None]
    passed: list[int]
    stats: Any


def _read_and_check(store: Any, cells: Sequence[Any], qc_cfg: QCConfig,
                    tell: _StageTeller | None = None) -> _Checked:
    """The model-free half of :func:`_prepare`: read and decode each cell, run image QC, and take the passed cells'
    image statistics (for the domain check)."""
    from phenotyping.ingest import read_image

    arrays: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for c in cells:
        try:
            arrays.append(read_image(store.read_blob(c.blob_path), c.source_file))
            errors.append(None)
        except ImageError as e:
            arrays.append(None)
            errors.append(f"{UNREADABLE}: {e.reason}")
        if tell is not None:
            tell.read(1)
    if tell is not None:
        tell(f"image QC of {len(cells)} cells", 0)
    ok = [i for i, a in enumerate(arrays) if a is not None]
    qc: list[QCResult | None] = [None] * len(cells)
    for i, r in zip(ok, check_images([arrays[i] for i in ok], qc_cfg)):
        qc[i] = r
    passed = [i for i in ok if qc[i].passed]  # type: ignore[union-attr]
    stats = image_stats([arrays[i] for i in passed]) if passed else None
    return _Checked(list(cells), arrays, qc, errors, passed, stats)


def _to_batch(checked: _Checked, lm: Any, pin: bool) -> _Batch:
    """The model's half of :func:`_prepare`: the passed cells fitted to ``lm``'s input and normalised, as a tensor
    (pinned when ``pin``)."""
    import torch

    x = None
    if checked.passed:
        arrays = checked.arrays
        batch = np.stack([lm.preprocess.size(arrays[i]) for i in checked.passed])  # (B, C, size, size) or (B, C, Z, …)
        x = torch.from_numpy(lm.preprocess.normalise(batch, batched=True))
        if pin:
            x = x.pin_memory()
    return _Batch(checked.cells, checked.qc, checked.errors, x, checked.passed, checked.stats)


def decode_workers(device: str) -> int:
    """Background decoding threads: one on CPU (the model needs the other cores); on CUDA, up to 8 of the CPU cores
    (file reads, zlib and PIL release the GIL, so threads scale until the GPU is fed)."""
    if device != "cuda":
        return 1
    return max(1, min(8, cpu_threads(background_decoding=True)))


def _prefetch(store: Any, cells: Sequence[Any], batch_size: int, lm: Any, qc_cfg: QCConfig, *, pin: bool,
              workers: int = 1, tell: _StageTeller | None = None):
    """Yield prepared batches in order while ``workers`` background threads prepare the next ones.

    At most ``workers + 1`` batches are prepared ahead of the consumer, so memory stays bounded; an exception raised
    while preparing a batch is re-raised where that batch would have been yielded. When the consumer stops early
    (an interrupted run), batches not yet started are cancelled.
    """
    from concurrent.futures import ThreadPoolExecutor

    chunks = [cells[i:i + batch_size] for i in range(0, len(cells), batch_size)]
    if not chunks:
        return
    ahead = max(1, workers) + 1
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="phenotyping-decode")
    pending: list[Any] = []
    try:
        nxt = 0
        while nxt < len(chunks) and len(pending) < ahead:
            pending.append(pool.submit(_prepare, store, chunks[nxt], lm, qc_cfg, pin, tell))
            nxt += 1
        while pending:
            batch = pending.pop(0).result()
            if nxt < len(chunks):
                pending.append(pool.submit(_prepare, store, chunks[nxt], lm, qc_cfg, pin, tell))
                nxt += 1
            yield batch
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _run_batch(batch: _Batch, net: Any, lm: Any, dev: str, version: str, threshold: float,
               domain: RunScores | None = None) -> tuple[list[tuple[int, Any, str | None]], list[Any], int]:
    """Forward one batch; return (QC rows for the store, predictions, number of unidentified cells). ``domain``
    receives the passed cells' features and image statistics."""
    from phenotyping.models.forward import forward_outputs
    from phenotyping.schemas import Prediction, QCState

    qc_rows: list[tuple[int, Any, str | None]] = []
    for c, q, err in zip(batch.cells, batch.qc, batch.errors):
        if err is not None:
            qc_rows.append((c.id, QCState.excluded, err))
        elif q is not None and not q.passed:
            qc_rows.append((c.id, QCState.excluded, q.reason))
    preds: list[Prediction] = []
    if batch.x is None:
        return qc_rows, preds, 0
    probs, reg, feats = forward_outputs(net, batch.x, device=dev, temperature=lm.temperature)
    if domain is not None:
        domain.add([batch.cells[i].id for i in batch.passed], feats, batch.stats)
    targets = lm.targets.inverse(reg) if lm.targets is not None and reg.shape[1] else np.zeros((len(probs), 0))
    names = lm.targets.names if lm.targets is not None else []
    flags = unidentified_flags(probs, threshold=threshold)
    top = probs.argmax(1)
    for row, i in enumerate(batch.passed):
        cell = batch.cells[i]
        qc_rows.append((cell.id, QCState.passed, None))
        preds.append(Prediction(
            cell_id=cell.id, model_id=lm.id, model_version=version, predicted_class=lm.classes[int(top[row])],
            confidence=float(min(1.0, probs[row, top[row]])),
            probabilities={c: float(p) for c, p in zip(lm.classes, probs[row])},
            targets={n: float(v) for n, v in zip(names, targets[row]) if np.isfinite(v)},
        ))
    return qc_rows, preds, sum(f is not None for f in flags)
