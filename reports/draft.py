"""Interpretation drafting: an LLM (any litellm route) or a deterministic template, always grounded in facts.

This is the only module of the project that imports ``litellm`` (lazily, inside :func:`draft_interpretation`).
The model sees only :class:`reports.context.Facts` — computed numbers, never identifiers or user-typed text — and
must answer with sentences that cite fact ids. Every draft is screened before it is accepted:

* every cited fact id exists and every sentence cites at least one;
* every number written in the text equals a fact value at the precision written (``54.7`` matches 54.68);
* no diagnosis and no treatment recommendation (pattern screen, :data:`FORBIDDEN_PATTERNS`).

A rejected draft is regenerated once; a second rejection, a missing model setting or an unreachable provider gives
the template draft. The returned :class:`DraftRecord` always says how the text was made; the caller keeps it in the
audit trail (model, prompt hash, raw outputs, validation outcome).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reports.context import Facts

TEMPLATE_SOURCE = "template"

#: Diagnoses, disease names and treatment advice an interpretation must not contain (case-insensitive).
FORBIDDEN_PATTERNS: tuple[str, ...] = (
    r"\bdiagnos\w*", r"\bconsistent with\b", r"\bsuggest\w*\b", r"\bindicative of\b", r"\bindicates?\b",
    r"\bcompatible with\b", r"\bpathognomonic\b", r"\bleuk(a)?emi\w*", r"\blymphoma\w*", r"\binfect\w*",
    r"\bsepsis\b", r"\bseptic\b", r"\basthma\w*", r"\bsarcoid\w*", r"\bpneumon\w*", r"\bmalignan\w*",
    r"\bcancer\w*", r"\btumou?r\w*", r"\ballerg\w*", r"\bparasit\w*", r"\bfibros\w*", r"\bsyndrome\b",
    r"\bdisease\b", r"\btreat\w*", r"\btherap\w*", r"\bprescri\w*", r"\bantibiotic\w*", r"\bsteroid\w*",
    r"\bdos(e|es|ing|age)\b", r"\bmedicat\w*", r"\bdrug\w*", r"\brecommend\w*", r"\badminister\w*",
    r"\bshould (be )?(start|begin|stop|receive|consider)\w*", r"\bpatient\b",
)
_FORBIDDEN = re.compile("|".join(FORBIDDEN_PATTERNS), re.IGNORECASE)
#: A number standing alone (not part of a word such as "CD16"); thousands separators are removed first.
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-−]?\d+(?:\.\d+)?(?![A-Za-z0-9_]|\.\d)")

SYSTEM_PROMPT = """You draft the interpretation paragraph of a laboratory leukocyte differential report.
You receive computed facts as JSON: fact ids mapped to numbers, with units. Rules:
- Describe only what the facts say: proportions, their confidence intervals, corrected proportions, position \
relative to the laboratory reference interval when one is given, marker summaries, quality control, agreement with \
a manual count.
- Every number you write must be one of the fact values, rounded to at most the decimals shown (one decimal for \
percentages). Write no other number.
- Every sentence cites the fact ids it uses.
- Never name a disease, never suggest a diagnosis or cause, never recommend treatment or further management. \
Never mention the patient.
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


def _decimals(token: str) -> int:
    return len(token.split(".", 1)[1]) if "." in token else 0


def _matches(token: str, value: float) -> bool:
    written = abs(float(token.replace("−", "-")))
    d = _decimals(token.lstrip("-−"))
    return math.isclose(written, abs(value), abs_tol=0.5 * 10.0 ** -d + 1e-9)


def numbers_in(text: str) -> list[str]:
    """The numbers written in ``text`` (thousands separators dropped, numbers inside words such as 'CD16' ignored)."""
    cleaned = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return _NUMBER.findall(cleaned)


def check_text(text: str, facts: Facts, *, cited: list[str] | None = None) -> list[str]:
    """Problems with one piece of draft text: unsupported numbers and forbidden wording. Empty list = acceptable.

    ``cited`` (fact ids) restricts which facts may support the numbers; ``None`` allows every fact. Numbers that
    are part of a class label (e.g. a class named "stage 2") are always allowed.
    """
    problems: list[str] = []
    pool = facts.values if cited is None else {k: facts.values[k] for k in cited if k in facts.values}
    label_numbers = {n for lab in facts.classes.values() for n in numbers_in(lab)}
    for token in numbers_in(text):
        if token in label_numbers:
            continue
        if not any(_matches(token, v) for v in pool.values()):
            problems.append(f"number {token} matches no {'cited ' if cited is not None else ''}fact")
    for m in _FORBIDDEN.finditer(text):
        problems.append(f"forbidden wording {m.group(0)!r} (no diagnosis, treatment or patient talk)")
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
        add(f"{int(v['cells.excluded'])} cells were excluded by image quality control ("
            + ", ".join(f"{k.removeprefix('qc.excluded.').replace('_', ' ')}: {n}" for k, n in excluded.items())
            + ").", ["cells.excluded", *excluded])
    if "agreement.bias" in v:
        add(f"Against the manual count the mean difference (model minus manual) was {v['agreement.bias']:.1f} "
            f"percentage points ({conf}% limits of agreement {v['agreement.loa_low']:.1f} to "
            f"{v['agreement.loa_high']:.1f}).",
            ["agreement.bias", "agreement.loa_low", "agreement.loa_high", "confidence_pct"])
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
        try:
            response = litellm.completion(model=model, messages=messages, temperature=0, timeout=timeout_s,
                                          num_retries=0, **options)
            raw = response.choices[0].message.content or ""
        except errors as e:
            attempts.append(Attempt(raw_output=None, outcome="error", problems=[f"{type(e).__name__}: {e}"]))
            return DraftRecord(text=_join(template), source=TEMPLATE_SOURCE, model=model, prompt_sha256=digest,
                               attempts=attempts, outcome="template_after_error", sentences=template)
        parsed, problems = validate_output(raw, facts)
        if parsed is not None and not problems:
            attempts.append(Attempt(raw_output=raw, outcome="accepted"))
            return DraftRecord(text=_join(parsed.sentences), source=model, model=model, prompt_sha256=digest,
                               attempts=attempts, outcome="llm", sentences=parsed.sentences)
        attempts.append(Attempt(raw_output=raw, outcome="rejected", problems=problems))
    return DraftRecord(text=_join(template), source=TEMPLATE_SOURCE, model=model, prompt_sha256=digest,
                       attempts=attempts, outcome="template_after_rejection", sentences=template)
