"""The review app's flow without patient mix-ups or dead ends (issue 20): forms that start empty, dates that are
not dropped, QC overrides that count, compatible models only, re-runs that say what they do, the embedding map's
click, errors that say what to type, and the analysis job's stages. AppTest with the fixtures of test_app."""

from __future__ import annotations

import zipfile
from datetime import date
from io import BytesIO

from phenotyping.schemas import QCState
from tests.conftest import cell_array, png_bytes
from tests.test_app import app, app_env, errors, get_store_obj, lab, table  # noqa: F401 - fixtures

# -- Samples ----------------------------------------------------------------------------------------------------------


def plain(at) -> list[str]:
    """The error messages without the Markdown escapes (user text in messages is escaped)."""
    return [e.replace("\\", "") for e in errors(at)]


def _field(at, label):
    return next(t for t in at.text_input if t.label == label)


def test_new_sample_form_starts_empty_after_a_sample_is_created(lab):
    store, _ = lab
    at = app("rev")
    _field(at, "Sample id").input("S2")
    _field(at, "Patient pseudonym").input("P-002")
    next(t for t in at.text_area if t.label == "Notes").input("first patient's note")
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert not at.exception and store.get_sample("S2").patient_pseudonym == "P-002"
    assert _field(at, "Patient pseudonym").value == "" and _field(at, "Sample id").value == ""
    assert next(t for t in at.text_area if t.label == "Notes").value == ""
    _field(at, "Sample id").input("S3")
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert not at.exception
    assert store.get_sample("S3").patient_pseudonym == "" and store.get_sample("S3").notes == ""


def test_a_refused_new_sample_form_keeps_what_was_typed(lab):
    at = app("rev")
    _field(at, "Sample id").input("bad id!")
    _field(at, "Patient pseudonym").input("P-009")
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert not at.exception
    (msg,) = plain(at)
    assert "'bad id!'" in msg and "letters, digits" in msg and "^[" not in msg and "pattern" not in msg
    assert _field(at, "Patient pseudonym").value == "P-009"


def test_an_empty_sample_id_says_what_to_type(lab):
    at = app("rev")
    next(b for b in at.button if b.label == "Create sample").click().run()
    (msg,) = plain(at)
    assert msg.startswith("Give the sample id") and "e.g. BAL-2026-0042" in msg and "^[" not in msg


def test_a_collection_date_without_the_known_box_is_not_dropped_silently(lab):
    store, _ = lab
    at = app("rev")
    _field(at, "Sample id").input("S4")
    next(d for d in at.date_input if d.key == "new_collected_day").set_value(date(2026, 11, 30))
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert not at.exception and not store.sample_exists("S4")
    (msg,) = plain(at)
    assert "2026-11-30" in msg and "Collection time known" in msg
    next(c for c in at.checkbox if c.key == "new_collected_known").check()
    next(b for b in at.button if b.label == "Create sample").click().run()
    assert store.get_sample("S4").collected_at.date() == date(2026, 11, 30)


def _zip(*arrays) -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, seed in enumerate(arrays):
            z.writestr(f"set/c{i}.png", png_bytes(cell_array(seed=seed)))
    return buf.getvalue()


def test_an_all_duplicates_upload_names_every_file_and_its_record_counts_them(lab):
    """S1's cells are seeds 0-11: a zip of five of them is refused whole; the message groups the five reasons, names
    no server path, and the ingest-run row counts 5 duplicates and 5 refused files."""
    store, _ = lab
    at = app("rev")
    at.file_uploader[0].upload("again.zip", _zip(0, 1, 2, 3, 4), "application/zip")
    at.run()
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception
    (msg,) = plain(at)
    assert "5× duplicate" in msg and "every file is already in the sample" in msg
    assert msg.startswith("again.zip:") and ".upload-staging" not in msg and "/" not in msg.split(":")[0]
    at = app("rev")
    run = table(at, "cells ingested")
    assert run["outcome"][0].startswith("failed") and ".upload-staging" not in run["outcome"][0]
    assert (run["duplicates"][0], run["files refused"][0]) == (5, 5)
    assert len(table(at, "file")) == 5


# -- Review -----------------------------------------------------------------------------------------------------------
def _map_with_click(monkeypatch, ids, point):
    """The Review screen's embedding map (t-SNE patched out) after a click on ``point``, as the browser reports it."""
    import numpy as np

    import phenotyping.analysis.cellview as cellview

    monkeypatch.setattr(cellview, "embedding_map",
                        lambda store, cells, model_dir: ([c.id for c in cells], np.arange(2.0 * len(cells)).reshape(-1, 2)))
    at = app("rev", "review")
    at.session_state["review_tab"] = "Embedding map"  # only the open tab runs
    at.run()
    next(b for b in at.button if b.label == "Compute the map").click().run()
    assert not at.exception
    from streamlit.elements.plotly_chart import PlotlySelectionState, PlotlyState

    at.session_state["emb_chart"] = PlotlyState(selection=PlotlySelectionState(
        points=[point], point_indices=[point.get("point_index", 0)], box=[], lasso=[]))
    at.run()
    return at


