"""The layers the hybrid models are built from, in plain torch: no timm, no torchvision on the inference path.

Each class has the state-dict keys and the eval-mode arithmetic of the timm 1.0 layer it replaces, so checkpoints
written while the hybrid used timm's layers load unchanged with ``strict=True`` and give the same outputs
(``tests/test_models_notimm.py`` builds both and compares them):

- :class:`ConvNormAct`: ``conv`` (3×3, "same" padding, no bias) then ``bn`` (BatchNorm with the ReLU inside it,
  :class:`BatchNormAct2d` / :class:`BatchNormAct3d`), like ``timm.layers.ConvNormAct``; 3D convolutions keep Z
  (stride 1 along it).
- :class:`Block`: the pre-norm transformer block of ``timm.models.vision_transformer.Block`` with its defaults
  (no layer scale, no drop path, no q/k norm): ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, LayerNorm
  ``eps=1e-6``, exact GELU, attention by :func:`torch.nn.functional.scaled_dot_product_attention`.
- :func:`trunc_normal_`: a truncated normal drawn by inverse-CDF sampling, the numbers timm's draws.

Sub-modules are created in the order timm creates its own, so a seeded build draws the same initial weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: LayerNorm epsilon of timm's transformer blocks (``timm.layers.LayerNorm``).
LAYER_NORM_EPS = 1e-6


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, mean: float = 0.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` in place from N(mean, std²) truncated to [a, b] (absolute bounds, as in timm).

    Inverse-CDF sampling: u ~ U(Φ(α), Φ(β)) with α, β the standardised bounds, x = mean + std·√2·erfinv(2u − 1).
    That is the draw timm makes (one uniform per element), so a seeded build gets timm's initial weights;
    ``torch.nn.init.trunc_normal_`` of torch 2.13 rejection-samples instead and draws other numbers.
    """
    def cdf(v: float) -> float:
        return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))

    lo, hi = cdf((a - mean) / std), cdf((b - mean) / std)
    with torch.no_grad():
        tensor.uniform_(2 * lo - 1, 2 * hi - 1)
        tensor.erfinv_().mul_(std * math.sqrt(2.0)).add_(mean)
        return tensor.clamp_(min=a, max=b)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an in-place ReLU held as ``act``; its parameters are the BatchNorm's own."""

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class BatchNormAct3d(nn.BatchNorm3d):
    """The 3D counterpart of :class:`BatchNormAct2d` (timm has no 3D one)."""

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class ConvNormAct(nn.Module):
    """``kernel``-sized conv without bias ("same" padding for odd kernels) → BatchNorm → ReLU, in 2D or 3D.

    In 3D the kernel is cubic and the stride applies to H and W only.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, *, dims: int = 2):
        super().__init__()
        pad = (stride - 1 + kernel - 1) // 2  # timm's symmetric padding: 1 for a 3×3 kernel at stride 1 or 2
        if dims == 2:
            self.conv: nn.Module = nn.Conv2d(cin, cout, kernel, stride, pad, bias=False)
            self.bn: nn.Module = BatchNormAct2d(cout)
        elif dims == 3:
            self.conv = nn.Conv3d(cin, cout, kernel, (1, stride, stride), kernel // 2, bias=False)
            self.bn = BatchNormAct3d(cout)
        else:
            raise ValueError(f"dims must be 2 or 3, got {dims}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, D): one ``qkv`` projection, ``proj`` back to D."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, n, d)                                                     # (B, N, D)
        return self.proj_drop(self.proj(y))


class Mlp(nn.Module):
    """Linear (D → hidden) → GELU → dropout → Linear (hidden → D) → dropout."""

    def __init__(self, dim: int, hidden: int, *, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block on tokens (B, N, D): residual attention, then a residual MLP of width
    ``mlp_ratio``·D."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
