"""3D Vision Transformer for z-stacks with tubelet patch embedding (as in ViViT, Arnab et al. 2021).

Layout for an input ``(B, C, Z, H, W)``::

    zero-pad Z to a multiple of tz and H, W to multiples of p (0 = the training mean after normalisation)
    tubelets: Conv3d kernel = stride = (tz, p, p)            (B, E, Z/tz, H/p, W/p) → N tokens (B, N, E)
    [CLS] token prepended, learned position embedding added (B, 1 + N, E)
    pre-norm Transformer blocks (timm ``Block``) × depth → LayerNorm → the CLS token (B, E) → multi-task heads

The position embedding is learned for the grid of ``z_planes`` × ``img_size`` × ``img_size`` inputs; other grids
(stacks with more or fewer planes) use it trilinearly resampled, so the network accepts any stack depth.
Grad-CAM uses the tubelet map (``cam_layer`` = the patch embedding), stretched over the unpadded stack: where Z, H or
W was padded, the map is displaced by less than one tubelet.
"""

from __future__ import annotations

import math
from typing import Any

import phenotyping._tv_shim  # noqa: F401  (must precede timm)
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from phenotyping.models._base import CellModel, MultiTaskHead, base_config
from phenotyping.models._registry import register_model


class ViT3dCell(CellModel):
    """See the module docstring. All arguments are stored in ``self.config``.

    Args:
        in_chans: C. num_classes: K. num_targets: M ≥ 0.
        img_size: preprocessing size (H = W). z_planes: the stack depth the position embedding is laid out for.
        patch_size: p (in-plane tubelet side, px). tubelet_z: tz (planes per tubelet).
        embed_dim, depth, num_heads, mlp_ratio: the Transformer (timm ``Block``, pre-norm, qkv bias).
        drop: dropout before the heads.
    """

    def __init__(self, *, arch: str, in_chans: int = 2, num_classes: int = 2, num_targets: int = 0, img_size: int = 40,
                 z_planes: int = 8, patch_size: int = 4, tubelet_z: int = 2, embed_dim: int = 192, depth: int = 6,
                 num_heads: int = 3, mlp_ratio: float = 4.0, drop: float = 0.1, dims: int = 3):
        super().__init__()
        if dims != 3:
            raise ValueError(f"{arch} is a z-stack model (dims=3); got dims={dims}")
        if min(patch_size, tubelet_z, z_planes, img_size) < 1 or embed_dim % num_heads:
            raise ValueError(f"need positive patch_size, tubelet_z, z_planes, img_size and embed_dim divisible by "
                             f"num_heads; got {patch_size}, {tubelet_z}, {z_planes}, {img_size}, {embed_dim}/"
                             f"{num_heads}")
        self.config = base_config(arch, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, dims=3, z_planes=z_planes, patch_size=patch_size,
                                  tubelet_z=tubelet_z, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                  mlp_ratio=mlp_ratio, drop=drop)
        self.tubelet = (tubelet_z, patch_size, patch_size)
        self.grid = (math.ceil(z_planes / tubelet_z), math.ceil(img_size / patch_size),
                     math.ceil(img_size / patch_size))
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, self.tubelet, self.tubelet)
        self.cam_layer = self.patch_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.grid))   # (1, E, gz, gh, gw)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = MultiTaskHead(embed_dim, num_classes, num_targets, drop=drop)

    def _pos(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Position embedding for a token grid ``(gz, gh, gw)`` as ``(1, N, E)``."""
        pos = self.pos_embed
        if tuple(grid) != self.grid:
            pos = F.interpolate(pos, size=grid, mode="trilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tz, p, _ = self.tubelet
        z, h, w = x.shape[2:]
        x = F.pad(x, (0, -w % p, 0, -h % p, 0, -z % tz))                     # (B, C, Z', H', W')
        t = self.patch_embed(x)                                               # (B, E, gz, gh, gw)
        grid = tuple(t.shape[2:])
        t = t.flatten(2).transpose(1, 2) + self._pos(grid)                    # (B, N, E)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1)      # (B, 1 + N, E)
        return self.norm(self.blocks(t))[:, 0], {}                            # (B, E)


@register_model
def vit3d(**cfg: Any) -> ViT3dCell:
    """3D ViT: tubelets 2 × 4 × 4, width 192, depth 6, 3 heads, MLP ×4 (≈2.7 M parameters), random init."""
    return ViT3dCell(arch="vit3d", **cfg)


@register_model
def test_vit3d(**cfg: Any) -> ViT3dCell:
    """Tiny 3D ViT for unit tests."""
    return ViT3dCell(arch="test_vit3d", **{"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                                           "img_size": 16, "z_planes": 4, **cfg})
