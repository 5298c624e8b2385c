"""Interpretation drafting: an LLM (any litellm route) or a deterministic template, always grounded in facts.

This is the only module of the project that imports ``litellm`` (lazily, inside :func:`draft_interpretation`).
The model sees only :class:`reports.context.Facts` — computed numbers, never identifiers or user-typed text — and
must answer with sentences that cite fact ids. Every draft is screened before it is accepted:

* every cited fact id exists and every sentence cites at least one;
* every number written in the text (sign included, digits stuck to letters too, none in words) equals a cited fact
  value at the precision written (``54.7`` matches 54.68, ``-57.0`` does not match 57.0), and a number written
  next to a class equals a fact of that class of a compatible quantity ("lymphocytes 60 %" when 60 % are the
  neutrophils is rejected, :func:`reports.draft_check.binding_problems`);
* an interpretive word (normal, elevated, low, neutrophilia, …) is supported by the configured reference interval of
  the class it names (:func:`reports.draft_check.claim_problems`);
* no diagnosis, cause, disease name, treatment, recommendation or follow-up and no talk of the patient (pattern
  screen, :data:`FORBIDDEN`).

A rejected draft is regenerated once, with the problems appended to the conversation; a second rejection, a missing
model setting or an unreachable provider gives the template draft. The returned :class:`DraftRecord` always says how the text was made; the caller keeps it in the
audit trail (model, prompt hash, raw outputs, validation outcome).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reports.context import Facts
from reports.draft_check import binding_problems, claim_problems, matches, number_spans

TEMPLATE_SOURCE = "template"

#: Wording an interpretation must not contain, by why (case-insensitive regular expressions). An interpretation of
#: a differential describes the counts: proportions and their intervals, position against the lab's reference
#: interval, marker summaries, quality control and agreement with manual counts. It does not name or hint at a
#: disease or cause, does not advise treatment, tests or follow-up, and does not talk about the patient.
#: Words that place a class against its reference interval (normal, elevated, neutrophilia, lymphopenia, …) are not
#: here: :func:`reports.draft_check.claim_problems` lets them through only where the configured interval supports them.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "diagnosis or cause": (
        r"\bdiagnos\w*", r"\bprognos\w*", r"\bconsistent with\b", r"\bcompatible with\b", r"\bin keeping with\b",
        r"\bsuggest\w*", r"\bindicat\w*", r"\bpathognomonic\b", r"\btypical of\b", r"\bcharacteristic of\b",
        r"\bpoint(s|ing)? (to|towards)\b", r"\bfavou?r(s|ed|ing)?\b", r"\b(un)?likely\b", r"\bprobabl[ey]\b",
        r"\bpossib(le|ly|ility)\b", r"\bsuspect\w*", r"\bsuspicio\w*", r"\bimpression\b", r"\bcaus\w*",
        r"\b(due|secondary|attributable) to\b", r"\bbecause of\b", r"\bas a result of\b", r"\ba?etiolog\w*",
        r"\brul(e|es|ed|ing) out\b", r"\bprocess(es)?\b", r"\breactive\b", r"\bclinical\w*",
    ),
    "disease or condition": (
        r"\bdisease\w*", r"\bdisorder\w*", r"\bcondition\w*", r"\bsyndrome\w*", r"\bpatholog\w*",
        r"\bviral\b", r"\bvirus\w*", r"\bbacteri\w*", r"\bfung(al|us|i)\b", r"\binfect\w*", r"\bsep(sis|tic)\b",
        r"\binflamm\w*", r"\b(auto)?immun\w*", r"\ballerg\w*", r"\batopic\b", r"\bparasit\w*", r"\bhelminth\w*",
        r"\bmalignan\w*", r"\bneoplas\w*", r"\bcancer\w*", r"\btumou?r\w*", r"\bcarcinom\w*", r"\bmetasta\w*",
        r"\blymphoma\w*", r"\bleuk(a)?emi\w*", r"\bmyelo(ma|dysplas|prolif)\w*", r"\bclonal\b", r"\basthma\w*",
        r"\bsarcoid\w*", r"\bpneumon\w*", r"\btubercul\w*", r"\bcovid\w*", r"\b(hiv|copd|ards)\b",
        r"\btransplant\w*", r"\bsmok\w*",
        r"\b\w+itis\b", r"\b\w+(?<!cyt)osis\b", r"\b\w+a?emia\b",
    ),
    "treatment": (
        r"\btreat\w*", r"\btherap\w*", r"\bprescri\w*", r"\bantibiotic\w*", r"\bantivir\w*", r"\bantifung\w*",
        r"\b\w*steroid\w*", r"\bdos(e|es|ing|age)\b", r"\bmedicat\w*", r"\bdrug\w*", r"\badminister\w*",
        r"\btransfus\w*", r"\bchemo\w*", r"\bimmunosuppress\w*", r"\bvaccin\w*", r"\bsurg(ery|ical)\b",
    ),
    "recommendation or follow-up": (
        r"\brecommend\w*", r"\badvis\w*", r"\badvice\b", r"\bconsider\w*", r"\bwarrant\w*",
        r"\b(should|must|ought to|needs? to)\s+(be\s+)?(start|begin|stop|receive|consider|repeat|confirm|correlat|"
        r"refer|monitor|investigat|evaluat|treat|check|review|follow|perform|obtain|send|test)\w*",
        r"\bfurther (test|investigat|evaluat|work|stud|assess|examin)\w*", r"\bfollow[- ]?up\b", r"\brepeat\w*",
        r"\bre-?test\w*", r"\brefer(s|red|ral|ring)?\b", r"\bbiops\w*", r"\bmarrow\b", r"\baspirat\w*",
        r"\bcultur\w*", r"\bmonitor\w*", r"\burgen\w*", r"\bconsult\w*", r"\bha?ematologist\w*",
        r"\b(hours?|days?|weeks?|months?|years?)\b",
    ),
    "the patient": (r"\bpatient\w*",),
}
#: Disclaimers a text may carry although their words are on the list above ("clinical", "diagnostic"): they say
#: what the result is not, they claim nothing. Matched as whole phrases only, and masked before the screen, so
#: "clinically significant" or "not for clinical use; suggests infection" are still refused.
DISCLAIMERS: tuple[str, ...] = (
    r"\b(?:this (?:result|report) is )?not (?:intended |validated )?for (?:clinical|diagnostic) use\b",
    r"\bnot for use in (?:clinical|diagnostic) (?:procedures|decisions|decision-making)\b",
    r"\bnot clinically validated\b", r"\bfor research use only\b", r"\bresearch use only\b",
)
_DISCLAIMER = re.compile("|".join(DISCLAIMERS), re.IGNORECASE)
#: Kept for callers of the first version: every forbidden pattern in one tuple.
FORBIDDEN_PATTERNS: tuple[str, ...] = tuple(p for ps in FORBIDDEN.values() for p in ps)
_FORBIDDEN = [(why, re.compile("|".join(ps), re.IGNORECASE)) for why, ps in FORBIDDEN.items()]
_NO_REFERENCE = re.compile(r"\bno (laboratory )?reference intervals?\b", re.IGNORECASE)
_VERSUS_REFERENCE = re.compile(r"\b(above|below|within|inside|outside|exceed\w*)\s+(of\s+)?(the|its|their)?\s*"
                               r"(laboratory\s+)?reference\s+intervals?\b", re.IGNORECASE)
_NUMBER_WORDS = re.compile(
    r"\b(zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million|"
    r"billion|half|halves|halved|twice|double|doubled|triple|tripled|quadruple|dozens?|thirds?|quarters?)\b",
    re.IGNORECASE)

SYSTEM_PROMPT = """You draft the interpretation paragraph of a laboratory leukocyte differential report.
You receive computed facts as JSON: fact ids mapped to numbers, with units. Rules:
- Describe only what the facts say: proportions, their confidence intervals, corrected proportions, position \
relative to the laboratory reference interval when one is given (ref.<class>.low|high), marker summaries, quality control, agreement with \
manual counts.
- Every number you write must be one of the fact values, in digits, rounded to at most the decimals shown (one \
decimal for percentages). Write no other number, no number in words, no scientific notation. Write a negative value \
with its minus sign; never restate it as a positive amount. Write ranges as "52.0–61.9" or "52.0 to 61.9".
- Write each number next to the name of the class it belongs to ("neutrophils 57.0%"), never in a list apart from the class names.
- Call a class normal, high, low, elevated, reduced or use words such as neutrophilia or lymphopenia only when its reference interval is given and its classify-and-count % lies inside, above or below it; otherwise do not use such words.
- Every sentence cites the fact ids it uses.
- Never name a disease or condition, never suggest a diagnosis, cause or process, never recommend treatment, tests, \
repeat counts or any follow-up. Never mention the patient.
- At most 6 sentences, plain English, no headings.
Answer with JSON only: {"sentences": [{"text": "...", "fact_ids": ["..."]}]}"""

class DraftSentence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=600)
    fact_ids: list[str] = Field(min_length=1)


class DraftOutput(BaseModel):
    """The structured answer asked of the model."""

    model_config = ConfigDict(extra="forbid")

    sentences: list[DraftSentence] = Field(min_length=1, max_length=10)


class Attempt(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_sha256: str | None = Field(None, description="sha256 of the messages sent in this attempt")
    raw_output: str | None
    outcome: Literal["accepted", "rejected", "error"]
    problems: list[str] = Field(default_factory=list)


class DraftRecord(BaseModel):
    """How a draft was made; the caller stores it in the audit trail."""

    model_config = ConfigDict(frozen=True)

    text: str
    source: str = Field(description="'template' or the litellm route whose draft was accepted")
    model: str | None = Field(description="the configured model (None: no model configured)")
    prompt_sha256: str | None = Field(description="sha256 of the canonical JSON of the messages sent")
    attempts: list[Attempt] = Field(default_factory=list)
    outcome: Literal["llm", "template_no_model", "template_after_rejection", "template_after_error"]
    sentences: list[DraftSentence] = Field(default_factory=list, description="accepted sentences with citations")


def provenance_label(source: str, *, edited: bool) -> str:
    """The line printed under a report's interpretation, from how it was drafted and whether it was edited."""
    if source == TEMPLATE_SOURCE:
        base = "Template draft generated from the computed results"
    else:
        base = f"AI-assisted draft ({source}) generated from the computed results only"
    return base + ("; edited by the reviewer." if edited else "; reviewed without edits.")


