"""Analyse: pick a usable model (its card shown), run image QC + prediction as a background job, follow its progress."""

from __future__ import annotations

import streamlit as st

from phenotyping.analysis.domain import banner as domain_banner, stored_check
from pages._common import (allowed, attempt, get_runner, get_store, lock_notice, md, pick_sample, require_user,
                           result_metrics, sample_header, sample_results_cached, show_differential, signed_version)
from phenotyping.analysis.specimens import ROLES, specimen_check
from phenotyping.settings import get_settings
from phenotyping.jobs import FINISHED, active_job, compatible_models, rerun_note, submit_prediction, usable_models

store = get_store()
runner = get_runner()
user = require_user()
st.title("Analyse")
sample_id = pick_sample(store)
if sample_id is None:
    st.stop()
sample_header(store, sample_id)
# the domain check of the analysis run (phenotyping.analysis.domain): out of distribution is shown first, in red
_domain = domain_banner(stored_check(store, sample_id))
if _domain:
    st.error(md(_domain), icon=":material/report:")

if not usable_models(store):
    st.warning("No usable model yet: an admin registers a model and marks it usable on the Models screen.")
    st.stop()
models, refused = compatible_models(store, sample_id)
if refused:
    with st.expander(f"{len(refused)} usable model(s) not offered: they cannot read this sample's images",
                     icon=":material/block:", expanded=not models):
        for mid, why in refused.items():
            st.caption(md(why))
if not models:
    st.warning("No usable model takes this sample's kind of image (see above): an admin trains or registers one on "
               "the Models screen.")
    st.stop()


def specimens_text(card: dict) -> str:
    """What the card declares: each specimen with its classes by role."""
    if "specimens" not in card:
        return "not stated (older card)"
    if not card["specimens"]:
        return "none (not meant for a clinical specimen)"
    return "; ".join(f"{s}: " + ", ".join(f"{r.replace('_', ' ')} {', '.join(rule[r])}" for r in ROLES if rule.get(r))
                     for s, rule in card["specimens"].items())


def specimen_warning(check: object) -> None:
    """The prominent warning that the model is not meant for the sample's specimen (nothing when it is)."""
    if check is not None and not check.declared:
        st.warning(f"**Not validated for {check.specimen} samples.** {md(check.message)}", icon=":material/warning:")


def card_summary(card: dict) -> None:
    val = card.get("validation") or {}
    cal = card.get("calibration") or {}
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Validation accuracy", f"{val['accuracy']:.1%}" if val.get("accuracy") is not None else "—")
    c2.metric("Validation macro-F1", f"{val['macro_f1']:.2f}" if val.get("macro_f1") is not None else "—")
    c3.metric("Review threshold", f"{cal['unidentified_threshold']:.2f}" if "unidentified_threshold" in cal else "—",
              help="Cells whose calibrated confidence is below this wait in the unidentified queue.")
    c4.metric("Input", f"{len(card['input']['channels'])} ch · {card['input']['img_size']} px")
    st.markdown(f"**Classes** {md(', '.join(card['classes']))}  \n"
                f"**Targets** {md(', '.join(t['name'] for t in card.get('targets', [])) or 'none')}  \n"
                f"**Channels** {md(', '.join(card['input']['channels']))}  \n"
                f"**Specimens** {md(specimens_text(card))}  \n"
                f"**Intended use** {md(card.get('intended_use', 'not stated'))}  \n"
                f"**Trained on** {md((card.get('training') or {}).get('n_cells', '?'))} cells · "
                f"{md((card.get('training') or {}).get('data_licence', 'licence not stated'))}")


