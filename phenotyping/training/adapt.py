"""Adapting a registered model to a lab's reviewed cells, as a background job of the training lane (the Models page's
"Adapt to this lab's reviewed cells").

The labels are the reviewers' final labels (``cells.reviewed_label``, set by a reclassification or a one-click
confirmation, each a review record); a cell's image-set label alone does not count, nor do review labels outside
the parent's classes (``debris``, ``other``, or a class the parent lacks: left out and counted). The job writes the
reviewed cells' images (``store.read_cell_bytes``) to a temporary manifest, fine-tunes the parent
(:func:`phenotyping.training.finetune.finetune`) into a new folder beside the other models, and registers the child
as **not usable**: only an account with ``models.manage`` makes it usable (:func:`mark_usable`, audited as
``model.usable``).

``runner`` is a :class:`phenotyping.jobs.JobRunner` (passed in: training sits below the jobs layer).
"""

from __future__ import annotations

import csv
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from phenotyping.errors import NotFoundError

_EPOCH = re.compile(r"^epoch (\d+)/(\d+)")


@dataclass(frozen=True)
class ReviewedCells:
    """The reviewed cells of some samples: per usable class, and per label left out (outside the classes)."""

    per_class: dict[str, int]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return sum(self.per_class.values())

    def left_out_text(self) -> str:
        """E.g. ``"3 reviewed cell(s) with a label the parent lacks left out (debris 2, basophil 1)"``, or ``""``."""
        return left_out_text(self.left_out, "reviewed cell(s) with a label the parent lacks")


def left_out_text(counts: dict[str, int], what: str) -> str:
    """``"N <what> left out (label n, …)"``, the most frequent label first, or ``""`` when nothing was left out."""
    if not counts:
        return ""
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{sum(counts.values())} {what} left out ({parts})"


def reviewed_cells(store: Any, sample_ids: Sequence[str], classes: Sequence[str]) -> ReviewedCells:
    """Count the samples' reviewed cells by final label: those in ``classes`` and those left out."""
    keep: dict[str, int] = {}
    out: dict[str, int] = {}
    for sid in sample_ids:
        for c in store.list_cells(sid):
            if c.reviewed_label:
                d = keep if c.reviewed_label in classes else out
                d[c.reviewed_label] = d.get(c.reviewed_label, 0) + 1
    return ReviewedCells(per_class=dict(sorted(keep.items())), left_out=dict(sorted(out.items())))


def export_reviewed_cells(store: Any, sample_ids: Sequence[str], out_dir: str | Path, *,
                          classes: Sequence[str]) -> tuple[Path, ReviewedCells]:
    """Write the samples' reviewed cells whose final label is one of ``classes`` as ``out_dir/manifest.csv``
    (cell_id ``<sample>:<cell key>``, path, label, sample) with their images under ``out_dir/cells``.

    Raises:
        ValueError: no sample, or no reviewed cell with one of the classes (the message says what was found).
    """
    if not sample_ids:
        raise ValueError("choose at least one sample with reviewed cells")
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rows = []
    for sid in sample_ids:
        for c in store.list_cells(sid):
            if c.reviewed_label in classes:
                name = f"cells/{c.id}{Path(c.blob_path).suffix or '.bin'}"
                (out / name).write_bytes(store.read_cell_bytes(c))
                rows.append({"cell_id": f"{sid}:{c.cell_key}", "path": name, "label": c.reviewed_label,
                             "sample": sid})
    found = reviewed_cells(store, sample_ids, classes)
    if not rows:
        raise ValueError(f"no cell of {list(sample_ids)} was reviewed (reclassified or confirmed) as one of the "
                         f"parent's classes {list(classes)}" +
                         (f"; {found.left_out_text()}" if found.left_out else "; review some cells first"))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["cell_id", "path", "label", "sample"])
        w.writeheader()
        w.writerows(rows)
    return manifest, found


def _registered(store: Any, model_id: str) -> dict[str, Any]:
    models = {m["id"]: m for m in store.list_models()}
    if model_id not in models:
        raise NotFoundError(f"model {model_id!r} is not registered; registered: {sorted(models) or '(none)'}")
    return models[model_id]


