"""Training's device paths: CUDA gets mixed precision and pinned memory, the CPU stays in full precision; the device
comes from ``--device`` or ``LEUKO_DEVICE``. Everything here runs on a CPU-only machine."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from phenotyping.training.device import DevicePlan, device_plan, train_epoch
from phenotyping.training.train import TrainConfig, train
from tests.test_train import _write_set

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def test_cpu_plan_is_full_precision_without_pinning_or_scaling():
    plan = device_plan("cpu")
    assert plan == DevicePlan("cpu") and plan.amp_dtype is None and not plan.pin_memory
    assert isinstance(plan.autocast(), contextlib.nullcontext)
    assert not plan.scaler().is_enabled() and plan.describe() == "cpu, fp32"


@pytest.mark.parametrize("bf16, dtype, scaled", [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_cuda_plan_uses_autocast_pinned_memory_and_scales_only_fp16(monkeypatch, bf16, dtype, scaled):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    plan = device_plan("cuda")
    assert (plan.device, plan.amp_dtype, plan.grad_scaler, plan.pin_memory) == ("cuda", dtype, scaled, True)
    assert plan.describe().startswith(f"cuda, {'bf16' if bf16 else 'fp16'} autocast")
    assert ("gradient scaling" in plan.describe()) == scaled


@no_cuda
def test_cuda_asked_for_without_a_gpu_is_refused(monkeypatch):
    from phenotyping.settings import get_settings

    with pytest.raises(ValueError, match="'cuda' requested but torch sees no CUDA device"):
        device_plan("cuda")
    monkeypatch.setenv("LEUKO_DEVICE", "cuda")
    get_settings.cache_clear()
    try:
        with pytest.raises(ValueError, match="no CUDA device"):
            device_plan(None)
    finally:
        get_settings.cache_clear()
    with pytest.raises(ValueError, match="not one of auto, cpu, cuda"):
        device_plan("gpu")


def test_train_epoch_under_autocast_learns():
    """The autocast branch of the loop (bf16 autocast also exists on the CPU) gives a finite, falling loss."""
    from phenotyping.models import create_model
    from phenotyping.training.losses import make_loss

    torch.manual_seed(0)
    x = torch.randn(64, 2, 20, 20)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    x[y == 1] += 1.0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.zeros(64, 0)), batch_size=16)
    model = create_model("test_hybrid", in_chans=2, num_classes=2, num_targets=0, img_size=20)
    loss_fn = make_loss("fixed", 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    plan = DevicePlan("cpu", amp_dtype=torch.bfloat16)
    losses = [train_epoch(model, loader, loss_fn, opt, sched, plan, plan.scaler()) for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_train_records_its_device_and_loads_the_checkpoint_on_cpu(tmp_path):
    logs: list[str] = []
    card = train(_write_set(tmp_path / "set", n_per_class=12), "cell_type", tmp_path / "m", device="cpu",
                 config=TrainConfig(arch="test_hybrid", epochs=1, seed=0, batch_size=8), log=logs.append)
    assert card["training"]["device"] == "cpu, fp32" and "training on cpu, fp32" in logs
    from phenotyping.models.checkpoint import load_model_dir

    lm = load_model_dir(tmp_path / "m")
    assert all(p.device.type == "cpu" for p in lm.model.parameters())
