"""Report: draft the interpretation, edit it (every save a version), preview the PDF, sign (signer, key password
asked again), download the signed PDF, FHIR JSON and cells CSV; amend a signed report with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from pages._common import (allowed, attempt, flash, get_store, pick_sample, require_user, sample_header, show_flash)
from phenotyping.auth import install_signer_key, signer_key_path
from phenotyping.settings import get_settings
from reports.workflow import (amend_report, draft_report, export_cells_csv, export_fhir, preview_pdf, save_edit,
                              sign_report, signing_problems)

store = get_store()
user = require_user()
settings = get_settings()
st.title("Report")
sample_id = pick_sample(store)
if sample_id is None:
    st.stop()
sample_header(store, sample_id)
show_flash()

versions = store.list_report_versions(sample_id)
latest = versions[-1] if versions else None


def pdf_pages(pdf: bytes, *, scale: float = 1.4) -> list:
    """The PDF's pages as PIL images (pdfium)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(pdf)
    try:
        return [doc[i].render(scale=scale).to_pil() for i in range(len(doc))]
    finally:
        doc.close()


# -- interpretation ---------------------------------------------------------------------------------------------------
st.subheader("Interpretation")
if latest is None:
    st.caption("No report yet. The draft is written from the sample's computed results (numbers are checked "
               "against them); you edit it before signing.")
else:
    state = f"signed by {latest.signed_by} at {latest.signed_at:%Y-%m-%d %H:%M} UTC" if latest.signed_at else \
        "not signed"
    amend = f" · amends v{latest.amends_version}: {latest.amendment_reason}" if latest.amends_version else ""
    st.caption(f"Version {latest.version} · {latest.status} · {state} · drafted by {latest.interpretation_source}"
               f"{amend}")

can_draft = allowed(user, "report.draft")
editable = latest is not None and latest.signed_at is None
c1, c2 = st.columns([1, 4])
if can_draft and (latest is None or editable):
    if c1.button("Generate draft" if latest is None else "Redraft", icon=":material/edit_note:",
                 type="primary" if latest is None else "secondary"):
        with st.spinner("Drafting…"):
            ok, out = attempt(draft_report, store, sample_id, actor=user.username)
        if ok:
            rv, record = out
            flash(f"Draft v{rv.version} written ({record.source}, {record.outcome}).")
            st.rerun()
if latest is not None:
    text = st.text_area("Interpretation", value=latest.interpretation, height=200, disabled=not editable or
                        not can_draft, key=f"interp_{sample_id}_{latest.version}")
    if editable and can_draft and st.button("Save edit", icon=":material/save:"):
        ok, rv = attempt(save_edit, store, sample_id, text, actor=user.username)
        if ok:
            flash(f"Saved as version {rv.version}." if rv.version != latest.version else "No change to save.",
                  "success" if rv.version != latest.version else "info")
            st.rerun()
    if len(versions) > 1:
        with st.expander(f"All versions ({len(versions)})", icon=":material/history:"):
            st.dataframe([{"version": v.version, "status": v.status, "by": v.created_by,
                           "at": v.created_at.strftime("%Y-%m-%d %H:%M"), "source": v.interpretation_source,
                           "signed by": v.signed_by or "", "text": v.interpretation[:120]} for v in reversed(versions)],
                         hide_index=True, width="stretch")

# -- preview ----------------------------------------------------------------------------------------------------------
if latest is not None:
    st.subheader("Preview")
    if st.button("Preview the PDF", icon=":material/picture_as_pdf:"):
        with st.spinner("Rendering…"):
            ok, pdf = attempt(preview_pdf, store, sample_id)
        if ok:
            st.session_state[("preview", sample_id)] = (latest.version, pdf)
    prev = st.session_state.get(("preview", sample_id))
    if prev and prev[0] == latest.version:
        pages = pdf_pages(prev[1])
        st.caption(f"{len(pages)} page(s), as it would be signed now (not stored).")
        cols = st.columns(min(len(pages), 2))
        for i, img in enumerate(pages):
            cols[i % len(cols)].image(img, caption=f"page {i + 1}", width="stretch")
        st.download_button("Download the preview", prev[1], file_name=f"{sample_id}-v{latest.version}-preview.pdf",
                           mime="application/pdf")

# -- signing ----------------------------------------------------------------------------------------------------------
if latest is not None and editable:
    st.subheader("Sign")
    problems = signing_problems(store, sample_id, signer=user.username)
    if not allowed(user, "report.sign"):
        st.info("A signer signs the report; you can prepare and edit it.")
    elif problems:
        st.warning("Signing is blocked: " + "; ".join(problems) + ".", icon=":material/block:")
    else:
        key_path = signer_key_path(settings, user.username)
        if not key_path.is_file():
            st.write("Upload your signing key once (PKCS#12 .p12 issued by the lab's CA); it stays encrypted with "
                     "your key password.")
            key_file = st.file_uploader("Signing key (.p12)", type=["p12", "pfx"], key="p12")
            key_pw = st.text_input("Key password", type="password", key="p12_pw")
            if key_file is not None and st.button("Keep this key"):
                ok, _ = attempt(install_signer_key, settings, user.username, key_file.getvalue(), key_pw.encode())
                if ok:
                    flash("Signing key installed.")
                    st.rerun()
        else:
            with st.form("sign"):
                st.write(f"Sign version {latest.version} as **{user.display_name or user.username}** "
                         f"({user.role.value}). The signed PDF is final; changes then need an amendment.")
                pw = st.text_input("Key password", type="password")
                if st.form_submit_button("Sign the report", type="primary", icon=":material/verified:"):
                    with st.spinner("Rendering and signing…"):
                        ok, out = attempt(sign_report, store, sample_id, signer=user.username, key_path=key_path,
                                          password=pw.encode())
                    if ok:
                        flash(f"Version {out['version']} signed ({out['status']}); SHA-256 {out['sha256'][:16]}…")
                        st.rerun()

# -- downloads and amendment ------------------------------------------------------------------------------------------
signed = [v for v in versions if v.signed_at is not None]
if signed:
    st.subheader("Signed report")
    last_signed = signed[-1]
    path = store.report_pdf_path(sample_id, last_signed.version)
    d1, d2, d3 = st.columns(3)
    if path and Path(path).is_file():
        d1.download_button("Signed PDF", Path(path).read_bytes(), file_name=Path(path).name,
                           mime="application/pdf", icon=":material/download:", type="primary")
    else:
        d1.error(f"The signed PDF of v{last_signed.version} is missing from the reports folder.")
    ok, bundle = attempt(export_fhir, store, sample_id) if latest and latest.signed_at else (False, None)
    if ok:
        d2.download_button("FHIR R4 bundle (JSON)", json.dumps(bundle, indent=2), icon=":material/download:",
                           file_name=f"{sample_id}-v{last_signed.version}-fhir.json", mime="application/json")
    d3.download_button("Cells (CSV)", export_cells_csv(store, sample_id), file_name=f"{sample_id}-cells.csv",
                       mime="text/csv", icon=":material/download:")
    if allowed(user, "report.amend") and latest is not None and latest.signed_at is not None:
        with st.expander("Amend the signed report", icon=":material/edit:"):
            reason = st.text_input("Reason for the amendment (shown on the report)")
            if st.button("Start amendment"):
                ok, rv = attempt(amend_report, store, sample_id, reason=reason, actor=user.username)
                if ok:
                    flash(f"Amendment v{rv.version} started: edit it, then sign it.")
                    st.rerun()