def submit_adaptation(runner: Any, model_id: str, sample_ids: Sequence[str], name: str, *, actor: str,
                      epochs: int | None = None, seed: int = 0, model_root: str | Path | None = None) -> int:
    """Fine-tune registered model ``model_id`` on the reviewed cells of ``sample_ids`` into ``<model_root>/<name>``
    (a background job, kind ``train``); the child is registered not usable. Returns the job id.

    Raises (before the job starts): PermissionDenied without ``models.manage``, NotFoundError for an unknown model
    or sample, ValueError for a bad or taken name, or no reviewed cell of the parent's classes.
    """
    from phenotyping.auth import require_actor
    from phenotyping.training.finetune import FinetuneConfig

    require_actor(runner.store, actor, "models.manage")
    store = runner.store
    parent = _registered(store, model_id)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,63}", name):
        raise ValueError(f"model name {name!r}: use 2-64 lower-case letters, digits, '.', '_' or '-'")
    if model_root is None:
        from phenotyping.settings import get_settings

        model_root = get_settings().model_dir
    out = Path(model_root) / name
    if out.exists():
        raise ValueError(f"model folder {out} exists already; choose another name")
    for sid in sample_ids:
        store.get_sample(sid)
    classes = list(parent["card"]["classes"])
    if reviewed_cells(store, sample_ids, classes).n == 0:
        raise ValueError(f"no cell of {list(sample_ids)} was reviewed as one of {model_id}'s classes {classes}")
    cfg = FinetuneConfig(seed=seed, **({"epochs": int(epochs)} if epochs else {}),
                         data_licence=f"reviewed cells of samples {', '.join(sample_ids)} in {store.db_path}")

    def work(progress: Any) -> dict[str, Any]:
        return _adapt(store, parent, sample_ids, out, cfg, actor, progress)

    return runner.submit("train", work, actor=actor,
                         params={"name": name, "parent": model_id, "samples": list(sample_ids),
                                 "epochs": cfg.epochs, "seed": seed, "adapt": True}, total=cfg.epochs)


def _adapt(store: Any, parent: dict[str, Any], sample_ids: Sequence[str], out: Path, cfg: Any, actor: str,
           progress: Any) -> dict[str, Any]:
    """The job: export, fine-tune (per-epoch progress), register the child not usable; the before/after result."""
    import torch

    from phenotyping.training.finetune import finetune

    progress(0, cfg.epochs, None, "exporting the reviewed cells", force=True)
    started = time.perf_counter()

    def on_log(msg: str) -> None:
        torch.set_num_threads(max(1, progress.cpu_share()))    # a job started or ended in the other lane
        m = _EPOCH.match(msg)
        if m:
            done = int(m.group(1))
            progress(done, int(m.group(2)), done / max(time.perf_counter() - started, 1e-9), msg, force=True)
        else:
            progress(0, cfg.epochs, None, msg[:200], force=True)

    with tempfile.TemporaryDirectory(prefix="leuko-adapt-") as tmp:
        manifest, found = export_reviewed_cells(store, sample_ids, tmp, classes=parent["card"]["classes"])
        torch.set_num_threads(max(1, progress.cpu_share()))
        card = finetune(parent["path"], manifest, "label", out, config=cfg, sample_column="sample", log=on_log)
    store.register_model(card["id"], path=str(out), card=card, actor=actor, usable=False)
    lin = card["lineage"]
    b, a = lin["before"], lin["after"]
    left = found.left_out_text()
    return {"model_id": card["id"], "path": str(out), "parent": parent["id"], "before": b, "after": a,
            "n_cells": lin["data_added"]["n_cells"], "left_out": found.left_out,
            "message": f"adapted {parent['id']} into {card['id']} (not usable until marked): held-out accuracy "
                       f"{b['accuracy']:.3f} → {a['accuracy']:.3f} on {b['n']} cells" + (f"; {left}" if left else "")}


def mark_usable(store: Any, model_id: str, usable: bool, *, actor: str) -> None:
    """Mark a registered model usable (or not): ``models.manage`` only; audited (``model.usable``)."""
    from phenotyping.auth import require_actor

    require_actor(store, actor, "models.manage")
    _registered(store, model_id)
    store.set_model_usable(model_id, usable, actor=actor)


def before_after_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The lineage's before/after figures as table rows (measure, parent, adapted, change); [] without lineage."""
    lin = card.get("lineage") or {}
    b, a = lin.get("before"), lin.get("after")
    if not b or not a:
        return []
    rows = [{"measure": m, "parent": b.get(k), "adapted": a.get(k)} for m, k in
            (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("balanced accuracy", "balanced_accuracy"))]
    rows += [{"measure": f"recall: {c}", "parent": b["recall"].get(c), "adapted": a.get("recall", {}).get(c)}
             for c in b.get("recall", {})]
    for r in rows:
        r["change"] = None if r["parent"] is None or r["adapted"] is None else r["adapted"] - r["parent"]
    return rows
