"""kNN/SVM on the penultimate features of a trained neural model (``train --embed-model DIR``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import encode  # noqa: E402


def _write_set(root: Path, n_per_class: int = 20, seed: int = 0) -> Path:
    """ImageFolder: 'disc' cells hold a bright disc, 'ring' cells a bright ring (2 channels, 16×16 TIFFs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    r = np.hypot(yy - 7.5, xx - 7.5)
    for cls, mask in {"disc": r < 5, "ring": (r > 3) & (r < 6)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.normal(1000, 50, size=(2, 16, 16))
            img[:, mask] += 3000
            (root / cls / f"c{i:02d}.tif").write_bytes(encode(np.clip(img, 0, 65535).astype(np.uint16), "tiff"))
    return root


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A trained test_hybrid in <tmp>/models/emb, and the image set."""
    from phenotyping.training.train import TrainConfig, train

    root = _write_set(tmp_path_factory.mktemp("set") / "cells")
    models = tmp_path_factory.mktemp("models")
    train(root, "cell_type", models / "emb", config=TrainConfig(arch="test_hybrid", epochs=2, seed=0, batch_size=8),
          log=lambda m: None)
    return root, models / "emb"


def _fit_on_embeddings(root: Path, emb: Path, out: Path, arch: str = "test_knn"):
    """Train through the CLI; return the in-memory model that train() saved."""
    import phenotyping.models.checkpoint as ck
    from phenotyping.__main__ import main

    saved = []
    real = ck.save_model_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ck, "save_model_dir", lambda o, m, c, **kw: (saved.append(m), real(o, m, c, **kw))[1])
        assert main(["train", "--manifest", str(root), "--label-column", "cell_type", "--arch", arch,
                     "--embed-model", str(emb), "--out", str(out)]) == 0
    return saved[0]


@pytest.mark.parametrize("arch", ["test_knn", "test_svm"])
def test_classifier_on_embeddings_round_trips_and_evaluates(embedder, tmp_path, capsys, arch):
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.training.data import load_images
    from phenotyping.training.evaluate import evaluate_model_dir
    from phenotyping.models.classical import EmbeddedClassicalModel

    root, emb_dir = embedder
    mem = _fit_on_embeddings(root, emb_dir, tmp_path / arch, arch)
    capsys.readouterr()
    emb = load_model_dir(emb_dir)
    card = json.loads((tmp_path / arch / "model_card.json").read_text())
    src = card["embedding_model"]
    assert src["id"] == emb.id and Path(src["dir"]) == emb_dir.resolve()
    assert (tmp_path / arch / src["relative_dir"]).resolve() == emb_dir.resolve()
    assert card["input"]["normalisation"] == emb.card["input"]["normalisation"]
    assert card["input"]["channel_names_from"] == f"embedding model {emb.id}"

    lm = load_model_dir(tmp_path / arch)
    assert isinstance(lm.model, EmbeddedClassicalModel) and lm.preprocess == emb.preprocess
    x = lm.preprocess.normalise(load_images(sorted(root.glob("*/c0*.tif")), lm.preprocess.img_size), batched=True)
    a, b = mem(x), lm.model(torch.from_numpy(x))
    assert torch.equal(a.logits, b.logits)
    with torch.inference_mode():
        feats = emb.model(torch.from_numpy(x)).features
    assert torch.equal(b.features, feats)                     # it classifies the embedding model's features
    assert torch.equal(lm.model.head(feats.numpy()).logits, b.logits)
    res = evaluate_model_dir(tmp_path / arch, root, split="val", log=lambda m: None)
    assert res["accuracy"] == card["validation"]["accuracy"] and res["n"] == card["validation"]["n"]


def test_a_missing_or_changed_embedding_model_is_a_loud_error(embedder, tmp_path):
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.errors import NotFoundError
    from phenotyping.training.train import TrainConfig, train

    root, emb_dir = embedder
    work = tmp_path / "models"
    shutil.copytree(emb_dir, work / "emb")
    _fit_on_embeddings(root, work / "emb", work / "knn")
    moved = tmp_path / "elsewhere"
    shutil.copytree(work, moved)                              # both folders moved together: found by relative path
    assert load_model_dir(moved / "knn").model.source["id"] == load_model_dir(moved / "emb").id

    shutil.rmtree(work / "emb")
    shutil.rmtree(moved)
    (work / "other").mkdir()
    with pytest.raises(NotFoundError) as e:
        load_model_dir(work / "knn")
    msg = str(e.value)
    emb_id = json.loads((emb_dir / "model_card.json").read_text())["id"]
    assert emb_id in msg and "Model folders in" in msg and "retrain the classifier" in msg

    train(root, "cell_type", work / "emb", log=lambda m: None,   # a different model in the expected place
          config=TrainConfig(arch="test_hybrid", epochs=1, seed=5, batch_size=8))
    with pytest.raises(NotFoundError, match="emb"):
        load_model_dir(work / "knn")


def test_embed_model_needs_a_classical_arch_and_a_neural_embedder(embedder, tmp_path):
    from phenotyping.training.train import TrainConfig, train

    root, emb_dir = embedder
    with pytest.raises(ValueError, match="not a classical model"):
        train(root, "cell_type", tmp_path / "a", log=lambda m: None,
              config=TrainConfig(arch="test_cnn", embed_model=str(emb_dir)))
    train(root, "cell_type", tmp_path / "knn_px", log=lambda m: None, config=TrainConfig(arch="test_knn"))
    with pytest.raises(ValueError, match="neural model"):
        train(root, "cell_type", tmp_path / "b", log=lambda m: None,
              config=TrainConfig(arch="test_knn", embed_model=str(tmp_path / "knn_px")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(root, "cell_type", tmp_path / "c", log=lambda m: None,
              config=TrainConfig(arch="test_knn", embed_model=str(tmp_path / "nowhere")))


def test_embedding_classifier_runs_like_a_neural_model_on_a_device_batch(embedder, tmp_path):
    """What sample prediction does with a model: ``.to(device).eval()``, then a float tensor batch."""
    from phenotyping.models.checkpoint import load_model_dir

    root, emb_dir = embedder
    _fit_on_embeddings(root, emb_dir, tmp_path / "knn")
    lm = load_model_dir(tmp_path / "knn")
    net = lm.model.to("cpu").eval()
    x = torch.zeros(3, 2, lm.preprocess.img_size, lm.preprocess.img_size)
    with torch.inference_mode():
        out = net(x)
    assert out.logits.shape == (3, 2) and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="takes images"):
        net(np.zeros((3, 8), np.float32))


def test_sample_prediction_runs_a_classifier_on_embeddings(embedder, tmp_path, store, sample):
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.analysis.inference import predict_sample

    root, emb_dir = embedder
    _fit_on_embeddings(root, emb_dir, tmp_path / "knn")
    files = sorted(root.glob("*/c1*.tif"))
    cells = []
    for f in files:
        digest, rel = store.put_blob(f.read_bytes(), suffix=".tif")
        cells.append({"cell_key": f"{f.parent.name}-{f.stem}", "content_hash": digest, "source_file": f.name,
                      "blob_path": rel, "shape": (2, 16, 16), "dtype": "uint16", "reference_label": f.parent.name})
    store.add_cells("S1", cells, actor="tester")
    lm = load_model_dir(tmp_path / "knn")
    run = predict_sample(store, "S1", lm, device="cpu", batch_size=8)
    assert run.predicted + run.excluded == len(files) and run.predicted > 0
    preds = store.list_predictions("S1", lm.id)
    assert len(preds) == run.predicted and all(p.predicted_class in ("disc", "ring") for p in preds)


def test_embedding_map_offers_tsne_and_refuses_umap(embedder, store, sample):
    """UMAP was removed (see EMBEDDING_METHODS): asking for it is a clear ValueError before any cell is read, and
    the method that remains maps every cell."""
    from phenotyping.analysis.cellview import embedding_map
    from phenotyping.analysis.explain import EMBEDDING_METHODS, embed_2d

    root, emb_dir = embedder
    files = sorted(root.glob("*/c0*.tif"))
    rows = []
    for f in files:
        digest, rel = store.put_blob(f.read_bytes(), suffix=".tif")
        rows.append({"cell_key": f"{f.parent.name}-{f.stem}", "content_hash": digest, "source_file": f.name,
                     "blob_path": rel, "shape": (2, 16, 16), "dtype": "uint16"})
    store.add_cells("S1", rows, actor="tester")
    cells = store.list_cells("S1")
    assert EMBEDDING_METHODS == ("tsne",)
    ids, xy = embedding_map(store, cells, emb_dir, method="tsne")
    assert ids == [c.id for c in cells] and xy.shape == (len(cells), 2) and np.isfinite(xy).all()
    assert np.ptp(xy, axis=0).min() > 0  # a spread map, not a collapsed one
    for method in ("umap", "pca"):
        with pytest.raises(ValueError, match="choose one of \\['tsne'\\]"):
            embedding_map(store, cells, emb_dir / "missing", method=method)  # refused before the model loads
        with pytest.raises(ValueError, match="tsne"):
            embed_2d(np.zeros((5, 2)), method=method)


def test_the_review_map_is_svg_with_each_points_cell_id_at_any_size():
    """Issue 20 item 7: above 1,000 points plotly would draw WebGL, whose point clicks send no customdata (and were
    lost in headless Chromium); the map stays SVG up to embedding_map's 2,000 cells, each point carrying its id."""
    import numpy as np

    from phenotyping.analysis.cellview import embedding_figure

    n = 2000
    ids = list(range(100, 100 + n))
    labels = ["neutrophil" if i % 3 else "lymphocyte" for i in range(n)]
    fig = embedding_figure(ids, np.random.default_rng(0).normal(size=(n, 2)), labels)
    assert {t.type for t in fig.data} == {"scatter"}
    got = {int(cd[0]) for t in fig.data for cd in t.customdata}
    assert got == set(ids)
    for t in fig.data:   # each trace's points are the cells of its label
        assert {labels[int(cd[0]) - 100] for cd in t.customdata} == {t.name}
