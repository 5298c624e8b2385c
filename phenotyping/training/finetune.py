"""Fine-tune an existing model on a lab's labelled cells (``train --init-from``), and say how it changed.

Kept from the parent: the architecture and its configuration, the classes (in their order), the preprocessing
(channels, input size, normalisation mode and statistics), the target scaling, the image-QC limits, the specimens
section and the modality. New in the child: the weights (starting from the parent's), temperature, review threshold
and confident confusion (fitted on the new cells' validation split), the domain reference (from the new training
cells, by the child's own features) and the card's ``lineage``: the parent (id, folder, checkpoint SHA-256), the data
added (cells per class, manifest SHA-256, the samples or groups they came from) and the accuracy, macro-F1 and
per-class recall of the parent and of the child on the new cells' held-out test split, which neither the fit nor
early stopping saw.

The child is a new model folder beside its parent, never the parent's own folder; registering it is the caller's
business (the Models page registers it as not usable until someone with ``models.manage`` marks it usable).

Defaults (:class:`FinetuneConfig`): 40 epochs at most, learning rate 3e-4 (train's default is 2e-3: a large rate
would wash out what the parent learnt from few new cells), batch 16 (a few dozen cells still give several steps an
epoch), patience 10 epochs, and 20 % validation and 20 % test shares of the new cells, per class (small data: every
class keeps at least one training cell). Chosen on the bccd adaptation benchmark (docs/BENCHMARKS.md, "Adapting to
a lab"): 15 epochs at batch 32, or 1e-3 for 30 epochs, did worse.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

LINEAGE = "lineage"


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning options (saved in the child's card under ``lineage.finetune``)."""

    epochs: int = 40
    lr: float = 3e-4
    patience: int = 10
    batch_size: int = 16
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    data_licence: str | None = None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_out_dir(parent_dir: str | Path, out: str | Path) -> None:
    """Refuse to write the child over its parent: ``out`` may not be the parent's folder, lie inside it, or already
    hold the parent's checkpoint (a copy of the folder).

    Raises:
        ValueError: naming both folders.
    """
    from phenotyping.models.checkpoint import CHECKPOINT, file_sha256

    parent, child = Path(parent_dir).resolve(), Path(out).resolve()
    if child == parent or parent in child.parents:
        raise ValueError(f"--out {out} is the parent model's folder {parent_dir} (or inside it): a fine-tuned model "
                         "never replaces its parent; give a new folder, e.g. "
                         f"{parent.parent / (parent.name + '-adapted')}")
    if (child / CHECKPOINT).is_file() and (parent / CHECKPOINT).is_file() and \
            file_sha256(child / CHECKPOINT) == file_sha256(parent / CHECKPOINT):
        raise ValueError(f"--out {out} holds the parent model's own checkpoint (a copy of {parent_dir}); give a new "
                         "folder so the parent stays as it is")


def read_new_cells(manifest: Path, label_column: str, classes: Sequence[str], target_names: Sequence[str],
                   parent_id: str, log: Callable[[str], None]) -> Any:
    """The manifest's cells as training's ``_Cells`` over the parent's ``classes``; targets the manifest lacks are
    NaN (ignored by the loss).

    Raises:
        ValueError: a label that is not one of the parent's classes (naming the first such row and how many more),
            or fewer than 6 cells.
    """
    from phenotyping.training.data import column, load_rows, parse_targets
    from phenotyping.training.train import _Cells, _check_unique_ids

    rows = load_rows(manifest, label_column=label_column)
    labels = column(rows, label_column)
    ids = column(rows, "cell_id") if rows and "cell_id" in rows[0] else [str(r["path"]) for r in rows]
    bad = [i for i, lab in enumerate(labels) if lab not in classes]
    if bad:
        i = bad[0]
        more = f" ({len(bad) - 1} more row(s) too: {sorted({labels[j] for j in bad})})" if len(bad) > 1 else ""
        raise ValueError(f"{manifest} row {i + 2} (cell {ids[i]!r}): label {labels[i]!r} in column {label_column!r} "
                         f"is not a class of the parent model {parent_id}, whose classes are {list(classes)}{more}. "
                         "Fine-tuning keeps the parent's classes: relabel or drop these rows, or train a new model")
    if len(rows) < 6:
        raise ValueError(f"{manifest} has {len(rows)} cell(s); fine-tuning needs at least 6 (training, validation "
                         "and held-out test cells)")
    _check_unique_ids(ids, rows, manifest)
    present = [t for t in target_names if t in rows[0]]
    if len(present) < len(target_names):
        log(f"targets not in the manifest (kept from the parent, not fitted): "
            f"{[t for t in target_names if t not in present]}")
    targets = np.full((len(rows), len(target_names)), np.nan)
    if present:
        got = parse_targets(rows, present)
        for j, t in enumerate(target_names):
            if t in present:
                targets[:, j] = got[:, present.index(t)]
    y = np.array([list(classes).index(lab) for lab in labels], np.int64)
    return _Cells(rows=rows, labels=labels, classes=list(classes), y=y, targets=targets, groups=None, ids=ids)


