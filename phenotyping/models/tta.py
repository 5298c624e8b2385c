"""Dihedral test-time augmentation: a model's outputs averaged over the views of a cell that keep its meaning.

A view is a sequence of the primitive operations ``hflip`` (mirror the last axis), ``vflip`` (mirror the axis before
it) and ``rot90`` (a quarter turn in the image plane), applied in order to the two last axes of a 2D batch
``(B, C, H, W)`` or a z-stack batch ``(B, C, Z, H, W)``. Which views a model gets follows from its channel specs
(:class:`phenotyping.models.preprocess.ChannelSpec`), never from a list typed elsewhere:

- every channel allows 90° rotations and neither flip is ``"never"``: the 8 elements of the dihedral group
  (4 rotations, each after the identity and after ``hflip``);
- some channel does not allow rotations: the identity, each flip that no channel forbids, and both flips together
  (4 views for DPC's ``dpc_lr``, ``hflip="negate"``; 2 when one flip is ``"never"``).

A flip's channel rules hold in raw intensity: ``"negate"`` makes the flipped channel ``−x``, ``"swap:<p>"`` makes it
the flipped image of channel ``p``. The model input is ``xn = (s(x) − mean) / std`` per channel, where ``s`` is the
identity (``mode="dataset"``) or the per-image standardisation (``mode="per_image"``), which commutes with flips
and rotations and is odd (``s(−x) = −s(x)``; a channel's own mean and std are unchanged by a spatial permutation).
So in both modes a view maps channel ``c`` of the normalised input to ``a_c · g(xn_src) + b_c``, with ``g`` the
geometric operation, ``src`` the channel it comes from, ``σ = ±1`` the rule's sign and

    a_c = σ · std_src / std_c,    b_c = (σ · mean_src − mean_c) / std_c

(``"same"``: 1, 0; ``"negate"``: −1, −2 · mean_c / std_c; ``"swap:p"``: std_p / std_c, (mean_p − mean_c) / std_c).
``tests/test_tta.py`` checks this against normalising the raw-transformed cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from phenotyping.models._base import ModelOutput
from phenotyping.models.preprocess import ChannelSpec, Preprocess

#: The ``--tta`` choices of ``predict``, ``evaluate`` and ``bench``.
TTA_MODES = ("none", "dihedral")
_OPS = ("hflip", "vflip", "rot90")


@dataclass(frozen=True)
class View:
    """One view: ``ops`` applied in order (each one of ``hflip``, ``vflip``, ``rot90``); ``()`` is the identity."""

    ops: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.ops) or "identity"


def dihedral_views(specs: Sequence[ChannelSpec]) -> list[View]:
    """The views that keep the meaning of every channel in ``specs`` (see the module docstring); the identity first."""
    h_ok = all(s.hflip != "never" for s in specs)
    v_ok = all(s.vflip != "never" for s in specs)
    if all(s.rot90 for s in specs):
        turns = [("rot90",) * k for k in range(4)]
        flip = "hflip" if h_ok else "vflip" if v_ok else None
        return [View(t) for t in turns] + ([View((flip, *t)) for t in turns] if flip else [])
    flips = [()] + [("hflip",)] * h_ok + [("vflip",)] * v_ok + [("hflip", "vflip")] * (h_ok and v_ok)
    return [View(f) for f in flips]


def _channel_rule(spec: ChannelSpec, op: str) -> str:
    return "same" if op == "rot90" else getattr(spec, op)


def op_affine(preprocess: Preprocess, op: str) -> tuple[list[int], list[float], list[float]]:
    """For one primitive ``op``: per channel the source channel, scale ``a`` and offset ``b`` of the normalised
    input (see the module docstring).

    Raises:
        ValueError: a channel's rule for ``op`` is ``"never"``, unknown, or swaps with a channel the model lacks.
    """
    if op not in _OPS:
        raise ValueError(f"unknown view operation {op!r}; operations are {', '.join(_OPS)}")
    specs = preprocess.specs()
    index = {s.name: i for i, s in enumerate(specs)}
    mean, std = preprocess.mean, preprocess.std
    src, a, b = [], [], []
    for c, s in enumerate(specs):
        rule = _channel_rule(s, op)
        if rule == "same":
            j, sign = c, 1.0
        elif rule == "negate":
            j, sign = c, -1.0
        elif rule.startswith("swap:") and rule[5:] in index:
            j, sign = index[rule[5:]], 1.0
        else:
            raise ValueError(f"channel {s.name!r}: {op} rule {rule!r} cannot be applied (rules are same, negate, "
                             f"swap:<one of {', '.join(index)}>; never means the view is not used)")
        src.append(j)
        a.append(sign * std[j] / std[c])
        b.append((sign * mean[j] - mean[c]) / std[c])
    return src, a, b


def _geometric(x: torch.Tensor, op: str) -> torch.Tensor:
    if op == "hflip":
        return torch.flip(x, dims=(-1,))
    if op == "vflip":
        return torch.flip(x, dims=(-2,))
    return torch.rot90(x, 1, dims=(-2, -1))


class ViewTransform:
    """Applies views to normalised batches ``(B, C, H, W)`` / ``(B, C, Z, H, W)`` of one model's preprocessing."""

    def __init__(self, preprocess: Preprocess):
        self._affine = {op: op_affine(preprocess, op) for op in _OPS if self._allowed(preprocess, op)}

    @staticmethod
    def _allowed(preprocess: Preprocess, op: str) -> bool:
        return all(_channel_rule(s, op) != "never" and (op != "rot90" or s.rot90) for s in preprocess.specs())

    def __call__(self, x: torch.Tensor, view: View) -> torch.Tensor:
        """``x`` seen through ``view``: the normalised input of the raw cell transformed by it."""
        for op in view.ops:
            if op not in self._affine:
                raise ValueError(f"view {view.name}: {op} does not keep the meaning of this model's channels")
            if op == "rot90" and x.shape[-1] != x.shape[-2]:
                raise ValueError(f"a 90° rotation needs square images, got {x.shape[-2]}×{x.shape[-1]}")
            src, a, b = self._affine[op]
            shape = (1, len(src)) + (1,) * (x.ndim - 2)
            y = _geometric(x, op)[:, src]
            x = y * torch.tensor(a, dtype=y.dtype, device=y.device).reshape(shape) + \
                torch.tensor(b, dtype=y.dtype, device=y.device).reshape(shape)
        return x


