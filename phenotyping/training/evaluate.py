"""Metrics for a model on labelled cells: classification, predicted vs true proportions, and regression agreement.

``classification_metrics`` and ``regression_metrics`` are pure functions of arrays; ``evaluate_model_dir`` runs a saved
model over a manifest and returns the JSON document the ``evaluate`` command prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from phenotyping.errors import PhenotypingError


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, Cohen's kappa, per-class P/R/F1/n, confusion (rows true, cols
    predicted) and classify-and-count proportions. Balanced accuracy and macro-F1 average over classes present in
    ``y_true`` (a class with no true cell has undefined recall)."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support

    k = len(classes)
    labels = np.arange(k)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = n > 0
    kappa = float(cohen_kappa_score(y_true, y_pred, labels=labels)) if len(np.unique(
        np.concatenate([y_true, y_pred]))) > 1 else 0.0
    total = max(len(y_true), 1)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(r[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f[present].mean()) if present.any() else 0.0,
        "kappa": kappa,
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "n": int(n[i])}
                      for i, c in enumerate(classes)},
        "confusion": cm.astype(int).tolist(),
        "predicted_proportions": {c: float((y_pred == i).sum() / total) for i, c in enumerate(classes)},
        "true_proportions": {c: float((y_true == i).sum() / total) for i, c in enumerate(classes)},
    }


def regression_metrics(true: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per target: Pearson r, Spearman ρ, mean absolute error (target units), Lin's CCC; NaN truths are skipped.

    CCC is :func:`phenotyping.agreement.stats.ccc` (truth as the reference method). A statistic that is undefined (fewer
    than 3 cells, or a constant column) is ``None``.
    """
    from scipy.stats import pearsonr, spearmanr

    from phenotyping.agreement.stats import ccc

    out: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(names):
        ok = np.isfinite(true[:, j]) & np.isfinite(pred[:, j])
        t, p = true[ok, j], pred[ok, j]
        if ok.sum() < 3 or t.std() == 0 or p.std() == 0:
            out[name] = {"pearson": None, "spearman": None,
                         "mae": float(np.abs(t - p).mean()) if ok.any() else None, "ccc": None}
            continue
        out[name] = {"pearson": float(pearsonr(t, p)[0]), "spearman": float(spearmanr(t, p)[0]),
                     "mae": float(np.abs(t - p).mean()), "ccc": float(ccc(t, p).ccc)}
    return out


