"""Model-card sections derived after fitting: the prior the probabilities assume, the confusion of confident cells, and
image-QC thresholds learned from the training images.

``train`` writes them into every new card; ``python -m phenotyping calibrate`` recomputes them for an existing model
folder from its ``split.csv`` (used to bring older cards up to date without retraining the weights).

Why each exists:

- **posterior prior.** EM prior-shift correction (Saerens et al. 2002) divides each posterior by the prior the model's
  probabilities were fitted under. A network trained with balanced class weights ``n / (K n_k)`` in the
  cross-entropy fits posteriors under a *uniform* prior over the training classes, not under the training set's
  class frequencies; passing the frequencies would "correct" a composition that never shifted (on the Jurkat
  validation split it turned 2 % metaphase into 40 %).
- **confident confusion.** A sample's differential counts only cells above the card's unidentified threshold (the
  rest wait for review), so the adjusted count (Forman 2008) must use the confusion of validation cells above that
  same threshold.
- **image QC.** The focus, size and emptiness checks depend on the imaging set-up (pixel size, stain, crop size), so
  their thresholds are set from the model's own training images, which were curated as usable single cells: each
  check is set to pass all but about ``quantile`` of them (see :func:`calibrate_qc`).
- **domain.** A compact reference of the training distribution (penultimate features and image statistics) and the
  threshold of the per-sample domain check (:mod:`phenotyping.analysis.domain`); :func:`calibrate_domain_dir`.
- **specimens.** Which classes each specimen's differential counts and which are reported apart
  (:mod:`phenotyping.analysis.specimens`); :func:`set_specimens` adds it to an older card without the training data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.analysis.prior import posterior_prior
from phenotyping.analysis.qc import QCConfig, check_images
from phenotyping.analysis.specimens import SECTION as SPECIMENS_SECTION, build_section


def confident_confusion(probabilities: np.ndarray, y: np.ndarray, threshold: float, n_classes: int) -> list[list[int]]:
    """Confusion counts (rows true, columns predicted) of the validation cells whose top probability ≥ ``threshold``.

    ``probabilities`` are the calibrated ``(N, K)`` validation probabilities, ``y`` the true class indices.
    """
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != n_classes:
        raise ValueError(f"probabilities {p.shape} and labels {y.shape} do not describe N cells of {n_classes} classes")
    keep = p.max(axis=1) >= threshold
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (y[keep], p[keep].argmax(axis=1)), 1)
    return conf.tolist()


def calibrate_qc(images: Sequence[np.ndarray], *, quantile: float = 0.01, base: QCConfig | None = None,
                 focus_margin: float = 0.75, groups: Sequence[str] | None = None) -> tuple[QCConfig, dict[str, Any]]:
    """Image-QC thresholds from a model's training images (curated single cells).

    Each threshold is the ``base`` default or a value derived from the training distribution, whichever passes
    more training cells:

    - ``min_signal_fraction``: half the ``quantile`` of the training cells' signal fraction;
    - ``min_cell_area_fraction``: half the ``quantile`` of their largest object's area;
    - ``max_cells``: kept when at most ``quantile`` of training frames hold more cell-sized objects, else disabled
      (``None``) — e.g. red cells around a leukocyte in a stained smear;
    - ``min_focus``: ``focus_margin`` × the ``quantile`` of their focus score. For the Jurkat set this gives
      0.75 × 0.40 = 0.30, between sharp cells (1st percentile 0.40) and cells blurred by σ = 1.5 px (95th
      percentile 0.26).

    With ``groups`` (one site or imaging set-up per image) each quantile is taken within every group and the
    smallest is kept, so that no site's valid cells are excluded at more than about ``quantile`` per check because
    another site dominates the training set.

    A derived threshold of 0 disables its check (with the reason in ``info``): it means at least ``quantile`` of
    the training cells measured 0, so the check cannot tell good from bad in this set-up.

    Without ``base``, both noise estimates (:attr:`QCConfig.noise`) are tried and the one that leaves more checks
    enabled is kept, ``"residual"`` on a tie unless it passes more than one point fewer of the training cells: it does
    not depend on the border being background, so it carries to a new site's crops. Tight smear crops whose border
    crosses red cells read empty and focus 0 under the border estimate (BCCD under thresholds from segwbc-d1:
    45 % of valid leukocytes excluded).

    Returns:
        ``(config, info)``; ``info`` records the quantiles measured, the rule and which checks were disabled.
    """
    if not images:
        raise ValueError("no training images to calibrate image QC on")
    if not 0.0 < quantile < 0.5:
        raise ValueError(f"quantile={quantile} must lie in (0, 0.5); 0.01 passes 99 % of training cells per check")
    if groups is not None and len(groups) != len(images):
        raise ValueError(f"{len(groups)} groups for {len(images)} training images; give one group per image")
    images = list(images)
    if base is not None:
        return _calibrate_qc_with(images, base, quantile, focus_margin, groups)
    border = _calibrate_qc_with(images, QCConfig(), quantile, focus_margin, groups)
    residual = _calibrate_qc_with(images, QCConfig(noise="residual"), quantile, focus_margin, groups)
    (_, b), (_, r) = border, residual
    if len(r["disabled"]) <= len(b["disabled"]) and r["training_pass_rate"] >= b["training_pass_rate"] - 0.01:
        r["noise_choice"] = (f"residual noise estimate (independent of what the border holds); the border estimate "
                             f"would disable {sorted(b['disabled'])} and pass {b['training_pass_rate']:.1%} of "
                             "training cells")
        return residual
    return border


def _calibrate_qc_with(images: list[np.ndarray], base: QCConfig, quantile: float, focus_margin: float,
                       groups: Sequence[str] | None) -> tuple[QCConfig, dict[str, Any]]:
    """:func:`calibrate_qc` for one ``base`` (its border, smoothing, noise settings and default thresholds)."""
    from dataclasses import replace

    probe = replace(base, min_signal_fraction=None, min_cell_area_fraction=None, max_cells=None, min_focus=None)
    results = check_images(images, probe)
    signal = np.array([r.measures.signal_fraction for r in results])
    largest = np.array([r.measures.object_areas[0] if r.measures.object_areas else 0.0 for r in results])
    focus = np.array([r.measures.focus or 0.0 for r in results])
    g = np.asarray(groups if groups is not None else [""] * len(images), dtype=object)
    names = sorted(set(g.tolist()))

    def q(v: np.ndarray) -> float:  # the smallest per-group quantile
        return min(float(np.quantile(v[g == n], quantile)) for n in names)

    q_signal, q_largest, q_focus = q(signal), q(largest), q(focus)
    disabled: dict[str, str] = {}

    def derived(name: str, default: float | None, value: float) -> float | None:
        if value <= 0:
            disabled[name] = f"{quantile:.0%} of training cells measure 0"
            return None
        return value if default is None else min(default, value)

    min_signal = derived("min_signal_fraction", base.min_signal_fraction, 0.5 * q_signal)
    min_area = derived("min_cell_area_fraction", base.min_cell_area_fraction, 0.5 * q_largest)
    max_cells = base.max_cells
    frac_multi = None
    if min_area is None or max_cells is None:
        max_cells = None
        disabled.setdefault("max_cells", "needs a cell-size threshold")
    else:
        n_cellsized = np.array([sum(a >= min_area for a in r.measures.object_areas) for r in results])
        frac_multi = max(float(np.mean(n_cellsized[g == n] > max_cells)) for n in names)
        if frac_multi > quantile:
            disabled["max_cells"] = (f"{frac_multi:.1%} of training frames hold more than {max_cells} cell-sized "
                                     "objects (e.g. red cells around the leukocyte)")
            max_cells = None
    min_focus = derived("min_focus", base.min_focus, focus_margin * q_focus)
    cfg = replace(base, min_signal_fraction=min_signal, min_cell_area_fraction=min_area, max_cells=max_cells,
                  min_focus=min_focus)
    passed = np.array([r.passed for r in check_images(images, cfg)])
    info = {
        "method": (f"thresholds from the model's {len(images)} training images: each check passes all but about "
                   f"{quantile:.0%} of them (or the default, if that passes more)"
                   + (f", the smallest quantile of the {len(names)} groups (sites) kept" if groups is not None else "")),
        "quantile": quantile,
        "noise": cfg.noise,
        "measured": {"signal_fraction": q_signal, "largest_object_fraction": q_largest, "focus": q_focus,
                     "frames_with_several_cells": frac_multi},
        "disabled": disabled,
        "training_pass_rate": float(passed.mean()),
    }
    if groups is not None:
        info["training_pass_rate_by_group"] = {n: float(passed[g == n].mean()) for n in names}
    return cfg, info


def card_sections(*, classes: Sequence[str], train_counts: Sequence[int], class_weighting: str,
                  val_probabilities: np.ndarray, val_y: np.ndarray, threshold: float,
                  train_images: Sequence[np.ndarray], qc_quantile: float = 0.01,
                  train_groups: Sequence[str] | None = None) -> dict[str, Any]:
    """The post-fit card entries :func:`apply_sections` writes: posterior prior, confident confusion, image QC
    (``train_groups``: the site of each training image, see :func:`calibrate_qc`)."""
    qc_cfg, qc_info = calibrate_qc(train_images, quantile=qc_quantile, groups=train_groups)
    return {
        "posterior_prior": posterior_prior(classes, train_counts, class_weighting),
        "confusion_confident": confident_confusion(val_probabilities, val_y, threshold, len(classes)),
        "qc": qc_cfg.to_dict(),
        "qc_calibration": qc_info,
    }


def apply_sections(card: dict[str, Any], sections: Mapping[str, Any]) -> dict[str, Any]:
    """Write :func:`card_sections` into ``card`` (in place) and return it."""
    card.setdefault("training", {})["posterior_prior"] = sections["posterior_prior"]
    card.setdefault("validation", {})["confusion_confident"] = sections["confusion_confident"]
    card["qc"] = sections["qc"]
    card["qc_calibration"] = sections["qc_calibration"]
    return card


def set_specimens(model_dir: str | Path, *, specimens: Mapping[str, Any] | None = None,
                  specimen_names: Sequence[str] = ()) -> dict[str, Any]:
    """Write the card's ``specimens`` section (:func:`phenotyping.analysis.specimens.build_section`: the whole
    section, or specimen names with roles from the class names, or the defaults from the class names) and return
    the card. Nothing else in the card changes.

    Raises:
        ValueError: the section names a class the model lacks, leaves one out, or names an unknown specimen.
    """
    import json

    from phenotyping.models.checkpoint import CARD

    path = Path(model_dir) / CARD
    card = json.loads(path.read_text(encoding="utf-8"))
    card[SPECIMENS_SECTION] = build_section(card["classes"], specimens=specimen_names,
                                            given=None if specimens is None else dict(specimens))
    path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return card


def calibrate_model_dir(model_dir: str | Path, manifest: str | Path | None = None, *, max_qc_cells: int = 2000,
                        seed: int = 0, specimens: Mapping[str, Any] | None = None,
                        specimen_names: Sequence[str] = (), qc_group_column: str | None = None) -> dict[str, Any]:
    """Recompute the post-fit sections of an existing model folder from its ``split.csv`` and rewrite its card.

    The weights, classes, temperature and unidentified threshold are not changed (nor the card's id). The validation
    split gives the confident confusion; up to ``max_qc_cells`` training-split images (a seeded random subset) set
    the image-QC thresholds.

    Args:
        manifest: the manifest the model was trained on (default: the card's ``training.manifest``).
        specimens, specimen_names: the ``specimens`` section to write (see :func:`set_specimens`); when neither is
            given, a card that has the section keeps it and one without gets the defaults from its class names.
        qc_group_column: a manifest column naming each cell's site; the QC thresholds then pass about 99 % of
            every site's training cells per check (see :func:`calibrate_qc`).

    Returns:
        The updated card (also written to ``model_dir/model_card.json``); ``card["postfit"]`` says when and how.
    """
    import json
    from datetime import datetime, timezone

    from phenotyping.models.forward import softmax
    from phenotyping.models.checkpoint import CARD, load_model_dir
    from phenotyping.training.data import column, load_images, read_cell
    from phenotyping.training.evaluate import _select_split, match_labels
    from phenotyping.models.forward import predict_arrays

    model_dir = Path(model_dir)
    lm = load_model_dir(model_dir)
    card = json.loads((model_dir / CARD).read_text(encoding="utf-8"))
    if specimens is not None or specimen_names or SPECIMENS_SECTION not in card:  # checked before the slow part
        card[SPECIMENS_SECTION] = build_section(card["classes"], specimens=specimen_names,
                                                given=None if specimens is None else dict(specimens))
    manifest, label_column, rows = _training_rows(card, model_dir, manifest)
    val = _select_split(rows, model_dir, "val")
    keep, y_val = match_labels(column(val, label_column), lm.classes, drop_unknown=False, log=lambda m: None)
    x_val = lm.preprocess.normalise(load_images([val[i]["path"] for i in keep], lm.preprocess.img_size, crop=lm.preprocess.crop),
                                    batched=True)
    probs = softmax(predict_arrays(lm.model, x_val)["logits"], lm.temperature)
    train_rows = _select_split(rows, model_dir, "train")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(train_rows), size=min(max_qc_cells, len(train_rows)), replace=False)
    images = [read_cell(train_rows[int(i)]["path"]) for i in sorted(pick)]
    qc_groups = None
    if qc_group_column:
        qc_groups = column([train_rows[int(i)] for i in sorted(pick)], qc_group_column)
    training = card.get("training") or {}
    props = training.get("class_proportions") or {}
    n_train = (card.get("split") or {}).get("n", {}).get("train") or len(train_rows)
    counts = [round(float(props.get(c, 0.0)) * n_train) for c in lm.classes]
    sections = card_sections(
        classes=lm.classes, train_counts=counts, class_weighting=str(training.get("class_weighting", "")),
        val_probabilities=probs, val_y=np.asarray(y_val),
        threshold=float(card["calibration"]["unidentified_threshold"]), train_images=images, train_groups=qc_groups)
    apply_sections(card, sections)
    card["postfit"] = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "by": "python -m phenotyping calibrate", "manifest": str(manifest),
                       "val_cells": len(keep), "qc_cells": len(images), "qc_group_column": qc_group_column}
    (model_dir / CARD).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return card


def _cells_for_domain(lm: Any, rows: Sequence[Mapping[str, Any]], max_cells: int, seed: int
                      ) -> tuple[list[int], np.ndarray | None, np.ndarray]:
    """Up to ``max_cells`` rows (a seeded subset, in order) with the model's input channels: their indices, the
    model's penultimate features (N, D) and :func:`phenotyping.analysis.domain.image_stats` of the raw images."""
    from phenotyping.analysis.domain import image_stats
    from phenotyping.models.forward import predict_arrays
    from phenotyping.training.data import read_cell

    pick = sorted(np.random.default_rng(seed).permutation(len(rows))[:max_cells].tolist())
    n_chans = len(lm.preprocess.channels)
    kept, raw = [], []
    for i in pick:
        a = read_cell(rows[i]["path"])
        if a.shape[0] == n_chans:
            kept.append(i)
            raw.append(a)
    if not raw:
        return [], None, np.zeros((0, 2 * n_chans + 2))
    x = np.stack([lm.preprocess.size(a) for a in raw])
    feats = predict_arrays(lm.model, lm.preprocess.normalise(x, batched=True))["features"]
    return kept, feats, image_stats(raw)


def calibrate_domain_dir(model_dir: str | Path, manifest: str | Path | None = None, *,
                         other_sites: Sequence[str | Path] = (), max_cells: int = 2000, seed: int = 0,
                         write: bool = True) -> dict[str, Any]:
    """Compute the card's ``domain`` section (:func:`phenotyping.analysis.domain.build_section`) for a model folder:
    the reference from up to ``max_cells`` training-split cells, the threshold from its validation split (the test
    split when it has no validation cells) and, when given, cells of ``other_sites`` (manifests or image folders;
    those whose channel count differs from the model's are recorded as such, not scored).

    Returns the section; with ``write`` it is also written into ``model_dir/model_card.json`` (nothing else changes).

    Raises:
        FileNotFoundError: the training manifest is not found (pass ``manifest``).
        ValueError: too few cells, or no training cell with the model's channel count.
    """
    import json

    from phenotyping.analysis.domain import SECTION, build_section
    from phenotyping.models.checkpoint import CARD, load_model_dir
    from phenotyping.training.data import column, load_rows
    from phenotyping.training.evaluate import _select_split, match_labels

    model_dir = Path(model_dir)
    lm = load_model_dir(model_dir)
    card = json.loads((model_dir / CARD).read_text(encoding="utf-8"))
    manifest, label_column, rows = _training_rows(card, model_dir, manifest)
    train_rows = _select_split(rows, model_dir, "train")
    kept, feats, stats = _cells_for_domain(lm, train_rows, max_cells, seed)
    if feats is None:
        raise ValueError(f"no training cell of {manifest} has the {len(lm.preprocess.channels)} channel(s) the model "
                         "takes")
    _, y = match_labels(column([train_rows[i] for i in kept], label_column), lm.classes, drop_unknown=False,
                        log=lambda m: None)
    split_rows = {s: _rows_or_empty(rows, model_dir, s) for s in ("val", "test")}
    held_rows = split_rows["val"] or split_rows["test"]
    _, held, _ = _cells_for_domain(lm, held_rows, max_cells, seed)
    if held is None:
        raise ValueError(f"{model_dir} has no held-out (val or test) cells to calibrate the domain threshold on")
    others: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for site in other_sites:
        _, f, s = _cells_for_domain(lm, load_rows(site), max_cells, seed)
        if f is not None:
            others[str(site)] = (f, s)
    section = build_section(train_features=feats, train_y=np.asarray(y), classes=lm.classes, heldout_features=held,
                            train_image_stats=stats, channels=len(lm.preprocess.channels),
                            dims=int((card.get("input") or {}).get("dims", 2)), other_sites=others,
                            source=f"{len(kept)} training and {len(held)} held-out cells of {manifest}")
    skipped = [str(s) for s in other_sites if str(s) not in others]
    if skipped:
        section["calibration"]["other_sites_not_scored"] = {s: "channels differ from the model's" for s in skipped}
    if write:
        card[SECTION] = section
        (model_dir / CARD).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return section


def _rows_or_empty(rows: list[dict[str, Any]], model_dir: Path, split: str) -> list[dict[str, Any]]:
    from phenotyping.errors import PhenotypingError
    from phenotyping.training.evaluate import _select_split

    try:
        return _select_split(rows, model_dir, split)
    except PhenotypingError as e:
        if "is empty" in str(e):
            return []
        raise


def _training_rows(card: dict[str, Any], model_dir: Path, manifest: str | Path | None
                   ) -> tuple[Path, str, list[dict[str, Any]]]:
    """The model's training manifest (``manifest``, else the card's), its label column and its rows."""
    from phenotyping.training.data import load_rows

    training = card.get("training") or {}
    path = Path(manifest or training.get("manifest") or "")
    if not path.exists():
        raise FileNotFoundError(f"training manifest {str(path)!r} of {model_dir} not found; pass --manifest")
    label_column = training["label_column"]
    return path, label_column, load_rows(path, label_column=label_column)