# ----------------------------------------------------------------------------------------------------------------
# Validation


def _mask_names(text: str, names: list[str]) -> str:
    """``text`` with every occurrence of ``names`` (longest first) replaced by a digit-free placeholder; a name
    with a parenthesised unit ("CD16 (a.u.)") is also masked without it ("CD16")."""
    forms = {n for name in names for n in (name, re.sub(r"\s*\(.*?\)\s*", " ", name).strip()) if n}
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(r"(?<!\w)" + re.escape(form) + r"(?!\w)", " name ", text, flags=re.IGNORECASE)
    return text


def numbers_in(text: str, *, names: list[str] | None = None) -> list[str]:
    """The numbers written in ``text``, signed where a sign is written ('-57.0', '+1.2', '9.9e1').

    Thousands separators are dropped; numbers inside ``names`` (class labels, marker names) are not numbers of the
    text. A '-' after a digit or letter is a hyphen or range dash, not a sign ('52.0-61.9' is two numbers).
    """
    return [n.token for n in number_spans(text, names or [])]


def check_text(text: str, facts: Facts, *, cited: list[str] | None = None) -> list[str]:
    """Problems with one piece of draft text (a sentence or a whole edited paragraph): unsupported numbers, numbers
    written for a class whose facts do not hold them, interpretive words no configured reference interval supports,
    and forbidden wording. Empty list = acceptable.

    ``cited`` (fact ids) restricts which facts may support the numbers; ``None`` allows every fact. Digits inside a
    class label, marker name or QC reason are allowed only where that name is written. Binding and claims:
    :mod:`reports.draft_check`.
    """
    problems: list[str] = []
    pool = facts.values if cited is None else {k: facts.values[k] for k in cited if k in facts.values}
    names = facts.names()
    for token in numbers_in(text, names=names):
        if not any(matches(token, v) for v in pool.values()):
            problems.append(f"number {token} matches no {'cited ' if cited is not None else ''}fact"
                            + (" (its sign differs from the fact's)" if any(matches(token, -v) for v in pool.values()
                                                                          if v != 0) else ""))
    problems += binding_problems(text, facts, pool, cited=cited is not None)
    masked = _mask_names(text, names)
    for m in _NUMBER_WORDS.finditer(masked):
        problems.append(f"number written as a word {m.group(0)!r} (write fact values in digits)")
    for why, pattern in _FORBIDDEN:
        for m in pattern.finditer(_DISCLAIMER.sub(" disclaimer ", masked)):
            problems.append(f"forbidden wording {m.group(0)!r} ({why}: describe the counts only)")
    configured = facts.values.get("reference_configured")
    if configured == 1 and _NO_REFERENCE.search(masked):
        problems.append("says no reference interval is configured, but the laboratory has configured intervals "
                        "for this specimen (redraft the interpretation)")
    elif configured == 0 and _VERSUS_REFERENCE.search(masked):
        problems.append("compares with a reference interval, but none is configured for this specimen")
    problems += claim_problems(text, facts)
    return problems


