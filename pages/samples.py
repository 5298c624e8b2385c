"""Samples: create a sample, upload its image set, see what was ingested and every refused file; list and search."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from pathlib import Path

import streamlit as st

from pages._common import (allowed, attempt, clear_staged, flash, get_store, lock_notice, md, require_user,
                           sample_header, show_flash, signed_version, stage_uploads, staged_files, staging_dir)
from phenotyping.jobs import ingest_and_record, ingest_runs
from phenotyping.schemas import SAMPLE_ID_PATTERN, Sample, SampleStatus, Specimen
from phenotyping.settings import get_settings

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "zip", "csv"]
SAMPLE_ID_HELP = ("The lab's sample id: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                  "(e.g. BAL-2026-0042)")

store = get_store()
user = require_user()
settings = get_settings()
st.title("Samples")
show_flash()


def time_fields(what: str, key: str, current: datetime | None = None, *,
                disabled: bool = False) -> tuple[bool, date | None, time]:
    """Three columns for one sample time (UTC): known?, day, clock time. ``what`` is 'Collection' or 'Receipt'."""
    shown = current.astimezone(timezone.utc) if current else None
    c1, c2, c3 = st.columns(3)
    known = c1.checkbox(f"{what} time known", value=shown is not None, key=f"{key}_known", disabled=disabled)
    day = c2.date_input(f"{what} date (UTC)", value=shown.date() if shown else None, key=f"{key}_day",
                        disabled=disabled)
    hour = c3.time_input("at (UTC)", value=shown.time() if shown else time(8, 0), key=f"{key}_time",
                         disabled=disabled)
    return known, day, hour


def chosen_time(what: str, known: bool, day: date | None, hour: time) -> datetime | None:
    """The time entered with :func:`time_fields` (UTC), None when not known.

    Raises:
        ValueError: the box is ticked but no date given, or a date is given without ticking the box (it would be
            dropped without a word otherwise).
    """
    if known and not day:
        raise ValueError(f"Give the {what.lower()} date, or untick '{what} time known'.")
    if day and not known:
        raise ValueError(f"A {what.lower()} date ({day:%Y-%m-%d}) is filled in but '{what} time known' is not "
                         f"ticked, so it would not be recorded: tick '{what} time known' to record it, or clear "
                         "the date.")
    return datetime.combine(day, hour, tzinfo=timezone.utc) if known and day else None


def checked_sample_id(sample_id: str) -> str:
    """The typed sample id, stripped; ValueError saying what to type (never the pattern itself)."""
    import re

    value = sample_id.strip()
    if not value:
        raise ValueError(f"Give the sample id. {SAMPLE_ID_HELP}.")
    if not re.fullmatch(SAMPLE_ID_PATTERN, value):
        bad = sorted({ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch in "._-"))})
        what = (f"contains {', '.join(repr(c) for c in bad)}" if bad else
                "is longer than 64 characters" if len(value) > 64 else "does not start with a letter or digit")
        raise ValueError(f"Sample id {value!r} {what}. {SAMPLE_ID_HELP}.")
    return value


def create_sample(sample_id: str, specimen: str, pseudonym: str, requester: str, notes: str,
                  collected: tuple[bool, date | None, time], received: tuple[bool, date | None, time]) -> Sample:
    sample = Sample(id=checked_sample_id(sample_id), specimen=Specimen(specimen), patient_pseudonym=pseudonym,
                    requester=requester, notes=notes, collected_at=chosen_time("Collection", *collected),
                    received_at=chosen_time("Receipt", *received))
    return store.create_sample(sample, actor=user.username)


def update_details(sample: Sample, *, pseudonym: str, requester: str, notes: str,
                   collected: tuple[bool, date | None, time], received: tuple[bool, date | None, time]) -> Sample:
    """Save the edited details; a time already recorded can be corrected but not removed. The form shows times to
    the minute, so an unchanged minute keeps the recorded time (seconds included)."""
    times = {"collected_at": chosen_time("Collection", *collected), "received_at": chosen_time("Receipt", *received)}
    for field, what in (("collected_at", "collection"), ("received_at", "receipt")):
        old = getattr(sample, field)
        if times[field] is None and old is not None:
            raise ValueError(f"The {what} time is recorded and can be corrected but not removed; tick "
                             f"'{what.capitalize()} time known' again.")
        if old is not None and times[field] is not None and \
                times[field].replace(second=0, microsecond=0) == old.astimezone(timezone.utc).replace(second=0,
                                                                                                     microsecond=0):
            times[field] = old
    return store.update_sample(sample.id, actor=user.username, patient_pseudonym=pseudonym, requester=requester,
                               notes=notes, **times)


def describe_upload(paths: list[Path], folder: Path) -> str:
    """What was uploaded, for the ingest record: the file's name, the folder's name, or the number of files."""
    rel = [p.relative_to(folder) for p in paths]
    if len(rel) == 1:
        return str(rel[0])
    tops = sorted({r.parts[0] for r in rel})
    if len(tops) == 1 and all(len(r.parts) > 1 for r in rel):
        return f"folder {tops[0]} ({len(rel):,} files)"
    shown = ", ".join(str(r) for r in rel[:3])
    return f"{len(rel):,} files ({shown}{', …' if len(rel) > 3 else ''})"


def ingest_staged(sample_id: str, paths: list[Path]) -> object:
    """Ingest this session's staged files (the single .zip, else the folder), record the run, remove the files."""
    folder = staging_dir(sample_id)
    source = paths[0] if len(paths) == 1 and paths[0].suffix.lower() == ".zip" else folder
    bar = st.progress(0.0, text="Reading the image set…")

    def progress(seen: int, total: int | None) -> None:
        bar.progress(1.0 if total else min(0.95, seen / max(len(paths), 1)), text=f"{seen:,} files read")

    try:
        return ingest_and_record(store, source, sample_id, actor=user.username,
                                 source_name=describe_upload(paths, folder), progress=progress,
                                 max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                                 max_files=settings.max_files_per_set)
    finally:
        bar.empty()
        clear_staged(sample_id)