def held_out_split(y: np.ndarray, *, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Per-class random train/val/test indices (rounded shares; every class keeps a training cell; when rounding
    leaves the validation or test split empty, one cell of the largest class moves there).

    Raises:
        ValueError: the fractions are out of range, or too few cells for three non-empty splits.
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"fine-tuning needs 0 < val_fraction, 0 < test_fraction (the held-out cells of the "
                         f"before/after metrics), sum < 1; got {val_fraction}, {test_fraction}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        n = len(idx)
        n_test = min(int(round(n * test_fraction)), n - 1)
        n_val = min(int(round(n * val_fraction)), n - 1 - n_test)
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test:n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val:].tolist()
    for name in ("test", "val"):
        if not parts[name]:
            counts = np.bincount(y[parts["train"]], minlength=int(y.max()) + 1)
            k = int(counts.argmax())
            if counts[k] < 2:
                raise ValueError(f"{len(y)} cells are too few for training, validation and test cells; add cells")
            move = next(i for i in parts["train"] if y[i] == k)
            parts["train"].remove(move)
            parts[name].append(move)
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The before/after figures of one model on the held-out cells: n, accuracy, macro-F1, balanced accuracy and the
    recall of each class present there."""
    return {"n": metrics["n"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "recall": {c: v["recall"] for c, v in metrics["per_class"].items() if v["n"] > 0}}


def _load_parent(parent_dir: Path) -> Any:
    from phenotyping.models.checkpoint import load_model_dir

    parent = load_model_dir(parent_dir)
    if not getattr(parent.model, "is_neural", True):
        raise ValueError(f"--init-from {parent_dir} is a {parent.card['architecture']['name']} model; only neural "
                         "models (hybrid, cnn, resnet18, vit_small…) can be fine-tuned; train a new classifier")
    return parent


def _inputs(parent: Any, cells: Any, split: dict[str, np.ndarray], log: Callable[[str], None]) -> Any:
    """Training's ``_Inputs`` for the new cells with the parent's preprocessing (checked: channel count, 2D/3D)."""
    from phenotyping.training.data import load_images
    from phenotyping.training.train import _Inputs

    pre, mc = parent.preprocess, parent.model.config
    t0 = time.perf_counter()
    x = {k: load_images([cells.rows[int(i)]["path"] for i in idx], pre.img_size, crop=pre.crop) for k, idx in split.items()}
    log(f"read {len(cells.rows)} images at {pre.img_size}×{pre.img_size} in {time.perf_counter() - t0:.1f}s")
    dims = 3 if x["train"].ndim == 5 else 2
    if x["train"].shape[1] != mc["in_chans"] or dims != mc.get("dims", 2):
        raise ValueError(f"the new cells have {x['train'].shape[1]} channel(s) ({dims}D) but the parent model "
                         f"{parent.id} takes {mc['in_chans']} ({mc.get('dims', 2)}D: {', '.join(pre.channels)})")
    scaler = parent.targets
    z = scaler.transform(cells.targets) if scaler else np.zeros((len(cells.rows), 0), np.float32)
    card_input = parent.card.get("input") or {}
    return _Inputs(img_size=pre.img_size, dims=dims, n_chans=mc["in_chans"], channels=list(pre.channels),
                   channels_from=f"kept from the parent model {parent.id} ({card_input.get('channel_names_from')})",
                   pre=pre, scaler=scaler, x=x, xn={k: pre.normalise(v, batched=True) for k, v in x.items()},
                   y={k: cells.y[idx] for k, idx in split.items()}, z={k: z[idx] for k, idx in split.items()},
                   truth={k: cells.targets[idx] for k, idx in split.items()})


def _train_config(parent: Any, config: FinetuneConfig) -> Any:
    """The ``TrainConfig`` the fit runs under: the fine-tuning options over the parent's own training options."""
    from phenotyping.training.train import TrainConfig

    pc = ((parent.card.get("training") or {}).get("config")) or {}
    return TrainConfig(arch=parent.card["architecture"]["name"], epochs=config.epochs, seed=config.seed,
                       batch_size=config.batch_size, lr=config.lr, weight_decay=float(pc.get("weight_decay", 0.05)),
                       patience=config.patience, loss=str(pc.get("loss", "uncertainty")),
                       val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                       img_size=parent.preprocess.img_size, classes=tuple(parent.classes),
                       channels=tuple(parent.preprocess.channels), augment=bool(pc.get("augment", True)),
                       augment_appearance=bool(pc.get("augment_appearance", False)),
                       augment_hue=float(pc.get("augment_hue") or 0.0),
                       class_weights=str(pc.get("class_weights", "balanced")),
                       normalisation=parent.preprocess.mode, crop=parent.preprocess.crop,
                       data_licence=config.data_licence,
                       log_targets=tuple(t.get("name") for t in parent.card.get("targets", []) if t.get("log")))


