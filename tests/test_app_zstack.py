"""The Review screen shows a z-stack explanation as a maximum projection or one plane at a time (AppTest).

The explanation itself is computed by ``explain_cell`` (tested with real tiny 3D models in test_zstack_train.py);
here it is replaced by a fixed z-stack explanation so the screen's handling of planes is what is tested.
"""

from __future__ import annotations

import numpy as np

from tests.test_app import app, app_env, lab  # noqa: F401  (fixtures)

PLANES = 5


def _captions(at) -> list[str]:
    """Captions of every image on the screen (AppTest has no typed accessor for images)."""
    return [c for el in at.main if type(el).__name__ == "Image" for c in el.captions]


def test_review_shows_a_z_stack_explanation_per_plane_and_as_projection(lab, monkeypatch):
    import phenotyping.analysis.cellview as cv

    store, ids = lab
    stack = np.full((2, PLANES, 32, 32), 200, np.uint16)
    stack[:, :, 8:24, 8:24] = 900
    heat = np.zeros((PLANES, 32, 32), np.float32)
    heat[1, 10:20, 10:20] = 1.0
    calls = []

    def fake_explain(store_, cell, model_dir, *, method, target):
        calls.append((cell.id, method, target))
        return cv.build_explanation(method, target or "neutrophil", stack, heat)

    monkeypatch.setattr(cv, "explain_cell", fake_explain)
    at = app("rev", "review")
    at.checkbox(key=f"pick_{ids[0]}").check().run()
    next(b for b in at.button if b.label == "Explain").click().run()
    assert not at.exception, at.exception
    assert calls == [(ids[0], "gradcam", None)]
    view = at.radio(key="explain_view")
    assert view.value == "Maximum projection"
    assert any("maximum projection" in c for c in _captions(at))
    view.set_value("One plane").run()
    assert not at.exception, at.exception
    plane = at.slider(key="explain_plane")
    assert (plane.min, plane.max, plane.value) == (1, PLANES, 3)
    plane.set_value(2).run()
    assert not at.exception, at.exception
    assert any(f"plane 2 of {PLANES}" in c for c in _captions(at))
    assert len(calls) == 1          # moving the slider shows the kept explanation; it is not recomputed


def test_models_screen_offers_3d_architectures_for_z_stack_samples(lab, app_env):
    """Training from the app uses the same architectures as the CLI: 3D ones for z-stacks, 2D ones for images."""
    from conftest import encode

    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from tests.test_app import get_store_obj

    store = get_store_obj()
    root = app_env / "zset"
    rng = np.random.default_rng(0)
    for label in ("neutrophil", "lymphocyte"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            stack = rng.integers(0, 900, (2, PLANES, 24, 24), dtype=np.uint16)  # (C, Z, H, W)
            (root / label / f"{label}{i}.tif").write_bytes(encode(stack, "tiff"))
    ingest_set(store, root, "Z1", actor="admin", create=Sample(id="Z1", specimen=Specimen.blood))
    at = app("admin", "models")

    def options_for(sample: str) -> list[str]:
        pick = next(m for m in at.multiselect if m.label.startswith("Samples with labelled cells"))
        pick.set_value([sample]).run()
        assert not at.exception, at.exception
        return next(s for s in at.selectbox if s.label == "Architecture").options

    assert options_for("Z1") == ["hybrid3d", "cnn3d", "resnet3d_50", "vit3d"]
    assert "hybrid" in options_for("S1") and "vit3d" not in options_for("S1")