def match_labels(labels: Sequence[str], classes: Sequence[str], *, drop_unknown: bool = False,
                 log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map label strings to class indices.

    Labels match exactly, or else case-insensitively when that is unambiguous (``Neutrophil`` → ``neutrophil``,
    reported through ``log``). Returns (indices of kept rows, class index per kept row).

    Raises:
        PhenotypingError: labels the model does not know (unless ``drop_unknown``), naming them and the classes.
    """
    exact = {c: i for i, c in enumerate(classes)}
    folded: dict[str, int] = {}
    for i, c in enumerate(classes):
        folded[c.casefold()] = -1 if c.casefold() in folded else i
    keep, idx, unknown, renamed = [], [], {}, set()
    for r, lab in enumerate(labels):
        if lab in exact:
            j = exact[lab]
        elif folded.get(lab.casefold(), -1) >= 0:
            j = folded[lab.casefold()]
            renamed.add(f"{lab}→{classes[j]}")
        else:
            unknown[lab] = unknown.get(lab, 0) + 1
            continue
        keep.append(r)
        idx.append(j)
    if unknown and not drop_unknown:
        found = ", ".join(f"{k!r} ({v} cells)" for k, v in sorted(unknown.items()))
        raise PhenotypingError(f"labels the model does not know: {found}; the model's classes are "
                               f"{list(classes)}. Remove those rows or pass --drop-unknown")
    if log and renamed:
        log(f"note: matched labels case-insensitively: {', '.join(sorted(renamed))}")
    if log and unknown:
        log(f"note: dropped {sum(unknown.values())} cells with unknown labels: {dict(sorted(unknown.items()))}")
    return np.asarray(keep, np.int64), np.asarray(idx, np.int64)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def evaluate_model_dir(model_dir: str | Path, manifest: str | Path, *, label_column: str | None = None,
                       target_columns: Sequence[str] | None = None, split: str | None = None,
                       drop_unknown: bool = False, log: Callable[[str], None] = _log, tta: str = "none"
                       ) -> dict[str, Any]:
    """Evaluate a saved model on a manifest (or ImageFolder folder) and return the ``evaluate`` JSON document.

    Args:
        label_column: defaults to the column the model was trained on.
        target_columns: defaults to the model's targets; each must be one of them.
        split: ``"train"``, ``"val"`` or ``"test"`` to keep only the cells of that split of the model's own training
            manifest (by ``cell_id`` from ``split.csv`` in the model folder).
        drop_unknown: drop (and report) cells whose label the model does not know instead of failing.
        tta: ``"none"`` or ``"dihedral"``: the model's outputs averaged over the views that keep the cells' meaning,
            the wrapper ``predict --tta`` uses (:mod:`phenotyping.models.tta`); recorded as ``tta`` in the result.

    ``calibration`` in the result: :func:`phenotyping.training.calibration.calibration_metrics` of the card's
    temperature-scaled probabilities (with its unidentified threshold), e.g. to see how TTA moves them.
    """
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.models.forward import predict_arrays, softmax
    from phenotyping.models.tta import tta_info, with_tta
    from phenotyping.training.calibration import calibration_metrics
    from phenotyping.training.data import column, load_images, load_rows, parse_targets

    lm = load_model_dir(model_dir)
    tta_run = tta_info(tta, lm.preprocess)
    label_column = label_column or lm.card["training"]["label_column"]
    known_targets = lm.targets.names if lm.targets else []
    explicit_targets = target_columns is not None
    target_columns = list(known_targets if target_columns is None else target_columns)
    bad = [t for t in target_columns if t not in known_targets]
    if bad:
        raise PhenotypingError(f"target(s) {bad} are not predicted by this model; it predicts {known_targets or 'none'}")
    rows = load_rows(manifest, label_column=label_column)
    if split is not None:
        rows = _select_split(rows, Path(model_dir), split)
    if not explicit_targets and target_columns and rows and not any(t in rows[0] for t in target_columns):
        log(f"note: the manifest has none of the model's target columns {target_columns}; skipping regression")
        target_columns = []
    keep, y = match_labels(column(rows, label_column), lm.classes, drop_unknown=drop_unknown, log=log)
    rows = [rows[i] for i in keep]
    if not rows:
        raise PhenotypingError(f"no cells to evaluate in {manifest}")
    x = load_images([r["path"] for r in rows], lm.preprocess.img_size, crop=lm.preprocess.crop)
    x = lm.preprocess.normalise(x, batched=True)
    out = predict_arrays(with_tta(lm.model, lm.preprocess, tta), x)
    result = classification_metrics(y, out["logits"].argmax(1), lm.classes)
    result["tta"] = tta_run
    threshold = (lm.card.get("calibration") or {}).get("unidentified_threshold")
    result["calibration"] = calibration_metrics(softmax(out["logits"], lm.temperature), y, threshold=threshold)
    result["targets"] = {}
    if target_columns:
        true = parse_targets(rows, target_columns)
        pred = lm.targets.inverse(out["regression"])
        cols = [known_targets.index(t) for t in target_columns]
        result["targets"] = regression_metrics(true, pred[:, cols], target_columns)
    return result


def _select_split(rows: list[dict[str, Any]], model_dir: Path, split: str) -> list[dict[str, Any]]:
    import csv

    f = model_dir / "split.csv"
    if not f.is_file():
        raise FileNotFoundError(f"{f} does not exist; --split needs the split.csv the train command writes")
    with f.open(newline="", encoding="utf-8") as fh:
        ids = {r["cell_id"] for r in csv.DictReader(fh) if r["split"] == split}
    if not ids:
        raise PhenotypingError(f"split {split!r} is empty in {f}; splits are train, val, test")
    key = "cell_id" if rows and "cell_id" in rows[0] else None
    if key is None:
        raise PhenotypingError("--split needs a cell_id column in the manifest")
    sel = [r for r in rows if r["cell_id"] in ids]
    if not sel and all("/" not in i for i in ids):
        sel = _legacy_image_folder_match(rows, ids, f)
    if len(sel) != len(ids):
        raise PhenotypingError(f"{len(ids) - len(sel)} cell(s) of split {split!r} are not in this manifest; "
                               "use the manifest the model was trained on")
    return sel


def _legacy_image_folder_match(rows: list[dict[str, Any]], ids: set[str], f: Path) -> list[dict[str, Any]]:
    """Rows for a split.csv written before ImageFolder ids became ``class/file``: ids were bare file stems.

    Matches only when every stem in the folder is unique; otherwise which cell was meant cannot be told.
    """
    stems: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "/" in str(r["cell_id"]):
            stems.setdefault(Path(str(r["cell_id"])).stem, []).append(r)
    clashes = sorted(k for k, v in stems.items() if len(v) > 1 and k in ids)
    if clashes:
        raise PhenotypingError(f"{f} names cells by file stem (written by an older version), and stem(s) "
                               f"{clashes[:5]} occur in more than one class folder; retrain to get unique ids")
    return [r for r in rows if "/" in str(r["cell_id"]) and Path(str(r["cell_id"])).stem in ids]

