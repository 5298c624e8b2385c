"""timm ResNet-18 baseline (``pretrained=False``) with any number of input channels and the project's heads."""

from __future__ import annotations

from typing import Any

import phenotyping._tv_shim  # noqa: F401  (must precede timm)
import torch
from timm.models.resnet import BasicBlock, ResNet

from phenotyping.models._base import CellModel, MultiTaskHead, base_config
from phenotyping.models._registry import register_model


class ResNetCell(CellModel):
    """timm ``ResNet`` trunk (BasicBlock) + global average + multi-task heads.

    Args: ``in_chans``, ``num_classes`` (K), ``num_targets`` (M), ``img_size``, ``layers`` (blocks per stage),
    ``channels`` (per stage), ``stem_width``, ``drop``.
    """

    def __init__(self, *, arch: str, in_chans: int = 2, num_classes: int = 2, num_targets: int = 0, img_size: int = 40,
                 layers: list[int] | tuple[int, ...] = (2, 2, 2, 2),
                 channels: list[int] | tuple[int, ...] = (64, 128, 256, 512), stem_width: int = 64, drop: float = 0.2):
        super().__init__()
        self.config = base_config(arch, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, layers=list(layers), channels=list(channels),
                                  stem_width=stem_width, drop=drop)
        self.trunk = ResNet(BasicBlock, tuple(layers), num_classes=0, in_chans=in_chans, channels=tuple(channels),
                            stem_width=stem_width)
        self.cam_layer = self.trunk.layer4
        self.head = MultiTaskHead(self.trunk.num_features, num_classes, num_targets, drop=drop)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.trunk.forward_features(x).mean((2, 3)), {}   # (B, 512)


@register_model
def resnet18(**cfg: Any) -> ResNetCell:
    """timm resnet18 layout (BasicBlock ×[2, 2, 2, 2], 64…512 channels), random init."""
    return ResNetCell(arch="resnet18", **cfg)


@register_model
def test_resnet(**cfg: Any) -> ResNetCell:
    """Tiny ResNet for unit tests."""
    return ResNetCell(arch="test_resnet", **{"layers": (1, 1, 1, 1), "channels": (8, 8, 16, 16), "stem_width": 8,
                                             "img_size": 16, **cfg})