can_write = allowed(user, "sample.write")
if can_write:
    with st.expander("New sample", expanded=not store.list_samples(), icon=":material/add:"):
        # The form's widgets carry a generation in their keys: a new generation after each created sample gives the
        # next sample an empty form (a pseudonym must never carry over to another patient's sample), while a refused
        # form keeps what was typed.
        gen = st.session_state.setdefault("_new_sample_generation", 0)
        with st.form(f"new_sample_{gen}", clear_on_submit=False):
            c1, c2, c3 = st.columns(3)
            sample_id = c1.text_input("Sample id", placeholder="e.g. BAL-2026-0042", key=f"new_id_{gen}",
                                      help=SAMPLE_ID_HELP)
            specimen = c2.selectbox("Specimen", [s.value for s in Specimen], key=f"new_specimen_{gen}",
                                    format_func=lambda v: {"blood": "Blood", "balf": "BAL fluid"}.get(v, v))
            pseudonym = c3.text_input("Patient pseudonym", help="A pseudonym only, never a name",
                                      key=f"new_pseudonym_{gen}")
            requester = st.text_input("Requester", placeholder="e.g. Dr B. Requester, Ward 7",
                                      help="Who ordered the test; printed on the report", key=f"new_requester_{gen}")
            collected = time_fields("Collection", f"new_collected_{gen}" if gen else "new_collected")
            received = time_fields("Receipt", f"new_received_{gen}" if gen else "new_received")
            notes = st.text_area("Notes", height=68, key=f"new_notes_{gen}")
            if st.form_submit_button("Create sample", type="primary"):
                ok, s = attempt(create_sample, sample_id, specimen, pseudonym, requester, notes, collected, received)
                if ok:
                    st.session_state["sample_id"] = s.id
                    st.session_state["_new_sample_generation"] = gen + 1
                    flash(f"Sample {s.id} created. Upload its images below.")
                    st.rerun()

samples = store.list_samples()
if not samples:
    st.info("No samples yet: create one above.")
    st.stop()

ids = [s["id"] for s in samples]
current = st.session_state.get("sample_id")
sel = st.selectbox("Sample", ids, index=ids.index(current) if current in ids else 0)
st.session_state["sample_id"] = sel
sample_header(store, sel)

if can_write:
    with st.expander("Sample details", icon=":material/edit:"):
        current_sample = store.get_sample(sel)
        locked = signed_version(store, sel)
        if locked is not None:
            lock_notice(locked, "what the report shows (pseudonym, requester, collection and receipt times)")
        with st.form(f"details_{sel}", clear_on_submit=False):
            e1, e2 = st.columns(2)
            e_pseudonym = e1.text_input("Patient pseudonym", value=current_sample.patient_pseudonym,
                                        key=f"edit_pseudonym_{sel}", disabled=locked is not None)
            e_requester = e2.text_input("Requester", value=current_sample.requester, key=f"edit_requester_{sel}",
                                        disabled=locked is not None)
            e_collected = time_fields("Collection", f"edit_collected_{sel}", current_sample.collected_at,
                                      disabled=locked is not None)
            e_received = time_fields("Receipt", f"edit_received_{sel}", current_sample.received_at,
                                     disabled=locked is not None)
            e_notes = st.text_area("Notes", value=current_sample.notes, height=68, key=f"edit_notes_{sel}")
            if st.form_submit_button("Save details"):
                ok, _ = attempt(update_details, current_sample, pseudonym=e_pseudonym, requester=e_requester,
                                notes=e_notes, collected=e_collected, received=e_received)
                if ok:
                    flash(f"Details of sample {sel} saved.")
                    st.rerun()

