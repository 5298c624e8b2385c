"""The manual-count comparison in a real report: the latest saved study including the sample, its per-class
Bland-Altman results with CIs and model version, figures from phenotyping.agreement.figures, and agreement facts."""

from __future__ import annotations

import pytest

from phenotyping.settings import Settings
from reports.context import build_context, facts_from_context, study_agreement
from reports.demo import DEMO_MODEL, demo_card, demo_store
from reports.pdf import render_html


@pytest.fixture
def demo(store, tmp_path):
    sample = demo_store(store, tmp_path / "model", n_cells=60, other_cells=40, n_other=2)
    store.add_report_version(sample, interpretation="Text.", source="template", actor="rev")
    return store, sample, Settings(db_path=":memory:", data_dir=tmp_path / "images")


def test_report_carries_the_saved_study(demo):
    store, sample, settings = demo
    saved = store.get_study("Demo comparison")
    ctx = build_context(store, sample, settings=settings)
    st = ctx.study
    assert st is not None and st.name == "Demo comparison" and st.model_id == DEMO_MODEL
    assert st.model_version == saved["model_version"] == "2025.03.1" and st.n_samples == 3
    raw = {r.label: r for r in st.rows_for("raw")}
    assert set(raw) == set(demo_card()["classes"])
    neut = saved["per_class"]["neutrophil|raw"]
    assert raw["neutrophil"].bias == neut["bias"] and raw["neutrophil"].loa_low == neut["loa_lower"]
    assert (raw["neutrophil"].bias_ci_low, raw["neutrophil"].bias_ci_high) == tuple(neut["bias_ci"])
    assert (raw["neutrophil"].loa_high_ci_low, raw["neutrophil"].loa_high_ci_high) == tuple(neut["loa_upper_ci"])
    assert set(ctx.bland_altman_figures) == set(raw) and ctx.study_note is None
    svg = ctx.bland_altman_figures["neutrophil"]
    assert svg.lstrip().startswith(("<?xml", "<svg")) and "<text" in svg  # text kept as text (fast to render)
    assert "DEMO-2" not in svg  # other samples' ids stay out of this sample's report
    assert [c.label for c in ctx.comparison] == list(demo_card()["classes"])  # this sample's manual count

    facts = facts_from_context(ctx)
    assert facts.values["agreement.n_samples"] == 3 and facts.values["agreement.unit_pp"] == 1
    assert facts.values["agreement.neutrophil.bias"] == neut["bias"]
    assert facts.values["agreement.neutrophil.loa_high_ci_high"] == neut["loa_upper_ci"][1]
    assert "Demo comparison" not in str(facts.prompt_json())  # the study's typed name never reaches the LLM

    html = render_html(ctx)
    assert "Method-comparison study" in html and "Demo comparison" in html and "version 2025.03.1" in html
    assert html.count("data:image/svg+xml;base64,") == len(raw)


def test_figures_are_dropped_when_the_study_data_changed(demo):
    store, sample, settings = demo
    cell = next(c for c in store.list_cells("DEMO-2") if c.qc_state.value == "passed")
    store.reclassify([cell.id], "basophil" if cell.reviewed_label != "basophil" else "neutrophil", actor="rev",
                     model_id=DEMO_MODEL)
    ctx = build_context(store, sample, settings=settings)
    assert ctx.study is not None and ctx.bland_altman_figures == {}
    assert "changed after it was saved" in ctx.study_note
    assert "changed after it was saved" in render_html(ctx)


def test_latest_study_of_the_same_model_wins_and_others_are_named(demo):
    store, sample, _ = demo
    card = demo_card()
    saved = store.get_study("Demo comparison")
    store.save_study("Other model", sample_ids=saved["sample_ids"], model_id="other-model", model_version="9",
                     result=saved["result"], per_class=saved["per_class"], actor="rev")
    study, _, note = study_agreement(store, sample, model_id=DEMO_MODEL, card=card, figures=False)
    assert study.name == "Demo comparison" and note is None
    store.save_study("Demo comparison", sample_ids=["DEMO-2", "DEMO-3", "DEMO-X"], model_id=DEMO_MODEL,
                     model_version="2025.03.1", result=saved["result"], per_class=saved["per_class"], actor="rev")
    study, figures, note = study_agreement(store, sample, model_id=DEMO_MODEL, card=card)
    assert study is None and figures == {} and "studies of other models do: ['other-model']" in note


def test_manual_counts_without_a_study_are_said(store, tmp_path):
    sample = demo_store(store, tmp_path / "model", n_cells=40, n_other=0, study=False)
    store.add_report_version(sample, interpretation="Text.", source="template", actor="rev")
    ctx = build_context(store, sample, settings=Settings(db_path=":memory:", data_dir=tmp_path / "images"))
    assert ctx.study is None and ctx.comparison
    assert ctx.study_note == "No saved agreement study includes this sample."
    assert "No saved agreement study includes this sample." in render_html(ctx)
    assert not any(k.startswith("agreement") for k in facts_from_context(ctx).values)


def test_report_shows_verdict_icc_outliers_and_both_kappa_ses(demo):
    from phenotyping.agreement.class_agreement import EP09Options
    from phenotyping.agreement.study import run_study

    store, sample, settings = demo
    saved = store.get_study("Demo comparison")
    classes = demo_card()["classes"]
    for s in saved["sample_ids"]:  # reviewers verify a few cells, so the study has a cell-level kappa
        cells = [c for c in store.list_cells(s) if c.qc_state.value == "passed"][:8]
        for i, c in enumerate(cells):
            store.reclassify([c.id], classes[i % len(classes)], actor="rev", model_id=DEMO_MODEL)
    res = run_study(store, "EP09 study", model_id=DEMO_MODEL, actor="rev", sample_ids=saved["sample_ids"],
                    options=EP09Options(allowable={"*": 50.0, "neutrophil": 0.01}))
    ctx = build_context(store, sample, settings=settings)
    st = ctx.study
    assert st.name == "EP09 study"
    raw = {r.label: r for r in st.rows_for("raw")}
    neu = res.raw["neutrophil"]
    assert raw["neutrophil"].accepted is (neu.acceptance.accepted) and raw["neutrophil"].allowable == 0.01
    assert raw["neutrophil"].icc == (None if neu.icc is None else pytest.approx(neu.icc.icc))
    assert any("40" in w for w in raw["neutrophil"].warnings)  # 3 samples: fewer than EP09's 40
    k = res.classification.kappa
    assert st.kappa is not None and st.kappa.se == pytest.approx(k.se) and st.kappa.se_fleiss == pytest.approx(
        k.se_fleiss)  # fmt: skip
    html = render_html(ctx)
    assert "Verdict (allowable)" in html and "Fleiss, Cohen &amp; Everitt 1969" in html
    assert ("not accepted (±0.01)" in html) is (not neu.acceptance.accepted)
    assert "fewer than the 40 CLSI EP09 requires" in html
