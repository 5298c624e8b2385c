"""K-fold cross-validation of any architecture, grouped by patient or sample when a group column is given.

Each fold's model is trained exactly as :func:`phenotyping.training.train.train` trains one (same preprocessing fitted
on the fold's training cells, same loop, a validation split drawn from the other folds for early stopping), and is
scored on the held-out fold. Folds come from scikit-learn's ``StratifiedGroupKFold`` (with groups: no group is in two
folds) or ``StratifiedKFold``. The result is a JSON-ready ``cross_validation`` card section: per-fold metrics and
their mean ± SD (sample SD, ddof = 1) over folds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from phenotyping.training.train import TrainConfig

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
QUEUE = ("unidentified_share", "confident_accuracy")
#: How a model card names each figure of :data:`METRICS` and :data:`QUEUE`, in that order.
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1",
          "unidentified_share": "unidentified share", "confident_accuracy": "accuracy above the threshold"}
#: Figures that are shares of the cells, shown as percentages (the other figures are 0–1 scores shown as such).
PERCENT_FIGURES = frozenset({LABELS["unidentified_share"]})


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_folds(k: int, labels: Sequence[str], groups: Sequence[str] | None, group_column: str | None = None) -> None:
    """Refuse a ``k`` that cannot give every fold every class: ``k < 2``, ``k`` above the smallest class's cell
    count (no groups), or above the number of groups holding the rarest class (groups).

    Raises:
        ValueError: naming ``k``, the limiting class and its count, and the largest usable ``k``.
    """
    if k < 2:
        raise ValueError(f"--cv {k}: K-fold cross-validation needs K ≥ 2 folds (5 is usual)")
    y = np.asarray(labels)
    if groups is None:
        classes, counts = np.unique(y, return_counts=True)
        i = int(counts.argmin())
        rare, n = str(classes[i]), int(counts[i])
        if k > n:
            raise ValueError(f"--cv {k} exceeds the smallest class count: class {rare!r} has {n} cell(s), so some "
                             f"fold would hold none of it; use --cv ≤ {n}")
        return
    g = np.asarray(groups)
    n_groups = len(np.unique(g))
    per_class = {str(c): len(np.unique(g[y == c])) for c in np.unique(y)}
    rare = min(per_class, key=per_class.get)
    limit = min(n_groups, per_class[rare])
    if k > limit:
        raise ValueError(f"--cv {k} exceeds the smallest group count: column {group_column!r} has {n_groups} "
                         f"group(s) and class {rare!r} occurs in {per_class[rare]} of them; a grouped fold holds whole "
                         f"groups, so use --cv ≤ {limit} (or add groups)")


def fold_indices(k: int, labels: Sequence[str], groups: Sequence[str] | None, *, seed: int) -> list[np.ndarray]:
    """The held-out cell indices of each of ``k`` stratified (grouped, when ``groups`` is given) folds, sorted."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels)
    idx = np.arange(len(y))
    if groups is None:
        parts = StratifiedKFold(k, shuffle=True, random_state=seed).split(idx, y)
    else:
        parts = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(idx, y, np.asarray(groups))
    return [np.sort(test) for _, test in parts]


def _fold_split(cells: Any, test: np.ndarray, config: TrainConfig, fold: int) -> dict[str, np.ndarray]:
    """Train/val/test indices of one fold: ``test`` held out; a stratified (grouped) validation share of the rest."""
    from phenotyping.training.data import split_indices, stratified_fraction

    rest = np.setdiff1d(np.arange(len(cells.labels)), test)
    labels = [cells.labels[i] for i in rest]
    groups = [cells.groups[i] for i in rest] if cells.groups is not None else None
    inner = split_indices(labels, groups, val_fraction=config.val_fraction, test_fraction=0.0,
                          seed=config.seed + fold)
    train, val = rest[inner["train"]], rest[inner["val"]]
    missing = sorted(set(cells.classes) - {cells.labels[i] for i in train})
    if missing:
        raise ValueError(f"cross-validation fold {fold + 1} leaves class(es) {missing} with no training cell; "
                         "use fewer folds (--cv) or groups that each hold several classes")
    if config.fraction < 1:
        train = train[stratified_fraction(cells.y[train], config.fraction, config.seed)]
    return {"train": train, "val": val, "test": test}


def review_queue(val_logits: np.ndarray, y_val: np.ndarray, test_logits: np.ndarray,
                 y_test: np.ndarray) -> dict[str, float | None]:
    """The held-out fold's "unidentified" review queue as a shipped model would form it: temperature and threshold
    fitted on the fold's validation cells (as :func:`~phenotyping.training.train.train` fits the card's), then the
    share of held-out cells below the threshold and the accuracy of those above it (None when none is)."""
    from phenotyping.models.forward import softmax
    from phenotyping.training.calibration import calibration_metrics, fit_temperature, unidentified_threshold

    temperature = fit_temperature(val_logits, y_val)
    threshold, _ = unidentified_threshold(softmax(val_logits, temperature), y_val)
    held = calibration_metrics(softmax(test_logits, temperature), y_test, threshold=threshold)
    return {"unidentified_share": held["below_threshold"], "confident_accuracy": held["accuracy_above_threshold"]}


