"""Model registry, architectures, loss, augmentation, splits, calibration and explanations (tiny, synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phenotyping.models import create_model, list_models  # noqa: E402

NEURAL_2D = ["test_hybrid", "test_hybrid_wide", "test_cnn", "test_resnet", "test_vit", "test_published_standin"]
NEURAL_3D = ["test_hybrid3d", "test_cnn3d"]


def _x(b: int, c: int, s: int, z: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (b, c, s, s) if z is None else (b, c, z, s, s)
    return torch.randn(*shape, generator=g)


def test_every_architecture_has_a_test_variant():
    names = list_models()
    for arch in ["hybrid", "hybrid_wide", "hybrid3d", "cnn", "cnn3d", "resnet18", "vit_small", "knn", "svm",
                 "published_standin"]:
        assert arch in names
    for base in ["hybrid", "hybrid_wide", "hybrid3d", "cnn", "cnn3d", "resnet", "vit", "knn", "svm",
                 "published_standin"]:
        assert f"test_{base}" in names


def test_unknown_model_name_lists_known_names():
    with pytest.raises(KeyError, match="test_hybrid") as e:
        create_model("no_such_model")
    assert "no_such_model" in str(e.value)


@pytest.mark.parametrize("name", NEURAL_2D + NEURAL_3D)
def test_shapes_finite_and_backward(name):
    torch.manual_seed(0)
    z = 3 if name.endswith("3d") else None
    m = create_model(name, in_chans=3, num_classes=4, num_targets=2)
    s = m.config["img_size"]
    out = m(_x(5, 3, s, z))
    assert out.logits.shape == (5, 4) and out.regression.shape == (5, 2)
    assert out.features.shape[0] == 5
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.regression).all()
    (out.logits.logsumexp(1).mean() + out.regression.pow(2).mean()).backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", ["test_hybrid", "test_cnn"])
def test_zero_targets_and_one_channel(name):
    m = create_model(name, in_chans=1, num_classes=3, num_targets=0).eval()
    out = m(_x(2, 1, 16))
    assert out.regression.shape == (2, 0) and out.logits.shape == (2, 3)


@pytest.mark.parametrize("size", [9, 16, 23, 40])
def test_hybrid_accepts_any_input_size(size):
    m = create_model("test_hybrid", in_chans=2, num_classes=3, num_targets=1).eval()
    assert m(_x(2, 2, size)).logits.shape == (2, 3)


def test_wrong_channel_count_is_a_clear_error():
    m = create_model("test_hybrid", in_chans=2, num_classes=3)
    with pytest.raises(ValueError, match="C=2"):
        m(_x(1, 3, 16))


def test_hybrid_gate_varies_across_samples_and_features():
    torch.manual_seed(0)
    m = create_model("test_hybrid", in_chans=2, num_classes=3, num_targets=1).eval()
    g = m(_x(8, 2, 16)).gates
    for key in ("fusion", "cls", "reg"):
        assert g[key].shape[0] == 8
        assert g[key].std(0).max() > 1e-3          # differs between cells
        assert g[key].std(1).max() > 1e-3          # differs between features
        assert ((g[key] > 0) & (g[key] < 1)).all()


def test_published_standin_gate_is_two_global_scalars():
    m = create_model("test_published_standin").eval()
    g = m(_x(4, 4, 12)).gates["fusion"]
    assert g.shape == (4, 2)
    assert torch.allclose(g, g[:1].expand_as(g))     # the same for every cell: the fault being reproduced
    assert torch.allclose(g.sum(1), torch.ones(4))


def test_published_standin_size_matches_the_paper():
    n = sum(p.numel() for p in create_model("published_standin").parameters())
    assert 1.6e6 < n < 2.0e6


def test_config_round_trip_rebuilds_same_architecture():
    m = create_model("test_hybrid", in_chans=5, num_classes=6, num_targets=3)
    m2 = create_model(m.config["arch"], **m.config)
    assert m2.config == m.config
    assert [p.shape for p in m.parameters()] == [p.shape for p in m2.parameters()]


@pytest.mark.parametrize("name", ["test_knn", "test_svm"])
def test_classical_models_fit_and_predict(name):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 2, 8, 8)).astype(np.float32) + y[:, None, None, None] * 2.0
    t = (y * 1.5 + rng.normal(0, 0.1, 60))[:, None]
    m = create_model(name, in_chans=2, num_classes=3, num_targets=1).fit(x, y, t)
    out = m(x)
    assert out.logits.shape == (60, 3) and out.regression.shape == (60, 1)
    assert (out.logits.argmax(1).numpy() == y).mean() > 0.9
    assert np.corrcoef(out.regression[:, 0].numpy(), t[:, 0])[0, 1] > 0.9
    emb = m(rng.normal(size=(4, 32)).astype(np.float32) + 4.0)     # embeddings input
    assert emb.logits.shape == (4, 3)


def test_hybrid_wide_test_variant_keeps_the_wide_layout():
    m = create_model("test_hybrid_wide", in_chans=3, num_classes=4)
    c = m.config
    assert c["arch"] == "test_hybrid_wide" and c["cnn_width"] == 2 * c["stem_width"]
    assert c["num_heads"] == create_model("hybrid_wide").config["num_heads"]


# ---------------------------------------------------------------- hybrid conv blocks: ConvNormAct, old checkpoints
def _randomise_bn(m: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.randn(mod.num_features, generator=g))
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g))


@pytest.mark.parametrize("dims", [2, 3])
def test_hybrid_conv_blocks_compute_conv_bn_relu(dims):
    """The ConvNormAct blocks (2D and 3D) equal the former torch Conv → BatchNorm → ReLU."""
    from phenotyping.models._base import conv_bn_act
    from phenotyping.models._blocks import ConvNormAct

    m = create_model("test_hybrid" if dims == 2 else "test_hybrid3d", in_chans=2).eval()
    block = m.stem[0]
    assert all(isinstance(b, ConvNormAct) for b in [*m.stem, *m.cnn])
    _randomise_bn(m)
    old = conv_bn_act(dims, 2, block.conv.out_channels, 3, 2).eval()
    old.load_state_dict({k.replace("conv.", "0.").replace("bn.", "1."): v for k, v in block.state_dict().items()})
    x = _x(2, 2, 16, 3 if dims == 3 else None)
    with torch.inference_mode():
        assert torch.equal(block(x), old(x))


@pytest.mark.parametrize("name", ["test_hybrid", "test_hybrid3d"])
def test_checkpoint_with_the_old_conv_block_keys_still_loads(name, tmp_path):
    """Checkpoints saved before the ConvNormAct blocks (keys stem.0.0.weight, stem.0.1.running_mean…) load unchanged."""
    import re

    from phenotyping.models.checkpoint import CHECKPOINT, load_model_dir, save_model_dir
    from phenotyping.models.preprocess import Preprocess

    torch.manual_seed(0)
    m = create_model(name, in_chans=2, num_classes=3, num_targets=1).eval()
    _randomise_bn(m)
    pre = Preprocess(16, ["a", "b"], [0.0, 0.0], [1.0, 1.0])
    save_model_dir(tmp_path, m, {"id": "x", "classes": ["p", "q", "r"]}, preprocess=pre, targets=None)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    old = {"conv": "0", "bn": "1"}
    legacy = {re.sub(r"^(stem|cnn|cam_layer)\.(\d+)\.(conv|bn)\.", lambda g: f"{g[1]}.{g[2]}.{old[g[3]]}.", k): v
              for k, v in ck["state_dict"].items()}
    assert "stem.0.0.weight" in legacy and "stem.0.1.running_var" in legacy and "stem.0.conv.weight" not in legacy
    ck["state_dict"] = legacy
    torch.save(ck, tmp_path / CHECKPOINT)
    lm = load_model_dir(tmp_path)
    x = _x(3, 2, 16, 3 if name.endswith("3d") else None)
    with torch.inference_mode():
        a, b = m(x), lm.model(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.regression, b.regression)


@pytest.mark.parametrize("folder", ["jurkat-cnn", "jurkat-hybrid", "wbc-hybrid"])
def test_shipped_models_load(folder):
    from pathlib import Path

    from phenotyping.models.checkpoint import load_model_dir

    path = Path(__file__).resolve().parent.parent / "models" / folder
    if not (path / "checkpoint.pt").is_file():
        pytest.skip(f"{path} is not shipped in this checkout")
    lm = load_model_dir(path)
    s = lm.preprocess.img_size
    with torch.inference_mode():
        out = lm.model(_x(2, lm.model.config["in_chans"], s))
    assert out.logits.shape == (2, len(lm.classes)) and torch.isfinite(out.logits).all()


# ---------------------------------------------------------------- losses
def test_uncertainty_loss_matches_kendall_forms():
    from phenotyping.training.losses import UncertaintyWeightedLoss

    loss = UncertaintyWeightedLoss(num_targets=1)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    reg, tgt = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [0.0]])
    ce = torch.nn.functional.cross_entropy(logits, y)
    total, _ = loss(logits, reg, y, tgt)
    assert torch.isclose(total, ce + 0.5 * 0.5)                     # s = 0: CE + ½·MSE
    with torch.no_grad():
        loss.log_var_cls.fill_(1.0)
        loss.log_var_reg.fill_(2.0)
    total, _ = loss(logits, reg, y, tgt)
    expect = np.exp(-1.0) * ce + 0.5 * 1.0 + 0.5 * np.exp(-2.0) * 0.5 + 0.5 * 2.0
    assert torch.isclose(total, torch.as_tensor(expect, dtype=total.dtype))


def test_loss_ignores_missing_targets_and_fixed_weights():
    from phenotyping.training.losses import make_loss

    fixed = make_loss("fixed", 1)
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    reg, tgt = torch.tensor([[1.0], [5.0]]), torch.tensor([[0.0], [float("nan")]])
    total, parts = fixed(logits, reg, y, tgt)
    assert parts["mse"] == pytest.approx(1.0)
    assert float(total) == pytest.approx(np.log(3) + 1.0, rel=1e-5)
    with pytest.raises(ValueError, match="uncertainty"):
        make_loss("magic", 1)


# ---------------------------------------------------------------- augmentation
def test_augmentation_moves_all_channels_together():
    from phenotyping.training.data import augment
    from phenotyping.models.preprocess import channel_specs

    base = np.arange(36, dtype=np.float32).reshape(6, 6)
    x = np.stack([base, base * 2, base + 7])
    specs = channel_specs(["brightfield", "darkfield", "fluor"])
    seen = set()
    for seed in range(30):
        a = augment(x, specs, np.random.default_rng(seed))
        assert np.array_equal(a[1], a[0] * 2) and np.array_equal(a[2], a[0] + 7)
        seen.add(a[0].tobytes())
    assert len(seen) == 8          # all 8 flips/rotations of the square occur


def test_dpc_channels_negate_or_swap_under_flips_and_never_rotate():
    from phenotyping.training.data import augment
    from phenotyping.models.preprocess import channel_specs

    rng = np.random.default_rng(1)
    img = rng.normal(size=(5, 5)).astype(np.float32)
    x = np.stack([img, img + 1, img - 1, img * 3])   # dpc_lr, dpc_left, dpc_right, brightfield
    specs = channel_specs(["dpc_lr", "dpc_left", "dpc_right", "brightfield"])
    for seed in range(40):
        a = augment(x, specs, np.random.default_rng(seed))
        bf = a[3] / 3
        h = np.array_equal(bf, img[:, ::-1]) or np.array_equal(bf, img[::-1, ::-1])
        v_only = np.array_equal(bf, img[::-1, :])
        assert h or v_only or np.array_equal(bf, img), "rotated although DPC channels forbid it"
        if h:
            assert np.allclose(a[0], -bf)                    # left−right difference changes sign
            assert np.allclose(a[1], bf - 1) and np.allclose(a[2], bf + 1)   # left/right images swap
        else:
            assert np.allclose(a[0], bf) and np.allclose(a[1], bf + 1)


def test_lone_half_pupil_image_is_never_flipped_across_its_axis():
    from phenotyping.training.data import augment
    from phenotyping.models.preprocess import channel_specs

    specs = channel_specs(["dpc_left", "brightfield"])        # no dpc_right to swap with
    assert specs[0].hflip == "never" and specs[0].vflip == "same"
    img = np.arange(25, dtype=np.float32).reshape(5, 5)
    x = np.stack([img, img * 2])
    seen = set()
    for seed in range(30):
        a = augment(x, specs, np.random.default_rng(seed))
        assert np.array_equal(a[0], img) or np.array_equal(a[0], img[::-1, :])   # identity or vertical flip only
        seen.add(a[0].tobytes())
    assert len(seen) == 2
    with pytest.raises(ValueError, match="differ"):
        channel_specs(["DPC_Left", "dpc_left"])


def test_fit_to_size_pads_and_shrinks():
    from phenotyping.models.preprocess import fit_to_size

    small = np.full((2, 10, 6), 5, np.uint16)
    out = fit_to_size(small, 16)
    assert out.shape == (2, 16, 16) and out.dtype == np.float32 and (out == 5).all()
    big = np.ones((3, 100, 50), np.uint8)
    assert fit_to_size(big, 20).shape == (3, 20, 20)
    assert fit_to_size(np.ones((1, 4, 30, 30)), 15).shape == (1, 4, 15, 15)


# ---------------------------------------------------------------- splits, targets
def test_grouped_split_has_no_group_leak_and_keeps_classes():
    from phenotyping.training.data import split_indices

    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(20)], 30)
    labels = rng.choice(["a", "b", "c"], size=600)
    s = split_indices(labels, groups, val_fraction=0.15, test_fraction=0.15, seed=3)
    parts = [set(groups[s[k]]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(len(s[k]) for k in s) == 600
    assert set(labels[s["train"]]) == {"a", "b", "c"}


def test_grouped_split_refuses_groups_confounded_with_classes():
    from phenotyping.training.data import split_indices

    labels = ["a"] * 50 + ["b"] * 50 + ["c"] * 50
    groups = ["G1"] * 50 + ["G2"] * 50 + ["G3"] * 50
    with pytest.raises(ValueError, match="confounded"):
        split_indices(labels, groups, seed=0)


def test_stratified_split_is_seeded():
    from phenotyping.training.data import split_indices

    labels = ["a"] * 40 + ["b"] * 20
    s1, s2 = split_indices(labels, seed=5), split_indices(labels, seed=5)
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert set(np.asarray(labels)[s1["val"]]) == {"a", "b"}


def test_target_scaler_round_trip_with_log():
    from phenotyping.models.preprocess import TargetScaler

    y = np.array([[1.0, 10.0], [2.0, 100.0], [3.0, 1000.0]])
    sc = TargetScaler.fit(y, ["a", "b"], [False, True])
    z = sc.transform(y)
    assert np.allclose(z.mean(0), 0, atol=1e-6) and np.allclose(z.std(0), 1, atol=1e-6)
    assert np.allclose(sc.inverse(z), y)
    with pytest.raises(ValueError, match="log"):
        TargetScaler.fit(np.array([[0.0], [1.0]]), ["c"], [True])


def test_class_weights_balance_counts():
    from phenotyping.training.data import class_weights

    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[2] == 0 and w[0] * 3 == pytest.approx(w[1] * 1)


# ---------------------------------------------------------------- calibration, explanations
def test_temperature_softens_overconfident_logits():
    from phenotyping.training.calibration import fit_temperature, unidentified_threshold
    from phenotyping.models.forward import softmax

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3))
    logits[np.arange(400), y] += 1.0
    t = fit_temperature(logits * 10, y)                  # ten times too confident
    assert 5 < t < 20
    p, info = unidentified_threshold(softmax(logits * 10, t), y, max_review_fraction=0.3)
    assert 0 < p < 1 and info["val_review_fraction"] <= 0.3 + 1e-9


def test_explanations_shapes():
    from phenotyping.analysis.explain import embed_2d, grad_cam, occlusion_map

    torch.manual_seed(0)
    m = create_model("test_hybrid", in_chans=2, num_classes=3).eval()
    x = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    occ = occlusion_map(m, x, 1, patch=4, stride=4)
    cam = grad_cam(m, x, 1)
    assert occ.shape == cam.shape == (16, 16)
    assert np.isfinite(occ).all() and cam.min() >= 0 and cam.max() <= 1
    emb = embed_2d(np.random.default_rng(0).normal(size=(20, 5)))
    assert emb.shape == (20, 2)
    with pytest.raises(ValueError, match="tsne"):
        embed_2d(np.zeros((5, 2)), method="pca")


@pytest.mark.parametrize("name", NEURAL_3D)
def test_explanations_on_z_stacks(name):
    from phenotyping.analysis.explain import grad_cam, occlusion_map

    torch.manual_seed(0)
    m = create_model(name, in_chans=2, num_classes=3).eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)     # (C, Z, H, W)
    cam = grad_cam(m, x, 2)
    occ = occlusion_map(m, x, 2, patch=4, stride=4)
    assert cam.shape == occ.shape == (3, 16, 16)
    assert cam.min() >= 0 and cam.max() <= 1 and np.isfinite(occ).all()
    assert occlusion_map(m, x, 2, patch=8, stride=8, zpatch=3).shape == (3, 16, 16)


def test_z_stack_explanations_keep_the_planes_apart():
    """A model that reads only plane 1 of 3: occlusion is zero on planes 0 and 2; Grad-CAM of a blob in plane 1
    (no bias, positive weights, so activations exist only there) stays in plane 1 and near the blob."""
    from phenotyping.analysis.explain import grad_cam, occlusion_map
    from phenotyping.models._base import ModelOutput

    class PlaneOne(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1), bias=False)   # no mixing along Z
            self.cam_layer = self.conv
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            f = torch.relu(self.conv(x))[:, :, 1].mean((2, 3))                # (B, 4) from plane 1 only
            return ModelOutput(self.fc(f), f.new_zeros(len(f), 0), f, {})

    m = PlaneOne().eval()
    noise = np.random.default_rng(1).normal(size=(2, 3, 12, 12)).astype(np.float32)
    target = int(m(torch.from_numpy(noise[None])).logits.argmax())
    occ = occlusion_map(m, noise, target, patch=4, stride=2)
    assert occ.shape == (3, 12, 12) and np.abs(occ[[0, 2]]).max() == 0 and np.abs(occ[1]).max() > 0

    with torch.no_grad():
        m.conv.weight.abs_()
        m.fc.weight.fill_(0.25)
    blob = np.zeros((2, 3, 12, 12), np.float32)
    blob[:, 1, 2:5, 7:10] = 1.0
    cam = grad_cam(m, blob, 0)
    assert cam.shape == (3, 12, 12) and cam.max() == 1.0
    assert cam[[0, 2]].max() == 0
    assert cam[1, 1:6, 6:11].sum() == pytest.approx(cam.sum())   # within one pixel of the blob
    with pytest.raises(ValueError, match="C, Z, H, W"):
        grad_cam(m, blob[None], 0)
