"""The class prior a model's probabilities assume, which EM prior-shift correction divides by.

EM (Saerens et al. 2002) divides each posterior by the prior the model's probabilities were fitted under. A network
trained with balanced class weights ``n / (K n_k)`` in the cross-entropy fits posteriors under a *uniform* prior over
its training classes, not under the training set's class frequencies (see :mod:`phenotyping.training.postfit`, which
writes the prior into the card).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


#: How the neural models of this project weight classes (written by ``train`` as ``training.class_weighting``).
BALANCED_PREFIX = "balanced class weights"
#: ``train --class-weights sqrt``: the square root of the balanced weights.
SQRT_PREFIX = "square-root balanced class weights"

#: ``train --class-weights`` choices: the power of the balanced weight ``n / (K n_k)`` each puts in the
#: cross-entropy, and the card's ``training.class_weighting`` text (whose prefix :func:`posterior_prior` reads).
CLASS_WEIGHTINGS: dict[str, tuple[float, str]] = {
    "balanced": (1.0, BALANCED_PREFIX + " n/(K·n_k) in the cross-entropy; no over-sampling (corrected once)"),
    "sqrt": (0.5, SQRT_PREFIX + " (n/(K·n_k))^0.5 in the cross-entropy; no over-sampling (corrected once)"),
    "none": (0.0, "no class weights in the cross-entropy (unweighted; no over-sampling)"),
}


def _weighting(kind: str) -> tuple[float, str]:
    if kind not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting {kind!r} is not one of {', '.join(CLASS_WEIGHTINGS)}")
    return CLASS_WEIGHTINGS[kind]


def class_weight_power(kind: str) -> float:
    """The power of the balanced weights a ``--class-weights`` choice uses; ValueError naming the choices."""
    return _weighting(kind)[0]


def class_weighting_text(kind: str) -> str:
    """The card text of a ``--class-weights`` choice; ValueError naming the choices for any other."""
    return _weighting(kind)[1]


def posterior_prior(classes: Sequence[str], train_counts: Sequence[int], class_weighting: str) -> dict[str, Any]:
    """The class prior under which a model's probabilities were fitted, as the card's ``training.posterior_prior``.

    Args:
        classes: the model's classes.
        train_counts: training cells per class, in the order of ``classes``.
        class_weighting: the card's ``training.class_weighting`` text.

    Balanced class weights make the effective prior uniform over the classes seen in training; square-root balanced
    weights make it proportional to ``n_k · n_k^-0.5 = √n_k``; no weights (kNN, ``--class-weights none``)
    leave the training frequencies. An SVM with balanced weights is followed by Platt scaling fitted on unweighted
    labels, which re-anchors its probabilities to the training frequencies.
    """
    counts = np.asarray(train_counts, dtype=float)
    if counts.shape != (len(classes),):
        raise ValueError(f"{counts.size} training counts for {len(classes)} classes {list(classes)}")
    if counts.sum() <= 0:
        raise ValueError("no training cells: the posterior prior is undefined")
    if class_weighting.startswith(BALANCED_PREFIX):
        present = counts > 0
        p = present / present.sum()
        basis = "uniform over the training classes (balanced class weights in the loss)"
    elif class_weighting.startswith(SQRT_PREFIX):
        p = np.sqrt(counts) / np.sqrt(counts).sum()
        basis = "proportional to the square root of the training class counts (square-root class weights in the loss)"
    else:
        p = counts / counts.sum()
        basis = "training class frequencies (" + class_weighting + ")"
    return {"classes": {c: float(v) for c, v in zip(classes, p)}, "basis": basis}


def card_posterior_prior(card: Mapping[str, Any], classes: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    """``(prior over classes, None)`` from a card, or ``(None, why not)`` when the card cannot tell.

    Cards written before ``training.posterior_prior`` existed are read from their ``class_weighting`` and
    ``class_proportions``, the same rule :func:`posterior_prior` applies.
    """
    training = card.get("training") or {}
    stored = training.get("posterior_prior")
    if isinstance(stored, Mapping) and isinstance(stored.get("classes"), Mapping):
        p = np.asarray([float(stored["classes"].get(c, 0.0)) for c in classes])
    else:
        props, weighting = training.get("class_proportions"), training.get("class_weighting")
        if not isinstance(props, Mapping) or not isinstance(weighting, str):
            return None, ("EM correction not computed: the model card does not record the prior its probabilities "
                          "assume (training.posterior_prior); run `python -m phenotyping calibrate` on the model")
        counts = [float(props.get(c, 0.0)) for c in classes]
        p = np.asarray(list(posterior_prior(classes, counts, weighting)["classes"].values()))
    if p.sum() <= 0:
        return None, "EM correction not computed: the card's posterior prior is all zero"
    return p / p.sum(), None
