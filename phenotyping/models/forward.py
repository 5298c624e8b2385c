"""Running a loaded model over arrays: batched forward passes and calibrated probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np


def predict_arrays(model: Any, x: np.ndarray, *, batch_size: int = 512, device: str = "cpu") -> dict[str, np.ndarray]:
    """Run ``model`` (already on ``device``) over normalised inputs ``x`` (N, C, …) in batches: logits (N, K),
    standardised regression (N, M) and features (N, D), full precision, as NumPy arrays."""
    import torch

    outs: dict[str, list[np.ndarray]] = {"logits": [], "regression": [], "features": []}
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            o = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device))
            outs["logits"].append(o.logits.float().cpu().numpy())
            outs["regression"].append(o.regression.float().cpu().numpy())
            outs["features"].append(o.features.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (N, K)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def forward_batch(net: Any, x: Any, *, device: str, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass of a prepared batch ``x`` (a CPU tensor, pinned on CUDA): temperature-scaled class
    probabilities (B, K) and standardised regression outputs (B, M), as float64/float32 NumPy arrays.

    On CUDA the copy is asynchronous and the pass runs under bf16 autocast (fp16 where bf16 is unsupported); the
    local engine (:mod:`phenotyping.analysis.inference`) and the Ray actors share this one path."""
    probs, reg, _ = forward_outputs(net, x, device=device, temperature=temperature)
    return probs, reg


def autocast_dtype() -> Any:
    """bf16 where the GPU supports it (Ampere and later), else fp16: the CUDA autocast type of every forward pass."""
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def forward_outputs(net: Any, x: Any, *, device: str, temperature: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`forward_batch` plus the penultimate features (B, D) float32 of the same pass (None for a model
    without them), for the domain check (:mod:`phenotyping.analysis.domain`)."""
    import torch

    with torch.inference_mode():
        xd = x.to(device, non_blocking=True)
        if device == "cuda":
            with torch.autocast("cuda", dtype=autocast_dtype()):
                out = net(xd)
        else:
            out = net(xd)
        logits = out.logits.float().cpu().numpy()
        reg = out.regression.float().cpu().numpy()
        feats = getattr(out, "features", None)
        feats = None if feats is None else feats.float().cpu().numpy()
    return softmax(logits, temperature), reg, feats
