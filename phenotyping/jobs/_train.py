"""Training and evaluation jobs, and the export of a store's labelled cells they train or evaluate on."""

from __future__ import annotations

import csv
import math
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.jobs._runner import JobRunner, Progress, set_torch_threads


@dataclass(frozen=True)
class LabelledExport:
    """What :func:`export_labelled_cells` wrote: the manifest, the continuous targets found, and the labelled cells
    left out because their label is not one of the chosen classes (label -> cells)."""

    manifest: Path
    targets: list[str]
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())

    def excluded_text(self) -> str:
        """E.g. ``"14 cell(s) labelled outside the classes left out (debris 12, other 2)"``, or ``""``."""
        from phenotyping.training.adapt import left_out_text

        return left_out_text(self.excluded, "cell(s) labelled outside the classes")


def cell_label(cell: Any) -> str | None:
    """A cell's training label: the reviewer's label, else the label its image set came with, else None."""
    return cell.reviewed_label or cell.reference_label or None


def label_counts(store: Any, sample_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Labelled cells of the samples per label, split by where the label came from: ``{"image set": {label: n},
    "review only": {label: n}}`` ("review only": labels no cell's image set carries, e.g. ``debris``)."""
    final: dict[str, int] = {}
    reference: set[str] = set()
    for sid in sample_ids:
        for c in store.list_cells(sid):
            if c.reference_label:
                reference.add(c.reference_label)
            label = cell_label(c)
            if label:
                final[label] = final.get(label, 0) + 1
    return {"image set": {k: v for k, v in sorted(final.items()) if k in reference},
            "review only": {k: v for k, v in sorted(final.items()) if k not in reference}}


def export_labelled_cells(store: Any, sample_ids: Sequence[str], out_dir: str | Path, *,
                          classes: Sequence[str] | None = None) -> LabelledExport:
    """Write the labelled cells of samples as an image folder with ``manifest.csv`` (cell_id, path, label, group,
    and each continuous target).

    A cell's label is its reviewed label, else its image set's (:func:`cell_label`). Cells whose label is not in
    ``classes`` are left out and counted in the result, so a review label such as ``debris`` or ``other`` never
    becomes a class by accident. ``classes=None`` keeps the labels some cell's image set carries (review-only labels
    are left out).

    Raises:
        ValueError: no sample given, an empty class list, or no cell with one of the classes.
    """
    if not sample_ids:
        raise ValueError("choose at least one sample with labelled cells")
    if classes is not None and not list(classes):
        raise ValueError("choose at least one class")
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cells = [(sid, c) for sid in sample_ids for c in store.list_cells(sid)]
    keep = set(classes) if classes is not None else {c.reference_label for _, c in cells if c.reference_label}
    rows: list[dict[str, Any]] = []
    excluded: dict[str, int] = {}
    for sid, c in cells:
        label = cell_label(c)
        if not label:
            continue
        if label not in keep:
            excluded[label] = excluded.get(label, 0) + 1
            continue
        ext = Path(c.blob_path).suffix or ".bin"
        name = f"cells/{c.id}{ext}"
        (out / name).write_bytes(store.read_cell_bytes(c))  # a file of its own, or a slice of a pack
        rows.append({"cell_id": f"{sid}:{c.cell_key}", "path": name, "label": label, "group": sid,
                     **{k: v for k, v in c.targets.items()}})
    if not rows:
        what = f"one of the classes {sorted(keep)}" if keep else "a label (from its image set or a review)"
        found = f"; labels found: {sorted(excluded)}" if excluded else ""
        raise ValueError(f"no cell of {list(sample_ids)} has {what}{found}; training needs labelled cells")
    targets = sorted({k for r in rows for k in r} - {"cell_id", "path", "label", "group"})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["cell_id", "path", "label", "group", *targets])
        w.writeheader()
        w.writerows(rows)
    return LabelledExport(manifest=manifest, targets=targets, excluded=excluded)


_EPOCH = re.compile(r"^epoch (\d+)/(\d+)")


def _fmt(value: Any, digits: int = 3) -> str:
    """A metric for a message: ``0.912``, or ``n/a`` when the card or result has none (None, NaN)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{f:.{digits}f}" if math.isfinite(f) else "n/a"


def submit_training(runner: JobRunner, sample_ids: Sequence[str], name: str, *, actor: str, arch: str = "hybrid",
                    epochs: int = 20, targets: Sequence[str] | None = None, seed: int = 0,
                    classes: Sequence[str] | None = None, model_root: str | Path | None = None) -> int:
    """Train a model on the labelled cells of stored samples (background job with per-epoch progress).

    The model folder ``<model_root>/<name>`` is written by :func:`phenotyping.training.train.train` and registered in the
    store as *not usable* until an admin has looked at its evaluation and marks it usable. Only cells labelled with
    one of ``classes`` are used (default: the labels of the samples' image sets; see
    :func:`export_labelled_cells`); the job's result says how many were left out.
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,63}", name):
        raise ValueError(f"model name {name!r}: use 2-64 lower-case letters, digits, '.', '_' or '-'")
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    store = runner.store
    if model_root is None:
        from phenotyping.settings import get_settings

        model_root = get_settings().model_dir
    out = Path(model_root) / name
    if out.exists():
        raise ValueError(f"model folder {out} exists already; choose another name")
    for sid in sample_ids:
        store.get_sample(sid)

    def work(progress: Progress) -> dict[str, Any]:
        from phenotyping.training.train import TrainConfig, train

        progress(0, epochs, None, "exporting the labelled cells", force=True)
        with tempfile.TemporaryDirectory(prefix="leuko-train-") as tmp:
            export = export_labelled_cells(store, sample_ids, tmp, classes=classes)
            manifest, available = export.manifest, export.targets
            use_targets = list(available if targets is None else targets)
            missing = [t for t in use_targets if t not in available]
            if missing:
                raise ValueError(f"target(s) {missing} are not in these samples; they have {available or 'none'}")
            started = time.perf_counter()
            set_torch_threads(progress.cpu_share())

            def on_log(msg: str) -> None:
                m = _EPOCH.match(msg)
                set_torch_threads(progress.cpu_share())  # a job started or ended in the other lane
                if m:
                    done = int(m.group(1))
                    progress(done, int(m.group(2)), done / max(time.perf_counter() - started, 1e-9), msg,
                             force=True)
                else:
                    progress(0, epochs, None, msg[:200], force=True)

            card = train(manifest, "label", out, target_columns=use_targets,
                         group_column="group" if len(sample_ids) > 1 else None,
                         config=TrainConfig(arch=arch, epochs=epochs, seed=seed,
                                            data_licence=f"cells of samples {', '.join(sample_ids)} in {store.db_path}"),
                         log=on_log)
        store.register_model(card["id"], path=str(out), card=card, actor=actor, usable=False)
        val = card.get("validation") or {}
        left_out = export.excluded_text()
        return {"model_id": card["id"], "path": str(out), "val_accuracy": val.get("accuracy"),
                "val_macro_f1": val.get("macro_f1"), "excluded_labels": export.excluded,
                "message": f"trained {card['id']}: validation accuracy {_fmt(val.get('accuracy'))}"
                           + (f"; {left_out}" if left_out else "")}

    return runner.submit("train", work, actor=actor, params={"samples": list(sample_ids), "name": name, "arch": arch,
                                                             "epochs": epochs, "seed": seed,
                                                             "classes": None if classes is None else list(classes)},
                         total=epochs)