def validate_output(raw: str, facts: Facts) -> tuple[DraftOutput | None, list[str]]:
    """Parse and screen a model answer. Returns the parsed output and its problems (empty = accepted)."""
    try:
        out = DraftOutput.model_validate_json(_strip_fences(raw))
    except ValidationError as e:
        return None, [f"not the requested JSON structure: {e.errors()[0]['msg']}"]
    problems: list[str] = []
    for i, s in enumerate(out.sentences, 1):
        unknown = [f for f in s.fact_ids if f not in facts.values]
        if unknown:
            problems.append(f"sentence {i} cites unknown fact ids {unknown}")
        problems += [f"sentence {i}: {p}" for p in check_text(s.text, facts, cited=s.fact_ids)]
    return out, problems


def _strip_fences(raw: str) -> str:
    m = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", raw, re.DOTALL)
    return m.group(1) if m else raw


# ----------------------------------------------------------------------------------------------------------------
# Template


def _pct(x: float) -> str:
    return f"{x:.1f}"


def template_sentences(facts: Facts) -> list[DraftSentence]:
    """A deterministic, descriptive draft built from the facts alone (passes :func:`check_text` by construction)."""
    v = facts.values
    out: list[DraftSentence] = []

    def add(text: str, ids: list[str]) -> None:
        out.append(DraftSentence(text=text, fact_ids=ids))

    n_tot, n_cnt = int(v["cells.total"]), int(v["cells.counted"])
    add(f"{n_tot} cells were imaged and {n_cnt} were counted after image quality control.",
        ["cells.total", "cells.counted"])
    if n_cnt < v["reference_min_cells"]:
        add(f"Fewer than {int(v['reference_min_cells'])} cells were counted, so the intervals below are wide.",
            ["cells.counted", "reference_min_cells"])
    conf = int(v["confidence_pct"])
    parts, ids = [], ["confidence_pct"]
    for s, label in facts.classes.items():
        parts.append(f"{label} {_pct(v[f'diff.{s}.pct'])}% ({_pct(v[f'diff.{s}.ci_low'])}–"
                     f"{_pct(v[f'diff.{s}.ci_high'])})")
        ids += [f"diff.{s}.pct", f"diff.{s}.ci_low", f"diff.{s}.ci_high"]
    add(f"Differential by classify-and-count ({conf}% confidence intervals): " + "; ".join(parts) + ".", ids)
    corr = [(s, label) for s, label in facts.classes.items() if f"corr.{s}.pct" in v]
    if corr:
        add("After prior-shift correction: "
            + "; ".join(f"{label} {_pct(v[f'corr.{s}.pct'])}%" for s, label in corr) + ".",
            [f"corr.{s}.pct" for s, _ in corr])
    for side, word in (("high", "above"), ("low", "below")):
        hits = [(s, label) for s, label in facts.classes.items() if f"ref.{s}.{side}" in v
                and (v[f"diff.{s}.pct"] > v[f"ref.{s}.high"] if side == "high" else v[f"diff.{s}.pct"] < v[f"ref.{s}.low"])]
        if hits:
            add(f"{word.capitalize()} the laboratory reference interval: "
                + "; ".join(f"{label} {_pct(v[f'diff.{s}.pct'])}% (interval {_pct(v[f'ref.{s}.low'])}–"
                            f"{_pct(v[f'ref.{s}.high'])}%)" for s, label in hits) + ".",
                [k for s, _ in hits for k in (f"diff.{s}.pct", f"ref.{s}.low", f"ref.{s}.high")])
    excluded = {k: int(x) for k, x in v.items() if k.startswith("qc.excluded.") and x > 0}
    if excluded:
        add("Cells not counted ("
            + ", ".join(f"{k.removeprefix('qc.excluded.').replace('_', ' ')}: {n}" for k, n in excluded.items())
            + ").", list(excluded))
    if v.get("cells.unidentified", 0) > 0:
        add(f"{int(v['cells.unidentified'])} cells are unidentified: below the model's confidence threshold, left "
            "for manual review and not counted.", ["cells.unidentified"])
    if v.get("reference_configured") == 0:
        add("No laboratory reference interval is configured for this specimen, so no class is flagged high or low.",
            ["reference_configured"])
    agreement = [(s, label) for s, label in facts.classes.items() if f"agreement.{s}.bias" in v]
    if agreement and v.get("agreement.unit_pp") == 1:
        add(f"In the latest method-comparison study including this sample ({int(v['agreement.n_samples'])} "
            "samples), the mean difference from manual counts (model minus manual, with limits of agreement) was: "
            + "; ".join(f"{label} {v[f'agreement.{s}.bias']:.1f} ({v[f'agreement.{s}.loa_low']:.1f} to "
                        f"{v[f'agreement.{s}.loa_high']:.1f})" for s, label in agreement)
            + " percentage points.",
            ["agreement.n_samples", "agreement.unit_pp",
             *[f"agreement.{s}.{k}" for s, _ in agreement for k in ("bias", "loa_low", "loa_high")]])
    elif agreement:
        add(f"Agreement with manual counts in the latest method-comparison study including this sample "
            f"({int(v['agreement.n_samples'])} samples) is given in the comparison table.", ["agreement.n_samples"])
    return out


