"""The Models page's "Adapt to this lab's reviewed cells" (issue 15 part 5), end to end through AppTest: reviewed
cells of a sample → a training-lane job → the child registered not usable with its before/after table → "Mark
usable" (role-checked, audited). Tiny synthetic cells and ``test_hybrid``."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from tests.test_adapt import write_site  # noqa: E402
from tests.test_app import PASSWORD, app, app_env, get_store_obj  # noqa: E402,F401  (app_env: a fixture)


@pytest.fixture
def adapt_lab(app_env, monkeypatch):
    """An admin and a reviewer, a registered tiny parent (discs vs rings), sample S1 of 20 new-site cells of which
    16 are reviewed as a class of the parent (8 confirmed, 8 reclassified), 2 as debris and 2 not at all."""
    import csv

    from phenotyping.auth import create_first_admin, create_user
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.settings import get_settings
    from phenotyping.training.train import TrainConfig, train

    monkeypatch.setenv("LEUKO_MODEL_DIR", str(app_env / "models"))
    get_settings.cache_clear()
    store = get_store_obj()
    create_first_admin(store, "admin", PASSWORD)
    create_user(store, "rev", PASSWORD, "reviewer", actor="admin")
    parent_dir = app_env / "models" / "parent"
    card = train(write_site(app_env / "a", 32, seed=0), "cell_type", parent_dir,
                 config=TrainConfig(arch="test_hybrid", epochs=2, batch_size=16, test_fraction=0.0),
                 log=lambda m: None)
    store.register_model(card["id"], path=str(parent_dir), card=card, actor="admin", usable=True)
    store.create_sample(Sample(id="S1", specimen=Specimen.blood, patient_pseudonym="P-001"), actor="rev")
    site = write_site(app_env / "b", 20, seed=3, bright=1500.0).parent
    truth = {r["path"].split("/")[-1]: r["cell_type"] for r in csv.DictReader((site / "manifest.csv").open())}
    ids = ingest_set(store, site / "cells", "S1", actor="rev").cell_ids
    cells = {c.id: c for c in store.list_cells("S1")}
    label = {cid: truth[cells[cid].source_file.split("/")[-1]] for cid in ids}
    for cid in ids[:16]:
        store.reclassify([cid], label[cid], actor="rev")
    store.reclassify(ids[16:18], "debris", actor="rev")
    return store, card["id"]


def test_models_page_adapts_a_model_to_reviewed_cells(adapt_lab):
    from pages._common import get_runner

    store, parent_id = adapt_lab
    at = app("admin", "models")
    assert not at.exception
    at.selectbox(key="adapt_parent").set_value(parent_id)
    at.multiselect(key="adapt_samples").set_value(["S1"]).run()
    assert any("16 reviewed cells: disc 8, ring 8" in c.value for c in at.caption)
    assert any("2 reviewed cell(s) with a label the parent lacks left out (debris 2)" in c.value for c in at.caption)
    at.text_input(key="adapt_name").input("parent-our-lab")
    at.number_input(key="adapt_epochs").set_value(2)
    next(b for b in at.button if b.label == "Start adapting").click().run()
    assert not at.exception, at.exception
    job = next(j for j in store.list_jobs(limit=5) if j["params"].get("adapt"))
    assert job["kind"] == "train" and job["params"]["parent"] == parent_id
    done = get_runner().wait(job["id"], timeout=120)
    assert done["status"] == "done", done["message"]
    assert "not usable until marked" in done["message"]
    child = next(m for m in store.list_models() if m["id"] != parent_id)
    assert child["usable"] is False and child["card"]["lineage"]["parent"]["id"] == parent_id
    lin = child["card"]["lineage"]
    assert lin["data_added"]["n_cells"] == 16 and lin["data_added"]["samples"] == ["S1"]
    # the parent stays registered, usable, in its own folder
    parent = next(m for m in store.list_models() if m["id"] == parent_id)
    assert parent["usable"] is True and child["path"] != parent["path"]

    at.run()
    next(s for s in at.selectbox if s.label == "Model").set_value(child["id"]).run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "adapted" in d.value.columns)
    assert list(table["measure"][:2]) == ["accuracy", "macro-F1"]
    assert table["parent"][0] == pytest.approx(lin["before"]["accuracy"])
    assert table["adapted"][0] == pytest.approx(lin["after"]["accuracy"])
    assert any("Not usable yet" in w.value for w in at.warning)
    next(b for b in at.button if b.label == "Mark usable").click().run()
    assert not at.exception
    assert next(m for m in store.list_models() if m["id"] == child["id"])["usable"] is True
    events = store.list_audit(action="model.usable", limit=5)
    assert events and events[0].actor == "admin" and events[0].entity_id == child["id"]


def test_only_models_manage_adapts_or_marks_usable(adapt_lab):
    from pages._common import get_runner
    from phenotyping.auth import PermissionDenied
    from phenotyping.training.adapt import mark_usable, submit_adaptation

    store, parent_id = adapt_lab
    with pytest.raises(PermissionDenied):
        submit_adaptation(get_runner(), parent_id, ["S1"], "by-reviewer", actor="rev")
    with pytest.raises(PermissionDenied):
        mark_usable(store, parent_id, False, actor="rev")
    assert next(m for m in store.list_models() if m["id"] == parent_id)["usable"] is True


def test_export_uses_only_reviewed_labels_of_the_parents_classes(adapt_lab, tmp_path):
    import csv

    from phenotyping.training.adapt import export_reviewed_cells

    store, parent_id = adapt_lab
    manifest, found = export_reviewed_cells(store, ["S1"], tmp_path, classes=["disc", "ring"])
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 16 == found.n and found.left_out == {"debris": 2}
    reviewed = {f"S1:{c.cell_key}": c for c in store.list_cells("S1") if c.reviewed_label}
    for r in rows:
        cell = reviewed[r["cell_id"]]
        assert r["label"] == cell.reviewed_label
        assert (tmp_path / r["path"]).read_bytes() == store.read_cell_bytes(cell)
    with pytest.raises(ValueError, match=r"no cell of \['S1'\] was reviewed .* as one of the parent's classes"):
        export_reviewed_cells(store, ["S1"], tmp_path / "x", classes=["blob"])
    assert json.loads(json.dumps(found.per_class)) == {"disc": 8, "ring": 8}
