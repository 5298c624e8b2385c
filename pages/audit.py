"""Audit: the append-only audit trail, filterable by sample, user and action, with a check of its hash chain."""

from __future__ import annotations

import json

import streamlit as st

from pages._common import get_store, md, require, require_user
from phenotyping.schemas import AuditEvent

store = get_store()
user = require_user()
st.title("Audit")
require(user, "audit.read", "The audit trail")

c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
samples = ["(all)"] + [s["id"] for s in store.list_samples()]
users = ["(all)"] + [u.username for u in store.list_users()]
sample = c1.selectbox("Sample", samples, index=samples.index(st.session_state["sample_id"])
                      if st.session_state.get("sample_id") in samples else 0)
actor = c2.selectbox("User", users)
action = c3.text_input("Action", placeholder="e.g. cell.reclassify")
limit = c4.number_input("Rows", 10, 10000, 500, step=100)
events = store.list_audit(sample_id=None if sample == "(all)" else sample, actor=None if actor == "(all)" else actor,
                          action=action.strip() or None, limit=int(limit))


def _short(value: object) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str)
    return text if len(text) <= 160 else text[:157] + "…"


def _change(e: AuditEvent) -> str:
    before, after = _short(e.before), _short(e.after)
    return f"{before} → {after}" if before else after


picked = st.dataframe(
    [{"#": e.id, "when (UTC)": e.at.strftime("%Y-%m-%d %H:%M:%S"), "user": e.actor, "action": e.action,
      "entity": f"{e.entity} {e.entity_id}", "sample": e.sample_id or "", "change": _change(e)} for e in events],
    hide_index=True, width="stretch", height=min(38 + 35 * max(len(events), 1), 640), on_select="rerun",
    selection_mode="single-row", key="audit_table",
    column_config={"#": st.column_config.NumberColumn(width="small"),
                   "change": st.column_config.TextColumn("change (before → after)", width="medium")})
st.caption(f"{len(events)} event(s), newest first. Select a row to see the event in full.")
rows = picked.selection.rows if picked and picked.selection else []
if rows and rows[0] < len(events):
    e = events[rows[0]]
    with st.container(border=True):
        st.markdown(f"**#{e.id} · {md(e.action)}** on {md(e.entity)} {md(e.entity_id)} by {md(e.actor)} at "
                    f"{e.at:%Y-%m-%d %H:%M:%S} UTC")
        b, a = st.columns(2)
        b.caption("Before")
        b.json(e.before if e.before is not None else {}, expanded=2)
        a.caption("After")
        a.json(e.after if e.after is not None else {}, expanded=2)
if st.button("Verify the audit chain", icon=":material/verified_user:"):
    intact, bad = store.verify_audit_chain()
    if intact:
        st.success("The audit chain is intact: no row was changed or removed.")
    else:
        st.error(f"The audit chain is broken at row {bad}: a row was changed or removed.")
