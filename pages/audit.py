"""Audit: the append-only audit trail, filterable by sample, user and action, with a check of its hash chain, its
anchor file and the batch digests (:meth:`phenotyping.store.audit.AuditRepository.verify`)."""

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
if st.button("Verify the audit trail", icon=":material/verified_user:",
             help="Recomputes the hash chain, compares it with the anchor file beside the database and recomputes "
                  "the digests of the cell and prediction batches (as `python -m phenotyping audit verify`)."):
    check = store.verify_audit()
    chain, anchor = st.columns(2)
    intact, bad = store.verify_audit_chain()
    if intact:
        chain.success(f"Hash chain: intact over {check.events} event(s).")
    else:
        chain.error(f"Hash chain: broken at event #{bad} (a row was changed or removed in place).")
    anchor_text = {"agrees": f"Anchor: agrees ({check.anchored} event(s) anchored).",
                   "behind": f"Anchor: behind by {check.behind_by} event(s).",
                   "missing": "Anchor: missing.", "disagrees": "Anchor: disagrees with the table.",
                   "none": "Anchor: none (in-memory database)."}[check.anchor_state]
    {"agrees": anchor.success, "none": anchor.info, "disagrees": anchor.error}.get(check.anchor_state,
                                                                                  anchor.warning)(anchor_text)
    if check.bottom_line == "intact":
        st.success(f"The audit trail is intact: chain, anchor and {check.batches.get('checked', 0)} batch digest(s) "
                   "agree.")
    elif check.bottom_line == "tampered":
        first = check.first_bad
        st.error("The audit trail was changed behind the application's back"
                 + (f", first at event #{first['id']} (seq {first['seq']}, {md(str(first['action']))})" if first
                    else "") + ":\n\n" + "\n".join(f"- {md(p)}" for p in check.problems))
    else:
        st.warning("Nothing was found changed, but the anchor cannot vouch for every event:\n\n"
                   + "\n".join(f"- {md(n)}" for n in check.notes))
    if check.head is not None:
        st.caption(f"Chain head: event {check.head.seq} (#{check.head.id}, {check.head.at:%Y-%m-%d %H:%M:%S} UTC), "
                   f"SHA-256 `{check.head.hash}` — signed reports print the head they were rendered at."
                   + (f" Anchor file: `{check.anchor}`." if check.anchor else ""))
    for n in check.notes if check.bottom_line != "unanchored" else ():
        st.caption(md(n))
