"""Samples: create a sample, upload its image set, see what was ingested and every refused file; list and search."""

from __future__ import annotations

from datetime import datetime, time, timezone
from pathlib import Path

import streamlit as st

from pages._common import (allowed, attempt, flash, get_store, require_user, sample_header, save_uploads,
                           show_flash, upload_tempdir)
from phenotyping.ingest import ingest_set
from phenotyping.schemas import Sample, SampleStatus, Specimen
from phenotyping.settings import get_settings

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "zip", "csv"]

store = get_store()
user = require_user()
settings = get_settings()
st.title("Samples")
show_flash()


def create_sample(sample_id: str, specimen: str, pseudonym: str, notes: str, collected: datetime | None) -> Sample:
    sample = Sample(id=sample_id.strip(), specimen=Specimen(specimen), patient_pseudonym=pseudonym,
                    notes=notes, collected_at=collected)
    return store.create_sample(sample, actor=user.username)


def ingest_uploads(sample_id: str, files: list) -> object:
    """Stream the uploads to a temporary folder on disk, then ingest the folder (or the single .zip)."""
    with upload_tempdir() as tmp:
        paths = save_uploads(files, Path(tmp))
        source = paths[0] if len(paths) == 1 and paths[0].suffix.lower() == ".zip" else Path(tmp)
        bar = st.progress(0.0, text="Reading the image set…")

        def progress(seen: int, total: int | None) -> None:
            bar.progress(1.0 if total else min(0.95, seen / max(len(paths), 1)), text=f"{seen:,} files read")

        result = ingest_set(store, source, sample_id, actor=user.username, progress=progress,
                            max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
        bar.empty()
        return result


can_write = allowed(user, "sample.write")
if can_write:
    with st.expander("New sample", expanded=not store.list_samples(), icon=":material/add:"):
        with st.form("new_sample", clear_on_submit=False):
            c1, c2, c3 = st.columns(3)
            sample_id = c1.text_input("Sample id", placeholder="e.g. BAL-2026-0042")
            specimen = c2.selectbox("Specimen", [s.value for s in Specimen], format_func=lambda v: {
                "blood": "Blood", "balf": "BAL fluid"}.get(v, v))
            pseudonym = c3.text_input("Patient pseudonym", help="A pseudonym only, never a name")
            d1, d2, d3 = st.columns(3)
            known = d1.checkbox("Collection time known", value=False)
            day = d2.date_input("Collected on (UTC)", value=None)
            hour = d3.time_input("at (UTC)", value=time(8, 0))
            notes = st.text_area("Notes", height=68)
            if st.form_submit_button("Create sample", type="primary"):
                collected = (datetime.combine(day, hour, tzinfo=timezone.utc) if known and day else None)
                if known and not day:
                    st.error("Give the collection date, or untick 'Collection time known'.")
                else:
                    ok, s = attempt(create_sample, sample_id, specimen, pseudonym, notes, collected)
                    if ok:
                        st.session_state["sample_id"] = s.id
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
    st.subheader("Upload images")
    mode = st.radio("What to upload", ["Files or one .zip", "A folder"], horizontal=True,
                    help="Single-cell images (PNG, JPEG, BMP, TIFF incl. multi-channel and z-stacks), optionally with "
                         "a manifest.csv naming each cell's file, label and targets.")
    files = st.file_uploader(
        "Single-cell images", accept_multiple_files="directory" if mode == "A folder" else True,
        type=IMAGE_TYPES, max_upload_size=settings.max_upload_mb, key=f"upload_{sel}_{mode}")
    if st.button("Ingest", type="primary", disabled=not files, icon=":material/upload:"):
        ok, r = attempt(ingest_uploads, sel, list(files))
        if ok:
            st.session_state["_last_ingest"] = (sel, r.model_dump(mode="json"))
            flash(f"{r.ingested:,} cells ingested into {sel}; {len(r.rejected)} file(s) refused "
                  f"({r.duplicates} duplicates).", "success" if not r.rejected else "warning")
            st.rerun()

last = st.session_state.get("_last_ingest")
if last and last[0] == sel and last[1]["rejected"]:
    with st.expander(f"Refused files of the last upload ({len(last[1]['rejected'])})", expanded=True):
        st.dataframe(last[1]["rejected"], hide_index=True, width="stretch", height=240,
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
