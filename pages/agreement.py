"""Agreement: manual cytospin counts for this sample (editor or CSV), model vs manual, and method-comparison
studies over many samples (Bland-Altman, Passing-Bablok, the results table with the CLSI EP09 verdict per class,
decision-level bias, outliers and warnings), downloadable as CSV and SVG."""

from __future__ import annotations

import csv
import io
import re

import streamlit as st

from pages._common import (allowed, attempt, flash, get_store, lock_notice, md, one_line, pick_sample,
                           require_user, sample_header, show_flash, signed_version)
from phenotyping.agreement.comparison import FLAG_DIFFERENCE_POINTS, comparison_csv, sample_comparison, study_comparison
from phenotyping.agreement.figures import (bland_altman_caveat, bland_altman_figure, bland_altman_svg,
                                           passing_bablok_figure, passing_bablok_svg)
from phenotyping.analysis.results import load_card_for
from phenotyping.agreement.manual_counts import import_manual_counts, manual_classes, save_manual_counts
from phenotyping.agreement.class_agreement import options_from_specs
from phenotyping.agreement.study import run_study, study_candidates
from phenotyping.settings import get_settings

store = get_store()
user = require_user()
st.title("Agreement")
sample_id = pick_sample(store)
if sample_id is None:
    st.stop()
sample_header(store, sample_id)
show_flash()

model_id = store.analysis_model(sample_id)
card = load_card_for(model_id, store=store) if model_id else None
classes = list(card["classes"]) if card else sorted({c.cell_type for c in store.get_manual_counts(sample_id)})
# cell types a manual count of this specimen may hold although the model cannot classify them (e.g. basophils)
classes, extra_classes = manual_classes(classes, store.get_sample(sample_id).specimen.value)

# -- manual counts of this sample -------------------------------------------------------------------------------------
st.subheader("Manual count (cytospin)")
if not classes:
    st.info("Analyse the sample first: the manual count is entered per class of the model.")
else:
    saved = {c.cell_type: c for c in store.get_manual_counts(sample_id)}
    locked = signed_version(store, sample_id)
    can_count = allowed(user, "counts") and locked is None
    if locked is not None:
        lock_notice(locked, "its manual count")
    total_saved = next((c.total_counted for c in saved.values() if c.total_counted), None)
    rows = [{"cell_type": c, "count": saved[c].count if c in saved else None} for c in classes]
    extra_rows = [{"cell_type": c, "count": saved[c].count if c in saved else None} for c in extra_classes]
    left, right = st.columns([3, 2])
    with left:
        count_columns = {"cell_type": st.column_config.TextColumn("Class"),
                         "count": st.column_config.NumberColumn("Cells counted", min_value=0, step=1, format="%d")}
        edited = st.data_editor(rows, key=f"counts_{sample_id}", hide_index=True, width="stretch",
                                disabled=["cell_type"] if can_count else True, column_config=count_columns)
        if extra_rows:
            st.caption("Counted by hand only: classes the model does not classify. They count towards the total "
                       "and are shown apart in the comparison.")
            edited = [*edited, *st.data_editor(extra_rows, key=f"extra_counts_{sample_id}", hide_index=True,
                                               width="stretch", disabled=["cell_type"] if can_count else True,
                                               column_config=count_columns)]
        total = st.number_input("Total cells counted (optional; checks the sum)", min_value=0, step=1,
                                value=int(total_saved or 0), key=f"total_{sample_id}", disabled=not can_count)
        if can_count and st.button("Save manual count", type="primary", icon=":material/save:"):
            entered = [{"cell_type": r["cell_type"], "count": r["count"], "total_counted": total or None}
                       for r in edited if r["count"] is not None and str(r["count"]) != "nan"]
            if not entered:
                st.error("Enter at least one count.")
            else:
                ok, _ = attempt(save_manual_counts, store, sample_id, entered, actor=user.username,
                                allowed_classes=classes, extra_classes=extra_classes)
                if ok:
                    flash("Manual count saved.")
                    st.rerun()
    with right:
        if allowed(user, "counts"):
            gen = st.session_state.setdefault("_counts_csv_generation", 0)
            up = st.file_uploader("…or import a CSV (sample_id, cell_type, count or percent[, total_counted]); "
                                  "it may hold many samples", type=["csv"], key=f"counts_csv_{gen}")
            if up is not None and st.button("Import CSV", icon=":material/upload_file:"):
                text = io.TextIOWrapper(up, encoding="utf-8-sig")
                ok, done = attempt(import_manual_counts, store, text, actor=user.username, allowed_classes=classes,
                                   extra_classes=extra_classes)
                if ok:
                    st.session_state["_counts_csv_generation"] = gen + 1  # an empty uploader again
                    flash(f"Imported manual counts of {len(done)} sample(s): {', '.join(sorted(done))}.")
                    st.rerun()

    if saved and model_id:
        try:
            paired = sample_comparison(store, sample_id, model_id=model_id, card=card)
        except ValueError as e:
            st.info(md(one_line(e)))
        else:
            method = next((r.correction for r in paired if r.correction), None)
            table = []
            for r in paired:
                row = {"class": r.cell_type + ("" if r.in_model else " (not in the model)"),
                       "manual %": r.manual_percent, "model raw %": r.model_raw_percent,
                       "raw − manual": r.raw_minus_manual}
                if method:
                    row[f"model corrected % ({method})"] = r.model_corrected_percent
                row["flag"] = r.flag
                table.append(row)
            st.markdown("**Model vs manual for this sample**")
            st.dataframe(table, hide_index=True, width="stretch",
                         column_config={k: st.column_config.NumberColumn(format="%.1f") for k in table[0]
                                        if k not in ("class", "flag")})
            manual_n = paired[0].manual_total
            st.caption(f"Manual: {'?' if manual_n is None else f'{manual_n:,}'} cells counted · model: "
                       f"{paired[0].model_counted:,} cells counted. Percentages of counted cells; differences in "
                       f"percentage points; flagged from ±{FLAG_DIFFERENCE_POINTS:g} points."
                       + (" A class not in the model keeps its share of the whole manual count; the model's classes "
                          "are compared as a share of the manual cells of those classes."
                          if any(not r.in_model for r in paired) else ""))
            for r in paired:
                if r.in_model and r.flag:
                    st.warning(f"{md(r.cell_type)}: {md(r.flag)} (≥ {FLAG_DIFFERENCE_POINTS:g} points): check the "
                               "slides and the review.", icon=":material/flag:")