ids = [m["id"] for m in models]
current = store.analysis_model(sample_id)
job = active_job(store, kind="predict", sample_id=sample_id)
running_model = job["params"].get("model_id") if job is not None else None
left, right = st.columns([2, 3])
with left:
    st.subheader("Model")
    if running_model is not None:  # the picker shows what runs, not a choice that is not running
        st.selectbox("Model", [running_model], disabled=True, label_visibility="collapsed", key="model_running")
        st.caption(f"Job {job['id']} is analysing the sample with {md(running_model)}; another model can be run "
                   "once it has finished.")
        model_id = running_model
    else:
        model_id = st.selectbox("Model", ids, index=ids.index(current) if current in ids else 0,
                                label_visibility="collapsed", key=f"model_{sample_id}")
        if current and current != model_id:
            st.caption(f"The sample's differential currently uses {md(current)}; running {md(model_id)} makes it "
                       "the analysis model.")
        note = rerun_note(store, sample_id, model_id)
        if note:
            st.caption(md(note[0].upper() + note[1:] + "."))
    locked = signed_version(store, sample_id)
    if locked is not None:
        lock_notice(locked, "its analysis")
    if allowed(user, "analyse") and st.button("Run analysis", type="primary",
                                              disabled=job is not None or locked is not None,
                                              icon=":material/play_arrow:"):
        ok, jid = attempt(submit_prediction, runner, sample_id, model_id, actor=user.username)
        if ok:
            st.session_state[f"job_{sample_id}"] = jid
            st.rerun()
cards = {m["id"]: m["card"] for m in usable_models(store)}
with right:
    if model_id in cards:
        with st.expander("Model card", expanded=False, icon=":material/info:"):
            card_summary(cards[model_id])
ok, check = (attempt(specimen_check, cards[model_id], store.get_sample(sample_id).specimen.value)
             if model_id in cards else (False, None))
if ok:
    specimen_warning(check)

st.subheader("Analysis job")
jobs = store.list_jobs(sample_id=sample_id, kind="predict", limit=1)
running = bool(jobs) and jobs[0]["status"] not in FINISHED


@st.fragment(run_every=get_settings().job_poll_s if running else None)
def job_panel() -> None:
    latest = store.list_jobs(sample_id=sample_id, kind="predict", limit=1)
    if not latest:
        st.caption("This sample has not been analysed yet.")
        return
    j = latest[0]
    total = max(int(j["total"]), 1)
    if j["status"] in ("queued", "running"):
        rate = f" · {j['rate']:.0f} cells/s" if j["rate"] else ""
        st.progress(min(j["done"] / total, 1.0), text=f"Job {j['id']} ({md(j['params'].get('model_id'))}) "
                                                           f"{j['status']}: {md(j['message'])}{rate}")
        st.caption("You can keep working on other screens; this panel follows the job.")
        return
    if running:  # it has just finished: refresh the whole screen so the differential appears
        st.rerun(scope="app")
    if j["status"] == "failed":
        st.error(f"Job {j['id']} failed: {md(j['message'])}", icon=":material/error:")
    else:
        st.success(f"Job {j['id']} finished ({md(j['params'].get('model_id'))}): {md(j['message'])}",
                   icon=":material/check_circle:")


job_panel()

if store.analysis_model(sample_id) and not running:
    res = sample_results_cached(store, sample_id)
    if res.differential is not None:
        st.subheader("Differential")
        if res.model_id != model_id:  # the warning above is about the model picked, not this one
            specimen_warning(res.specimen_check)
        result_metrics(res)
        show_differential(res, key="differential")
        if res.differential.apart:
            st.markdown("**Reported apart from the differential** (not in the percentages above)")
            st.dataframe([{"class": a.label, "reported": a.role.replace("_", " "), "cells": a.count,
                           "value": "—" if a.value is None else f"{a.value:.1f} {a.unit}",
                           "95% CI": "—" if a.ci_low is None else f"{a.ci_low:.1f}–{a.ci_high:.1f}"}
                          for a in res.differential.apart], hide_index=True, width="stretch")
        for w in (*res.differential.raw.warnings, *res.differential.notes):
            st.caption(f"⚠ {md(w)}")
        st.caption("Raw CIs: Clopper-Pearson exact. The corrected percentages' bootstrap CIs are computed on the "
                   "Review screen on request; the report always includes them.")
        st.page_link("pages/review.py", label="Review the cells", icon=":material/grid_view:")

with st.expander("Earlier analysis jobs", icon=":material/history:"):
    rows = [{"job": j["id"], "status": j["status"], "model": j["params"].get("model_id"), "by": j["created_by"],
             "started": j["created_at"].strftime("%Y-%m-%d %H:%M:%S"), "message": j["message"]}
            for j in store.list_jobs(sample_id=sample_id, kind="predict", limit=20)]
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.caption("None.")