def _join(sentences: list[DraftSentence]) -> str:
    return " ".join(s.text.strip() for s in sentences)


# ----------------------------------------------------------------------------------------------------------------
# Drafting


def build_messages(facts: Facts) -> list[dict[str, str]]:
    """The chat messages sent to the model: fixed instructions + the facts as JSON (nothing else)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": json.dumps(facts.prompt_json(), sort_keys=True, allow_nan=False)},
    ]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """sha256 (hex) of the canonical JSON of ``messages``."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _response_format(litellm: Any, model: str) -> Any:
    """The strictest structured-output mode the route supports: a JSON schema, JSON mode, or none."""
    try:
        if litellm.supports_response_schema(model=model):
            return DraftOutput
        if "response_format" in (litellm.get_supported_openai_params(model=model) or []):
            return {"type": "json_object"}
    except Exception:  # noqa: BLE001 - unknown routes raise various errors; the prompt still asks for JSON
        return None
    return None


def _provider_errors(litellm: Any) -> tuple[type[BaseException], ...]:
    import openai

    return (openai.OpenAIError, litellm.exceptions.APIError, TimeoutError, ConnectionError, OSError)


def draft_interpretation(
    facts: Facts,
    *,
    model: str | None,
    timeout_s: float = 30.0,
    max_attempts: int = 2,
    completion_options: Mapping[str, Any] | None = None,
) -> DraftRecord:
    """Draft an interpretation from ``facts`` with ``model`` (a litellm route) or, failing that, the template.

    Args:
        facts: from :func:`reports.context.facts_from_context`.
        model: the litellm route (``settings.llm_model``); ``None`` or empty gives the template draft.
        timeout_s: per request, seconds.
        max_attempts: model calls before falling back to the template (1 retry by default).
        completion_options: extra keyword arguments for ``litellm.completion`` (tests pass ``mock_response``).

    Returns:
        The record of how the draft was made; ``record.text`` is the draft.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    template = template_sentences(facts)
    if not model:
        return DraftRecord(text=_join(template), source=TEMPLATE_SOURCE, model=None, prompt_sha256=None,
                           outcome="template_no_model", sentences=template)

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    messages = build_messages(facts)
    digest = prompt_hash(messages)
    options = dict(completion_options or {})
    fmt = _response_format(litellm, model)
    if fmt is not None:
        options.setdefault("response_format", fmt)
    attempts: list[Attempt] = []
    errors = _provider_errors(litellm)
    for _ in range(max_attempts):
        sent = prompt_hash(messages)
        try:
            response = litellm.completion(model=model, messages=messages, temperature=0, timeout=timeout_s,
                                          num_retries=0, **options)
            raw = response.choices[0].message.content or ""
        except errors as e:
            attempts.append(Attempt(prompt_sha256=sent, raw_output=None, outcome="error",
                                    problems=[f"{type(e).__name__}: {e}"]))
            return DraftRecord(text=_join(template), source=TEMPLATE_SOURCE, model=model, prompt_sha256=digest,
                               attempts=attempts, outcome="template_after_error", sentences=template)
        parsed, problems = validate_output(raw, facts)
        if parsed is not None and not problems:
            attempts.append(Attempt(prompt_sha256=sent, raw_output=raw, outcome="accepted"))
            return DraftRecord(text=_join(parsed.sentences), source=model, model=model, prompt_sha256=digest,
                               attempts=attempts, outcome="llm", sentences=parsed.sentences)
        attempts.append(Attempt(prompt_sha256=sent, raw_output=raw, outcome="rejected", problems=problems))
        messages = [*messages, {"role": "assistant", "content": raw},
                    {"role": "user", "content": retry_instructions(problems)}]
    return DraftRecord(text=_join(template), source=TEMPLATE_SOURCE, model=model, prompt_sha256=digest,
                       attempts=attempts, outcome="template_after_rejection", sentences=template)


def retry_instructions(problems: list[str]) -> str:
    """The message that asks the model again after a rejected answer, listing what was wrong with it."""
    listed = "\n".join(f"- {p}" for p in problems[:20])
    more = f"\n- … and {len(problems) - 20} more" if len(problems) > 20 else ""
    return ("Your answer was rejected by the automatic check:\n" + listed + more + "\nWrite the draft again from "
            "the same facts, following every rule: only fact values in digits, cited; no diagnosis, cause, "
            "treatment or follow-up. Answer with JSON only.")
