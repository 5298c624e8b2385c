"""Where the training loop runs and how: the device, mixed precision and pinned host memory, and one epoch's pass.

On CUDA the batches come from pinned host memory and are copied asynchronously, the forward pass and the loss run
under autocast (bf16 where the GPU supports it, else fp16 with a ``GradScaler`` so small gradients do not underflow);
on CPU everything stays in full precision, nothing is pinned and no scaler runs. The device is the caller's
``device`` (``--device``), else the setting ``LEUKO_DEVICE`` (:func:`phenotyping.analysis.inference.resolve_device`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DevicePlan:
    """How the loop uses a device. ``amp_dtype``: the autocast dtype (a torch dtype), None for full precision;
    ``grad_scaler``: whether losses are scaled (fp16 only); ``pin_memory``: whether the loader pins batches."""

    device: str
    amp_dtype: Any = None
    grad_scaler: bool = False
    pin_memory: bool = False

    def autocast(self) -> Any:
        """The forward pass's context: CUDA autocast with ``amp_dtype``, or nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device, dtype=self.amp_dtype)

    def scaler(self) -> Any:
        """A ``torch.amp.GradScaler``, enabled only for fp16 on CUDA (a pass-through otherwise)."""
        import torch

        return torch.amp.GradScaler("cuda", enabled=self.grad_scaler)

    def describe(self) -> str:
        """For the card and the log, e.g. ``"cuda, bf16 autocast, pinned memory"`` or ``"cpu, fp32"``."""
        if self.amp_dtype is None:
            return f"{self.device}, fp32"
        name = str(self.amp_dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16")
        return (f"{self.device}, {name} autocast" + (" with gradient scaling" if self.grad_scaler else "")
                + (", pinned memory" if self.pin_memory else ""))


def device_plan(device: str | None = None) -> DevicePlan:
    """The plan for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``; None reads ``LEUKO_DEVICE``).

    Raises:
        ValueError: an unknown device, or ``"cuda"`` where torch sees no CUDA device.
    """
    from phenotyping.analysis.inference import resolve_device

    dev = resolve_device(device)
    if dev != "cuda":
        return DevicePlan(dev)
    import torch

    bf16 = torch.cuda.is_bf16_supported()
    return DevicePlan("cuda", amp_dtype=torch.bfloat16 if bf16 else torch.float16, grad_scaler=not bf16,
                      pin_memory=True)


def train_epoch(model: Any, loader: Any, loss_fn: Any, opt: Any, sched: Any, plan: DevicePlan,
                scaler: Any) -> float:
    """One pass over ``loader`` on ``plan.device`` (gradients clipped to norm 5 after unscaling, the learning rate
    stepped per batch); the mean loss. ``scaler`` is ``plan.scaler()``, kept across epochs."""
    import torch

    model.train()
    tot, nb = 0.0, 0
    for xb, yb, zb in loader:
        xb, yb, zb = (t.to(plan.device, non_blocking=plan.pin_memory) for t in (xb, yb, zb))
        with plan.autocast():
            o = model(xb)                                  # logits (B, K), regression (B, T)
            loss, _ = loss_fn(o.logits.float(), o.regression.float(), yb, zb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        tot, nb = tot + float(loss.detach()), nb + 1
    return tot / max(nb, 1)
