"""Agreement studies on samples composed from held-out labelled cells, whose true composition is known.

No public data set pairs images with manual (cytospin) counts per sample, so the method comparison is demonstrated
on composed samples (issue 5). Each sample has a random composition (Dirichlet around the held-out pool's class
frequencies, so rare classes stay rare) from which ``cells_per_sample`` held-out cells are imaged. Its "manual count"
is the sample's true composition counted on ``manual_cells`` cells of a second aliquot (a multinomial draw, as a
cytospin slide is another portion of the specimen), so it carries the binomial counting error of a real 200-cell
manual differential, independent of the imaged cells. (Subsampling the imaged cells' own labels instead would share
their sampling error and understate a 200-vs-400-cell disagreement by a factor of about √3.)

The model's side follows the app exactly (:func:`phenotyping.analysis.results.sample_results` rules): cells whose
calibrated confidence is below the card's unidentified threshold wait for review and are not counted, so

- ``raw``, ``adjusted_count``, ``em``: the differential before review, over the confident cells (the app shows the
  adjusted count as "corrected" at this stage; ``em`` is computed here only to show why it does not);
- ``reviewed``: after a reviewer resolved the unidentified queue (modelled as a perfect reviewer giving each queued
  cell its true label) — the differential a signed report shows;
- ``reviewed_adjusted_count``, ``reviewed_em``: both corrections with the reviewed cells taken as certain; the
  signed report's corrected % is ``reviewed_em`` (:attr:`SampleDifferential.corrected`).

Cells are drawn with replacement within a class, so small pools can fill a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.analysis.differential import sample_differential
from phenotyping.agreement.study import compute_study


def predict_pool(model_dir: str | Path, manifest: str | Path, *, split: str | None = "test",
                 label_column: str | None = None) -> dict[str, Any]:
    """Calibrated probabilities and true labels of a manifest's cells (optionally one split of the model's own)."""
    from phenotyping.models.forward import softmax
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.training.data import column, load_images, load_rows
    from phenotyping.training.evaluate import _select_split, match_labels
    from phenotyping.models.forward import predict_arrays

    lm = load_model_dir(model_dir)
    label_column = label_column or lm.card["training"]["label_column"]
    rows = load_rows(manifest, label_column=label_column)
    if split is not None:
        rows = _select_split(rows, Path(model_dir), split)
    keep, y = match_labels(column(rows, label_column), lm.classes, drop_unknown=True, log=lambda m: None)
    rows = [rows[i] for i in keep]
    x = lm.preprocess.normalise(load_images([r["path"] for r in rows], lm.preprocess.img_size, crop=lm.preprocess.crop), batched=True)
    out = predict_arrays(lm.model, x)
    return {"classes": list(lm.classes), "card": lm.card, "y": np.asarray(y),
            "probs": softmax(out["logits"], lm.temperature)}


def composed_study(
    pool: dict[str, Any],
    *,
    n_samples: int = 24,
    cells_per_sample: int = 400,
    manual_cells: int = 200,
    concentration: float = 8.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Compose samples from a predicted pool and compare manual and model differentials per class.

    Returns a JSON-ready dict: for each comparison (``raw``, ``adjusted_count``, ``em``, ``reviewed``) the study
    summary per class (bias, limits of agreement, … in percentage points), plus the settings used.
    """
    if manual_cells > cells_per_sample:
        raise ValueError(f"manual_cells={manual_cells} cannot exceed cells_per_sample={cells_per_sample}")
    if n_samples < 3:
        raise ValueError(f"n_samples={n_samples}: a study needs at least 3 samples")
    classes: list[str] = pool["classes"]
    card = pool["card"]
    y, probs = pool["y"], pool["probs"]
    k = len(classes)
    by_class = [np.flatnonzero(y == i) for i in range(k)]
    present = np.array([len(ix) > 0 for ix in by_class])
    base = np.array([len(ix) for ix in by_class], float)
    base = base / base.sum()  # compositions vary around the held-out pool's class frequencies
    from phenotyping.analysis.results import _card_arrays

    confusion, prior, threshold, notes = _card_arrays(card, classes)
    rng = np.random.default_rng(seed)
    manual, manual_n = {}, {}
    names = ("raw", "adjusted_count", "em", "reviewed", "reviewed_adjusted_count", "reviewed_em")
    model: dict[str, dict[str, dict[str, float]]] = {m: {} for m in names}
    model_n: dict[str, dict[str, int]] = {m: {} for m in names}
    for s in range(n_samples):
        sid = f"composed-{s:02d}"
        comp = rng.dirichlet(np.where(present, concentration * base, 1e-3))
        comp[~present] = 0
        counts = rng.multinomial(cells_per_sample, comp / comp.sum())
        idx = np.concatenate([rng.choice(by_class[i], size=n, replace=True) for i, n in enumerate(counts) if n])
        manual_counts = rng.multinomial(manual_cells, comp / comp.sum())  # another aliquot, counted by hand
        manual[sid] = {c: 100.0 * manual_counts[i] / manual_cells for i, c in enumerate(classes)}
        manual_n[sid] = manual_cells
        p = probs[idx]
        pred = p.argmax(1)
        sure = p.max(1) >= threshold
        before = sample_differential([classes[i] for i in pred[sure]], classes, probabilities=p[sure],
                                     confusion=confusion, training_prior=prior, n_bootstrap=0)
        for name, comp_ in (("raw", None), ("adjusted_count", before.adjusted_count), ("em", before.em)):
            if name != "raw" and comp_ is None:
                continue
            model[name][sid] = ({c.label: c.percent for c in before.raw.classes} if comp_ is None
                                else comp_.as_mapping())
            model_n[name][sid] = int(sure.sum())
        final = np.where(sure, pred, y[idx])  # the queue resolved by a (perfect) reviewer
        onehot = np.eye(k)[final]
        after = sample_differential([classes[i] for i in final], classes,
                                    probabilities=np.where(sure[:, None], p, onehot), confusion=confusion,
                                    training_prior=prior, n_bootstrap=0, reviewed=list(~sure))
        model["reviewed"][sid] = {c.label: c.percent for c in after.raw.classes}
        model_n["reviewed"][sid] = cells_per_sample
        for name, comp_ in (("reviewed_adjusted_count", after.adjusted_count), ("reviewed_em", after.em)):
            if comp_ is not None:
                model[name][sid] = comp_.as_mapping()
                model_n[name][sid] = cells_per_sample
    out: dict[str, Any] = {
        "settings": {"n_samples": n_samples, "cells_per_sample": cells_per_sample, "manual_cells": manual_cells,
                     "concentration": concentration, "seed": seed, "pool_cells": int(len(y)),
                     "pool_counts": {c: int(len(ix)) for c, ix in zip(classes, by_class)},
                     "unidentified_threshold": threshold, "model_id": card["id"],
                     "manual_count": "true composition counted on a second aliquot (multinomial)",
                     "corrected_shown": {"before review": "adjusted_count", "after review": "em (else adjusted_count)"}},
        "notes": notes,
        "comparisons": {},
    }
    out["comparisons"] = _comparisons(manual, manual_n, model, model_n, classes=classes, model_version=str(card["id"]))
    return out


