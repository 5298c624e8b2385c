"""3D ResNet-50 for z-stacks: bottleneck blocks inflated to 3D (He et al. 2016; inflation as in I3D, Carreira &
Zisserman 2017), with an anisotropic stride because cell z-stacks are shallow (about 5–16 planes of 40–64 px).

Layout for an input ``(B, C, Z, H, W)``::

    stem   conv (3, 7, 7), stride (1, 2, 2) → BN → ReLU → max-pool (1, 3, 3), stride (1, 2, 2)   (B, S, Z, H/4, W/4)
    layer1 bottleneck × 3, width  64, stride (1, 1, 1)                                          (B, 256, Z, H/4, W/4)
    layer2 bottleneck × 4, width 128, stride (1, 2, 2)                                          (B, 512, Z, H/8, W/8)
    layer3 bottleneck × 6, width 256, stride (2, 2, 2)                                          (B, 1024, Z/2, …)
    layer4 bottleneck × 3, width 512, stride (2, 2, 2)                                          (B, 2048, Z/4, …)
    global average over (Z, H, W) → multi-task heads

A bottleneck is 1×1×1 (reduce) → 3×3×3 (the stage's stride) → 1×1×1 (expand ×4), each with BatchNorm, plus a
1×1×1 strided projection shortcut where the shape changes. The Z strides are ``z_strides`` (one per stage); Z is
kept through the stem and the first two stages so a 5-plane stack still has 2 planes at the end.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from phenotyping.models._base import CellModel, MultiTaskHead, base_config
from phenotyping.models._registry import register_model

EXPANSION = 4


class Bottleneck3d(nn.Module):
    """3D bottleneck residual block; ``stride`` is ``(z, y, x)``. The last BatchNorm starts at zero (Goyal et al.
    2017), so every block begins as the identity."""

    def __init__(self, cin: int, width: int, stride: tuple[int, int, int]):
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = nn.Conv3d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(cout)
        nn.init.zeros_(self.bn3.weight)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if cin == cout and stride == (1, 1, 1) else nn.Sequential(
            nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        return self.act(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNet3dCell(CellModel):
    """See the module docstring. All arguments are stored in ``self.config``.

    Args:
        in_chans: C. num_classes: K. num_targets: M ≥ 0.
        img_size: preprocessing size (H = W); the network accepts any size and any number of planes.
        layers: bottleneck blocks per stage. widths: bottleneck width per stage (output is ×4).
        z_strides: stride along Z of each stage (in-plane strides are 1, 2, 2, 2).
        stem_width: channels of the stem. drop: dropout before the heads.
    """

    def __init__(self, *, arch: str, in_chans: int = 2, num_classes: int = 2, num_targets: int = 0, img_size: int = 40,
                 layers: tuple[int, ...] | list[int] = (3, 4, 6, 3),
                 widths: tuple[int, ...] | list[int] = (64, 128, 256, 512),
                 z_strides: tuple[int, ...] | list[int] = (1, 1, 2, 2), stem_width: int = 64, drop: float = 0.2,
                 dims: int = 3):
        super().__init__()
        if dims != 3:
            raise ValueError(f"{arch} is a z-stack model (dims=3); got dims={dims}")
        if not len(layers) == len(widths) == len(z_strides) == 4:
            raise ValueError(f"layers, widths and z_strides must each list 4 stages; got {layers}, {widths}, "
                             f"{z_strides}")
        self.config = base_config(arch, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, dims=3, layers=list(layers), widths=list(widths),
                                  z_strides=list(z_strides), stem_width=stem_width, drop=drop)
        self.stem = nn.Sequential(
            nn.Conv3d(in_chans, stem_width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            nn.BatchNorm3d(stem_width), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        stages, cin = [], stem_width
        for i, (n, w, zs) in enumerate(zip(layers, widths, z_strides)):
            s = 1 if i == 0 else 2
            blocks = [Bottleneck3d(cin if b == 0 else w * EXPANSION, w, (zs, s, s) if b == 0 else (1, 1, 1))
                      for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w * EXPANSION
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.cam_layer = self.layer4
        self.num_features = cin
        self.head = MultiTaskHead(cin, num_classes, num_targets, drop=drop)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.stem(x)                                                        # (B, S, Z, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))               # (B, 4·w4, Z/4, H/32, W/32)
        return x.flatten(2).mean(-1), {}                                        # (B, 4·w4)


@register_model
def resnet3d_50(**cfg: Any) -> ResNet3dCell:
    """3D ResNet-50: bottleneck ×[3, 4, 6, 3], widths 64…512 (2048 features), Z strides 1-1-2-2, random init."""
    return ResNet3dCell(arch="resnet3d_50", **cfg)


@register_model
def test_resnet3d(**cfg: Any) -> ResNet3dCell:
    """Tiny 3D ResNet for unit tests (one bottleneck per stage)."""
    return ResNet3dCell(arch="test_resnet3d", **{"layers": (1, 1, 1, 1), "widths": (2, 4, 4, 8), "stem_width": 8,
                                                 "img_size": 16, **cfg})
