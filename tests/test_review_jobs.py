"""The analysis job on the way to review (issue 20): only models that can read the sample's cells are offered and
accepted before a job starts, a re-run says what it does, and the job reports its stages while it works."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tests.test_inference import _fill, model_dir  # noqa: E402,F401 - the tiny two-channel model and its cells


def test_predict_sample_reports_its_stages_in_order(store, sample, model_dir):
    from phenotyping.analysis.inference import predict_sample

    _fill(store, n=6, blanks=0)
    said: list[tuple[str, int, int]] = []
    predict_sample(store, "S1", model_dir, device="cpu", batch_size=4, stage=lambda *a: said.append(a))
    what = [w for w, _, _ in said]
    assert what[0] == "reading images 0/6" and "reading images 6/6" in what
    assert [w for w in what if w.startswith("image QC")] == ["image QC of 4 cells", "image QC of 2 cells"]
    assert [w for w in what if w.startswith(("predicting", "saving"))] == [
        "predicting cells 1-4 of 6", "saving cells 1-4 of 6", "predicting cells 5-6 of 6", "saving cells 5-6 of 6"]
    assert all(total == 6 for _, _, total in said)


def _registered(store, model_dir):
    import json

    card = json.loads((model_dir / "model_card.json").read_text())
    card["input"] = {"channels": ["brightfield", "darkfield"], "img_size": 20, "dims": 2}  # as train writes it
    store.register_model(card["id"], path=str(model_dir), card=card, actor="tester", usable=True)
    return card


def test_the_job_records_each_stage_and_a_rerun_says_nothing_was_new(store, sample, model_dir):
    from phenotyping.jobs import JobRunner, rerun_note, submit_prediction

    _registered(store, model_dir)
    _fill(store, n=4, blanks=0)
    messages: list[str] = []
    update = store.update_job

    def recording(job_id, **kw):
        if kw.get("message"):
            messages.append(kw["message"])
        return update(job_id, **kw)

    store.update_job = recording
    runner = JobRunner(store, min_interval_s=0.0)
    try:
        assert rerun_note(store, "S1", "tiny-0001") is None
        job = runner.wait(submit_prediction(runner, "S1", "tiny-0001", actor="tester", device="cpu"), timeout=120)
        assert job["status"] == "done", job["message"]
        stages = [m.split(" ")[0] for m in messages]
        for word in ("loading", "model", "reading", "image", "predicting", "saving"):
            assert word in stages, (word, messages)
        assert stages.index("loading") < stages.index("reading") < stages.index("predicting") < stages.index("saving")
        note = rerun_note(store, "S1", "tiny-0001")
        assert "already predicted every cell" in note and "predicts 0 cells" in note
        again = runner.wait(submit_prediction(runner, "S1", "tiny-0001", actor="tester", device="cpu"), timeout=120)
        assert again["message"].startswith("nothing new to analyse: all 4 cells") and "kept" in again["message"]
    finally:
        runner.shutdown(wait=True)


def test_a_model_for_other_images_is_not_offered_and_refused_before_the_job(store, sample, model_dir):
    """The tiny model takes two channels; a sample of three-channel images (a stained smear) cannot run it."""
    from conftest import cell_array, png_bytes

    from phenotyping.jobs import JobRunner, compatible_models, input_problem, submit_prediction

    card = _registered(store, model_dir)
    digest, rel = store.put_blob(png_bytes(cell_array(c=3)), suffix=".png")
    store.add_cells("S1", [{"cell_key": "rgb", "content_hash": digest, "source_file": "rgb.png", "blob_path": rel,
                            "shape": (3, 32, 32), "dtype": "uint8"}], actor="tester")
    problem = input_problem(card, [(3, 32, 32)])
    assert "takes 2 channel(s) (brightfield, darkfield)" in problem and "have 3 channel(s)" in problem
    assert input_problem(card, [(2, 20, 20)]) is None
    assert "z-stacks" in input_problem(card, [(2, 5, 20, 20)])
    ok, refused = compatible_models(store, "S1")
    assert ok == [] and "3 channel(s)" in refused["tiny-0001"]
    runner = JobRunner(store)
    try:
        with pytest.raises(ValueError, match="takes 2 channel.*no usable model takes them"):
            submit_prediction(runner, "S1", "tiny-0001", actor="tester")
        assert store.list_jobs(sample_id="S1", kind="predict") == []  # refused before any job started
    finally:
        runner.shutdown(wait=True)
