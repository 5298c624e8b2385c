"""Interpretation drafting: grounded numbers, forbidden wording, fallbacks (litellm mock_response only)."""

from __future__ import annotations

import json

import pytest

from reports.context import Facts, facts_from_context
from reports.demo import demo_context
from reports.draft import (
    TEMPLATE_SOURCE,
    SYSTEM_PROMPT,
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
    for secret in (ctx.patient_pseudonym, ctx.sample_id, ctx.report_id, ctx.drafted_by.name, ctx.signer.name,
                   ctx.interpretation[:30], ctx.lab_name):
        assert secret not in prompt
    assert facts.values["diff.neutrophil.pct"] == 57.0
    assert facts.values["cells.counted"] == 400
    assert facts.values["qc.excluded.out_of_focus"] == 17


def test_numbers_in_reads_signs_exponents_and_digits_stuck_to_letters():
    assert numbers_in("CD16 median 812 and 1,234 cells; 4.5% (1.9–5.8)", names=["CD16 (a.u.)"]) == [
        "812", "1234", "4.5", "1.9", "5.8"]
    assert numbers_in("CD16 median 812") == ["16", "812"]  # a marker name not among the facts is no excuse
    assert numbers_in("bias -1.2 (−3.4 to +2.0); range 52.0-61.9 or 52.0 - 61.9") == [
        "-1.2", "-3.4", "+2.0", "52.0", "61.9", "52.0", "61.9"]
    assert numbers_in("63.5pct, 9.9e1 and 1.2e-3") == ["63.5", "9.9e1", "1.2e-3"]


def test_check_text_rounding_and_screen(facts):
    assert check_text("Neutrophils were 57% of counted cells.", facts) == []
    loa = facts.values["agreement.neutrophil.loa_low"]  # many decimals: any rounding of it is supported
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


# -- the tightened screen: each rejection through the model path (litellm mock_response) ---------------------------
BAD = [
    ("Neutrophils made up -57.0% of counted cells.", ["diff.neutrophil.pct"], "-57.0 matches no cited fact"),
    ("Neutrophils made up 63.5pct of counted cells.", ["diff.neutrophil.pct"], "63.5 matches no cited fact"),
    ("Neutrophils made up 9.9e1% of counted cells.", ["diff.neutrophil.pct"], "9.9e1 matches no cited fact"),
    ("Neutrophils made up fifty-seven percent of counted cells.", ["diff.neutrophil.pct"], "as a word 'fifty'"),
    ("Findings point to a viral process.", ["diff.neutrophil.pct"], "'point to'"),
    ("This is a reactive lymphocytosis.", ["diff.lymphocyte.pct"], "'lymphocytosis'"),
    ("Consider a bone marrow biopsy.", ["diff.neutrophil.pct"], "'biopsy'"),
    ("Correlate clinically and repeat the count in 2 days.", ["diff.basophil.count"], "'repeat'"),
]


@pytest.mark.parametrize("text, ids, problem", BAD, ids=[b[2] for b in BAD])
def test_llm_draft_rejections(facts, text, ids, problem):
    rec = draft_interpretation(facts, model=MODEL, completion_options={"mock_response": _answer((text, ids))},
                               max_attempts=1)
    assert rec.outcome == "template_after_rejection" and rec.source == TEMPLATE_SOURCE
    assert any(problem in p for p in rec.attempts[0].problems), rec.attempts[0].problems


def test_negative_facts_need_their_sign(facts):
    bias = facts.values["agreement.neutrophil.loa_low"]
    assert bias < 0
    assert check_text(f"Lower limit {bias:.1f} points.", facts) == []
    assert any("sign differs" in p for p in check_text(f"Lower limit {abs(bias):.1f} points.", facts))


def test_numbers_of_a_class_label_count_only_inside_the_label():
    facts = Facts(specimen="blood", classes={"stage_2_blast": "stage 2 blast", "other": "other"},
                  values={"diff.stage_2_blast.pct": 10.0, "diff.other.pct": 90.0}, units={})
    assert check_text("Stage 2 blast cells were 10.0%.", facts) == []
    assert any("number 2 " in p for p in check_text("Other cells were 90.0%, about 2 in 3.", facts))


def test_template_text_is_descriptive_for_every_configuration(facts):
    bare = facts.model_copy(update={"values": {k: v for k, v in facts.values.items()
                                               if not k.startswith(("ref.", "agreement", "corr."))}
                                    | {"reference_configured": 0.0}})
    for f in (facts, bare):
        for s in template_sentences(f):
            assert check_text(s.text, f, cited=s.fact_ids) == [], s.text
    text = " ".join(s.text for s in template_sentences(bare))
    assert "No laboratory reference interval is configured" in text


def test_retry_tells_the_model_what_was_wrong(facts, monkeypatch):
    import litellm

    sent = []
    real = litellm.completion

    def spy(**kwargs):
        sent.append(kwargs["messages"])
        return real(**kwargs)

    monkeypatch.setattr(litellm, "completion", spy)
    bad = _answer(("Neutrophils made up 63.5% of counted cells, suggesting a viral process.",
                   ["diff.neutrophil.pct"]))
    rec = draft_interpretation(facts, model=MODEL, completion_options={"mock_response": bad})
    assert len(sent) == 2 and sent[0] == build_messages(facts)
    assert sent[1][:2] == sent[0] and sent[1][2] == {"role": "assistant", "content": bad}
    retry = sent[1][3]["content"]
    assert "63.5 matches no cited fact" in retry and "'suggesting'" in retry and "'viral'" in retry
    assert rec.attempts[0].prompt_sha256 != rec.attempts[1].prompt_sha256
    assert rec.prompt_sha256 == rec.attempts[0].prompt_sha256


def test_system_prompt_states_the_rules():
    for rule in ("minus sign", "in digits", "diagnosis", "follow-up", "next to the name of the class",
                 "only when its reference interval is given"):
        assert rule in SYSTEM_PROMPT


def test_claims_about_reference_intervals_must_match_the_configuration(facts):
    assert facts.values["reference_configured"] == 1
    stale = "No laboratory reference interval is configured for this specimen, so no class is flagged high or low."
    assert any("has configured intervals" in p for p in check_text(stale, facts))
    bare = facts.model_copy(update={"values": {**facts.values, "reference_configured": 0.0}})
    assert check_text(stale, bare) == []
    assert any("none is configured" in p for p in check_text("Monocytes lie above the reference interval.", bare))
