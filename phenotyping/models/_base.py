"""Pieces every neural cell model shares: the output record, the multi-task heads, and the ``CellModel`` contract."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn


class ModelOutput(NamedTuple):
    """What every model's ``forward`` returns.

    Attributes:
        logits: ``(B, K)`` class scores before softmax.
        regression: ``(B, M)`` standardised regression outputs (``M`` may be 0).
        features: ``(B, D)`` penultimate features (used for embeddings and kNN/SVM on embeddings).
        gates: named gate tensors for inspection, e.g. ``{"fusion": (B, D), "cls": (B, D), "reg": (B, D)}``; empty
            for models without gates.
    """

    logits: torch.Tensor
    regression: torch.Tensor
    features: torch.Tensor
    gates: dict[str, torch.Tensor]


class MultiTaskHead(nn.Module):
    """A linear classification head (D → K) and a linear regression head (D → M).

    With ``task_gates=True`` each task first re-weights the shared features with its own per-sample, per-feature gate
    ``sigmoid(W_t f + b_t)`` (task-adaptive gating), so the two tasks can draw on different features.
    """

    def __init__(self, dim: int, num_classes: int, num_targets: int, *, task_gates: bool = False, drop: float = 0.0):
        super().__init__()
        self.task_gates = task_gates
        self.drop = nn.Dropout(drop)
        self.gate_cls = nn.Linear(dim, dim) if task_gates else None
        self.gate_reg = nn.Linear(dim, dim) if task_gates and num_targets > 0 else None
        self.cls = nn.Linear(dim, num_classes)
        self.reg = nn.Linear(dim, num_targets) if num_targets > 0 else None

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        gates: dict[str, torch.Tensor] = {}
        f_cls = f_reg = f
        if self.gate_cls is not None:
            gates["cls"] = torch.sigmoid(self.gate_cls(f))  # (B, D)
            f_cls = f * gates["cls"]
        if self.gate_reg is not None:
            gates["reg"] = torch.sigmoid(self.gate_reg(f))  # (B, D)
            f_reg = f * gates["reg"]
        reg = self.reg(self.drop(f_reg)) if self.reg is not None else f.new_zeros(f.shape[0], 0)  # (B, M)
        return self.cls(self.drop(f_cls)), reg, gates


class CellModel(nn.Module):
    """Base class: subclasses set ``self.config`` and ``self.head`` and implement ``forward_features``.

    ``forward_features(x)`` returns ``(features (B, D), gates dict)``; ``forward_head`` maps features to
    ``(logits, regression, head gates)``. ``cam_layer`` names the module whose output map Grad-CAM uses.
    """

    config: dict[str, Any]
    head: MultiTaskHead
    cam_layer: nn.Module

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward_head(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        expect = 5 if self.config.get("dims", 2) == 3 else 4
        if x.ndim != expect or x.shape[1] != self.config["in_chans"]:
            layout = "(B, C, Z, H, W)" if expect == 5 else "(B, C, H, W)"
            raise ValueError(f"{self.config['arch']} expects input {layout} with C={self.config['in_chans']}, "
                             f"got shape {tuple(x.shape)}")
        f, gates = self.forward_features(x)
        logits, reg, head_gates = self.forward_head(f)
        return ModelOutput(logits, reg, f, {**gates, **head_gates})


def conv_bn_act(dims: int, cin: int, cout: int, k: int, stride: int = 1, *, zstride: int | None = None) -> nn.Sequential:
    """Conv → BatchNorm → ReLU in 2D or 3D; ``zstride`` (3D only) is the stride along Z (default 1: keep Z)."""
    if dims == 2:
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))
    zs = 1 if zstride is None else zstride
    return nn.Sequential(nn.Conv3d(cin, cout, (min(k, 3), k, k), (zs, stride, stride), (min(k, 3) // 2, k // 2, k // 2),
                                   bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def base_config(arch: str, **cfg: Any) -> dict[str, Any]:
    """The stored config: architecture name first, then every constructor argument."""
    return {"arch": arch, **cfg}
