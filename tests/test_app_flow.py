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
