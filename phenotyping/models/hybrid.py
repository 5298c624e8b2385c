"""Hybrid CNN + Transformer cell model with per-sample gated fusion and task-adaptive heads.

Layout (2D; the 3D variant swaps in 3D convolutions and a (Z, H, W) token grid)::

    x (B, C, H, W)
    └ stem: two stride-2 3×3 convs (ConvNormAct)            (B, S, H/4, W/4)
      ├ CNN branch: 3×3 convs (local texture) → global avg  f_cnn (B, Wc)
      └ Transformer branch: avg-pool to a g×g token grid → 1×1 projection + learned position embedding →
        ``Block`` × depth (global shape) → mean token       f_vit (B, E)
    gate   g = sigmoid(MLP([f_cnn, f_vit]))                 (B, F)   per sample and per feature
    fused  = g ⊙ P_c f_cnn + (1 − g) ⊙ P_v f_vit            (B, F)
    heads: task gates sigmoid(W_t fused) re-weight ``fused`` separately for classification (K) and regression (M).

Compared with the published design (Behera & Nazir 2026, arXiv 2605.14717), whose "gate" is a softmax over two
learned scalars shared by all cells, this gate depends on each cell's features. The early stride-4 stem and a fixed,
small token grid (36 tokens in 2D) keep the forward pass cheap on a CPU; adaptive pooling makes any input size work.

The layers come from :mod:`phenotyping.models._blocks` (plain torch, the names and arithmetic of the timm layers the
first checkpoints were built with), so predicting with a hybrid imports neither timm nor torchvision.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from phenotyping.models._base import CellModel, MultiTaskHead, base_config
from phenotyping.models._blocks import Block, ConvNormAct, trunc_normal_
from phenotyping.models._registry import register_model

# Checkpoints written before the conv blocks were ConvNormAct named a block's layers "0" (conv) and "1" (norm).
_LEGACY_KEY = re.compile(r"^(stem|cnn|cam_layer)\.(\d+)\.([01])\.(.+)$")


def _conv_norm_act(dims: int, cin: int, cout: int, stride: int = 1) -> nn.Module:
    """3×3 conv → BatchNorm → ReLU (``conv``, ``bn``), in 2D or 3D (stride 1 along Z)."""
    return ConvNormAct(cin, cout, 3, stride, dims=dims)


class HybridGatedNet(CellModel):
    """See the module docstring. All arguments are stored in ``self.config``.

    Args:
        in_chans: input channels C (any number).
        num_classes: K. num_targets: M ≥ 0 regression outputs.
        img_size: preprocessing size (H = W); the network itself accepts any size.
        dims: 2 for (B, C, H, W) input, 3 for z-stacks (B, C, Z, H, W).
        stem_width, cnn_width: channels of the stem and of the CNN branch.
        embed_dim, depth, num_heads, mlp_ratio: Transformer branch (``_blocks.Block``).
        token_grid: tokens per side (tokens = g² in 2D, ``token_z``·g² in 3D).
        fuse_dim: width F of the fused feature. drop: dropout before the heads.
    """

    def __init__(self, *, arch: str, in_chans: int = 2, num_classes: int = 2, num_targets: int = 0, img_size: int = 40,
                 dims: int = 2, stem_width: int = 24, cnn_width: int = 48, embed_dim: int = 64, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, token_grid: int = 6, token_z: int = 2,
                 fuse_dim: int = 64, drop: float = 0.1):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if in_chans < 1 or num_classes < 1 or num_targets < 0:
            raise ValueError(f"need in_chans ≥ 1, num_classes ≥ 1, num_targets ≥ 0; got {in_chans}, {num_classes}, "
                             f"{num_targets}")
        self.config = base_config(arch, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, dims=dims, stem_width=stem_width, cnn_width=cnn_width,
                                  embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  token_grid=token_grid, token_z=token_z, fuse_dim=fuse_dim, drop=drop)
        self.dims = dims
        self.stem = nn.Sequential(_conv_norm_act(dims, in_chans, stem_width // 2, 2),
                                  _conv_norm_act(dims, stem_width // 2, stem_width, 2))
        self.cnn = nn.Sequential(_conv_norm_act(dims, stem_width, cnn_width),
                                 _conv_norm_act(dims, cnn_width, cnn_width))
        self.cam_layer = self.cnn
        self.grid = (token_grid, token_grid) if dims == 2 else (token_z, token_grid, token_grid)
        n_tokens = 1
        for g in self.grid:
            n_tokens *= g
        self.token_proj = nn.Linear(stem_width, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.proj_cnn = nn.Linear(cnn_width, fuse_dim)
        self.proj_vit = nn.Linear(embed_dim, fuse_dim)
        self.gate = nn.Sequential(nn.Linear(cnn_width + embed_dim, fuse_dim), nn.ReLU(inplace=True),
                                  nn.Linear(fuse_dim, fuse_dim))
        self.fuse_norm = nn.LayerNorm(fuse_dim)
        self.head = MultiTaskHead(fuse_dim, num_classes, num_targets, task_gates=True, drop=drop)

    @staticmethod
    def remap_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the conv-block keys of checkpoints saved before the blocks were ``ConvNormAct``
        (``stem.0.0.weight`` → ``stem.0.conv.weight``, ``stem.0.1.running_mean`` → ``stem.0.bn.running_mean``);
        other keys pass through. The tensors are unchanged: the layers and their order are the same."""
        out = {}
        for k, v in state_dict.items():
            m = _LEGACY_KEY.match(k)
            out[f"{m[1]}.{m[2]}.{'conv' if m[3] == '0' else 'bn'}.{m[4]}" if m else k] = v
        return out

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.stem(x)                                          # (B, S, H/4, W/4) or (B, S, Z, H/4, W/4)
        f_cnn = self.cnn(s).flatten(2).mean(-1)                   # (B, Wc)
        pool = F.adaptive_avg_pool2d if self.dims == 2 else F.adaptive_avg_pool3d
        t = pool(s, self.grid).flatten(2).transpose(1, 2)         # (B, N, S)
        t = self.token_proj(t) + self.pos_embed                   # (B, N, E)
        f_vit = self.norm(self.blocks(t)).mean(1)                 # (B, E)
        g = torch.sigmoid(self.gate(torch.cat([f_cnn, f_vit], 1)))  # (B, F)
        fused = self.fuse_norm(g * self.proj_cnn(f_cnn) + (1 - g) * self.proj_vit(f_vit))  # (B, F)
        return fused, {"fusion": g}


