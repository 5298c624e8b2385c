"""Review: the differential (raw and corrected, with CIs), the gallery by class and the unidentified queue,
reclassification and confirmation in one click or one key, explanations on demand, the embedding map and marker
expression per class.

Fast to click: the differential and the gallery are one ``st.fragment``, so ticking a cell, turning a page,
reclassifying or confirming reruns only that part (the sample header, the sidebar and the other tabs do not run);
the results are cached per review revision (``sample_results_cached``) and the cell images per cell and file hash.
The other tabs run only while they are open (``st.tabs(on_change="rerun")``), so they never show labels older than
the gallery's. Keys: 1–9 the reclassify buttons in order, Enter confirms the selected cells as predicted, A selects
the page, J/K the next/previous page.
"""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from phenotyping.analysis.domain import banner as domain_banner, stored_check
from pages._common import (allowed, attempt, flash, get_store, lock_notice, md, pick_sample, require_user,
                           result_metrics, sample_header, sample_results_cached, show_differential, show_flash,
                           signed_version)
from phenotyping.analysis.cellview import cell_display, embedding_figure, embedding_map, explain_cell
from phenotyping.analysis.markers import format_marker, target_units
from phenotyping.analysis.review import EXTRA_LABELS, REVIEW_ORDERS, confirm_cells, order_cells, reclassify_cells
from phenotyping.errors import PhenotypingError
from phenotyping.analysis.results import model_dir_for
from phenotyping.schemas import QCState, SampleStatus

PAGE_SIZE = 36
COLUMNS = 6
BUTTONS_PER_ROW = 5
LABEL_KEYS = "123456789"  # shortcuts of the reclassify buttons, in their order
CONFIRM_KEY, SELECT_KEY, NEXT_KEY, PREVIOUS_KEY = "Enter", "A", "J", "K"

store = get_store()
user = require_user()
st.title("Review")
sample_id = pick_sample(store)
if sample_id is None:
    st.stop()
sample_header(store, sample_id)
# the domain check of the analysis run (phenotyping.analysis.domain): out of distribution is shown first, in red
# (each message in a container drawn on every run, so the widgets below keep their place: see ``workbench``)
_domain = domain_banner(stored_check(store, sample_id))
with st.container():
    if _domain:
        st.error(md(_domain), icon=":material/report:")
with st.container():
    show_flash()
if store.analysis_model(sample_id) is None:
    st.info("This sample has not been analysed yet: run a model on the Analyse screen first.")
    st.stop()

boot = st.toggle("Bootstrap CIs for the corrected percentages (1,000 resamples; takes seconds)",
                 key="bootstrap_ci")
N_BOOTSTRAP = 1000 if boot else 0
res = sample_results_cached(store, sample_id, n_bootstrap=N_BOOTSTRAP)
classes = list(res.card["classes"])
by_id = {r.cell.id: r for r in res.cells}
model_dir = model_dir_for(res.model_id, store=store)


@st.cache_data(max_entries=20_000, show_spinner=False)
def display_image(_store: object, _cell: object, cell_id: int, content_hash: str) -> object:
    """The cell's display image, kept per cell and file hash: a gallery rerun does not decode its page again."""
    return cell_display(_store, _cell)


def show_cell_image(r: object, *, width: object = "stretch") -> None:
    try:
        st.image(display_image(store, r.cell, r.cell.id, r.cell.content_hash), width=width)
    except PhenotypingError as e:
        st.caption(f"image unreadable: {md(e)}")


def picked() -> set[int]:
    """The ticked cells (their checkbox state is known before the boxes are drawn again)."""
    return {int(str(k)[5:]) for k, v in st.session_state.items() if str(k).startswith("pick_") and v}


def clear_picks() -> None:
    for k in [k for k in st.session_state if str(k).startswith("pick_") or k == "qc_override_reason"]:
        del st.session_state[k]


def rerun_gallery() -> None:
    """Rerun the gallery fragment only; in a run of the whole page (the first, or AppTest's) the page."""
    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:   # not a fragment rerun: Streamlit allows scope="fragment" only there
        st.rerun()


def after_write(message: str) -> None:
    """Rerun the gallery fragment (not the page) with ``message`` shown once."""
    clear_picks()
    flash(message)
    rerun_gallery()