def _fold_result(fold: int, split: dict[str, np.ndarray], met: dict[str, Any], cells: Any,
                 queue: dict[str, float | None]) -> dict[str, Any]:
    """One fold's record: sizes, held-out groups, the three class metrics, the review queue (:func:`review_queue`)
    and each target's Pearson r."""
    out: dict[str, Any] = {"fold": fold + 1, "n": {k: int(len(v)) for k, v in split.items()}}
    if cells.groups is not None:
        out["test_groups"] = sorted({str(cells.groups[i]) for i in split["test"]})
    out.update({m: float(met[m]) for m in METRICS})
    out.update(queue)
    out["pearson"] = {t: v["pearson"] for t, v in met.get("targets", {}).items()}
    return out


def _mean_sd(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample SD (ddof = 1) of the defined values; SD is None with fewer than 2."""
    v = np.array([x for x in values if x is not None], np.float64)
    return {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n_folds": int(len(v))}


def summarise(folds: Sequence[dict[str, Any]], target_columns: Sequence[str]) -> dict[str, Any]:
    """Mean ± SD over folds of each metric and of the review queue's share and confident accuracy, and of each
    target's Pearson r (under ``"pearson"``)."""
    out: dict[str, Any] = {m: _mean_sd([f.get(m) for f in folds]) for m in METRICS + QUEUE}
    out["pearson"] = {t: _mean_sd([f["pearson"].get(t) for f in folds]) for t in target_columns}
    return out


def cross_validate(manifest: str | Path, label_column: str, *, k: int, target_columns: Sequence[str] = (),
                   group_column: str | None = None, config: TrainConfig = TrainConfig(),
                   log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """``k``-fold cross-validation of ``config.arch`` on ``manifest``; returns the ``cross_validation`` section.

    Nothing is written: the fold models are discarded. Raises ValueError for an unusable ``k`` (see
    :func:`check_folds`) and everything :func:`~phenotyping.training.train.train` raises for its input.
    """
    import torch

    from phenotyping.models._registry import model_family
    from phenotyping.training import train as tr

    manifest = Path(manifest)
    cells = tr._read_cells(manifest, label_column, target_columns, group_column, config.classes, log)
    check_folds(k, cells.labels, cells.groups, group_column)
    classical = model_family(config.arch) == "classical"
    emb = tr._embedding_model(config, classical, log) if config.embed_model else None
    from phenotyping.training.device import device_plan

    plan = device_plan(None)  # LEUKO_DEVICE (auto: CUDA when there is one), as train does
    folds = []
    for f, test in enumerate(fold_indices(k, cells.labels, cells.groups, seed=config.seed)):
        flog = (lambda m, f=f: log(f"[fold {f + 1}/{k}] {m}"))
        split = _fold_split(cells, test, config, f)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        data = tr._prepare_inputs(cells, split, target_columns, config, classical=classical, emb=emb, log=flog)
        model, _ = tr._build_model(config, data, len(cells.classes), len(target_columns), emb, manifest.parent)
        if getattr(model, "is_neural", True):
            tr._fit_neural(model, data, cells.classes, target_columns, config, flog, plan)
        else:
            tr._fit_classical(model, data, config, flog)
        model.eval()
        met, o = tr._metrics(model, data, "test", cells.classes, target_columns)
        _, o_val = tr._metrics(model, data, "val", cells.classes, target_columns)
        queue = review_queue(o_val["logits"], data.y["val"], o["logits"], data.y["test"])
        folds.append(_fold_result(f, split, met, cells, queue))
        flog(f"held-out accuracy {met['accuracy']:.3f}, balanced {met['balanced_accuracy']:.3f}, "
             f"macro-F1 {met['macro_f1']:.3f}, unidentified {queue['unidentified_share']:.1%} on {len(test)} cells")
    summary = summarise(folds, target_columns)
    log(f"{k}-fold CV: " + ", ".join(f"{m} {summary[m]['mean']:.3f} ± {summary[m]['sd']:.3f}" for m in METRICS))
    return {"k": k, "method": (f"StratifiedGroupKFold by {group_column}" if group_column else "StratifiedKFold")
            + f" (shuffled, seed {config.seed}); each fold's model trained on the other folds (a validation share "
              "of them for early stopping) and scored on the held-out fold; SD is the sample SD over folds",
            "group_column": group_column, "n_cells": len(cells.rows), "folds": folds, "summary": summary}


def cv_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's ``cross_validation`` section as table rows: one per figure (each target's Pearson r included),
    with its mean, SD and every fold's value (``fold 1`` …); empty when the card has none. Figures an older card did
    not record (the review queue before it was measured) are left out."""
    cv = card.get("cross_validation") or {}
    summary, folds = cv.get("summary") or {}, cv.get("folds") or []
    figures = [(LABELS[key], summary.get(key), [f.get(key) for f in folds]) for key in METRICS + QUEUE]
    figures += [(f"Pearson r ({t})", s, [(f.get("pearson") or {}).get(t) for f in folds])
                for t, s in (summary.get("pearson") or {}).items()]
    return [{"figure": label, "mean": s["mean"], "SD": s.get("sd")}
            | {f"fold {f.get('fold', i + 1)}": v for i, (f, v) in enumerate(zip(folds, values))}
            for label, s, values in figures if s and s.get("mean") is not None]


def cv_text_rows(card: dict[str, Any]) -> list[dict[str, str]]:
    """:func:`cv_rows` formatted for display: a share of cells (:data:`PERCENT_FIGURES`) as a percentage with one
    decimal, every other figure with three decimals, "—" for a fold that has none."""
    def text(figure: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "—"
        return f"{100 * value:.1f} %" if figure in PERCENT_FIGURES else f"{value:.3f}"

    return [{k: v if k == "figure" else text(row["figure"], v) for k, v in row.items()} for row in cv_rows(card)]