def _comparisons(
    manual: dict[str, dict[str, float]],
    manual_n: dict[str, int],
    model: dict[str, dict[str, dict[str, float]]],
    model_n: dict[str, dict[str, int]],
    *,
    classes: list[str],
    model_version: str,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{comparison: {class: brief summary}}`` of each model differential (``model[name]``) against the manual one."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, diffs in model.items():
        if not diffs:
            continue
        res = compute_study(f"composed-{name}", manual, diffs, manual_totals=manual_n, model_totals=model_n[name],
                            classes=classes, model_version=model_version)
        out[name] = {c: _brief(a.summary()) for c, a in res.raw.items()}
    return out


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("n", "bias", "sd", "loa_lower", "loa_upper", "bias_ci", "ccc", "pearson")
    out = {k: summary.get(k) for k in keep}
    ce = summary.get("counting_error") or {}
    out["counting_loa_halfwidth"] = ce.get("loa_halfwidth") if isinstance(ce, dict) else None
    return out


def markdown_table(result: dict[str, Any], *, classes: Sequence[str] | None = None) -> str:
    """Bias and limits of agreement per class and comparison, as a Markdown table (percentage points)."""
    comps = result["comparisons"]
    names = list(classes or next(iter(comps.values())).keys())
    lines = ["| class | comparison | bias | 95 % LoA | counting-only LoA ± | CCC |",
             "|---|---|---|---|---|---|"]
    for c in names:
        for comp, per in comps.items():
            r = per[c]
            if r["bias"] is None:
                continue
            hw = r["counting_loa_halfwidth"]
            ccc = r["ccc"]
            lines.append(f"| {c} | {comp} | {r['bias']:+.2f} | {r['loa_lower']:+.1f} to {r['loa_upper']:+.1f} | "
                         f"{'' if hw is None else f'{hw:.1f}'} | {'' if ccc is None else f'{ccc:.3f}'} |")
    return "\n".join(lines)