def turn_page(key: str, step: int, n_pages: int) -> None:
    st.session_state[key] = min(max(1, int(st.session_state.get(key, 1)) + step), n_pages)


def summary(res: object) -> None:
    """Counts, the differential, its notes and whether signing is blocked."""
    d = res.differential
    result_metrics(res)
    show_differential(res, key="review_differential")
    shown = d.shown  # the one rule (phenotyping.analysis.correction_rule): the same correction the report signs
    if shown.note:
        st.info(md(shown.note), icon=":material/info:")
    elif shown.composition is not None:
        st.caption(f"Corrected %: {md(shown.composition.method)}, the correction the report shows.")
    for w in (*d.raw.warnings, *(n for n in d.notes if n != shown.note)):
        st.caption(f"⚠ {md(w)}")
    if res.n_unidentified:
        st.warning(f"Signing is blocked: {res.n_unidentified} unidentified cell(s) await review. Give each cell of "
                   "the unidentified queue below a class (or debris/other), or confirm the model's class.",
                   icon=":material/block:")
    elif allowed(user, "review") and res.sample.status == SampleStatus.analysed:
        if st.button("Mark the review complete", icon=":material/task_alt:"):
            store.set_sample_status(sample_id, SampleStatus.reviewed, actor=user.username, reason="review complete")
            flash("Review marked complete.")
            st.rerun()


def gallery_cells(res: object) -> tuple[str, list]:
    """The group and order the reviewer chose: the group's name and its cells in that order."""
    groups: dict[str, list] = {"Unidentified queue": [r for r in res.cells if r.unidentified]}
    for c in classes:
        groups[c] = [r for r in res.cells if r.counted and r.final_label == c]
    groups["Excluded"] = [r for r in res.cells if r.exclusion and not r.unidentified]
    groups["All cells"] = list(res.cells)
    names = list(groups)
    g1, g2 = st.columns([4, 2])
    group = g1.radio("Show", names, index=0 if groups["Unidentified queue"] else 1, horizontal=True,
                     key=f"group_{sample_id}", format_func=lambda n: f"{md(n)} ({len(groups[n])})")
    order = g2.selectbox("Order", list(REVIEW_ORDERS), format_func=REVIEW_ORDERS.get, key="order",
                         help="Most informative first: the cells whose label would teach the model most, by the "
                              "margin between the two most probable classes or the entropy of the calibrated "
                              "probabilities. Cells without a prediction come last.")
    return group, order_cells(groups[group], order)


def action_bar(page_cells: list, selected: set[int], by_id: dict) -> None:
    """Reclassify or confirm the ticked cells (one click or one key each); select the page or clear the ticks."""
    n_sel = len(selected)
    st.markdown(f"**Reclassify the {n_sel} selected cell(s)** as:" if n_sel else
                "Tick cells below, then click a class (or press its key) to reclassify them.")
    excluded_sel = [c for c in selected if by_id[c].cell.qc_state == QCState.excluded]
    reason = ""
    if excluded_sel:
        reason = st.text_input(
            f"Reason for counting the {len(excluded_sel)} QC-excluded cell(s) (required to give them a class)",
            key="qc_override_reason", placeholder="e.g. in focus on inspection",
            help="Image QC left these cells out of the count. Giving one a class overrides the exclusion: "
                 "it is then counted under that class, and the override and this reason are audited. "
                 "Debris or other keeps it excluded and needs no reason.")
    targets = [*classes, *(x for x in EXTRA_LABELS if x not in classes)]
    for row_start in range(0, len(targets), BUTTONS_PER_ROW):
        bcols = st.columns(BUTTONS_PER_ROW)
        for col, label in zip(bcols, targets[row_start:row_start + BUTTONS_PER_ROW]):
            i = targets.index(label)
            if col.button(md(label), key=f"to_{label}", disabled=not n_sel, width="stretch",
                          type="primary" if label in classes else "secondary",
                          shortcut=LABEL_KEYS[i] if i < len(LABEL_KEYS) else None):
                ok, changed = attempt(reclassify_cells, store, sample_id, sorted(selected), label,
                                      actor=user.username, note=reason.strip())
                if ok:
                    overridden = len(excluded_sel) if label in classes else 0
                    after_write(f"{changed} cell(s) reclassified as {label}"
                                + (f"; the image-QC exclusion of {overridden} cell(s) is overridden, so they "
                                   "count" if overridden else "") + ".")
    confirmable = bool(selected) and all(by_id[c].predicted_class and by_id[c].cell.qc_state != QCState.excluded
                                         for c in selected)
    s1, s2, s3, _ = st.columns([2, 1, 1, 1])
    if s1.button("Confirm as predicted", key="confirm_selected", width="stretch", disabled=not confirmable,
                 icon=":material/check:", shortcut=CONFIRM_KEY,
                 help="Give each selected cell the class the model predicted (a reviewed label: it then counts and "
                      "is labelled data)."):
        confirm(sorted(selected))
    if s2.button("Select page", key="select_page", width="stretch", icon=":material/select_all:",
                 shortcut=SELECT_KEY):
        for r in page_cells:
            st.session_state[f"pick_{r.cell.id}"] = True
        rerun_gallery()
    if s3.button("Clear selection", key="clear_selection", width="stretch", disabled=not n_sel):
        clear_picks()
        rerun_gallery()
    st.caption(f"Keys: {', '.join(f'{LABEL_KEYS[i]} {md(t)}' for i, t in enumerate(targets[:len(LABEL_KEYS)]))}"
               f" · {CONFIRM_KEY} confirm as predicted · {SELECT_KEY} select page · {NEXT_KEY}/{PREVIOUS_KEY} next/"
               "previous page (not while typing in a field)")