def finetune(parent_dir: str | Path, manifest: str | Path, label_column: str, out: str | Path, *,
             config: FinetuneConfig = FinetuneConfig(), sample_column: str | None = None,
             log: Callable[[str], None] = _stderr, device: str | None = None) -> dict[str, Any]:
    """Fine-tune the model in ``parent_dir`` on the cells of ``manifest`` and write the child to ``out``
    (checkpoint, model_card.json with ``lineage``, split.csv). ``sample_column``: a manifest column naming the
    sample (or group) of each cell, recorded in the lineage.

    Returns the child's card. Raises ValueError for a label outside the parent's classes (naming the row), ``out``
    equal to the parent's folder, a non-neural parent, or images the parent cannot take.
    """
    import torch

    from phenotyping.models.checkpoint import CHECKPOINT, file_sha256, save_model_dir
    from phenotyping.training.device import device_plan
    from phenotyping.training.licence import data_licence
    from phenotyping.training.train import _calibrate_and_test, _card, _fit_neural, _metrics, _write_split

    parent_dir, manifest, out = Path(parent_dir), Path(manifest), Path(out)
    check_out_dir(parent_dir, out)
    plan = device_plan(device)
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    parent = _load_parent(parent_dir)
    parent_sha = file_sha256(parent_dir / CHECKPOINT)
    target_names = [t["name"] for t in parent.card.get("targets", [])]
    cells = read_new_cells(manifest, label_column, parent.classes, target_names, parent.id, log)
    split = held_out_split(cells.y, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                           seed=config.seed)
    log(f"fine-tuning {parent.id} on {len(cells.rows)} cells: train {len(split['train'])}, val {len(split['val'])}, "
        f"held-out test {len(split['test'])}")
    data = _inputs(parent, cells, split, log)
    tcfg = _train_config(parent, config)
    before = summary(_metrics(parent.model, data, "test", cells.classes, target_names)[0])
    model = parent.model
    fit = _fit_neural(model, data, cells.classes, target_names, tcfg, log, plan)
    model.eval()
    ev = _calibrate_and_test(model, data, cells.classes, target_names)
    licence_text, licence = data_licence(manifest, config.data_licence)
    card = _card(manifest=manifest, out=out, label_column=label_column, target_columns=target_names,
                 group_column=None, config=tcfg, cells=cells, split=split, data=data, model=model,
                 cfg=dict(model.config), emb=None, fit=fit, ev=ev, licence_text=licence_text, licence=licence,
                 wall=time.perf_counter() - t_start)
    card["id"] = _child_id(out, card, parent_sha, manifest)
    card["split"]["method"] = "per-class random hold-outs of the new cells (finetune.held_out_split)"
    _inherit(card, parent, cells, split, ev, plan)
    card[LINEAGE] = _lineage(parent, parent_dir, parent_sha, manifest, cells, split, config, before,
                             summary(ev.test), sample_column)
    save_model_dir(out, model, card, preprocess=data.pre, targets=data.scaler)
    _write_split(out / "split.csv", cells.ids, split)
    _domain(card, out, manifest, config.seed, log)
    log(f"wrote {out}: held-out accuracy {before['accuracy']:.3f} → {ev.test['accuracy']:.3f}, macro-F1 "
        f"{before['macro_f1']:.3f} → {ev.test['macro_f1']:.3f} ({before['n']} cells)")
    return card