def test_clicking_a_point_of_the_embedding_map_shows_its_cell(lab, monkeypatch):
    store, ids = lab
    # WebGL scatter points come back without customdata: the cell is found by trace and index.
    at = _map_with_click(monkeypatch, ids, {"curve_number": 0, "point_number": 1, "point_index": 1, "x": 2.0, "y": 3.0})
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown if m.value.startswith("**Cell #")]
    assert len(shown) == 1 and "Predicted" in shown[0]


def test_a_clicked_svg_point_sends_its_customdata_as_an_object_and_its_cell_is_shown(lab, monkeypatch):
    """Chromium sends an SVG point's customdata row (a typed array) as {"0": id}: that id is the cell shown."""
    store, ids = lab
    at = _map_with_click(monkeypatch, ids, {"curve_number": 0, "point_number": 0, "point_index": 0, "x": 0.0,
                                            "y": 1.0, "customdata": {"0": ids[2]}})
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown if m.value.startswith("**Cell #")]
    assert len(shown) == 1 and shown[0].startswith(f"**Cell #{ids[2]}**")
    assert not any("not a cell of this map" in c.value for c in at.caption)


def _exclude_by_qc(store, cell_ids):
    """Image QC excludes the cells: they lose the toy model's prediction, as a real QC run leaves them none."""
    store.set_qc([(c, QCState.excluded, "out of focus: focus 0.10 < 0.30") for c in cell_ids], sample_id="S1",
                 actor="qc")
    store.delete_predictions("S1", "toy-1", actor="rev")
    from tests.test_app import CLASSES
    from phenotyping.schemas import Prediction

    keep = [c.id for c in store.list_cells("S1") if c.id not in set(cell_ids)]
    store.add_predictions([Prediction(cell_id=c, model_id="toy-1", model_version="1", predicted_class=CLASSES[k % 2],
                                      confidence=0.9, probabilities={x: 0.9 if x == CLASSES[k % 2] else 0.1
                                                                     for x in CLASSES})
                           for k, c in enumerate(keep)], sample_id="S1", actor="rev")


def test_a_cell_without_prediction_never_reads_predicted_none(lab):
    store, ids = lab
    _exclude_by_qc(store, ids[:1])
    at = app("rev", "review")
    at.radio(key="group_S1").set_value("Excluded").run()
    (box,) = [c for c in at.checkbox if c.key == f"pick_{ids[0]}"]
    assert "None" not in box.help and "not predicted" in box.help.replace("\\", "")


def _counted(at):
    diff = table(at, "raw %")
    return dict(zip(diff["class"], diff["cells"]))


def test_a_qc_excluded_cell_counts_once_a_reviewer_overrides_it_with_a_reason(lab):
    store, ids = lab
    _exclude_by_qc(store, ids[2:4])
    at = app("rev", "review")
    before = _counted(at)
    at.radio(key="group_S1").set_value("Excluded").run()
    for cid in ids[2:4]:
        at.checkbox(key=f"pick_{cid}").check()
    at.run()
    at.button(key="to_lymphocyte").click().run()  # no reason: refused, nothing changes
    assert not at.exception
    (msg,) = plain(at)
    assert "excluded by image QC" in msg and "give a reason" in msg
    assert store.get_cell(ids[2]).reviewed_label is None
    at.text_input(key="qc_override_reason").input("in focus on inspection")
    at.button(key="to_lymphocyte").click().run()
    assert not at.exception
    assert _counted(at) == {**before, "lymphocyte": before["lymphocyte"] + 2}
    assert {store.get_cell(c).qc_state for c in ids[2:4]} == {QCState.overridden}
    events = store.list_audit(sample_id="S1", action="cell.qc_override")
    assert len(events) == 2 and {e.after["reason"] for e in events} == {"in focus on inspection"}
    assert events[0].before["qc_reason"].startswith("out of focus") and events[0].actor == "rev"


def test_a_qc_override_survives_a_rerun_of_the_analysis(lab):
    """Running the model again checks the images again; an overridden cell is left as the reviewer decided."""
    from phenotyping.analysis.inference import _cells_to_predict
    from phenotyping.analysis.review import reclassify_cells

    store, ids = lab
    _exclude_by_qc(store, ids[2:3])
    reclassify_cells(store, "S1", ids[2:3], "neutrophil", actor="rev", note="clear nucleus")
    _, todo = _cells_to_predict(store, "S1", "toy-1")
    assert ids[2] not in {c.id for c in todo}


