"""Interpretation drafting: grounded numbers, forbidden wording, fallbacks (litellm mock_response only)."""

from __future__ import annotations

import json

import pytest

from reports.context import facts_from_context
from reports.demo import demo_context
from reports.draft import (
    TEMPLATE_SOURCE,
    build_messages,
    check_text,
    draft_interpretation,
    numbers_in,
    provenance_label,
    template_sentences,
)

MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def facts():
    return facts_from_context(demo_context())


def _answer(*sentences: tuple[str, list[str]]) -> str:
    return json.dumps({"sentences": [{"text": t, "fact_ids": ids} for t, ids in sentences]})


def test_facts_hold_no_identifiers_or_free_text(facts):
    ctx = demo_context()
    prompt = json.dumps(build_messages(facts))
    for secret in (ctx.patient_pseudonym, ctx.sample_id, ctx.report_id, ctx.reviewer.name, ctx.signer.name,
                   ctx.interpretation[:30], ctx.lab_name):
        assert secret not in prompt
    assert facts.values["diff.neutrophil.pct"] == 57.0
    assert facts.values["cells.counted"] == 400
    assert facts.values["qc.excluded.out_of_focus"] == 17


def test_numbers_in_ignores_numbers_inside_words():
    assert numbers_in("CD16 median 812 and 1,234 cells; 4.5% (1.9–5.8)") == ["812", "1234", "4.5", "1.9", "5.8"]


def test_check_text_rounding_and_screen(facts):
    assert check_text("Neutrophils were 57% of counted cells.", facts) == []
    loa = facts.values["agreement.loa_low"]  # many decimals: any rounding of it is supported, nothing else
    assert check_text(f"Lower limit of agreement {loa:.1f} points.", facts) == []
    assert check_text(f"Lower limit of agreement {loa:.2f} points.", facts) == []
    assert check_text(f"Lower limit of agreement {loa + 0.2:.1f} points.", facts) != []
    assert any("58.3" in p for p in check_text("Neutrophils were 58.3%.", facts))
    assert any("forbidden" in p for p in check_text("Neutrophilia consistent with bacterial infection.", facts))
    assert any("forbidden" in p for p in check_text("Start antibiotic therapy.", facts))


def test_template_draft_passes_its_own_checks(facts):
    sentences = template_sentences(facts)
    assert sentences
    for s in sentences:
        assert check_text(s.text, facts, cited=s.fact_ids) == [], s.text
        assert all(f in facts.values for f in s.fact_ids)


def test_no_model_gives_template(facts):
    rec = draft_interpretation(facts, model=None)
    assert rec.outcome == "template_no_model" and rec.source == TEMPLATE_SOURCE
    assert rec.prompt_sha256 is None and rec.attempts == []
    assert "57.0%" in rec.text


def test_llm_success(facts):
    answer = _answer(("Neutrophils made up 57.0% of 400 counted cells (95% CI 52.0–61.9).",
                      ["diff.neutrophil.pct", "cells.counted", "confidence_pct", "diff.neutrophil.ci_low",
                       "diff.neutrophil.ci_high"]),
                     ("Monocytes at 9.0% lie above the laboratory reference interval of 2.0–8.0%.",
                      ["diff.monocyte.pct", "ref.monocyte.low", "ref.monocyte.high"]))
    rec = draft_interpretation(facts, model=MODEL, completion_options={"mock_response": answer})
    assert rec.outcome == "llm" and rec.source == MODEL
    assert rec.text.startswith("Neutrophils made up 57.0%")
    assert len(rec.prompt_sha256) == 64 and rec.attempts[0].raw_output == answer
    assert "AI-assisted draft" in provenance_label(rec.source, edited=True)
    assert "edited by the reviewer" in provenance_label(rec.source, edited=True)


def test_number_mismatch_is_retried_then_template(facts):
    bad = _answer(("Neutrophils made up 63.5% of counted cells.", ["diff.neutrophil.pct"]))
    rec = draft_interpretation(facts, model=MODEL, completion_options={"mock_response": bad})
    assert rec.outcome == "template_after_rejection" and rec.source == TEMPLATE_SOURCE
    assert [a.outcome for a in rec.attempts] == ["rejected", "rejected"]
    assert any("63.5" in p for p in rec.attempts[0].problems)
    assert rec.text == " ".join(s.text for s in template_sentences(facts))


def test_uncited_or_unknown_fact_is_rejected(facts):
    unknown = _answer(("Neutrophils were 57.0%.", ["diff.granulocyte.pct"]))
    rec = draft_interpretation(facts, model=MODEL, completion_options={"mock_response": unknown}, max_attempts=1)
    assert rec.outcome == "template_after_rejection"
    assert any("unknown fact ids" in p for p in rec.attempts[0].problems)


def test_diagnosis_is_rejected(facts):
    dx = _answer(("Neutrophils at 57.0% suggest a bacterial infection.", ["diff.neutrophil.pct"]))
    rec = draft_interpretation(facts, model=MODEL, completion_options={"mock_response": dx})
    assert rec.outcome == "template_after_rejection"


def test_timeout_gives_template(facts):
    rec = draft_interpretation(facts, model=MODEL, timeout_s=0.01,
                               completion_options={"mock_response": "unused", "mock_timeout": True})
    assert rec.outcome == "template_after_error" and rec.source == TEMPLATE_SOURCE
    assert rec.attempts[0].outcome == "error" and "Timeout" in rec.attempts[0].problems[0]


def test_provider_error_gives_template(facts):
    import litellm

    err = litellm.APIConnectionError(message="connection refused", llm_provider="ollama", model="ollama/llama3")
    rec = draft_interpretation(facts, model="ollama/llama3", completion_options={"mock_response": err})
    assert rec.outcome == "template_after_error"


def test_not_json_is_rejected(facts):
    rec = draft_interpretation(facts, model=MODEL, completion_options={"mock_response": "Looks fine to me."},
                               max_attempts=1)
    assert rec.outcome == "template_after_rejection"
    assert "JSON" in rec.attempts[0].problems[0]
