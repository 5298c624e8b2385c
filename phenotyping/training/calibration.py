"""Probability calibration on the validation split and the threshold of the "unidentified" review queue.

Temperature scaling (Guo et al. 2017, ICML): calibrated probabilities are ``softmax(logits / T)`` with one scalar
``T > 0`` fitted by minimising the validation negative log-likelihood. ``T`` does not change the predicted class.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` for labels ``y``; logits (N, K), y (N,)."""
    import torch
    import torch.nn.functional as F

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def unidentified_threshold(probs: np.ndarray, y: np.ndarray, *, target_accuracy: float = 0.95,
                           max_review_fraction: float = 0.2) -> tuple[float, dict[str, Any]]:
    """Threshold ``p`` on the max calibrated probability below which a cell goes to the review queue.

    ``p`` is the smallest value at which the validation cells kept (max probability ≥ p) reach ``target_accuracy``,
    but never so high that more than ``max_review_fraction`` of validation cells would be queued; the returned info
    says which bound decided and the accuracy/fraction reached.
    """
    conf = np.asarray(probs).max(1)
    correct = np.asarray(probs).argmax(1) == np.asarray(y)
    order = np.argsort(-conf)
    acc_kept = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)   # accuracy of the top-k most confident
    n_min_keep = int(np.ceil((1 - max_review_fraction) * len(order)))
    ok = np.flatnonzero(acc_kept >= target_accuracy)
    k = int(ok.max()) + 1 if ok.size else 0                                # largest kept set meeting the target
    decided = "target_accuracy"
    if k < n_min_keep:
        k, decided = n_min_keep, "max_review_fraction"
    p = float(conf[order[k - 1]]) if k > 0 else 0.0
    if k >= len(order):
        p = float(min(conf.min(), p))
    kept = conf >= p
    info = {"target_accuracy": target_accuracy, "max_review_fraction": max_review_fraction, "decided_by": decided,
            "val_accuracy_kept": float(correct[kept].mean()) if kept.any() else None,
            "val_review_fraction": float(1 - kept.mean())}
    return p, info


def calibration_metrics(probs: np.ndarray, y: np.ndarray, *, threshold: float | None = None,
                        bins: int = 10) -> dict[str, float | None]:
    """How well calibrated probabilities ``probs`` (N, K) fit labels ``y`` (N,): mean top probability, accuracy,
    NLL (natural log), expected calibration error over ``bins`` equal-width bins of the top probability (bin
    weights = their share of cells; Guo et al. 2017), and with ``threshold`` (the card's unidentified threshold) the
    share of cells below it and the accuracy of the others."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return {"mean_confidence": None, "accuracy": None, "nll": None, "ece": None}
    conf, correct = p.max(1), p.argmax(1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = sum(abs(correct[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
              for b in range(bins) if (which == b).any())
    out: dict[str, float | None] = {
        "mean_confidence": float(conf.mean()), "accuracy": float(correct.mean()),
        "nll": float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()), "ece": float(ece)}
    if threshold is not None:
        kept = conf >= threshold
        out["below_threshold"] = float(1 - kept.mean())
        out["accuracy_above_threshold"] = float(correct[kept].mean()) if kept.any() else None
    return out