# -- studies ----------------------------------------------------------------------------------------------------------
st.divider()
st.subheader("Method-comparison study")
analysed = [s for s in store.samples_with_manual_counts() if store.analysis_model(s)]
models = sorted({store.analysis_model(s) for s in analysed})
study_model = st.selectbox("Model", models, key="study_model") if len(models) > 1 else (models or [None])[0]
candidates = study_candidates(store, study_model) if study_model else []
if len(candidates) < 3:
    st.caption(f"A study needs at least 3 samples with manual counts analysed with one model; {len(candidates)} "
               f"so far{f' for {study_model}' if study_model else ''}.")
else:
    lab = get_settings()

    def _spec_text(values: dict) -> str:
        return "; ".join(f"{k}={','.join(f'{v:g}' for v in (x if isinstance(x, (list, tuple)) else [x]))}"
                         for k, x in values.items())

    with st.form("study"):
        name = st.text_input("Study name", value=f"study-{len(store.list_studies()) + 1}")
        chosen = st.multiselect(f"Samples analysed with {study_model}", candidates, default=candidates,
                                key=f"study_samples_{study_model}")
        measure = st.radio("Difference measure", ["absolute", "percent"], horizontal=True,
                           format_func={"absolute": "percentage points", "percent": "% of the mean"}.get)
        e1, e2 = st.columns(2)
        allow_text = e1.text_input(
            "Allowable difference (CLSI EP09 verdict)", value=_spec_text(lab.agreement_allowable),
            help="CLASS=A; … or A for every class, in the units of the measure (percentage points or % of the "
                 "mean). A class is accepted when its bias and both limits of agreement lie within ±A. Empty: no "
                 "verdict. Default: the lab setting agreement_allowable.")
        levels_text = e2.text_input(
            "Medical decision levels (%)", value=_spec_text(lab.agreement_decision_levels),
            help="CLASS=X,X; … or X,X for every class: the predicted bias is reported at these percentages. "
                 "Default: the lab setting agreement_decision_levels.")
        o1, o2, o3 = st.columns(3)
        regression = o1.radio("Decision-level bias from", ["deming", "passing_bablok"], horizontal=True,
                              format_func={"deming": "Deming", "passing_bablok": "Passing-Bablok"}.get)
        weighted = o2.checkbox("Weighted Deming (constant CV)")
        bootstrap = o3.checkbox("Bootstrap CIs (1000 resamples, seed 0)")
        go = st.form_submit_button("Run study", type="primary", disabled=not allowed(user, "counts"))
    if go:
        def _specs(text: str) -> list[str]:
            return [p.strip() for p in text.split(";") if p.strip()]

        ok, options = attempt(options_from_specs, _specs(levels_text), _specs(allow_text), regression=regression,
                              weighted_deming=weighted, bootstrap=1000 if bootstrap else 0)
        if ok:
            with st.spinner("Computing the agreement statistics…"):
                ok, result = attempt(run_study, store, name.strip(), model_id=study_model, actor=user.username,
                                     sample_ids=chosen, measure=measure, options=options)
            if ok:
                st.session_state["study_result"] = result
                ok, pairs = attempt(study_comparison, store, list(result.sample_ids), model_id=study_model)
                st.session_state["study_pairs"] = pairs if ok else None