def _child_id(out: Path, card: dict[str, Any], parent_sha: str, manifest: Path) -> str:
    """``<out name>-<digest>``, the digest over training's own id, the parent's checkpoint and the new cells' manifest
    (two children of different parents or data never share an id)."""
    import hashlib

    from phenotyping.models.checkpoint import file_sha256

    data = file_sha256(manifest) if manifest.is_file() else str(manifest)
    return f"{out.name}-{hashlib.sha256((card['id'] + parent_sha + data).encode()).hexdigest()[:10]}"


def _inherit(card: dict[str, Any], parent: Any, cells: Any, split: dict[str, np.ndarray], ev: Any,
             plan: Any) -> None:
    """The post-fit sections: QC limits, specimens and modality kept from the parent; prior and confident confusion
    for the child; the licence line naming both the new cells' and the parent's training data."""
    from phenotyping.analysis.prior import posterior_prior
    from phenotyping.training.postfit import confident_confusion

    pcard = parent.card
    training = card["training"]
    training["device"] = plan.describe()
    parent_licence = (pcard.get("training") or {}).get("data_licence")
    training["data_licence"] = (f"{training['data_licence']}; fine-tuned from {parent.id}, whose training data: "
                                f"{parent_licence or 'licence not stated'}")
    k = len(cells.classes)
    counts = np.bincount(cells.y[split["train"]], minlength=k)
    parent_seen = np.array([float(((pcard.get("training") or {}).get("class_proportions") or {}).get(c, 1.0)) > 0
                            for c in cells.classes])
    training["posterior_prior"] = posterior_prior(cells.classes, np.maximum(counts, parent_seen.astype(int)),
                                                  training["class_weighting"])
    training["posterior_prior"]["basis"] += "; classes of the parent's training or the new cells"
    card["validation"]["confusion_confident"] = confident_confusion(ev.val_probabilities, cells.y[split["val"]],
                                                                    ev.threshold, k)
    for key in ("qc", "qc_calibration", "specimens", "modality"):
        if key in pcard:
            card[key] = json.loads(json.dumps(pcard[key]))
    if isinstance(card.get("qc_calibration"), dict):
        card["qc_calibration"]["inherited_from"] = parent.id


def _lineage(parent: Any, parent_dir: Path, parent_sha: str, manifest: Path, cells: Any,
             split: dict[str, np.ndarray], config: FinetuneConfig, before: dict[str, Any], after: dict[str, Any],
             sample_column: str | None) -> dict[str, Any]:
    """The card's ``lineage`` section (see the module docstring)."""
    from phenotyping.models.checkpoint import file_sha256
    from phenotyping.training.data import column

    per_class = {c: int(n) for c, n in zip(cells.classes, np.bincount(cells.y, minlength=len(cells.classes))) if n}
    samples = sorted(set(column(cells.rows, sample_column))) if sample_column else None
    return {
        "parent": {"id": parent.id, "path": str(parent_dir.resolve()), "checkpoint_sha256": parent_sha,
                   "architecture": parent.card["architecture"]["name"],
                   "training_manifest": (parent.card.get("training") or {}).get("manifest")},
        "kept_from_parent": ["architecture", "classes", "input (channels, size, normalisation)", "targets (scaling)",
                             "qc", "specimens", "modality"],
        "data_added": {"manifest": str(manifest), "manifest_sha256": file_sha256(manifest) if manifest.is_file()
                       else None, "n_cells": len(cells.rows), "per_class": per_class,
                       "split": {k: len(v) for k, v in split.items()}, "samples": samples,
                       "sample_column": sample_column},
        "held_out": {"split": "test", "n": len(split["test"]),
                     "method": f"per-class random {config.test_fraction:.0%} of the new cells (seed {config.seed}), "
                               "seen by neither the fit nor early stopping; listed in split.csv",
                     "cell_ids": [cells.ids[int(i)] for i in split["test"]]},
        "before": before,
        "after": after,
        "finetune": asdict(config),
        "usable_note": "registered as not usable until someone with models.manage marks it usable",
    }


def _domain(card: dict[str, Any], out: Path, manifest: Path, seed: int, log: Callable[[str], None]) -> None:
    """The child's domain reference from its own features of the new training cells; too few cells leave the card
    without one, said in the lineage (the domain check then reports that the card has no reference)."""
    from phenotyping.models.checkpoint import CARD
    from phenotyping.training.postfit import calibrate_domain_dir

    try:
        card["domain"] = calibrate_domain_dir(out, manifest, seed=seed)
    except ValueError as e:
        log(f"no domain reference: {e}")
        card[LINEAGE]["domain_note"] = f"no domain reference: {e}"
        (out / CARD).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n", encoding="utf-8")
