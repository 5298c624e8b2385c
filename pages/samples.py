"""Samples: create a sample, upload its image set, see what was ingested and what was refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from pages._common import get_store
from phenotyping.errors import PhenotypingError
from phenotyping.ingest import ingest_set
from phenotyping.schemas import Sample, Specimen
from phenotyping.settings import get_settings

store = get_store()
user = st.session_state.get("username", "reviewer")
st.title("Samples")

with st.expander("New sample", expanded=not store.list_samples()):
    with st.form("new_sample", clear_on_submit=True):
        c1, c2, c3 = st.columns(3)
        sample_id = c1.text_input("Sample id", placeholder="e.g. BAL-2026-0042")
        specimen = c2.selectbox("Specimen", [s.value for s in Specimen], format_func=str.upper)
        pseudonym = c3.text_input("Patient pseudonym", help="A pseudonym only, never a name")
        notes = st.text_area("Notes", height=68)
        if st.form_submit_button("Create sample", type="primary"):
            try:
                store.create_sample(Sample(id=sample_id.strip(), specimen=Specimen(specimen),
                                           patient_pseudonym=pseudonym, notes=notes), actor=user)
                st.session_state["sample_id"] = sample_id.strip()
                st.success(f"Sample {sample_id} created.")
            except (ValueError, PhenotypingError) as e:
                st.error(str(e).splitlines()[0] if "validation error" not in str(e) else
                         "Sample id: use letters, digits, '.', '_' or '-' (at most 64 characters).")

samples = store.list_samples()
if samples:
    ids = [s["id"] for s in samples]
    current = st.session_state.get("sample_id")
    sel = st.selectbox("Sample", ids, index=ids.index(current) if current in ids else 0)
    st.session_state["sample_id"] = sel
    files = st.file_uploader("Upload the sample's single-cell images (files or one .zip)", accept_multiple_files=True,
                             type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "zip", "csv"])
    if files and st.button("Ingest", type="primary"):
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                (Path(tmp) / Path(f.name).name).write_bytes(f.getbuffer())
            src = Path(tmp)
            if len(files) == 1 and files[0].name.lower().endswith(".zip"):
                src = Path(tmp) / Path(files[0].name).name
            s = get_settings()
            try:
                r = ingest_set(store, src, sel, actor=user, max_pixels=s.max_image_pixels,
                               max_bytes=s.max_image_bytes)
                st.success(f"{r.ingested} cells ingested, {r.duplicates} duplicates, {len(r.rejected)} refused.")
                if r.rejected:
                    st.dataframe([x.model_dump() for x in r.rejected], use_container_width=True)
            except PhenotypingError as e:
                st.error(str(e))
    st.subheader("All samples")
    st.dataframe(
        [{"id": s["id"], "specimen": s["specimen"].upper(), "status": s["status"], "cells": s["n_cells"],
          "pseudonym": s["patient_pseudonym"], "created": s["created_at"][:16]} for s in samples],
        use_container_width=True, hide_index=True,
    )
else:
    st.info("No samples yet: create one above.")
