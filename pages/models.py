"""Models: every model with its card, validation/test figures, predicted-vs-true proportions and any recorded
benchmark; admins register shipped/trained models, mark them usable, train a new one from labelled samples and
evaluate it (background jobs with progress)."""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from pages._common import allowed, attempt, flash, get_runner, get_store, md, require_user, show_flash
from phenotyping.models.checkpoint import load_card
from phenotyping.jobs import FINISHED, label_counts, submit_evaluation, submit_training, warm_up_models
from phenotyping.analysis.results import find_model_dirs
from phenotyping.training.cv import cv_text_rows
from phenotyping.training.adapt import before_after_rows, mark_usable, reviewed_cells, submit_adaptation
from phenotyping.training.finetune import FinetuneConfig
from phenotyping.settings import get_settings

# Architectures the Models screen trains, by the kind of cell: (C, H, W) images or (C, Z, H, W) z-stacks.
ARCHS_2D = ["hybrid", "hybrid_wide", "cnn", "resnet18", "vit_small"]
ARCHS_3D = ["hybrid3d", "cnn3d", "resnet3d_50", "vit3d"]

store = get_store()
runner = get_runner()
user = require_user()
settings = get_settings()
st.title("Models")
show_flash()
admin = allowed(user, "models.manage")


def fmt(value: Any, spec: str = ".3f") -> str:
    """A card figure for display; "—" where the card has none (missing, None or NaN)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return "—"


def flatten(d: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Nested benchmark figures as rows ``{"measure": "a.b.c", "value": …}`` (lists of scalars joined)."""
    rows: list[dict[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            rows += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and not all(isinstance(v, (int, float, str, bool)) or v is None for v in d):
        for i, v in enumerate(d):
            rows += flatten(v, f"{prefix}[{i}]")
    else:
        rows.append({"measure": prefix, "value": ", ".join(map(str, d)) if isinstance(d, list) else str(d)})
    return rows


def proportions_rows(card: dict) -> list[dict[str, Any]]:
    """Per class: the true and predicted proportions (%) of the validation and test splits, where the card has them."""
    rows = []
    for c in card.get("classes", []):
        row: dict[str, Any] = {"class": c}
        for split in ("validation", "test"):
            part = card.get(split) or {}
            true, pred = part.get("true_proportions") or {}, part.get("predicted_proportions") or {}
            if true or pred:
                t, p = true.get(c), pred.get(c)
                row[f"{split} true %"] = None if t is None else round(100 * t, 1)
                row[f"{split} predicted %"] = None if p is None else round(100 * p, 1)
                row[f"{split} predicted − true"] = None if t is None or p is None else round(100 * (p - t), 1)
        rows.append(row)
    return rows if any(len(r) > 1 for r in rows) else []

def adapt_tab() -> None:
    """Fine-tune a registered model on the reviewed cells of chosen samples (a training-lane job)."""
    if not registered:
        st.info("Register a model first: adapting starts from one.")
        return
    st.caption("Fine-tunes the model on the cells reviewers reclassified or confirmed (their final labels, only the "
               "model's classes); the adapted model keeps the model's classes and preprocessing, is registered not "
               "usable, and its card shows before/after figures on reviewed cells it did not train on.")
    parent_id = st.selectbox("Model to adapt", list(registered), key="adapt_parent")
    asamples = st.multiselect("Samples whose reviewed cells to use", labelled, key="adapt_samples")
    found = reviewed_cells(store, asamples, registered[parent_id]["card"].get("classes", []))
    if asamples:
        if found.n:
            st.caption(f"{found.n:,} reviewed cells: {md(', '.join(f'{c} {n}' for c, n in found.per_class.items()))}")
        else:
            st.warning("None of these samples' cells has been reviewed (reclassified or confirmed) as one of the "
                       "model's classes yet.")
        if found.left_out:
            st.caption(md(found.left_out_text()))
    c1, c2 = st.columns([3, 1])
    aname = c1.text_input("Name of the adapted model", placeholder="e.g. wbc-hybrid-our-lab", key="adapt_name")
    aepochs = c2.number_input("Epochs", 1, 100, FinetuneConfig.epochs, key="adapt_epochs",
                              help=f"fine-tuning: at most this many epochs, learning rate {FinetuneConfig.lr:g}")
    if st.button("Start adapting", type="primary", disabled=not (asamples and found.n)):
        ok, jid = attempt(submit_adaptation, runner, parent_id, asamples, aname.strip(), actor=user.username,
                          epochs=int(aepochs))
        if ok:
            flash(f"Adaptation job {jid} started; the adapted model will be registered not usable.")
            st.rerun()


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
    st.info(f"No models found in {md([str(p) for p in settings.model_search_path()])}.")

if admin and unregistered:
    c1, c2 = st.columns([3, 1])
    pick = c1.selectbox("Model folder found on disk", list(unregistered))
    picked_card = load_card(unregistered[pick])
    adapted = bool(picked_card.get("lineage"))     # a fine-tuned child: usable only once marked so, after a look
    if c2.button("Register (not usable yet)" if adapted else "Register as usable", type="primary", width="stretch"):
        ok, _ = attempt(store.register_model, pick, path=str(unregistered[pick]), card=picked_card,
                        actor=user.username, usable=not adapted)
        if ok:
            warm_up_models(store)
            flash(f"{pick} registered" + (": an adapted model; check its before/after figures, then mark it usable."
                                          if adapted else " and usable."))
            st.rerun()

if registered:
    st.subheader("Model card")
    mid = st.selectbox("Model", list(registered))
    m = registered[mid]
    card = m["card"]
    val, test, cal = card.get("validation") or {}, card.get("test") or {}, card.get("calibration") or {}
    k1, k2, k3, k4, k5 = st.columns(5)
    k1.metric("Validation accuracy", fmt(val.get("accuracy")))
    k2.metric("Validation macro-F1", fmt(val.get("macro_f1")))
    k3.metric("Test accuracy", fmt(test.get("accuracy")))
    k4.metric("Test macro-F1", fmt(test.get("macro_f1")))
    k5.metric("Review threshold", fmt(cal.get("unidentified_threshold"), ".2f"),
              help="Cells whose calibrated confidence is below this wait in the unidentified queue.")
    arch = card.get("architecture") or {}
    training = card.get("training") or {}
    st.markdown(f"**Architecture** {md(arch.get('name', '?'))} ({arch.get('parameters', 0):,} parameters) · "
                f"**Intended use** {md(card.get('intended_use', 'not stated'))}  \n"
                f"**Classes** {md(', '.join(card.get('classes', [])))} · "
                f"**Targets** {md(', '.join(t['name'] for t in card.get('targets', [])) or 'none')}  \n"
                f"**Training data** {md(training.get('n_cells', '?'))} cells · "
                f"{md(training.get('data_licence') or 'licence not stated')}")
    cv = cv_text_rows(card)
    if cv:
        st.markdown(f"**{card['cross_validation']['k']}-fold cross-validation** (cells of held-out folds): "
                    + " · ".join(f"{r['figure']} {r['mean']} ± {r['SD']}" for r in cv))
    if card.get("model_selection"):
        st.caption(f"**Why this architecture:** {md(card['model_selection'])}")
    if not test and cv:
        st.caption("No test split: the model was trained on all labelled cells (a validation share for early "
                   "stopping and calibration); its figures on unseen cells are the cross-validation's.")
    tab_class, tab_prop, tab_hist, tab_bench, tab_cv = st.tabs(
        ["Per class", "Predicted vs true proportions", "Training history", "Benchmark", "Cross-validation"])
    with tab_class:
        per_class = {split: (card.get(split) or {}).get("per_class") for split in ("validation", "test")}
        rows = []
        for c in card.get("classes", []):
            row: dict[str, Any] = {"class": c}
            for split, pc in per_class.items():
                if isinstance(pc, dict) and isinstance(pc.get(c), dict):
                    for k in ("precision", "recall", "f1", "n"):
                        if k in pc[c]:
                            row[f"{'val.' if split == 'validation' else 'test'} {k}"] = pc[c][k]
            rows.append(row)
        if any(len(r) > 1 for r in rows):
            st.dataframe(rows, hide_index=True, width="stretch",
                         column_config={k: st.column_config.NumberColumn(format="%.2f")
                                        for r in rows for k in r if k.split(" ")[-1] in ("precision", "recall", "f1")})
        else:
            st.caption("The card has no per-class figures.")
    with tab_prop:
        prop = proportions_rows(card)
        if prop:
            import plotly.graph_objects as go

            st.dataframe(prop, hide_index=True, width="stretch",
                         column_config={k: st.column_config.NumberColumn(format="%.1f")
                                        for k in prop[0] if k != "class"})
            split = "test" if any("test true %" in r for r in prop) else "validation"
            fig = go.Figure()
            fig.add_bar(x=[r["class"] for r in prop], y=[r.get(f"{split} true %") for r in prop], name="true")
            fig.add_bar(x=[r["class"] for r in prop], y=[r.get(f"{split} predicted %") for r in prop],
                        name="predicted")
            fig.update_layout(template="plotly_white", height=320, barmode="group", yaxis_title="% of cells",
                              title=f"{split.capitalize()} split: predicted vs true class proportions",
                              margin={"t": 50})
            st.plotly_chart(fig, key="proportions")
            st.caption("How far the model's raw class proportions drift from the truth on held-out cells; the "
                       "prior-shift correction of the differential works on this kind of drift.")
        else:
            st.caption("The card records no predicted or true proportions.")
    with tab_hist:
        history = training.get("history") or []
        if history:
            import plotly.graph_objects as go

            fig = go.Figure()
            fig.add_scatter(x=[h["epoch"] for h in history], y=[h.get("val_macro_f1") for h in history],
                            name="validation macro-F1")
            fig.add_scatter(x=[h["epoch"] for h in history], y=[h.get("val_accuracy") for h in history],
                            name="validation accuracy")
            fig.update_layout(template="plotly_white", height=300, xaxis_title="epoch", margin={"t": 30})
            st.plotly_chart(fig, key="history")
        else:
            st.caption("The card records no training history.")
    with tab_bench:
        bench = card.get("benchmarks")
        if bench:
            rows = flatten(bench)
            st.dataframe(rows, hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 420),
                         column_config={"measure": st.column_config.TextColumn(width="large")})
        else:
            st.info("No benchmark recorded for this model. Measure its speed on this machine with:",
                    icon=":material/speed:")
            st.code(f"python -m phenotyping bench --model {m['path']} --cells 1000", language="bash")
    with tab_cv:
        if cv:
            st.dataframe(cv, hide_index=True, width="stretch", key="cv_folds")
            st.caption(md(card["cross_validation"].get("method", "")))
        else:
            st.caption("The card records no cross-validation (`train --cv K` runs one).")
    if card.get("lineage"):
        lin = card["lineage"]
        added, held = lin.get("data_added") or {}, lin.get("held_out") or {}
        st.markdown(f"**Adapted from** {md(lin['parent']['id'])} on {md(added.get('n_cells', '?'))} cells "
                    f"({md(', '.join(f'{c} {n}' for c, n in (added.get('per_class') or {}).items()))})"
                    + (f" of samples {md(', '.join(added['samples']))}" if added.get("samples") else "")
                    + f"  \n**Before / after** on {md(held.get('n', '?'))} held-out cells it did not train on "
                      f"({md(held.get('method', ''))})")
        st.dataframe(before_after_rows(card), hide_index=True, width="stretch", key="before_after",
                     column_config={k: st.column_config.NumberColumn(format="%.3f")
                                    for k in ("parent", "adapted", "change")})
        if not m["usable"]:
            st.warning("Not usable yet: nobody has marked this adapted model usable. Check the figures above (and "
                       "evaluate it on other labelled samples) first.", icon=":material/pending:")
    for ev in card.get("evaluations", []):
        met = ev.get("metrics") or {}
        st.caption(f"Evaluated on {md(', '.join(ev.get('samples', [])))} by {md(ev.get('by', '?'))} at "
                   f"{md(ev.get('at', '?'))}: "
                   f"accuracy {fmt(met.get('accuracy'))}, macro-F1 {fmt(met.get('macro_f1'))}")
    if admin:
        if st.button("Mark not usable" if m["usable"] else "Mark usable",
                     type="secondary" if m["usable"] else "primary"):
            ok, _ = attempt(mark_usable, store, mid, not m["usable"], actor=user.username)
            if ok:
                flash(f"{mid} is now {'not ' if m['usable'] else ''}usable.")
                st.rerun()

labelled = [s["id"] for s in store.list_samples() if s["n_cells"]]
if admin:
    st.divider()
    t1, t2, t3 = st.tabs(["Train a new model", "Evaluate a model", "Adapt to this lab's reviewed cells"])
    with t1:
        samples = st.multiselect("Samples with labelled cells (labels from the image set or the review)", labelled,
                                 key="train_samples")
        classes: list[str] = []
        if samples:
            counts = label_counts(store, samples)
            from_set, review_only = counts["image set"], counts["review only"]
            n = {**review_only, **from_set}
            if not n:
                st.warning("None of these samples' cells has a label yet.")
            classes = st.multiselect(
                "Classes to train", sorted(n), default=sorted(from_set), key=f"train_classes_{'|'.join(samples)}",
                format_func=lambda c: f"{c} ({n[c]:,} cells{', review only' if c in review_only else ''})")
            if review_only:
                st.caption("Labels given only in review (such as debris or other) are not classes unless you choose "
                           "them; cells with a label outside the chosen classes are left out and counted in the "
                           "job's result.")
        c1, c2, c3 = st.columns([2, 2, 1])
        name = c1.text_input("Model name", placeholder="e.g. bal-hybrid-2", key="train_name")
        zstack = any(len(c.shape) == 4 for s in samples for c in store.list_cells(s, limit=1))
        arch = c2.selectbox("Architecture", ARCHS_3D if zstack else ARCHS_2D, key=f"train_arch_{zstack}",
                            help="z-stack samples get the 3D architectures, 2D samples the 2D ones")
        epochs = c3.number_input("Epochs", 1, 200, 20, key="train_epochs")
        if st.button("Start training", type="primary", disabled=not (samples and classes)):
            ok, jid = attempt(submit_training, runner, samples, name.strip(), actor=user.username, arch=arch,
                              epochs=int(epochs), classes=classes)
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

    with t3:
        adapt_tab()

jobs = [j for j in store.list_jobs(limit=30) if j["kind"] in ("train", "evaluate")]
active = any(j["status"] not in FINISHED for j in jobs)
if jobs:
    @st.fragment(run_every=1.0 if active else None)
    def model_jobs() -> None:
        st.subheader("Training and evaluation jobs")
        current = [j for j in store.list_jobs(limit=30) if j["kind"] in ("train", "evaluate")]
        for j in current[:5]:
            label = f"Job {j['id']} · {j['kind']} · {md(j['params'].get('name') or j['params'].get('model_id'))}"
            if j["status"] in ("queued", "running"):
                st.progress(min(j["done"] / max(j["total"], 1), 1.0), text=f"{label}: {md(j['message'])}")
            elif j["status"] == "failed":
                st.error(f"{label} failed: {md(j['message'])}")
            else:
                st.success(f"{label}: {md(j['message'])}")
        if active and not any(j["status"] not in FINISHED for j in current):
            st.rerun(scope="app")

    model_jobs()
