"""Models: every model with its card and validation figures; admins register shipped/trained models, mark them
usable, train a new one from labelled samples and evaluate it (background jobs with progress)."""

from __future__ import annotations

import streamlit as st

from pages._common import allowed, attempt, flash, get_runner, get_store, require_user, show_flash
from phenotyping.checkpoint import load_card
from phenotyping.jobs import FINISHED, submit_evaluation, submit_training, warm_up_models
from phenotyping.results import find_model_dirs
from phenotyping.settings import get_settings

store = get_store()
runner = get_runner()
user = require_user()
settings = get_settings()
st.title("Models")
show_flash()
admin = allowed(user, "models.manage")

registered = {m["id"]: m for m in store.list_models()}
found = find_model_dirs(settings.model_search_path())
unregistered = {k: v for k, v in found.items() if k not in registered}

rows = [{"model": m["id"], "usable": m["usable"], "classes": ", ".join(m["card"].get("classes", [])),
         "val accuracy": (m["card"].get("validation") or {}).get("accuracy"),
         "val macro-F1": (m["card"].get("validation") or {}).get("macro_f1"),
         "registered by": m["registered_by"]} for m in registered.values()]
rows += [{"model": k, "usable": False, "classes": "(not registered)", "val accuracy": None, "val macro-F1": None,
          "registered by": ""} for k in unregistered]
if rows:
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_config={"val accuracy": st.column_config.NumberColumn(format="%.3f"),
                                "val macro-F1": st.column_config.NumberColumn(format="%.3f"),
                                "usable": st.column_config.CheckboxColumn()})
else:
    st.info(f"No models found in {[str(p) for p in settings.model_search_path()]}.")

if admin and unregistered:
    c1, c2 = st.columns([3, 1])
    pick = c1.selectbox("Model folder found on disk", list(unregistered))
    if c2.button("Register as usable", type="primary", width="stretch"):
        ok, _ = attempt(store.register_model, pick, path=str(unregistered[pick]),
                        card=load_card(unregistered[pick]), actor=user.username, usable=True)
        if ok:
            warm_up_models(store)
            flash(f"{pick} registered and usable.")
            st.rerun()

if registered:
    st.subheader("Model card")
    mid = st.selectbox("Model", list(registered))
    m = registered[mid]
    card = m["card"]
    val, test, cal = card.get("validation") or {}, card.get("test") or {}, card.get("calibration") or {}
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Validation accuracy", f"{val.get('accuracy', float('nan')):.3f}")
    k2.metric("Validation macro-F1", f"{val.get('macro_f1', float('nan')):.3f}")
    k3.metric("Test accuracy", f"{test['accuracy']:.3f}" if test.get("accuracy") is not None else "—")
    k4.metric("Review threshold", f"{cal.get('unidentified_threshold', float('nan')):.2f}")
    st.markdown(f"**Architecture** {card['architecture']['name']} "
                f"({card['architecture'].get('parameters', 0):,} parameters) · **Intended use** "
                f"{card.get('intended_use', 'not stated')}  \n**Classes** {', '.join(card['classes'])} · "
                f"**Targets** {', '.join(t['name'] for t in card.get('targets', [])) or 'none'}  \n"
                f"**Training data** {(card.get('training') or {}).get('n_cells', '?')} cells · "
                f"{(card.get('training') or {}).get('data_licence', '')}")
    per_class = val.get("per_class")
    if isinstance(per_class, dict):
        st.dataframe([{"class": c, **{k: v for k, v in d.items() if not isinstance(v, (list, dict))}}
                      for c, d in per_class.items()], hide_index=True, width="stretch")
    history = (card.get("training") or {}).get("history") or []
    if history:
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_scatter(x=[h["epoch"] for h in history], y=[h["val_macro_f1"] for h in history],
                        name="validation macro-F1")
        fig.add_scatter(x=[h["epoch"] for h in history], y=[h["val_accuracy"] for h in history],
                        name="validation accuracy")
        fig.update_layout(template="plotly_white", height=300, xaxis_title="epoch", margin={"t": 30})
        st.plotly_chart(fig, key="history")
    for ev in card.get("evaluations", []):
        met = ev["metrics"]
        st.caption(f"Evaluated on {', '.join(ev['samples'])} by {ev['by']} at {ev['at']}: accuracy "
                   f"{met.get('accuracy', float('nan')):.3f}, macro-F1 {met.get('macro_f1', float('nan')):.3f}")
    if admin:
        b1, b2 = st.columns(2)
        if b1.button("Mark not usable" if m["usable"] else "Mark usable", type="secondary" if m["usable"] else
                     "primary"):
            store.set_model_usable(mid, not m["usable"], actor=user.username)
            flash(f"{mid} is now {'not ' if m['usable'] else ''}usable.")
            st.rerun()

labelled = [s["id"] for s in store.list_samples() if s["n_cells"]]
if admin:
    st.divider()
    t1, t2 = st.tabs(["Train a new model", "Evaluate a model"])
    with t1:
        with st.form("train"):
            name = st.text_input("Model name", placeholder="e.g. bal-hybrid-2")
            samples = st.multiselect("Samples with labelled cells (labels from the image set or the review)", labelled)
            c1, c2 = st.columns(2)
            arch = c1.selectbox("Architecture", ["hybrid", "hybrid_wide", "cnn", "resnet18", "vit_small"])
            epochs = c2.number_input("Epochs", 1, 200, 20)
            if st.form_submit_button("Start training", type="primary"):
                ok, jid = attempt(submit_training, runner, samples, name.strip(), actor=user.username, arch=arch,
                                  epochs=int(epochs))
                if ok:
                    flash(f"Training job {jid} started.")
                    st.rerun()
    with t2:
        if registered:
            with st.form("evaluate"):
                emodel = st.selectbox("Model", list(registered))
                esamples = st.multiselect("Labelled samples", labelled)
                if st.form_submit_button("Evaluate"):
                    ok, jid = attempt(submit_evaluation, runner, emodel, esamples, actor=user.username)
                    if ok:
                        flash(f"Evaluation job {jid} started.")
                        st.rerun()

jobs = [j for j in store.list_jobs(limit=30) if j["kind"] in ("train", "evaluate")]
active = any(j["status"] not in FINISHED for j in jobs)
if jobs:
    @st.fragment(run_every=1.0 if active else None)
    def model_jobs() -> None:
        st.subheader("Training and evaluation jobs")
        current = [j for j in store.list_jobs(limit=30) if j["kind"] in ("train", "evaluate")]
        for j in current[:5]:
            label = f"Job {j['id']} · {j['kind']} · {j['params'].get('name') or j['params'].get('model_id')}"
            if j["status"] in ("queued", "running"):
                st.progress(min(j["done"] / max(j["total"], 1), 1.0), text=f"{label}: {j['message']}")
            elif j["status"] == "failed":
                st.error(f"{label} failed: {j['message']}")
            else:
                st.success(f"{label}: {j['message']}")
        if active and not any(j["status"] not in FINISHED for j in current):
            st.rerun(scope="app")

    model_jobs()