result = st.session_state.get("study_result")
if result is not None:
    comparisons = {"raw": result.raw, **({"corrected": result.corrected} if result.corrected else {})}
    which = st.radio("Model differential", list(comparisons), horizontal=True)
    per_class = comparisons[which]
    def _stat(value: object, error: str | None, n: int) -> str:
        """A statistic with two decimals, or why it is missing ("Pearson r: None" said nothing)."""
        if isinstance(value, (int, float)):
            return f"{value:.2f}"
        need = re.search(r"at least (\d+)", error or "")
        return f"not computable (n = {n} < {need.group(1)})" if need else "not computable"

    rows = []
    for c, a in per_class.items():
        s = a.summary()
        pb = s["passing_bablok"] or {}
        acc = s["acceptance"]
        err = {k: a.errors.get(k) for k in ("bland_altman", "passing_bablok", "ccc", "pearson", "icc")}
        rows.append({"class": c, "n": s["n"], "bias": _stat(s["bias"], err["bland_altman"], s["n"]),
                     "LoA lower": _stat(s["loa_lower"], err["bland_altman"], s["n"]),
                     "LoA upper": _stat(s["loa_upper"], err["bland_altman"], s["n"]),
                     "PB slope": _stat(pb.get("slope"), err["passing_bablok"], s["n"]),
                     "PB intercept": _stat(pb.get("intercept"), err["passing_bablok"], s["n"]),
                     "CCC": _stat(s["ccc"], err["ccc"], s["n"]), "Pearson r": _stat(s["pearson"], err["pearson"],
                                                                                     s["n"]),
                     "ICC": _stat(s["icc"]["icc"], err["icc"], s["n"]),
                     "verdict": "no allowable set" if acc is None else f"{s['verdict']} (±{acc['allowable']:g})",
                     "outliers": 0 if s["outliers"] is None else s["outliers"]["n_outliers"],
                     "warnings": len(s["warnings"])})
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption("Differences model − manual, in percentage points (or % of the mean). Bias: mean difference. "
               "LoA: limits of agreement, bias ± 1.96 SD of the differences (Bland-Altman). PB: Passing-Bablok "
               "regression of model on manual (slope 1 and intercept 0 mean no systematic difference). CCC: Lin's "
               "concordance correlation coefficient. Pearson r: linear correlation (needs at least 4 samples). ICC: "
               "intraclass correlation coefficient (absolute agreement). Verdict (CLSI EP09): accepted when the "
               "bias and both limits of agreement lie within ± the allowable difference. Outliers: generalised ESD "
               "of the differences, flagged and kept in the results (the class below shows them and the results "
               "without them). Warnings: the design warnings of the class below.")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    d1, d2, _ = st.columns([1, 1, 2])
    d1.download_button("Per-class results (CSV)", buf.getvalue(), file_name=f"{result.name}-{which}.csv",
                       mime="text/csv", icon=":material/download:", width="stretch")
    pairs = st.session_state.get("study_pairs")
    if pairs:
        d2.download_button("Per-sample paired data (CSV)", comparison_csv(pairs),
                           file_name=f"{result.name}-paired.csv", mime="text/csv", icon=":material/download:",
                           width="stretch", help="Sample, class, manual %, model raw and corrected %, manual total "
                                                 "and cells the model counted: the pairs the statistics compare.")
    cls = st.selectbox("Class", list(per_class))
    a = per_class[cls]
    for w in a.warnings:
        st.warning(f"{cls}: {w}", icon=":material/warning:")
    if a.acceptance is not None:
        acc = a.acceptance
        verdict = st.success if acc.accepted else st.error
        verdict(f"{cls}: {'accepted' if acc.accepted else 'not accepted'} against ±{acc.allowable:g} — bias "
                f"{'inside' if acc.bias_within else 'outside'}, limits of agreement "
                f"{'inside' if acc.limits_within else 'outside'}"
                + ("" if acc.limits_ci_within is None else
                   f"; their outer CI bounds {'inside' if acc.limits_ci_within else 'outside'}") + ".")
    if a.decision_levels is not None:
        dl = a.decision_levels
        st.markdown(f"**Predicted bias at decision levels** ({dl.method.replace('_', '-')}; CI: {dl.ci_method})")
        st.dataframe([{"level %": lv.level, "predicted model %": lv.predicted, "bias": lv.bias,
                       "CI low": lv.bias_ci[0], "CI high": lv.bias_ci[1], "bias % of level": lv.relative_bias}
                      for lv in dl.levels], hide_index=True, width="stretch",
                     column_config={k: st.column_config.NumberColumn(format="%.2f")
                                    for k in ("level %", "predicted model %", "bias", "CI low", "CI high",
                                              "bias % of level")})
    if a.outliers is not None and a.outliers.n_outliers:
        o = a.outliers
        st.markdown(f"**Outlying differences** (generalised ESD, up to {o.max_outliers}, α = {o.alpha:g}): "
                    + ", ".join(f"{lab_} ({v:+.2f})" for lab_, v in zip(o.labels or (), o.values))
                    + ". They are kept in the results above.")
        w = a.without_outliers
        if w is not None:
            lim = w.limits()
            st.dataframe([{"": "without the flagged samples", "n": w.n, "bias": lim["bias"],
                           "LoA lower": lim["loa_lower"], "LoA upper": lim["loa_upper"],
                           "PB slope": None if w.passing_bablok is None else w.passing_bablok.slope,
                           "verdict": None if w.acceptance is None else
                           ("accepted" if w.acceptance.accepted else "not accepted")}],
                         hide_index=True, width="stretch")
    f1, f2 = st.columns(2)
    caveat = None if a.bland_altman is None else bland_altman_caveat(a.bland_altman)
    if caveat:
        st.warning(f"{md(cls)}: {caveat}", icon=":material/warning:")
    if a.bland_altman is not None:
        f1.plotly_chart(bland_altman_figure(a.bland_altman, title=f"Bland-Altman: {cls}", units="%"), key="ba")
        f1.download_button("Bland-Altman (SVG)", bland_altman_svg(a.bland_altman, title=f"Bland-Altman: {cls}"),
                           file_name=f"{result.name}-{cls}-bland-altman.svg", mime="image/svg+xml")
    elif a.repeated is not None:
        f1.info(f"{md(cls)}: replicate counts per sample, so repeated-measures Bland-Altman (Bland & Altman 2007) is "
                "reported in the table; no scatter plot is drawn for it.")
    else:
        f1.warning(f"Bland-Altman for {md(cls)} could not be computed: "
                   + "; ".join(f"{md(k)}: {md(v)}" for k, v in a.errors.items()))
    if a.passing_bablok is not None:
        f2.plotly_chart(passing_bablok_figure(a.passing_bablok, title=f"Passing-Bablok: {cls}",
                                              x_label="manual %", y_label="model %"), key="pb")
        f2.download_button("Passing-Bablok (SVG)", passing_bablok_svg(a.passing_bablok, title=f"Passing-Bablok: {cls}"),
                           file_name=f"{result.name}-{cls}-passing-bablok.svg", mime="image/svg+xml")
    elif a.errors:
        f2.info("Passing-Bablok: " + "; ".join(f"{md(k)}: {md(v)}" for k, v in a.errors.items()))

saved_studies = store.list_studies()
if saved_studies:
    with st.expander(f"Saved studies ({len(saved_studies)})", icon=":material/folder_open:"):
        st.dataframe([{**s, "created_at": s["created_at"].strftime("%Y-%m-%d %H:%M")} for s in saved_studies],
                     hide_index=True, width="stretch")
