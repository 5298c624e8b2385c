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