if can_write:
    st.subheader("Upload images")
    limit = settings.max_upload_mb
    mode = st.radio("What to upload", ["Files or one .zip", "A folder"], horizontal=True,
                    help="Single-cell images (PNG, JPEG, BMP, TIFF incl. multi-channel and z-stacks), optionally with "
                         "a manifest.csv naming each cell's file, label and targets.")
    generation = st.session_state.setdefault("_upload_generation", 0)
    files = st.file_uploader(
        "Single-cell images", accept_multiple_files="directory" if mode == "A folder" else True,
        type=IMAGE_TYPES, max_upload_size=limit, key=f"upload_{sel}_{mode}_{generation}",
        help=f"Up to {limit} MB per file; a zip of 10,000 small 16-bit TIFFs is about 40 MB. Larger sets, or sets "
             "already on a server share, go through the command line while the app is stopped: "
             "`python -m phenotyping ingest PATH --sample ID`.")
    if files:
        # Write the files to disk at once and give the uploader a new key, so the server stops holding the bytes.
        ok, _ = attempt(stage_uploads, list(files), sel)
        st.session_state["_upload_generation"] = generation + 1
        if ok:
            st.rerun()
    staged = staged_files(sel)
    if staged:
        folder = staging_dir(sel)
        size_mb = sum(p.stat().st_size for p in staged) / 1e6
        names = ", ".join(f"{p.relative_to(folder)}" for p in staged[:5]) + (" …" if len(staged) > 5 else "")
        st.markdown(f"**Ready to ingest into {md(sel)}:** {len(staged):,} file(s), {size_mb:,.1f} MB — {md(names)}")
    else:
        st.caption(f"Up to {limit} MB per file. Larger sets: `python -m phenotyping ingest PATH --sample {sel}` "
                   "(while the app is stopped).")
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Ingest", type="primary", disabled=not staged, icon=":material/upload:", width="stretch"):
        ok, r = attempt(ingest_staged, sel, staged)
        if ok:
            flash(f"{r.ingested:,} cells ingested into {sel}; {len(r.rejected)} file(s) refused "
                  f"({r.duplicates} duplicates).", "success" if not r.rejected else "warning")
            st.rerun()
    if b2.button("Discard", disabled=not staged, icon=":material/delete:", width="stretch"):
        clear_staged(sel)
        st.rerun()

runs = ingest_runs(store, sel, limit=10)
if runs:
    st.subheader("Ingest runs")
    st.dataframe([{"when (UTC)": r.at.strftime("%Y-%m-%d %H:%M:%S"), "by": r.actor, "source": r.source,
                   "outcome": r.outcome if not r.error else f"failed: {r.error}", "cells ingested": r.ingested,
                   "duplicates": r.duplicates, "files refused": r.rejected_total} for r in runs],
                 hide_index=True, width="stretch", height=min(38 + 35 * len(runs), 320),
                 column_config={"source": st.column_config.TextColumn(width="medium"),
                                "outcome": st.column_config.TextColumn(width="medium")})
    refused_runs = [r for r in runs if r.rejected]
    if refused_runs:
        pick = st.selectbox("Refused files of the run", range(len(refused_runs)), key=f"refused_run_{sel}",
                            format_func=lambda i: f"{refused_runs[i].at:%Y-%m-%d %H:%M:%S} · {refused_runs[i].source}"
                                                  f" · {len(refused_runs[i].rejected)} refused")
        rejected = refused_runs[pick].rejected
        st.dataframe(rejected, hide_index=True, width="stretch", height=min(38 + 35 * len(rejected), 320),
                     column_config={"file": st.column_config.TextColumn("File", width="medium"),
                                    "reason": st.column_config.TextColumn("Reason", width="large")})

st.subheader("All samples")
f1, f2 = st.columns([3, 2])
search = f1.text_input("Search", placeholder="id, pseudonym or notes", label_visibility="collapsed")
status = f2.selectbox("Status", ["all"] + [s.value for s in SampleStatus], label_visibility="collapsed")
rows = store.list_samples(search=search or None, status=None if status == "all" else status)
table = [{"id": s["id"], "specimen": s["specimen"].upper(), "status": s["status"], "cells": s["n_cells"],
          "pseudonym": s["patient_pseudonym"], "model": s["analysis_model_id"] or "",
          "created": (s["created_at"] or "")[:16].replace("T", " "), "by": s["created_by"]} for s in rows]
if table:
    picked = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                          key="samples_table", height=min(38 + 35 * len(table), 420))
    chosen = picked.selection.rows if picked and picked.selection else []
    if chosen and table[chosen[0]]["id"] != sel:
        st.session_state["sample_id"] = table[chosen[0]]["id"]
        st.rerun()
    st.caption("Select a row to work on that sample.")
else:
    st.info("No sample matches.")
