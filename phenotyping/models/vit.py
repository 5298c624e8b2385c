"""Small timm Vision Transformer baseline (``pretrained=False``), patch 4, mean-pooled tokens."""

from __future__ import annotations

from typing import Any

import phenotyping._tv_shim  # noqa: F401  (must precede timm)
import torch
from timm.models.vision_transformer import VisionTransformer

from phenotyping.models._base import CellModel, MultiTaskHead, base_config
from phenotyping.models._registry import register_model


class ViTCell(CellModel):
    """timm ``VisionTransformer`` trunk (no class token, average pooling, dynamic image size) + multi-task heads.

    Args: ``in_chans``, ``num_classes`` (K), ``num_targets`` (M), ``img_size``, ``patch_size``, ``embed_dim``,
    ``depth``, ``num_heads``, ``mlp_ratio``, ``drop``.
    """

    def __init__(self, *, arch: str, in_chans: int = 2, num_classes: int = 2, num_targets: int = 0, img_size: int = 40,
                 patch_size: int = 4, embed_dim: int = 96, depth: int = 4, num_heads: int = 3, mlp_ratio: float = 2.0,
                 drop: float = 0.1):
        super().__init__()
        self.config = base_config(arch, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                  num_heads=num_heads, mlp_ratio=mlp_ratio, drop=drop)
        self.trunk = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                       global_pool="avg", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                       mlp_ratio=mlp_ratio, class_token=False, dynamic_img_size=True)
        self.cam_layer = self.trunk.patch_embed.proj
        self.head = MultiTaskHead(embed_dim, num_classes, num_targets, drop=drop)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = self.trunk.forward_features(x)                    # (B, N, E)
        return self.trunk.forward_head(tokens, pre_logits=True), {}  # (B, E)


@register_model
def vit_small(**cfg: Any) -> ViTCell:
    """ViT, patch 4, width 96, depth 4, 3 heads (≈0.3 M parameters)."""
    return ViTCell(arch="vit_small", **cfg)


@register_model
def test_vit(**cfg: Any) -> ViTCell:
    """Tiny ViT for unit tests."""
    return ViTCell(arch="test_vit", **{"embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 16, **cfg})
