"""What a draft's numbers and interpretive words are about: the class each one is bound to, and whether the facts
of that class support it. :func:`reports.draft.check_text` calls :func:`binding_problems` and
:func:`claim_problems`; both take :class:`reports._facts.Facts` and never look anything up elsewhere.

Binding. A text is split into sentences and clauses (at ``; : ,`` and at *and, but, while, whereas, than, versus*).
A class is mentioned by its label from the facts (multi-word labels as a phrase, ``_``/``-`` as spaces), by a
plural, adjective or short form of it (``neutrophils``, ``neutrophilic``, ``lymphs``, ``monos``, ``eos``), by a
*-philia/-penia/-cytosis* word built on it, by the acronym of a multi-word label written in capitals (``IG`` for
"immature granulocyte") or by the words a short label abbreviates ("immature granulocytes" for ``ig``). Each
number belongs to the nearest mention in its clause (the one before it on a tie); a clause without a mention
borrows the nearest mention of its sentence, the one before it first. What follows the number says which quantity it
is (``%``: a percentage, CI bound or interval end; ``cells`` or a class name: a count; ``per 100``: cells per 100
counted cells; ``percentage points``: a difference or agreement statistic); a number then has to equal a fact of
its class of a compatible quantity, or a class-free count (cells imaged, counted, excluded). Numbers followed by
``% CI``/``% confidence`` (the confidence level) and numbers in no sentence with a mention are checked as before:
they must equal some fact.

Claims. Words that place a class against a reference (*normal, within normal limits, within the reference interval,
healthy, abnormal, outside the reference interval, elevated, increased, raised, high, above the reference interval,
decreased, reduced, low, below the reference interval* and the *-philia/-penia/-cytosis* words) are claims. Each
names a class (the *-philia* word its own; otherwise every class its clause mentions, or its sentence when the
clause mentions none) whose configured reference interval (``ref.<class>.low|high``) must support it: inside for
*normal*, above the upper limit for *elevated*/*-philia*/*-cytosis*, below the lower limit for *low*/*-penia*,
outside for *abnormal*. A negation before the word (*not elevated*, *no evidence of neutrophilia*) is a claim of the
opposite. The value compared is the classify-and-count % (``diff.<class>.pct``), or for a class reported apart its
per-100 or noted % — the value the report's H/L flag uses. A claim with no class, or about a class without an
interval, is a problem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reports._facts import Facts

#: A written number: optional sign (only where it cannot be a hyphen or a range dash: not after a letter, digit,
#: '.', ')' or '%', and directly before the digits), digits (thousands separators allowed), decimals, exponent.
NUMBER = re.compile(r"(?:(?<![\w.)%\]])(?P<sign>[-−–+]))?"
                    r"(?P<num>\d+(?:,\d{3}(?!\d))*(?:\.\d+)?(?:[eE][-+−]?\d+)?)")

_KINDS_FOR_HINT: dict[str | None, frozenset[str]] = {
    None: frozenset({"pct", "ci", "ref", "count", "per100", "marker", "points"}),
    "percent": frozenset({"pct", "ci", "ref", "points"}),
    "points": frozenset({"points"}),
    "per100": frozenset({"per100", "ci", "ref"}),
    "count": frozenset({"count"}),
}
_HINT_WORDS = {"percent": "a percentage", "points": "a difference in percentage points",
               "per100": "cells per 100 counted cells", "count": "a number of cells"}
_KIND_WORDS = {"pct": "a percentage", "ci": "a confidence-interval bound", "ref": "a reference-interval limit",
               "count": "a number of cells", "per100": "cells per 100 counted cells", "marker": "a marker value",
               "points": "a difference or agreement statistic", "confidence": "the confidence level",
               "flag": "a yes/no flag"}
_CLAUSE_BREAK = re.compile(r"[;:]|(?<!\d),|,(?!\d{3})|\b(?:and|but|while|whilst|whereas|than|versus|vs)\b\.?", re.IGNORECASE)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_CELL_SUFFIX = re.compile(r"(?:cytes?|cytic|cyto|cyt|phils?|philic|phages?|phagic|blasts?|blastic)$")
_COMPOUND = re.compile(r"\b[a-z]+?(?:philia|philias|penia|penias|cytosis|cytoses)\b", re.IGNORECASE)
_CELL_WORD = re.compile(r"(?:cytes?|phils?|phages?|blasts?|cells?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Number:
    token: str
    start: int
    end: int


@dataclass(frozen=True)
class Mention:
    slugs: tuple[str, ...]
    start: int
    end: int


# ----------------------------------------------------------------------------------------------------------------
# Numbers


def _name_forms(names: list[str]) -> list[str]:
    """Each name, and a name with a parenthesised unit ("CD16 (a.u.)") also without it ("CD16"); longest first."""
    forms = {n for name in names for n in (name, re.sub(r"\s*\(.*?\)\s*", " ", name).strip()) if n}
    return sorted(forms, key=len, reverse=True)


def blank_names(text: str, names: list[str]) -> str:
    """``text`` with every occurrence of ``names`` replaced by spaces of the same length (positions are kept)."""
    for form in _name_forms(names):
        text = re.sub(r"(?<!\w)" + re.escape(form) + r"(?!\w)", lambda m: " " * len(m.group(0)), text,
                      flags=re.IGNORECASE)
    return text


def number_spans(text: str, names: list[str]) -> list[Number]:
    """The numbers written in ``text`` with their positions; digits inside ``names`` are not numbers."""
    out = []
    for m in NUMBER.finditer(blank_names(text, names)):
        sign = "-" if m["sign"] in ("-", "−", "–") else m["sign"] or ""
        out.append(Number(sign + m["num"].replace(",", ""), m.start(), m.end()))
    return out


def tolerance(token: str) -> float:
    """Half a unit of the last digit written: '54.7' → 0.05, '9.9e1' → 0.5."""
    mantissa, _, exponent = token.lstrip("+-").lower().partition("e")
    decimals = len(mantissa.split(".", 1)[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def matches(token: str, value: float) -> bool:
    """Whether the written number equals ``value`` at the precision written, sign included."""
    return math.isclose(float(token), value, rel_tol=0.0, abs_tol=tolerance(token) + 1e-9)


def fact_kind(fact_id: str, slugs: set[str]) -> tuple[str | None, str]:
    """``(class slug or None, quantity)`` of a fact id; quantities as in ``_KIND_WORDS``."""
    parts = fact_id.split(".")
    head, last = parts[0], parts[-1]
    if len(parts) >= 3 and parts[1] in slugs:
        slug = parts[1]
        if head == "ref":
            return slug, "ref"
        if head == "marker":
            return slug, "count" if last == "n" else "marker"
        if head in ("agreement", "agreement_corr"):
            return slug, "count" if last == "n" else "points"
        if head == "manual":
            return slug, "points" if last == "diff" else "pct"
        if last == "count":
            return slug, "count"
        if last.startswith("ci_"):
            return slug, "ci"
        if last in ("per_100", "corr_per_100"):
            return slug, "per100"
        return slug, "pct"
    if fact_id == "confidence_pct":
        return None, "confidence"
    if fact_id in ("reference_configured", "specimen_declared", "agreement.unit_pp"):
        return None, "flag"
    return None, "count"


# ----------------------------------------------------------------------------------------------------------------
# Class mentions


def _root(word: str) -> tuple[str, str | None]:
    """The stem a class word and its forms share, and the family of its cell suffix ('cyt', 'phi', 'pha', 'bla';
    None without one): neutrophil(s|ic|ia) → ('neutr', 'phi'), lymphocyte → ('lymph', 'cyt'), lymphs → ('lymph',
    None). Erythrocytes and erythroblasts share a stem but not a family, so they stay apart."""
    w = word.casefold()
    w = re.sub(r"philias?$", "phil", w)
    w = re.sub(r"(?:penias?|(?<=cyt)os[ie]s)$", "", w)
    m = _CELL_SUFFIX.search(w)
    family = m.group(0)[:3] if m else None
    w = w[:m.start()] if m else w
    return (w[:-1] if w.endswith("o") else w), family


def _same_class(a: tuple[str, str | None], b: tuple[str, str | None], *, abbreviated: bool) -> bool:
    """Whether word root ``a`` names label root ``b`` (``abbreviated``: a may be a prefix of b, 'neut', 'eos')."""
    if not a[0] or (a[1] and b[1] and a[1] != b[1]):
        return False
    return a[0] == b[0] or (abbreviated and len(a[0]) >= 3 and b[0].startswith(a[0]))


def _word_matches(word: str, label_root: tuple[str, str | None]) -> bool:
    w = word.casefold()
    candidates = {_root(w), *([_root(w[:-1])] if w.endswith("s") else [])}
    return any(_same_class(c, label_root, abbreviated=True) for c in candidates)


def _labels(facts: Facts) -> dict[str, str]:
    return {**facts.classes, **facts.apart}


def class_mentions(text: str, facts: Facts) -> list[Mention]:
    """Where ``text`` names a class of ``facts`` (see the module docstring), in order of position."""
    other = [n for n in facts.names() if n not in _labels(facts).values()]
    work = blank_names(text, other)
    found: list[Mention] = []

    def take(slugs: tuple[str, ...], start: int, end: int) -> None:
        nonlocal work
        found.append(Mention(slugs, start, end))
        work = work[:start] + " " * (end - start) + work[end:]

    labels = sorted(_labels(facts).items(), key=lambda kv: len(kv[1]), reverse=True)
    for slug, label in labels:
        words = re.split(r"[\s_-]+", label.strip())
        phrase = r"[\s_-]+".join(re.escape(w) for w in words if w)
        short = len(label.strip()) <= 3  # 'S', 'G1', 'ig': as written, or in capitals, never inside "model's"
        pattern = r"(?<![\w'’])" + phrase + r"(?:e?s)?(?!\w)"
        hits = [*re.finditer(pattern, work)] if short else [*re.finditer(pattern, work, re.IGNORECASE)]
        if short and label.upper() != label:
            hits += re.finditer(r"(?<![\w'’])" + re.escape(label.strip().upper()) + r"s?(?!\w)", work)
        for m in sorted(hits, key=lambda h: h.start()):
            take((slug,), m.start(), m.end())
        if len(words) > 1:
            acronym = "".join(w[0] for w in words if w).upper()
            for m in list(re.finditer(r"(?<!\w)" + re.escape(acronym) + r"s?(?!\w)", work)):
                take((slug,), m.start(), m.end())
        elif label.isalpha() and len(label) <= 4:
            pattern = r"(?<!\w)" + r"[\s-]+".join(rf"{c}[a-z]{{3,}}" for c in label.lower()) + r"(?!\w)"
            for m in list(re.finditer(pattern, work, re.IGNORECASE)):
                if _CELL_WORD.search(m.group(0)):
                    take((slug,), m.start(), m.end())
    roots = {slug: _root(label) for slug, label in labels if " " not in label.strip() and len(label) >= 4}
    for m in list(re.finditer(r"[A-Za-z]+", work)):
        hits = tuple(slug for slug, root in roots.items() if _word_matches(m.group(0), root))
        if hits:
            take(hits, m.start(), m.end())
    return sorted(found, key=lambda x: x.start)


def _clauses(text: str) -> list[tuple[int, int, int]]:
    """``(sentence index, start, end)`` of every clause of ``text``."""
    out = []
    pos = 0
    for i, sentence in enumerate([*_SENTENCE_BREAK.split(text)]):
        start = text.index(sentence, pos) if sentence else pos
        cuts = [start, *(start + m.end() for m in _CLAUSE_BREAK.finditer(sentence)), start + len(sentence)]
        out += [(i, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        pos = start + len(sentence)
    return out or [(0, 0, len(text))]


def _where(clauses: list[tuple[int, int, int]], at: int) -> tuple[int, int, int]:
    for c in clauses:
        if c[1] <= at < c[2]:
            return c
    return clauses[-1]


def _gap(m: Mention, start: int, end: int) -> tuple[int, int]:
    """Characters between a mention and a span, and 0 when the mention comes first (wins a tie)."""
    return (start - m.end, 0) if m.end <= start else (m.start - end, 1)


def bound_class(clauses: list[tuple[int, int, int]], mentions: list[Mention], start: int,
                end: int) -> Mention | None:
    """The mention a span at ``start:end`` belongs to: the nearest in its clause, else in its sentence."""
    sentence, a, b = _where(clauses, start)
    inside = [m for m in mentions if a <= m.start < b]
    if inside:
        return min(inside, key=lambda m: _gap(m, start, end))
    lo = min(c[1] for c in clauses if c[0] == sentence)
    hi = max(c[2] for c in clauses if c[0] == sentence)
    same = [m for m in mentions if lo <= m.start < hi]
    before = [m for m in same if m.end <= start]
    if before:
        return before[-1]
    return same[0] if same else None


# ----------------------------------------------------------------------------------------------------------------
# Numbers bound to classes


def _hint(text: str, number: Number, mentions: list[Mention]) -> str | None:
    """The quantity the words right after a number give it (None: not said); 'unbound' for a number that belongs to
    no class (the confidence level of '95 % CI', the denominator of 'per 100 leukocytes')."""
    after = text[number.end:number.end + 40]
    before = text[max(0, number.start - 8):number.start]
    if re.match(r"\s*(?:%|percent\b|per ?cent\b)\s*(?:CI\b|C\.I\.|confidence|credible)", after, re.IGNORECASE):
        return "unbound"
    if re.search(r"\bper\s*$|/\s*$", before) and number.token == "100":
        return "unbound"
    if re.match(r"\s*(?:%|percent\b|per ?cent\b)", after, re.IGNORECASE):
        return "percent"
    if re.match(r"\s*(?:percentage[- ]points?|pp|points?)\b", after, re.IGNORECASE):
        return "points"
    if re.match(r"\s*(?:/|per\s)\s*100\b", after, re.IGNORECASE):
        return "per100"
    if re.match(r"\s*(?:\w+\s+)?cells?\b", after, re.IGNORECASE):
        return "count"
    gap = after[:len(after) - len(after.lstrip())]
    if any(m.start == number.end + len(gap) for m in mentions):
        return "count"
    return None


def binding_problems(text: str, facts: Facts, pool: dict[str, float], *, cited: bool) -> list[str]:
    """Numbers of ``text`` bound to a class whose facts (in ``pool``) do not hold them at a compatible quantity.

    Numbers that match no fact of ``pool`` at all are left to the caller (they are wrong whatever their class).
    """
    labels = _labels(facts)
    mentions = class_mentions(text, facts)
    if not mentions:
        return []
    slugs = set(labels)
    kinds = {fid: fact_kind(fid, slugs) for fid in pool}
    clauses = _clauses(text)
    problems = []
    for number in number_spans(text, facts.names()):
        hint = _hint(text, number, mentions)
        equal = [fid for fid, v in pool.items() if matches(number.token, v)]
        mention = bound_class(clauses, mentions, number.start, number.end)
        if hint == "unbound" or not equal or mention is None:
            continue
        allowed = _KINDS_FOR_HINT[hint]
        ok = [fid for fid in equal if (kinds[fid][0] in mention.slugs and kinds[fid][1] in allowed)
              or (kinds[fid][0] is None and kinds[fid][1] == "count" and "count" in allowed)]
        if not ok:
            problems.append(_binding_problem(number.token, mention, hint, equal, kinds, facts, pool, cited))
    return problems


def _binding_problem(token: str, mention: Mention, hint: str | None, equal: list[str],
                     kinds: dict[str, tuple[str | None, str]], facts: Facts, pool: dict[str, float],
                     cited: bool) -> str:
    labels = _labels(facts)
    names = " or ".join(labels[s] for s in mention.slugs)
    allowed = _KINDS_FOR_HINT[hint]
    own = [fid for fid in pool if kinds[fid][0] in mention.slugs and kinds[fid][1] in allowed]
    as_what = f" as {_HINT_WORDS[hint]}" if hint else ""
    msg = f"number {token} is written{as_what} for {names}, but no {'cited ' if cited else ''}{names} fact"
    msg += f"{' of that kind' if hint else ''} is {token}"
    same_kind = [fid for fid in own if kinds[fid][1] in {kinds[e][1] for e in equal}]
    if own:
        closest = min(same_kind or own, key=lambda fid: abs(pool[fid] - float(token)))
        msg += f" ({closest} = {pool[closest]:g})"
    described = []
    for fid in equal[:3]:
        slug, kind = kinds[fid]
        whose = f"the {labels[slug]} value" if slug is not None else "a value of no class"
        described.append(f"{fid} ({whose}, {_KIND_WORDS[kind]})")
    return msg + f"; {token} is " + ", ".join(described) + " (write each number next to the class it belongs to)"


# ----------------------------------------------------------------------------------------------------------------
# Interpretive claims

_REF = r"(?:the\s+|its\s+|their\s+)?(?:laboratory(?:'s)?\s+)?(?:reference|normal)\s+(?:intervals?|ranges?|limits?)"
_CLAIMS: tuple[tuple[str, str], ...] = (
    (rf"\b(?:within|inside|in)\s+{_REF}", "within"),
    (r"\bwithin\s+(?:the\s+)?(?:normal\s+)?(?:limits|range)\b", "within"),
    (rf"\boutside\s+(?:of\s+)?{_REF}", "outside"),
    (rf"\b(?:above|exceed\w*)\s+(?:the\s+upper\s+limit\s+of\s+)?{_REF}", "above"),
    (rf"\bbelow\s+(?:the\s+lower\s+limit\s+of\s+)?{_REF}", "below"),
    (r"\bout\s+of\s+range\b", "outside"),
    (r"\b(?:ab|un)?normal(?:ly)?\b", "normal"),
    (r"\b(?:un)?healthy\b", "normal"),
    (r"\bunremarkable\b", "within"),
    (r"\bpathologic(?:al)?(?:ly)?\b", "outside"),
    (r"\b(?:elevated|elevation|increased?|raised|high|higher\s+than\s+normal|excess\w*)\b", "above"),
    (r"\b(?:decreased?|reduced|reduction|low|lower\s+than\s+normal|depressed|diminished)\b", "below"),
)
_CLAIM = re.compile("|".join(f"(?P<c{i}>{p})" for i, (p, _) in enumerate(_CLAIMS)), re.IGNORECASE)
_NO_FLAG = re.compile(r"\bno\s+(?:other\s+)?(?:cell\s+)?class(?:es)?\s+(?:is|are|was|were)\s+(?:flagged|marked)"
                      r"(?:\s+as)?\s+(?:high|low)(?:\s+or\s+(?:high|low))?\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|no|never|without|neither|nor|none|absence\s+of|absent)\b|n't\b", re.IGNORECASE)


def _direction(word: str, group: str) -> str:
    if group == "normal":
        low = word.casefold()
        return "outside" if low.startswith(("ab", "un")) else "within"
    return group


def _holds(direction: str, value: float, low: float, high: float) -> bool:
    inside = low <= value <= high
    return {"within": inside, "outside": not inside, "above": value > high, "below": value < low}[direction]


_OPPOSITE = {"within": "outside", "outside": "within", "above": "not_above", "below": "not_below"}


def _class_value(facts: Facts, slug: str) -> float | None:
    v = facts.values
    for fid in (f"diff.{slug}.pct", f"apart.{slug}.per_100", f"apart.{slug}.noted_pct"):
        if fid in v:
            return v[fid]
    return None


def _position(value: float, low: float, high: float) -> str:
    where = "above" if value > high else "below" if value < low else "inside"
    return f"its value {value:.1f} is {where} the reference interval {low:.1f}–{high:.1f}"


def claim_problems(text: str, facts: Facts) -> list[str]:
    """Interpretive words of ``text`` that no configured reference interval of the class they name supports."""
    labels = _labels(facts)
    problems = []
    for m in _NO_FLAG.finditer(text):
        flagged = [labels[s] for s in labels if _outside(facts, s)]
        if flagged:
            problems.append(f"says {m.group(0)!r}, but {', '.join(flagged)} lie outside their reference intervals")
    work = _NO_FLAG.sub(lambda m: " " * len(m.group(0)), blank_names(text, facts.names()))
    mentions = class_mentions(text, facts)
    clauses = _clauses(text)
    found = [(m.start(), m.end(), m.group(0), _direction(m.group(0), _CLAIMS[int(m.lastgroup[1:])][1]), None)
             for m in _CLAIM.finditer(work)]
    for m in _COMPOUND.finditer(work):
        direction = "below" if re.search(r"penias?$", m.group(0), re.IGNORECASE) else "above"
        own = tuple(s for s, label in labels.items() if _same_class(_root(m.group(0)), _root(label),
                                                                   abbreviated=False))
        found.append((m.start(), m.end(), m.group(0), direction, own))
    for start, end, word, direction, own in sorted(found):
        _, a, _ = _where(clauses, start)
        negation = _NEGATION.search(work[a:start])
        if negation:
            direction, word = _OPPOSITE[direction], f"{negation.group(0)} … {word}"
        if own is None:
            own = _claim_scope(clauses, mentions, start, [f[0] for f in found])
        if not own:
            problems.append(f"interpretive claim {word!r} names no class of this differential; such a claim "
                            "needs the class it describes and that class's configured reference interval")
            continue
        problems += [p for s in own if (p := _claim_problem(word, direction, facts, s))]
    return problems


def _claim_scope(clauses: list[tuple[int, int, int]], mentions: list[Mention], start: int,
                 claims: list[int]) -> tuple[str, ...]:
    """The classes a claim at ``start`` is about: those its clause names, with those of the clauses just before
    it that name classes and make no claim of their own ("neutrophils (57.0 %), lymphocytes and monocytes were
    normal": all three); when its clause names none, every class its sentence names. Erring wide: a claim is
    checked against more classes rather than fewer."""
    i = clauses.index(_where(clauses, start))
    sentence = clauses[i][0]

    def named(c: tuple[int, int, int]) -> list[Mention]:
        return [x for x in mentions if c[1] <= x.start < c[2]]

    scope = named(clauses[i])
    if scope:
        j = i - 1
        while j >= 0 and clauses[j][0] == sentence and named(clauses[j]) and not any(
                clauses[j][1] <= at < clauses[j][2] for at in claims):
            scope += named(clauses[j])
            j -= 1
    else:
        scope = [x for x in mentions if _where(clauses, x.start)[0] == sentence]
    return tuple(dict.fromkeys(s for x in scope for s in x.slugs))


def _interval(facts: Facts, slug: str) -> tuple[float, float] | None:
    """The configured reference interval of a class (none at all when ``reference_configured`` is 0)."""
    v = facts.values
    if v.get("reference_configured") == 0 or f"ref.{slug}.low" not in v or f"ref.{slug}.high" not in v:
        return None
    return v[f"ref.{slug}.low"], v[f"ref.{slug}.high"]


def _outside(facts: Facts, slug: str) -> bool:
    value, interval = _class_value(facts, slug), _interval(facts, slug)
    return value is not None and interval is not None and not interval[0] <= value <= interval[1]


def _claim_problem(word: str, direction: str, facts: Facts, slug: str) -> str | None:
    label = _labels(facts)[slug]
    interval = _interval(facts, slug)
    if interval is None:
        return (f"interpretive claim {word!r} about {label}: no reference interval is configured for {label}, so "
                "the text may not call it normal, high or low")
    low, high = interval
    value = _class_value(facts, slug)
    if value is None:
        return f"interpretive claim {word!r} about {label}: the facts give no value for {label}"
    if direction.startswith("not_"):
        ok = not _holds(direction[4:], value, low, high)
    else:
        ok = _holds(direction, value, low, high)
    if ok:
        return None
    return f"interpretive claim {word!r} about {label} is not supported: {_position(value, low, high)}"
