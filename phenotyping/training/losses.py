"""Multi-task losses: learned uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) and fixed weights.

Uncertainty weighting learns one log-variance ``s = log σ²`` per task. From Kendall et al. 2018, eq. 7 and 10:

* regression (Gaussian likelihood; ``L`` = mean squared error of standardised targets):
  ``½·exp(−s)·L + ½·s``  (= L / (2σ²) + log σ);
* classification (softmax with temperature σ², their approximation; ``L`` = cross-entropy):
  ``exp(−s)·L + ½·s``  (= L / σ² + log σ).

Each regression target gets its own ``s`` (targets differ in how predictable they are); classification has one.
All ``s`` start at 0, i.e. both tasks start with the classical weights (1 for CE, ½ for MSE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _task_losses(logits: torch.Tensor, regression: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
                 class_weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the batch and per-target mean squared error ``(M,)``; NaN targets are ignored."""
    ce = F.cross_entropy(logits, y, weight=class_weight)
    if regression.shape[1] == 0:
        return ce, regression.new_zeros(0)
    mask = torch.isfinite(targets)
    diff = torch.where(mask, regression - torch.nan_to_num(targets), torch.zeros_like(regression))
    mse = (diff ** 2).sum(0) / mask.sum(0).clamp(min=1)          # (M,)
    return ce, mse


class UncertaintyWeightedLoss(nn.Module):
    """Kendall et al. 2018 multi-task loss with learned log-variances (see the module docstring for the form).

    Args:
        num_targets: M regression targets (one log-variance each).
        class_weight: optional (K,) cross-entropy class weights (the single class-imbalance correction).
    """

    def __init__(self, num_targets: int, class_weight: torch.Tensor | None = None):
        super().__init__()
        self.log_var_cls = nn.Parameter(torch.zeros(()))
        self.log_var_reg = nn.Parameter(torch.zeros(num_targets))
        self.register_buffer("class_weight", class_weight)

    def forward(self, logits: torch.Tensor, regression: torch.Tensor, y: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the total loss and its parts (unweighted CE and MSE, and the current σ² values) for logging."""
        ce, mse = _task_losses(logits, regression, y, targets, self.class_weight)
        total = torch.exp(-self.log_var_cls) * ce + 0.5 * self.log_var_cls
        total = total + (0.5 * torch.exp(-self.log_var_reg) * mse + 0.5 * self.log_var_reg).sum()
        parts = {"ce": float(ce.detach()), "mse": float(mse.detach().mean()) if mse.numel() else 0.0,
                 "sigma2_cls": float(self.log_var_cls.detach().exp())}
        return total, parts

    def describe(self, target_names: list[str] | None = None) -> dict[str, object]:
        """The learned task variances σ² = exp(s) (a larger σ² down-weights that task), for the model card."""
        names = target_names or [f"target{j}" for j in range(self.log_var_reg.numel())]
        return {"kind": "uncertainty", "sigma2_cls": float(self.log_var_cls.detach().exp()),
                "sigma2_reg": {n: float(v) for n, v in zip(names, self.log_var_reg.detach().exp().tolist())}}


class FixedWeightLoss(nn.Module):
    """``w_cls · CE + w_reg · mean_m(MSE_m)`` with fixed weights."""

    def __init__(self, num_targets: int, class_weight: torch.Tensor | None = None, *, w_cls: float = 1.0,
                 w_reg: float = 1.0):
        super().__init__()
        self.w_cls, self.w_reg = w_cls, w_reg
        self.register_buffer("class_weight", class_weight)

    def forward(self, logits: torch.Tensor, regression: torch.Tensor, y: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        ce, mse = _task_losses(logits, regression, y, targets, self.class_weight)
        total = self.w_cls * ce + (self.w_reg * mse.mean() if mse.numel() else 0.0)
        return total, {"ce": float(ce.detach()), "mse": float(mse.detach().mean()) if mse.numel() else 0.0}

    def describe(self, target_names: list[str] | None = None) -> dict[str, object]:
        """The fixed weights, for the model card."""
        return {"kind": "fixed", "w_cls": self.w_cls, "w_reg": self.w_reg}


def make_loss(kind: str, num_targets: int, class_weight: torch.Tensor | None = None) -> nn.Module:
    """``kind`` is ``"uncertainty"`` or ``"fixed"``."""
    if kind == "uncertainty":
        return UncertaintyWeightedLoss(num_targets, class_weight)
    if kind == "fixed":
        return FixedWeightLoss(num_targets, class_weight)
    raise ValueError(f"unknown loss {kind!r}; choose 'uncertainty' or 'fixed'")