def submit_evaluation(runner: JobRunner, model_id: str, sample_ids: Sequence[str], *, actor: str) -> int:
    """Evaluate a registered model on the labelled cells of stored samples; the metrics are added to its card in
    the registry under ``evaluations`` (newest last) and returned as the job's result."""
    store = runner.store
    models = {m["id"]: m for m in store.list_models()}
    if model_id not in models:
        raise NotFoundError(f"model {model_id!r} is not registered; registered: {sorted(models) or '(none)'}")
    for sid in sample_ids:
        store.get_sample(sid)

    def work(progress: Progress) -> dict[str, Any]:
        from phenotyping.training.evaluate import evaluate_model_dir

        progress(0, 2, None, "exporting the labelled cells", force=True)
        m = models[model_id]
        with tempfile.TemporaryDirectory(prefix="leuko-eval-") as tmp:
            export = export_labelled_cells(store, sample_ids, tmp, classes=m["card"]["classes"])
            progress(1, 2, None, "predicting", force=True)
            set_torch_threads(progress.cpu_share())
            metrics = evaluate_model_dir(m["path"], export.manifest, label_column="label", drop_unknown=True,
                                         log=lambda msg: progress(1, 2, None, msg[:200], force=True))
        current = next(x for x in store.list_models() if x["id"] == model_id)
        card = dict(current["card"])
        card["evaluations"] = [*card.get("evaluations", []),
                               {"samples": list(sample_ids), "by": actor, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                               time.gmtime()),
                                "metrics": metrics}]
        store.register_model(model_id, path=current["path"], card=card, actor=actor, usable=current["usable"])
        left_out = export.excluded_text()
        return {"model_id": model_id, "samples": list(sample_ids), "metrics": metrics,
                "excluded_labels": export.excluded,
                "message": f"accuracy {_fmt(metrics.get('accuracy'))}, macro-F1 {_fmt(metrics.get('macro_f1'))}"
                           + (f"; {left_out}" if left_out else "")}

    return runner.submit("evaluate", work, actor=actor, params={"model_id": model_id, "samples": list(sample_ids)},
                         total=2)
