"""The hybrid's own layers (models/_blocks.py) against the timm layers it was built with before, and a prediction
that imports neither timm nor torchvision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode, save_tiny_model, synthetic_cell  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["jurkat-hybrid", "wbc-hybrid"]


def _timm_built(monkeypatch: pytest.MonkeyPatch, name: str, **cfg):
    """The hybrid ``name`` built the way it was before models/_blocks.py: timm's ConvNormAct (2D), Block and
    trunc_normal_ in place of ours."""
    import phenotyping._tv_shim  # noqa: F401  (before timm)
    from timm.layers import ConvNormAct, trunc_normal_
    from timm.models.vision_transformer import Block

    import phenotyping.models.hybrid as hybrid
    from phenotyping.models import create_model

    ours = hybrid._conv_norm_act

    def conv_norm_act(dims, cin, cout, stride=1):
        if dims == 2:
            return ConvNormAct(cin, cout, 3, stride=stride, act_layer=torch.nn.ReLU)
        return ours(dims, cin, cout, stride)

    with monkeypatch.context() as m:
        m.setattr(hybrid, "_conv_norm_act", conv_norm_act)
        m.setattr(hybrid, "Block", Block)
        m.setattr(hybrid, "trunc_normal_", trunc_normal_)
        model = create_model(name, **cfg)
    assert isinstance(model.blocks[0], Block)
    return model


def _x(model, n: int = 8, seed: int = 0) -> torch.Tensor:
    c = model.config
    shape = (n, c["in_chans"], c["img_size"], c["img_size"])
    if c["dims"] == 3:
        shape = (n, c["in_chans"], 3, c["img_size"], c["img_size"])
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _assert_same_outputs(a, b, x) -> None:
    with torch.inference_mode():
        oa, ob = a.eval()(x), b.eval()(x)
    for field in ("logits", "regression", "features"):
        ta, tb = getattr(oa, field), getattr(ob, field)
        assert ta.shape == tb.shape
        assert torch.allclose(ta, tb, rtol=0, atol=1e-6), (field, (ta - tb).abs().max().item())
    assert torch.allclose(oa.gates["fusion"], ob.gates["fusion"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("folder", SHIPPED)
def test_shipped_checkpoint_gives_timms_outputs_with_our_layers(folder, monkeypatch):
    """Each shipped checkpoint (its keys renamed as ``load_model_dir`` does) loads strictly into the hybrid built from our layers and into the same hybrid built
    from timm's, and both give the same logits, regression, features and gates within 1e-6."""
    from phenotyping.models import create_model

    path = ROOT / "models" / folder
    if not (path / "checkpoint.pt").is_file():
        pytest.skip(f"{path} is not shipped in this checkout")
    ck = torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=True)
    ours = create_model(ck["arch"], **ck["config"])
    theirs = _timm_built(monkeypatch, ck["arch"], **ck["config"])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    state = ours.remap_state_dict(ck["state_dict"])  # wbc-hybrid predates the conv/bn names, as load_model_dir does
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    _assert_same_outputs(ours, theirs, _x(ours, 16))


@pytest.mark.parametrize("name", ["test_hybrid", "test_hybrid_wide", "test_hybrid3d", "hybrid"])
def test_a_seeded_build_draws_timms_initial_weights(name, monkeypatch):
    """Our layers are created in timm's order with its initialisers, so the same seed gives the same weights (a
    training run is reproducible across the change), and the untrained nets agree too."""
    from phenotyping.models import create_model

    torch.manual_seed(7)
    ours = create_model(name, in_chans=3, num_classes=4, num_targets=2)
    torch.manual_seed(7)
    theirs = _timm_built(monkeypatch, name, in_chans=3, num_classes=4, num_targets=2)
    sa, sb = ours.state_dict(), theirs.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
    _assert_same_outputs(ours, theirs, _x(ours, 4, seed=1))


def test_block_parts_have_timms_names_and_bounds():
    from phenotyping.models._blocks import Block, ConvNormAct, trunc_normal_

    keys = set(Block(16, 2, 2.0, qkv_bias=True).state_dict())
    assert keys == {f"{p}.{w}" for p in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                    for w in ("weight", "bias")}
    assert set(ConvNormAct(2, 4, 3, 2).state_dict()) == {
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    t = trunc_normal_(torch.empty(10_000), std=5.0)
    assert t.abs().max() <= 2.0 and t.std() > 0.5  # absolute bounds ±2, not ±2 std
    with pytest.raises(ValueError, match="dims"):
        ConvNormAct(2, 4, dims=4)


_PROBE = """
import json, sys
from phenotyping.__main__ import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": sorted(m for m in ("timm", "torchvision") if m in sys.modules),
                  "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def test_predict_with_a_hybrid_imports_neither_timm_nor_torchvision(tmp_path):
    """`predict --manifest` with a tiny hybrid, in a fresh interpreter: the model runs, timm and torchvision are
    never imported."""
    rng = np.random.default_rng(0)
    model = save_tiny_model(tmp_path / "tiny", ["disc", "ring"])
    root = tmp_path / "set"
    root.mkdir()
    lines = ["cell_id,path"]
    for i, kind in enumerate(["disc", "ring"] * 3):
        (root / f"c{i}.tif").write_bytes(encode(synthetic_cell(kind, rng), "tiff"))
        lines.append(f"k{i},c{i}.tif")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-c", _PROBE, "predict", "--model", str(model), "--manifest",
                           str(root / "manifest.csv"), "--bootstrap", "0", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stderr.strip().splitlines()[-1])
    assert probe == {"rc": 0, "loaded": [], "torch": True}
    assert json.loads(done.stdout)["run"]["predicted"] == 6
