"""The draft check binds each number to the class its sentence names, and each interpretive word (normal, elevated,
neutrophilia, …) to the configured reference interval of its class (issue 16, items 15-16)."""

from __future__ import annotations

import json

import pytest

from reports._models import ApartRow
from reports.context import Facts, facts_from_context
from reports.demo import demo_context
from reports.draft import check_text, draft_interpretation, template_sentences, validate_output

CLASSES = {"neutrophil": "neutrophil", "lymphocyte": "lymphocyte", "monocyte": "monocyte", "ig": "ig",
           "band_neutrophil": "band neutrophil"}
VALUES = {
    "cells.total": 410, "cells.counted": 400, "cells.excluded": 10, "confidence_pct": 95, "reference_min_cells": 200,
    "reference_configured": 1,
    "diff.neutrophil.count": 240, "diff.neutrophil.pct": 60.0, "diff.neutrophil.ci_low": 55.1,
    "diff.neutrophil.ci_high": 64.7,
    "diff.lymphocyte.count": 36, "diff.lymphocyte.pct": 9.0, "diff.lymphocyte.ci_low": 6.4,
    "diff.lymphocyte.ci_high": 12.2,
    "diff.monocyte.count": 20, "diff.monocyte.pct": 5.0, "diff.monocyte.ci_low": 3.1, "diff.monocyte.ci_high": 7.6,
    "diff.ig.count": 8, "diff.ig.pct": 2.0, "diff.ig.ci_low": 0.9, "diff.ig.ci_high": 3.9,
    "diff.band_neutrophil.count": 96, "diff.band_neutrophil.pct": 24.0, "diff.band_neutrophil.ci_low": 19.9,
    "diff.band_neutrophil.ci_high": 28.5,
    "ref.neutrophil.low": 40.0, "ref.neutrophil.high": 55.0,  # neutrophils 60.0 % lie above
    "ref.monocyte.low": 2.0, "ref.monocyte.high": 8.0,  # monocytes 5.0 % lie inside; lymphocytes have none
}


@pytest.fixture
def facts() -> Facts:
    return Facts(specimen="blood", classes=CLASSES, values={k: float(v) for k, v in VALUES.items()}, units={})


SWAPPED = [
    "Lymphocytes 60.0%, neutrophils 9.0%.",
    "60.0% lymphocytes and 9.0% neutrophils.",
    "Lymphocytes were 60.0% (95% CI 55.1–64.7%) and neutrophils were 9.0% (95% CI 6.4–12.2%).",
]


@pytest.mark.parametrize("text", SWAPPED)
def test_swapped_classes_are_rejected_naming_both(facts, text):
    problems = check_text(text, facts)
    about_60 = [p for p in problems if p.startswith("number 60.0 ")]
    about_9 = [p for p in problems if p.startswith("number 9.0 ")]
    assert about_60 and about_9, problems
    assert "for lymphocyte" in about_60[0] and "diff.neutrophil.pct" in about_60[0]
    assert "diff.lymphocyte.pct = 9" in about_60[0]  # the fact value of the class it was written for
    assert "for neutrophil" in about_9[0] and "diff.lymphocyte.pct" in about_9[0]


@pytest.mark.parametrize("text", [
    "Neutrophils 60.0%, lymphocytes 9.0%.",
    "60.0% neutrophils and 9.0% lymphocytes.",
    "Neutrophils were 60.0% (95% CI 55.1–64.7%) of 400 counted cells.",
    "Of 400 counted cells, 240 were neutrophils and 36 lymphocytes.",
    "Neutrophilic cells 60.0%; lymphs 9.0%; monos 5.0%.",
    "Immature granulocytes 2.0% and band neutrophils 24.0%; IG 2.0% (0.9 to 3.9).",
    "The lymphocyte proportion was 9.0%, between 6.4 and 12.2.",
])
def test_numbers_written_next_to_their_class_pass(facts, text):
    assert check_text(text, facts) == []


@pytest.mark.parametrize("text, number, written_for, equals", [
    ("Band neutrophils 60.0%.", "60.0", "band neutrophil", "diff.neutrophil.pct"),
    ("Neutrophils 24.0%.", "24.0", "neutrophil", "diff.band_neutrophil.pct"),
    ("IG 24.0%.", "24.0", "ig", "diff.band_neutrophil.pct"),
    ("Neutrophils 240%.", "240", "neutrophil", "diff.neutrophil.count"),  # the class's count written as a %
])
def test_multi_word_names_acronyms_and_quantities_are_bound(facts, text, number, written_for, equals):
    problems = [p for p in check_text(text, facts) if p.startswith(f"number {number} ")]
    assert problems and f"for {written_for}," in problems[0] and equals in problems[0], problems