def confirm(cell_ids: list[int]) -> None:
    ok, out = attempt(confirm_cells, store, sample_id, cell_ids, actor=user.username)
    if ok:
        after_write(f"{out['changed']} cell(s) confirmed as predicted.")


def cell_grid(page_cells: list, *, can_review: bool) -> None:
    """The page's cells: image, tick box, current label and confidence, and a one-click confirm."""
    for start in range(0, len(page_cells), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, r in zip(cols, page_cells[start:start + COLUMNS]):
            with col:
                show_cell_image(r)
                label = r.final_label or "—"
                conf = "" if r.confidence is None else f" · {r.confidence:.2f}"
                reviewed = " (reviewed)" if r.cell.reviewed_label else ""
                st.checkbox(f"#{r.cell.id}", key=f"pick_{r.cell.id}",
                            help=md(f"{r.cell.source_file}: "
                                    + (f"predicted {r.predicted_class}" if r.predicted_class else "not predicted")
                                    + (f"; {r.exclusion}" if r.exclusion else "")
                                    + ("; QC exclusion overridden by a reviewer"
                                       if r.cell.qc_state == QCState.overridden else "")))
                st.caption(f"**{md(label)}**{conf}{reviewed}")
                if (can_review and r.predicted_class and r.cell.reviewed_label != r.predicted_class
                        and r.cell.qc_state != QCState.excluded):
                    if st.button("Confirm", key=f"confirm_{r.cell.id}", icon=":material/check:",
                                 help=md(f"Confirm #{r.cell.id} as {r.predicted_class}")):
                        confirm([r.cell.id])


@st.fragment
def workbench(sample_id: str, n_bootstrap: int) -> None:
    """The differential and the gallery: what a tick, a page turn, a reclassification or a confirmation changes.

    Each part sits in a container of its own, drawn on every run, so that a widget keeps its place in the page
    whether or not a message, a warning or the pager shows: a fragment run that a click cuts short then cannot leave a
    second, dead copy of the pager or a button beside the live one (Streamlit keys its elements by place)."""
    res = sample_results_cached(store, sample_id, n_bootstrap=n_bootstrap)
    by_id = {r.cell.id: r for r in res.cells}
    with st.container():
        show_flash()
    with st.container():
        summary(res)
    with st.container():
        group, cells = gallery_cells(res)
    n_pages = max(1, -(-len(cells) // PAGE_SIZE))
    with st.container():
        page = pager(f"page_{sample_id}_{group}", n_pages)
    page_cells = cells[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    selected = picked() & set(by_id)
    locked = signed_version(store, sample_id)
    can_review = locked is None and allowed(user, "review")
    with st.container():
        if locked is not None:
            lock_notice(locked, "the review of its cells")
        elif can_review:
            with st.container(border=True):
                action_bar(page_cells, selected, by_id)
    with st.container():
        if not page_cells:
            st.caption("The unidentified queue is empty: every doubtful cell has a reviewed label. Pick a class "
                       "above to see its cells." if group == "Unidentified queue" else "No cells here.")
        cell_grid(page_cells, can_review=can_review)
    with st.container():
        if selected:
            explanation(by_id.get(min(selected)))


def pager(page_key: str, n_pages: int) -> int:
    """The page of the gallery to show (1-based), with its number field and previous/next buttons (keys K/J)."""
    if int(st.session_state.get(page_key, 1)) > n_pages:
        st.session_state[page_key] = n_pages
    if n_pages <= 1:
        return 1
    p1, p2, p3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    page = p1.number_input(f"Page (of {n_pages})", 1, n_pages, key=page_key)
    p2.button("Previous page", key="page_previous", on_click=turn_page, args=(page_key, -1, n_pages),
              disabled=page <= 1, width="stretch", shortcut=PREVIOUS_KEY)
    p3.button("Next page", key="page_next", on_click=turn_page, args=(page_key, 1, n_pages),
              disabled=page >= n_pages, width="stretch", shortcut=NEXT_KEY)
    return int(page)


def explanation(first: object) -> None:
    """Grad-CAM or occlusion of the first selected cell, computed on request and kept."""
    with st.expander("Why did the model say that? (explanation of the first selected cell)",
                     icon=":material/visibility:"):
        e1, e2 = st.columns(2)
        method = e1.radio("Method", ["gradcam", "occlusion"], horizontal=True,
                          format_func={"gradcam": "Grad-CAM", "occlusion": "Occlusion"}.get)
        target = e2.selectbox("For class", ["(predicted)", *classes])
        ex_key = (sample_id, res.model_id, first.cell.id if first else None, method, target)
        if first is not None and st.button("Explain", icon=":material/visibility:"):
            with st.spinner("Computing…"):
                ok, ex = attempt(explain_cell, store, first.cell, model_dir, method=method,
                                 target=None if target == "(predicted)" else target)
            if ok:   # kept, so that moving the plane slider of a z-stack does not recompute it
                st.session_state["explanation"] = (ex_key, ex)
        kept_key, ex = st.session_state.get("explanation", (None, None))
        if ex is not None and kept_key == ex_key:
            plane, where = None, ""
            if ex.planes > 1:   # a one-plane stack is its own projection
                if st.radio("Z-stack", ["Maximum projection", "One plane"], horizontal=True,
                            key="explain_view") == "One plane":
                    plane = st.slider("Plane", 1, ex.planes, (ex.planes + 1) // 2, key="explain_plane") - 1
                where = " (maximum projection)" if plane is None else f" (plane {plane + 1} of {ex.planes})"
            shown_disp, shown_map = ex.view(plane)
            i1, i2 = st.columns(2)
            i1.image(shown_disp, caption=f"cell #{first.cell.id} as the model sees it{where}", width=240)
            i2.image(shown_map, caption=f"{method} for {ex.target} (red: evidence){where}", width=240)


def picked_cell_id(point: dict, fig: object) -> int | None:
    """The cell id of a clicked point of the embedding map, or None if the point names no cell of the figure.

    From the point's ``customdata`` when the browser sent a usable one: a list, or an object keyed "0", "1"… (a
    typed array as the browser's JSON writes it); else looked up by the point's trace and index in the figure
    (WebGL traces send no customdata)."""
    value = _first_of(point.get("customdata"))
    if value is None:
        try:
            trace = fig.data[int(point["curve_number"])]  # type: ignore[attr-defined]
            idx = point.get("point_index", point.get("point_number"))
            value = _first_of(trace.customdata[int(idx)])
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _first_of(data: object) -> object:
    """The first element of a point's customdata (list, array, or a typed array sent as {"0": …}), or a scalar."""
    if isinstance(data, dict):
        return data.get("0", data.get(0))
    if isinstance(data, (list, tuple)) or hasattr(data, "shape"):
        return data[0] if len(data) else None  # type: ignore[index,arg-type]
    return data


# -- embedding map ----------------------------------------------------------------------------------------------------
def embedding_tab() -> None:
    """The t-SNE map of the sample's cells; a click on a point shows that cell."""
    emb_key = ("emb", sample_id, res.model_id)
    st.caption("2D t-SNE map of the model's penultimate features, coloured by the current label. Click a point to "
               "see its cell.")
    if st.button("Compute the map", icon=":material/scatter_plot:"):
        analysed = [r.cell for r in res.cells if r.predicted_class is not None]
        with st.spinner(f"Embedding {min(len(analysed), 2000):,} cells…"):
            ok, out = attempt(embedding_map, store, analysed, model_dir)
        if ok:
            st.session_state[emb_key] = out
    stale = emb_key in st.session_state and any(i not in by_id for i in st.session_state[emb_key][0])
    if stale:  # cells were removed or replaced since the map was computed
        del st.session_state[emb_key]
        st.info("The sample's cells changed since the map was computed: compute it again.")
    if emb_key in st.session_state:
        cell_ids, xy = st.session_state[emb_key]
        labels = [by_id[i].final_label if by_id[i].counted else (by_id[i].exclusion or "excluded") for i in cell_ids]
        fig = embedding_figure(cell_ids, xy, labels)
        event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="emb_chart")
        points = list(((event or {}).get("selection") or {}).get("points") or [])  # the event is a dict too
        cid = picked_cell_id(points[0], fig) if points else None
        if points and (cid is None or cid not in by_id):
            st.caption("That point is not a cell of this map; click a point of the scatter.")
        elif cid is not None:
            r = by_id[cid]
            p1, p2 = st.columns([1, 3])
            with p1:
                show_cell_image(r, width=160)
            predicted = (f"Predicted **{md(r.predicted_class)}** ({r.confidence:.2f})" if r.predicted_class
                         else f"Not predicted by {md(res.model_id)}")
            p2.markdown(f"**Cell #{cid}** · {md(r.cell.source_file)}  \n{predicted} · final label "
                        f"**{md(r.final_label or 'none yet')}**  \n{md(r.exclusion or 'counted')}")


# -- markers ----------------------------------------------------------------------------------------------------------
def markers_tab() -> None:
    """Predicted marker expression per class (histogram and quartiles)."""
    names = sorted({t for r in res.cells for t in r.targets})
    if not names:
        st.caption("This model predicts no continuous markers.")
    else:
        import plotly.express as px

        target = st.selectbox("Marker", names)
        unit = target_units(res.card).get(target, "a.u.")
        counted = [r for r in res.cells if r.counted and target in r.targets]
        fig = px.histogram(x=[r.targets[target] for r in counted], color=[r.final_label for r in counted],
                           barmode="overlay", opacity=0.6, nbins=40, template="plotly_white", height=420,
                           labels={"x": f"{target}, predicted ({unit})", "color": "class"})
        st.plotly_chart(fig, key="marker_hist")
        rows = [{"class": m.label, "cells": m.n, f"predicted median ({unit})": format_marker(m.median),
                 f"Q1 ({unit})": format_marker(m.q1), f"Q3 ({unit})": format_marker(m.q3)}
                for m in res.differential.markers if m.target == target]
        st.dataframe(rows, hide_index=True, width="stretch")
        st.caption(f"{md(target)} is predicted by the model from the label-free image, not measured; values in "
                   f"{md(unit)}, to 3 significant figures.")


# -- exclusions -------------------------------------------------------------------------------------------------------
def exclusions_tab() -> None:
    """Why cells are not counted, and every review decision."""
    if res.exclusions:
        st.dataframe([{"reason": k, "cells": v} for k, v in sorted(res.exclusions.items(), key=lambda kv: -kv[1])],
                     hide_index=True, width="stretch")
    else:
        st.caption("No cell is excluded.")
    actions = store.list_review_actions(sample_id)
    if actions:
        st.markdown("**Review decisions**")
        st.dataframe([{"cell": a.cell_id, "from": a.old_label, "to": a.new_label, "by": a.actor,
                       "at": a.at.strftime("%Y-%m-%d %H:%M:%S")} for a in reversed(actions)],
                     hide_index=True, width="stretch", height=min(38 + 35 * len(actions), 320))


# -- the tabs: only the open one runs ----------------------------------------------------------------------------
tab_gallery, tab_map, tab_markers, tab_excluded = st.tabs(
    ["Differential and gallery", "Embedding map", "Marker expression", "Exclusions"], on_change="rerun",
    key="review_tab")

if tab_gallery.open:
    with tab_gallery:
        workbench(sample_id, N_BOOTSTRAP)
if tab_map.open:
    with tab_map:
        embedding_tab()
if tab_markers.open:
    with tab_markers:
        markers_tab()
if tab_excluded.open:
    with tab_excluded:
        exclusions_tab()
