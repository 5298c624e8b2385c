"""Plain CNN baseline in the spirit of the 2019 label-free CNN: a large first kernel shrinking to 3×3.

Layers: 7×7 conv → pool → 5×5 conv → pool → 3×3 conv → 3×3 conv → global average → linear heads. No gates, no
attention: the "what does a plain CNN get" reference point. ``dims=3`` builds the z-stack variant.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from phenotyping.models._base import CellModel, MultiTaskHead, base_config, conv_bn_act
from phenotyping.models._registry import register_model


class PlainCNN(CellModel):
    """Args: ``in_chans``, ``num_classes`` (K), ``num_targets`` (M), ``img_size``, ``dims`` (2 or 3), ``widths``
    (channels of the four conv layers), ``drop`` (dropout before the heads)."""

    def __init__(self, *, arch: str, in_chans: int = 2, num_classes: int = 2, num_targets: int = 0, img_size: int = 40,
                 dims: int = 2, widths: tuple[int, int, int, int] | list[int] = (32, 64, 96, 128), drop: float = 0.2):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        w = list(widths)
        if len(w) != 4:
            raise ValueError(f"widths must list 4 channel counts, got {widths}")
        self.config = base_config(arch, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, dims=dims, widths=w, drop=drop)
        pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d((1, 2, 2))
        self.features = nn.Sequential(
            conv_bn_act(dims, in_chans, w[0], 7), pool,
            conv_bn_act(dims, w[0], w[1], 5), pool,
            conv_bn_act(dims, w[1], w[2], 3),
            conv_bn_act(dims, w[2], w[3], 3),
        )
        self.cam_layer = self.features[-1]
        self.head = MultiTaskHead(w[3], num_classes, num_targets, drop=drop)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.features(x).flatten(2).mean(-1), {}   # (B, w3)


@register_model
def cnn(**cfg: Any) -> PlainCNN:
    """2D plain CNN, widths 32-64-96-128."""
    return PlainCNN(arch="cnn", **cfg)


@register_model
def cnn3d(**cfg: Any) -> PlainCNN:
    """3D plain CNN for z-stacks (B, C, Z, H, W); pooling keeps Z."""
    return PlainCNN(arch="cnn3d", **{"dims": 3, **cfg})


@register_model
def test_cnn(**cfg: Any) -> PlainCNN:
    """Tiny 2D plain CNN for unit tests."""
    return PlainCNN(arch="test_cnn", **{"widths": (4, 4, 8, 8), "img_size": 16, **cfg})


@register_model
def test_cnn3d(**cfg: Any) -> PlainCNN:
    """Tiny 3D plain CNN for unit tests."""
    return PlainCNN(arch="test_cnn3d", **{"dims": 3, "widths": (4, 4, 8, 8), "img_size": 16, **cfg})