def test_a_swapped_llm_draft_is_rejected_then_the_template_is_used(facts):
    ids = ["diff.neutrophil.pct", "diff.lymphocyte.pct"]
    answer = json.dumps({"sentences": [{"text": SWAPPED[0], "fact_ids": ids}]})
    assert validate_output(answer, facts)[1]
    rec = draft_interpretation(facts, model="openai/gpt-4o-mini", max_attempts=1,
                               completion_options={"mock_response": answer})
    assert rec.outcome == "template_after_rejection"
    assert any("for lymphocyte" in p for p in rec.attempts[0].problems)


def test_template_passes_with_multi_word_and_short_class_names(facts):
    for s in template_sentences(facts):
        assert check_text(s.text, facts, cited=s.fact_ids) == [], s.text


# -- interpretive claims -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ("Lymphocytes were within normal limits.", "no reference interval is configured for lymphocyte"),
    ("Lymphocytes at 9.0% were normal.", "no reference interval is configured for lymphocyte"),
    ("Monocytes were elevated.", "its value 5.0 is inside the reference interval 2.0–8.0"),
    ("Neutrophils were within the reference interval.", "its value 60.0 is above the reference interval 40.0–55.0"),
    ("Monocytes were low.", "its value 5.0 is inside"),
    ("Monocytopenia.", "its value 5.0 is inside"),
    ("Neutrophils were not elevated.", "its value 60.0 is above"),
    ("Lymphopenia was seen.", "no reference interval is configured for lymphocyte"),
    ("Leukocytosis was seen.", "'Leukocytosis' names no class"),
    ("The differential looks healthy.", "'healthy' names no class"),
    ("Neutrophils and monocytes were within normal limits.", "about neutrophil is not supported"),
])
def test_unsupported_claims_are_rejected(facts, text, problem):
    problems = check_text(text, facts)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("text", [
    "Monocytes were within normal limits.",
    "Monocytes at 5.0% lie within the laboratory reference interval of 2.0–8.0%.",
    "Neutrophilia: neutrophils 60.0% lie above the reference interval (40.0–55.0%).",
    "Neutrophils were elevated, monocytes normal.",
    "There was no monocytosis and no neutropenia.",
    "Monocytes were not elevated.",
])
def test_claims_the_configured_interval_supports_pass(facts, text):
    assert check_text(text, facts) == []


def test_no_interval_configured_means_no_claim_passes(facts):
    bare = facts.model_copy(update={"values": {**facts.values, "reference_configured": 0.0}})
    assert any("no reference interval is configured for monocyte" in p
               for p in check_text("Monocytes were within normal limits.", bare))
    assert check_text("No class is flagged high or low.", bare) == []
    assert any("neutrophil lie outside" in p for p in check_text("No class is flagged high or low.", facts))


def test_facts_carry_the_intervals_of_apart_classes_and_their_source():
    ctx = demo_context()
    ery = ApartRow(label="erythroblast", role="per_100_leukocytes", count=2, value=0.5, ci_low=0.1, ci_high=1.8,
                   unit="/100 leukocytes", reference_low=0.0, reference_high=1.0)
    facts = facts_from_context(ctx.model_copy(update={"apart": [ery]}))
    assert (facts.values["ref.erythroblast.low"], facts.values["ref.erythroblast.high"]) == (0.0, 1.0)
    assert facts.reference_source == ctx.reference_source
    assert facts.prompt_json()["reference_intervals_source"] == ctx.reference_source
    assert check_text("Erythroblasts were within the reference interval.", facts) == []
    assert any("its value 0.5 is inside" in p for p in check_text("Erythroblasts were raised.", facts))
    assert check_text(f"Intervals from {ctx.reference_source}.", facts) == []


def test_a_claim_covers_every_class_listed_before_it(facts):
    problems = check_text("Neutrophils (60.0%), lymphocytes (9.0%) and monocytes (5.0%) were within normal limits.",
                          facts)
    assert any("about neutrophil is not supported" in p for p in problems), problems
    assert any("no reference interval is configured for lymphocyte" in p for p in problems), problems
    assert not any("about monocyte" in p for p in problems)


def test_short_labels_are_matched_as_written():
    phases = Facts(specimen="blood", classes={"g1": "G1", "s": "S"},
                   values={"diff.g1.pct": 40.0, "diff.s.pct": 12.0}, units={})
    assert check_text("The model's G1 share was 40.0%, and S 12.0%.", phases) == []
    assert any("for S," in p and "diff.g1.pct" in p for p in check_text("S 40.0%, G1 12.0%.", phases))


def test_a_word_sharing_a_stem_but_not_the_cell_family_is_not_the_class():
    ery = Facts(specimen="blood", classes={"neutrophil": "neutrophil"}, apart={"erythroblast": "erythroblast"},
                values={"diff.neutrophil.pct": 100.0, "apart.erythroblast.per_100": 5.0, "ref.erythroblast.low": 0.0,
                        "ref.erythroblast.high": 1.0}, units={})
    assert check_text("Erythroblasts were elevated.", ery) == []
    assert any("'erythrocytosis' names no class" in p for p in check_text("There was erythrocytosis.", ery))