def _build(arch: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> HybridGatedNet:
    return HybridGatedNet(arch=arch, **{**defaults, **overrides})


@register_model
def hybrid(**cfg: Any) -> HybridGatedNet:
    """Default 2D hybrid (~0.14 M parameters): stride-4 stem, 36 tokens of width 64, depth 2."""
    return _build("hybrid", {}, cfg)


@register_model
def hybrid_wide(**cfg: Any) -> HybridGatedNet:
    """Wider 2D hybrid for RGB smears: stem 32, CNN 64, tokens 96 wide, fused 96."""
    return _build("hybrid_wide", dict(stem_width=32, cnn_width=64, embed_dim=96, fuse_dim=96, num_heads=4), cfg)


@register_model
def hybrid3d(**cfg: Any) -> HybridGatedNet:
    """3D hybrid for z-stacks (B, C, Z, H, W): Z is kept, H and W shrink by 4; 2 × 6 × 6 tokens."""
    return _build("hybrid3d", dict(dims=3), cfg)


@register_model
def test_hybrid(**cfg: Any) -> HybridGatedNet:
    """Tiny 2D hybrid for unit tests."""
    return _build("test_hybrid", dict(stem_width=8, cnn_width=8, embed_dim=16, depth=1, num_heads=2, token_grid=3,
                                      fuse_dim=8, img_size=16), cfg)


@register_model
def test_hybrid_wide(**cfg: Any) -> HybridGatedNet:
    """Tiny version of hybrid_wide for unit tests (CNN branch twice the stem width, 4 heads)."""
    return _build("test_hybrid_wide", dict(stem_width=8, cnn_width=16, embed_dim=16, depth=1, num_heads=4,
                                           token_grid=3, fuse_dim=12, img_size=16), cfg)


@register_model
def test_hybrid3d(**cfg: Any) -> HybridGatedNet:
    """Tiny 3D hybrid for unit tests."""
    return _build("test_hybrid3d", dict(dims=3, stem_width=8, cnn_width=8, embed_dim=16, depth=1, num_heads=2,
                                        token_grid=3, token_z=1, fuse_dim=8, img_size=16), cfg)
