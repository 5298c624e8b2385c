"""ResNet3D and ViT3D for z-stacks: registry, forward shapes, anisotropic stride, tubelets, and the bench by arch."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phenotyping.models import create_model, list_models  # noqa: E402

TINY_3D = ["test_resnet3d", "test_vit3d"]


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_3d_variants_are_registered_with_tiny_test_variants():
    names = list_models()
    assert {"resnet3d_50", "vit3d", "test_resnet3d", "test_vit3d"} <= set(names)
    assert list_models("*3d*") == sorted(n for n in names if "3d" in n)


@pytest.mark.parametrize("name", TINY_3D)
@pytest.mark.parametrize("shape", [(2, 5, 24, 24), (2, 1, 16, 16), (2, 7, 17, 23)])
def test_3d_forward_shapes_finite_and_backward(name, shape):
    torch.manual_seed(0)
    m = create_model(name, in_chans=shape[0], num_classes=3, num_targets=2)
    out = m(_x(4, *shape))
    assert out.logits.shape == (4, 3) and out.regression.shape == (4, 2)
    assert out.features.ndim == 2 and out.features.shape[0] == 4
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()
    (out.logits.logsumexp(1).mean() + out.regression.pow(2).mean()).backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", TINY_3D)
def test_3d_models_refuse_2d_input_and_2d_configs(name):
    m = create_model(name, in_chans=2, num_classes=3)
    with pytest.raises(ValueError, match=r"\(B, C, Z, H, W\)"):
        m(_x(1, 2, 16, 16))
    with pytest.raises(ValueError, match="dims=3"):
        create_model(name, dims=2)


@pytest.mark.parametrize("name", TINY_3D)
def test_3d_config_round_trips(name):
    m = create_model(name, in_chans=2, num_classes=4, num_targets=1)
    again = create_model(m.config["arch"], **m.config)
    assert again.config == m.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_resnet3d_50_layout_and_anisotropic_stride():
    m = create_model("resnet3d_50", in_chans=2, num_classes=5).eval()
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3, m.layer4)] == [3, 4, 6, 3]
    assert m.num_features == 2048
    assert 40e6 < sum(p.numel() for p in m.parameters()) < 55e6   # ResNet-50 inflated to 3×3×3 middle convs
    seen = {}
    hooks = [getattr(m, n).register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, tuple(o.shape)))
             for n in ("stem", "layer1", "layer2", "layer3", "layer4")]
    with torch.inference_mode():
        m(_x(1, 2, 8, 40, 40))
    for h in hooks:
        h.remove()
    # Z is kept through the stem and the first two stages, halved in the last two; H and W shrink by 32 overall.
    assert [seen[n][2] for n in ("stem", "layer1", "layer2", "layer3", "layer4")] == [8, 8, 8, 4, 2]
    assert seen["stem"][3:] == (10, 10) and seen["layer4"][3:] == (2, 2)


def test_vit3d_tubelets_cls_and_resampled_positions():
    m = create_model("test_vit3d", in_chans=2, num_classes=3, img_size=16, z_planes=4, patch_size=4,
                     tubelet_z=2).eval()
    assert m.patch_embed.kernel_size == m.patch_embed.stride == (2, 4, 4)
    assert tuple(m.pos_embed.shape[2:]) == (2, 4, 4)
    with torch.inference_mode():
        t = m.patch_embed(_x(1, 2, 4, 16, 16))
        assert tuple(t.shape[2:]) == (2, 4, 4)
        assert m._pos((2, 4, 4)).shape == (1, 32, 16)
        assert m._pos((4, 4, 4)).shape == (1, 64, 16)        # a deeper stack: the embedding is resampled
        out9 = m(_x(3, 2, 9, 16, 16))                        # Z = 9 padded to 10: 5 tubelets deep
    assert out9.logits.shape == (3, 3) and out9.features.shape == (3, 16)
    # the CLS token is the feature: changing it changes the features
    with torch.no_grad():
        before = m(_x(1, 2, 4, 16, 16)).features.clone()
        m.cls_token.add_(torch.randn(m.cls_token.shape, generator=torch.Generator().manual_seed(1)))
        after = m(_x(1, 2, 4, 16, 16)).features
    assert not torch.allclose(before, after)


def test_bench_by_arch_and_input_shape(capsys):
    from phenotyping.__main__ import main

    assert main(["bench", "--arch", "test_resnet3d,test_vit3d", "--input-shape", "2,5,24,24", "--seconds", "0.05",
                 "--batch-size", "4", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["models"]) == ["test_resnet3d", "test_vit3d"]
    for arch, m in out["models"].items():
        assert m["input_shape"] == [2, 5, 24, 24] and m["cells_per_s"] > 0 and m["flops_per_cell"] > 0
        z = {"z_planes": 5} if arch == "test_vit3d" else {}       # built for the stack's depth
        assert m["parameters"] == sum(p.numel() for p in create_model(arch, in_chans=2, num_classes=5, img_size=24,
                                                                       **z).parameters())
    assert out["relative_to_first"]["test_resnet3d"] == 1.0
    assert np.isclose(out["relative_to_first"]["test_vit3d"],
                      out["models"]["test_vit3d"]["cells_per_s"] / out["models"]["test_resnet3d"]["cells_per_s"],
                      rtol=1e-2)


@pytest.mark.parametrize("argv, message", [
    (["--arch", "test_cnn", "--input-shape", "2,5,24,24"], "takes 2D cells"),
    (["--arch", "test_resnet3d", "--input-shape", "2,24,24"], "takes z-stacks"),
    (["--arch", "test_resnet3d", "--input-shape", "2,0,24,24"], "expected C,H,W or C,Z,H,W"),
    (["--arch", "test_resnet3d"], "go together"),
    ([], "name a model folder"),
])
def test_bench_by_arch_argument_errors(argv, message, capsys):
    from phenotyping.__main__ import main

    assert main(["bench", *argv, "--seconds", "0.01", "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err
