"""Report: draft the interpretation, edit it (every save a version), preview the PDF, sign (signer, key password
asked again), download the signed PDF, FHIR JSON and cells CSV; amend a signed report with a reason.

Everything slow (the preview, the signing check, the exports) is computed on demand or once per
:func:`reports.workflow.report_token` (which changes with any change to the sample, its report or the studies), so
typing in the page and other widget interactions stay fast."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import streamlit as st

from pages._common import (allowed, attempt, flash, get_store, hiding_paths, md, pick_sample, require_user,
                           sample_header, show_flash)
from phenotyping.auth import signer_key_path
from phenotyping.settings import get_settings
from reports.context import draft_source_words
from reports.workflow import (amend_report, domain_acknowledgement_needed, draft_report, export_cells_csv,
                              export_fhir, install_signer_key, preview_pdf, report_token, save_edit, sign_report,
                              signed_pdf, signing_problems)

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
token = report_token(store, sample_id, settings)


def display_name(username: str | None) -> str:
    """The account's display name of ``username`` (the name itself when the account has none or is gone)."""
    found = store.get_user(username) if username else None
    return (found[0].display_name or username) if found else (username or "")


def once(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    """``attempt(fn, …)`` computed once per report token and kept in the session (errors are not kept)."""
    cache = st.session_state.setdefault("_report_cache", {})
    key = (name, sample_id, token)
    if key not in cache:
        ok, out = attempt(fn, *args, **kwargs)
        if not ok:
            return False, None
        if len(cache) > 12:
            cache.clear()
        cache[key] = out
    return True, cache[key]


def cached(name: str) -> Any:
    return st.session_state.get("_report_cache", {}).get((name, sample_id, token))


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
    state = (f"signed by {md(display_name(latest.signed_by))} at {latest.signed_at:%Y-%m-%d %H:%M} UTC"
             if latest.signed_at else "not signed")
    amend = f" · amends v{latest.amends_version}: {md(latest.amendment_reason)}" if latest.amends_version else ""
    st.caption(f"Version {latest.version} · {latest.status} · {state} · saved by "
               f"{md(display_name(latest.created_by))}, {md(draft_source_words(latest.interpretation_source))}{amend}")

can_draft = allowed(user, "report.draft")
editable = latest is not None and latest.signed_at is None
if can_draft and (latest is None or editable):
    if st.button("Generate draft" if latest is None else "Redraft", icon=":material/edit_note:",
                 type="primary" if latest is None else "secondary"):
        with st.spinner("Drafting…"):
            ok, out = attempt(draft_report, store, sample_id, actor=user.username)
        if ok:
            rv, record = out
            flash(f"Draft v{rv.version} written: {draft_source_words(record.source, record.outcome)}.")
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
            st.dataframe([{"version": v.version, "status": v.status, "by": display_name(v.created_by),
                           "at": v.created_at.strftime("%Y-%m-%d %H:%M"),
                           "source": draft_source_words(v.interpretation_source),
                           "signed by": display_name(v.signed_by), "text": v.interpretation[:120]}
                          for v in reversed(versions)],
                         hide_index=True, width="stretch")

# -- preview ----------------------------------------------------------------------------------------------------------
if latest is not None:
    st.subheader("Preview")
    if st.button("Preview the PDF", icon=":material/picture_as_pdf:"):
        with st.spinner("Rendering…"):
            once("preview", preview_pdf, store, sample_id)
    pdf = cached("preview")
    if pdf is not None:
        pages = pdf_pages(pdf)
        st.caption(f"{len(pages)} page(s); " + ("the signed PDF." if latest.signed_at else
                                                 "as it would be signed now (not stored)."))
        cols = st.columns(min(len(pages), 2))
        for i, img in enumerate(pages):
            cols[i % len(cols)].image(img, caption=f"page {i + 1}", width="stretch")
        st.download_button("Download the preview", pdf, file_name=f"{sample_id}-v{latest.version}-preview.pdf",
                           mime="application/pdf")

# -- signing ----------------------------------------------------------------------------------------------------------
if latest is not None and editable:
    st.subheader("Sign")
    if not allowed(user, "report.sign"):
        st.info("A signer signs the report; you can prepare and edit it.")
    else:
        key_path = signer_key_path(settings, user.username)
        ok, problems = once("problems", signing_problems, store, sample_id, signer=user.username)
        if ok and problems:
            st.warning("Signing is blocked:\n\n" + "\n".join(f"- {md(p)}" for p in problems), icon=":material/block:")
        elif ok and not key_path.is_file():
            st.write("Upload your signing key once (PKCS#12 .p12 issued by the lab's CA); it stays encrypted with "
                     "your key password. The certificate must be issued by the lab's CA to your name "
                     f"(**{md(user.display_name or user.username)}**), be valid and allow digital signatures.")
            if settings.lab_ca is None:
                st.warning("No lab CA is configured, so no signing key can be accepted: an administrator sets "
                           "LEUKO_LAB_CA to the lab CA's certificate (ca.pem).", icon=":material/key_off:")
            key_file = st.file_uploader("Signing key (.p12)", type=["p12", "pfx"], key="p12")
            key_pw = st.text_input("Key password", type="password", key="p12_pw")
            if key_file is not None and st.button("Keep this key"):
                ok, info = attempt(install_signer_key, store, settings, user.username, key_file.getvalue(),
                                   key_pw.encode())
                if ok:
                    flash(f"Signing key installed (certificate issued to {info['certificate_name']}).")
                    st.rerun()
        elif ok:
            with st.form("sign"):
                st.write(f"Sign version {latest.version} as **{md(user.display_name or user.username)}** "
                         f"({user.role.value}). The signed PDF is final; changes then need an amendment.")
                pw = st.text_input("Key password", type="password")
                ood, ack = domain_acknowledgement_needed(store, sample_id), None
                if ood is not None:  # the analysis was out of distribution: the signer acknowledges it (audited)
                    st.error(f"**Out of distribution.** {md(ood.reason)}.", icon=":material/report:")
                    ack = st.text_area("Why sign despite the out-of-distribution analysis? (audited, printed on "
                                       "the report)", key="domain_ack")
                if st.form_submit_button("Sign the report", type="primary", icon=":material/verified:"):
                    with st.spinner("Rendering and signing…"):
                        ok, out = attempt(hiding_paths(sign_report, {str(key_path): "your installed signing key"}),
                                          store, sample_id, signer=user.username, key_path=key_path,
                                          password=pw.encode(), settings=settings, domain_acknowledgement=ack)
                    if ok:
                        flash(f"Version {out['version']} signed ({out['status']}); SHA-256 {out['sha256'][:16]}…")
                        st.rerun()

# -- downloads and amendment ------------------------------------------------------------------------------------------
signed = [v for v in versions if v.signed_at is not None]
if signed:
    st.subheader("Signed report")
    last_signed = signed[-1]
    v = last_signed.version
    st.caption(f"Version {v}, signed by {md(display_name(last_signed.signed_by))} at "
               f"{last_signed.signed_at:%Y-%m-%d %H:%M} UTC; "
               f"exports are read from the signed PDF (SHA-256 {last_signed.pdf_hash[:16]}…).")
    d1, d2, d3 = st.columns(3)
    ok, data = attempt(signed_pdf, store, sample_id, v)
    if ok:
        d1.download_button("Signed PDF", data, file_name=f"{sample_id}-v{v}.pdf", mime="application/pdf",
                           icon=":material/download:", type="primary")
    ok, bundle = once(f"fhir{v}", export_fhir, store, sample_id, version=v)
    if ok:
        d2.download_button("FHIR R4 bundle (JSON)", json.dumps(bundle, indent=2), icon=":material/download:",
                           file_name=f"{sample_id}-v{v}-fhir.json", mime="application/json")
    ok, cells = once(f"csv{v}", export_cells_csv, store, sample_id, version=v)
    if ok:
        d3.download_button("Cells (CSV)", cells, file_name=f"{sample_id}-v{v}-cells.csv", mime="text/csv",
                           icon=":material/download:")
    if allowed(user, "report.amend") and latest is not None and latest.signed_at is not None:
        with st.expander("Amend the signed report", icon=":material/edit:"):
            reason = st.text_input("Reason for the amendment (shown on the report)")
            if st.button("Start amendment"):
                ok, rv = attempt(amend_report, store, sample_id, reason=reason, actor=user.username)
                if ok:
                    flash(f"Amendment v{rv.version} started: edit it, then sign it.")
                    st.rerun()