class DihedralTTA(nn.Module):
    """``net`` with its outputs averaged over :func:`dihedral_views` of each input (normalised as ``preprocess``
    does; the same input ``net`` takes).

    Logits, standardised regression, features and gates are the means over the views. Logits rather than
    probabilities are averaged so that the output is still a logit vector to which the model card's temperature
    and the rest of the pipeline apply unchanged (a mean of probabilities has no temperature to take). That
    calibration was fitted on single-view logits: averaging over views that disagree shrinks the logits, so the
    temperature-scaled probabilities of a TTA run tend to be less confident than a single view's, and the card's
    unidentified threshold and validation confusion (the corrections) describe the model without TTA. Predictions
    made with TTA are therefore stored under their own model version
    (:func:`phenotyping.analysis.inference.tta_version`); recalibrating with TTA
    is not done here. The features are averaged too, so the domain check of a TTA run compares averaged features
    with a reference built from single-view ones.

    ``net`` may be an ``nn.Module`` or any callable returning a :class:`ModelOutput` (e.g. kNN/SVM on embeddings).
    """

    def __init__(self, net: Any, preprocess: Preprocess):
        super().__init__()
        self.net = net
        self.config = dict(getattr(net, "config", None) or {})
        self.views = dihedral_views(preprocess.specs())
        self.transform = ViewTransform(preprocess)

    def to(self, *args: Any, **kwargs: Any) -> DihedralTTA:
        if not isinstance(self.net, nn.Module):
            self.net.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        outs = [self.net(self.transform(x, v)) for v in self.views]
        n = len(outs)
        gates = {k: sum(o.gates[k] for o in outs) / n for k in outs[0].gates}
        return ModelOutput(sum(o.logits.float() for o in outs) / n, sum(o.regression.float() for o in outs) / n,
                           sum(o.features.float() for o in outs) / n, gates)


def tta_info(mode: str, preprocess: Preprocess) -> dict[str, Any]:
    """``{"mode", "views"}`` of a run: ``views`` 1 for ``"none"``, else the number of dihedral views.

    Raises:
        ValueError: an unknown mode, or ``"dihedral"`` for a model whose channels allow no view but the identity.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"test-time augmentation {mode!r} is not one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return {"mode": "none", "views": 1}
    views = dihedral_views(preprocess.specs())
    if len(views) == 1:
        raise ValueError(f"no flip or rotation keeps the meaning of the channels {', '.join(preprocess.channels)} "
                         "(their channel specs forbid both flips and 90° rotations); predict with --tta none")
    return {"mode": mode, "views": len(views)}


def with_tta(net: Any, preprocess: Preprocess, mode: str) -> Any:
    """``net`` itself for ``"none"``, else ``net`` wrapped in :class:`DihedralTTA` (see :func:`tta_info`)."""
    return net if tta_info(mode, preprocess)["mode"] == "none" else DihedralTTA(net, preprocess)

