"""Stand-in for the published hybrid model (Behera & Nazir 2026, arXiv 2605.14717), for benchmarking only.

Built from the layer sizes the issue quotes from the paper's code: an inception-style CNN that runs at the full
28 × 28 input resolution, a 2 × 2 patch embedding giving 196 tokens of width 192, a projection to a ViT of depth 2 and
width 128, about 1.8 M parameters, input 4 × 28 × 28 (its BSCCM DPC/brightfield channels).
Its "cross-branch gate" is reproduced as designed — a softmax over two learned scalars shared by every cell, so the
reported gate is identical for all samples. That is the fault the project's ``hybrid`` model fixes; do not use this
model for anything but speed/accuracy comparisons.
"""

from __future__ import annotations

from typing import Any

import phenotyping._tv_shim  # noqa: F401  (must precede timm)
import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from phenotyping.models._base import CellModel, MultiTaskHead, base_config, conv_bn_act
from phenotyping.models._registry import register_model


class _Inception(nn.Module):
    """GoogLeNet-style block: 1×1 | 1×1→3×3 | 1×1→5×5 | 3×3 max-pool→1×1, concatenated (stride 1, same size).

    ``r3``/``r5`` are the 1×1 reduction widths before the 3×3/5×5 convolutions; output width b1 + b3 + b5 + bp.
    """

    def __init__(self, cin: int, b1: int, r3: int, b3: int, r5: int, b5: int, bp: int):
        super().__init__()
        self.b1 = conv_bn_act(2, cin, b1, 1)
        self.b3 = nn.Sequential(conv_bn_act(2, cin, r3, 1), conv_bn_act(2, r3, b3, 3))
        self.b5 = nn.Sequential(conv_bn_act(2, cin, r5, 1), conv_bn_act(2, r5, b5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_act(2, cin, bp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class PublishedStandIn(CellModel):
    """See the module docstring. Input (B, C, 28, 28) by default; ``img_size`` must be even."""

    def __init__(self, *, arch: str, in_chans: int = 4, num_classes: int = 3, num_targets: int = 1, img_size: int = 28,
                 cnn_width: int = 64, cnn_blocks: int = 3, token_dim: int = 192, embed_dim: int = 128, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0, head_hidden: int = 416, drop: float = 0.1):
        super().__init__()
        if img_size % 2:
            raise ValueError(f"img_size must be even for the 2×2 patch embedding, got {img_size}")
        self.config = base_config(arch, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, cnn_width=cnn_width, cnn_blocks=cnn_blocks, token_dim=token_dim, embed_dim=embed_dim,
                                  depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, head_hidden=head_hidden,
                                  drop=drop)
        q = token_dim // 4   # each inception branch contributes a quarter of the token width
        self.cnn = nn.Sequential(conv_bn_act(2, in_chans, cnn_width, 3),
                                 _Inception(cnn_width, q, 2 * q, q, q, q, q),
                                 *[_Inception(token_dim, q, 3 * q, q, 2 * q, q, q) for _ in range(cnn_blocks - 1)])
        self.cam_layer = self.cnn
        self.patch = nn.Conv2d(token_dim, token_dim, 2, 2)                  # (B, 192, 14, 14): 196 tokens
        self.to_vit = nn.Linear(token_dim, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // 2) ** 2, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.cnn_proj = nn.Linear(token_dim, embed_dim)
        self.gate_logits = nn.Parameter(torch.zeros(2))                     # the two global scalars
        self.head = MultiTaskHead(embed_dim, num_classes, num_targets, drop=drop)
        # Per-task MLP heads (embed → hidden → hidden). Where the paper's ~1.8 M parameters sit beyond the quoted
        # layers is our assumption; putting the rest in these cheap heads keeps the stand-in's compute conservative.
        self.task_mlp = nn.ModuleList([nn.Sequential(nn.Linear(embed_dim, head_hidden), nn.GELU(),
                                                     nn.Linear(head_hidden, head_hidden), nn.GELU(),
                                                     nn.Linear(head_hidden, embed_dim)) for _ in range(2)])

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cnn(x)                                                    # (B, 192, 28, 28)
        t = self.patch(c).flatten(2).transpose(1, 2)                       # (B, 196, 192)
        f_vit = self.norm(self.blocks(self.to_vit(t) + self.pos_embed)).mean(1)  # (B, 128)
        f_cnn = self.cnn_proj(c.mean((2, 3)))                              # (B, 128)
        w = torch.softmax(self.gate_logits, 0)                             # (2,) — same for every cell
        fused = w[0] * f_cnn + w[1] * f_vit
        return fused, {"fusion": w.expand(x.shape[0], 2)}

    def forward_head(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.head.cls(self.head.drop(self.task_mlp[0](f)))
        reg = (self.head.reg(self.head.drop(self.task_mlp[1](f))) if self.head.reg is not None
               else f.new_zeros(f.shape[0], 0))
        return logits, reg, {}


@register_model
def published_standin(**cfg: Any) -> PublishedStandIn:
    """The published model's layer sizes (≈1.8 M parameters at 4 × 28 × 28); benchmarking only."""
    return PublishedStandIn(arch="published_standin", **cfg)


@register_model
def test_published_standin(**cfg: Any) -> PublishedStandIn:
    """Tiny stand-in for unit tests."""
    return PublishedStandIn(arch="test_published_standin", **{"cnn_width": 8, "cnn_blocks": 1, "token_dim": 16, "embed_dim": 16,
                                                              "depth": 1, "num_heads": 2, "head_hidden": 16, "img_size": 12, **cfg})