# -- Analyse ----------------------------------------------------------------------------------------------------------
def _register(store, app_env, model_id: str, channels: list[str]):
    import json

    from tests.test_app import CARD

    card = {**CARD, "id": model_id, "input": {"channels": channels, "img_size": 32}}
    folder = app_env / model_id
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps(card))
    store.register_model(model_id, path=str(folder), card=card, actor="admin", usable=True)


def test_analyse_offers_only_models_that_can_read_the_sample(lab, app_env):
    store, _ = lab
    _register(store, app_env, "rgb-smear", ["red", "green", "blue"])
    at = app("rev", "analyse")
    assert not at.exception
    assert at.selectbox(key="model_S1").options == ["toy-1"]
    assert any("rgb-smear takes 3 channel(s) (red, green, blue)" in c.value.replace("\\", "") for c in at.caption)


def test_analyse_shows_the_running_jobs_model_and_what_a_rerun_does(lab, app_env):
    store, _ = lab
    _register(store, app_env, "toy-2", ["grey"])
    at = app("rev", "analyse")
    note = [c.value for c in at.caption if "running it again" in c.value]
    assert len(note) == 1 and "already predicted every cell" in note[0] and "predicts 0 cells" in note[0]
    jid = store.create_job("predict", actor="rev", sample_id="S1", params={"model_id": "toy-2"}, total=12)
    store.update_job(jid, status="running", message="predicting cells 1-12 of 12")
    at.run()
    assert not at.exception
    shown = at.selectbox(key="model_running")
    assert shown.value == "toy-2" and shown.disabled
    assert any(f"Job {jid} is analysing the sample with toy-2" in c.value for c in at.caption)
    store.update_job(jid, status="failed", message="stopped")


def test_the_job_panel_refreshes_at_the_configured_interval(lab, app_env, monkeypatch):
    """LEUKO_JOB_POLL_S sets how often the running job's panel reruns (each rerun costs the server and the browser
    CPU that the job shares on a small machine); a finished job's panel does not poll at all."""
    import streamlit as st

    from phenotyping.settings import get_settings

    seen = []
    real = st.fragment

    def spy(func=None, *, run_every=None):
        seen.append(run_every)
        return real(func, run_every=run_every) if func is not None else real(run_every=run_every)

    monkeypatch.setattr(st, "fragment", spy)
    monkeypatch.setenv("LEUKO_JOB_POLL_S", "2.5")
    get_settings.cache_clear()
    store, _ = lab
    at = app("rev", "analyse")                      # the app's start marks jobs it did not start as stopped
    assert seen == [None]                           # no job: no polling
    jid = store.create_job("predict", actor="rev", sample_id="S1", params={"model_id": "toy-1"}, total=12)
    store.update_job(jid, status="running", message="predicting cells 1-12 of 12")
    at.run()
    assert not at.exception and seen[-1] == 2.5
    store.update_job(jid, status="failed", message="stopped")
    seen.clear()
    at.run()
    assert not at.exception and seen and 2.5 not in seen


def test_a_job_poll_interval_out_of_range_is_refused_by_name(monkeypatch):
    import pydantic

    from phenotyping.settings import Settings

    monkeypatch.setenv("LEUKO_JOB_POLL_S", "0.01")
    try:
        Settings()
    except pydantic.ValidationError as e:
        assert "job_poll_s" in str(e)
    else:
        raise AssertionError("a 10 ms poll was accepted")


# -- Users ------------------------------------------------------------------------------------------------------------
def test_users_form_keeps_what_was_typed_and_says_what_a_username_may_be(lab):
    from tests.test_app import PASSWORD

    store, _ = lab
    at = app("admin", "users")
    form = {t.label: t for t in at.text_input}
    form["Username"].input("New Rev")
    form["Full name"].input("Dr New")
    form["Initial password"].input(PASSWORD)
    next(b for b in at.button if b.label == "Create account").click().run()
    assert not at.exception
    (msg,) = plain(at)
    assert "'New Rev'" in msg and "lower-case letters" in msg and "^[" not in msg and "pattern" not in msg
    form = {t.label: t for t in at.text_input}
    assert (form["Username"].value, form["Full name"].value) == ("New Rev", "Dr New")
    form["Username"].input("newrev")
    next(b for b in at.button if b.label == "Create account").click().run()
    assert not at.exception and store.get_user("newrev")[0].display_name == "Dr New"
    form = {t.label: t for t in at.text_input}
    assert (form["Username"].value, form["Full name"].value) == ("", "")
