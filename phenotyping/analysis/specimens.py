"""Which of a model's classes each specimen's differential counts: the model card's ``specimens`` section.

The section (written by ``train``, added to an older card by ``python -m phenotyping calibrate``)::

    "specimens": {
      "blood": {"counted": ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"],
                "per_100_leukocytes": ["erythroblast"], "counted_apart": ["platelet"]},
      "balf": {"counted": ["macrophage", "lymphocyte", "neutrophil", "eosinophil"], "noted": ["epithelial"]}
    }

A key is a specimen a sample can be (:class:`phenotyping.schemas.Specimen`): the model is meant for it. Each
declared specimen places every class of the model under exactly one role:

- ``counted``: the differential; its percentages (and their CIs, and the corrected %) are of these classes only and
  sum to 100;
- ``per_100_leukocytes``: reported as cells per 100 counted cells, as analysers report nucleated red cells
  (erythroblasts) per 100 leukocytes, with an exact CI;
- ``counted_apart``: reported as a number of cells only (platelets: a concentration needs a volume, which single-cell
  images do not give);
- ``noted``: reported as a number and as % of the counted and noted cells together (epithelial cells in a BAL
  fluid, a sign of airway contamination, are not part of its differential).

An empty section (``{}``) states that the model is meant for no clinical specimen (``models/jurkat-hybrid``, a
T-cell-line model); a card without the section is an older card that states nothing. In both cases a sample's
composition counts every class, and the Analyse screen and the report say that the model is not meant for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phenotyping.schemas import Specimen

SECTION = "specimens"
ROLES = ("counted", "per_100_leukocytes", "counted_apart", "noted")
SPECIMENS = tuple(s.value for s in Specimen)

# Class names the defaults recognise (lower case, singular, spaces for '_' and '-').
_BLOOD_LEUKOCYTES = {"neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig", "immature granulocyte",
                     "band", "band neutrophil", "segmented neutrophil", "blast"}
_ERYTHROBLASTS = {"erythroblast", "nrbc", "nucleated red cell", "nucleated red blood cell", "normoblast"}
_PLATELETS = {"platelet", "thrombocyte", "plt", "giant platelet"}
_BALF_COUNTED = {"macrophage", "alveolar macrophage", "lymphocyte", "neutrophil", "eosinophil", "mast cell"}
_EPITHELIAL = {"epithelial", "epithelial cell", "bronchial epithelial cell", "squamous epithelial cell",
               "ciliated cell"}


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").split()).casefold().removesuffix("s")


@dataclass(frozen=True)
class SpecimenSpec:
    """One specimen's rule: which classes its differential counts and which are reported apart, and how."""

    specimen: str
    counted: tuple[str, ...]
    per_100_leukocytes: tuple[str, ...] = ()
    counted_apart: tuple[str, ...] = ()
    noted: tuple[str, ...] = ()

    @property
    def apart(self) -> tuple[str, ...]:
        """Every class reported outside the differential."""
        return (*self.per_100_leukocytes, *self.counted_apart, *self.noted)

    def role(self, label: str) -> str | None:
        """The role of ``label`` (one of :data:`ROLES`), None for a label the model does not have."""
        for role in ROLES:
            if label in getattr(self, role):
                return role
        return None

    def to_dict(self) -> dict[str, list[str]]:
        """The card entry: ``counted`` always, the other roles when they hold a class."""
        return {r: list(getattr(self, r)) for r in ROLES if r == "counted" or getattr(self, r)}


def default_specimens(classes: Sequence[str]) -> list[str]:
    """The specimens ``train`` declares when none is given, from the class names.

    ``blood`` when every class is a blood leukocyte, erythroblast or platelet name (and one is a leukocyte);
    ``balf`` when a class is a macrophage and every class is a BAL cell name (macrophage, lymphocyte, neutrophil,
    eosinophil, mast cell, epithelial cell). Names compare ignoring case, plural 's', '_' and '-'. Anything else
    (e.g. cell-cycle phases) declares none.
    """
    keys = {_key(c) for c in classes}
    out = []
    if keys & _BLOOD_LEUKOCYTES and keys <= _BLOOD_LEUKOCYTES | _ERYTHROBLASTS | _PLATELETS:
        out.append("blood")
    if "macrophage" in keys | {k.removeprefix("alveolar ") for k in keys} and keys <= _BALF_COUNTED | _EPITHELIAL:
        out.append("balf")
    return out


def spec_from_names(specimen: str, classes: Sequence[str]) -> SpecimenSpec:
    """The rule for ``specimen`` from the class names: erythroblasts per 100 leukocytes, platelets counted apart,
    epithelial cells noted (BALF; counted apart in blood), every other class counted."""
    _check_specimen(specimen, "--specimen")
    roles: dict[str, list[str]] = {r: [] for r in ROLES}
    for c in classes:
        k = _key(c)
        if k in _ERYTHROBLASTS:
            roles["per_100_leukocytes"].append(c)
        elif k in _PLATELETS:
            roles["counted_apart"].append(c)
        elif k in _EPITHELIAL:
            roles["noted" if specimen == "balf" else "counted_apart"].append(c)
        else:
            roles["counted"].append(c)
    if not roles["counted"]:
        raise ValueError(f"no class of {list(classes)} would be counted in a {specimen} differential; give the "
                         "roles explicitly (--specimen-classes)")
    return SpecimenSpec(specimen, *(tuple(roles[r]) for r in ROLES))


def build_section(classes: Sequence[str], *, specimens: Sequence[str] | None = None,
                  given: Mapping[str, Any] | None = None) -> dict[str, dict[str, list[str]]]:
    """The card's ``specimens`` section, validated against the model's ``classes``.

    Args:
        specimens: declare these specimens with the roles from the class names (:func:`spec_from_names`).
        given: the whole section, as in the module docstring (wins over names; not both).
        Neither: the specimens of :func:`default_specimens`, roles from the names.

    Raises:
        ValueError: both given; an unknown specimen or role; a class the model lacks; a class placed twice or not
            at all; nothing counted.
    """
    if given is not None and specimens:
        raise ValueError("give either the specimens' names (--specimen) or their full roles (--specimen-classes), "
                         "not both")
    if given is not None:
        return {s: spec.to_dict() for s, spec in parse_section(given, classes).items()}
    names = list(specimens) if specimens else default_specimens(classes)
    return {s: spec_from_names(s, classes).to_dict() for s in dict.fromkeys(names)}


def parse_section(section: Any, classes: Sequence[str], *, where: str = "model card") -> dict[str, SpecimenSpec]:
    """Validate a ``specimens`` section against the model's ``classes``: ``{specimen: SpecimenSpec}``."""
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: '{SECTION}' must be an object {{specimen: {{role: [classes]}}}}, got "
                         f"{type(section).__name__}")
    out = {}
    for specimen, entry in section.items():
        at = f"{where}: {SECTION}.{specimen}"
        _check_specimen(specimen, at)
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at} must be an object with keys among {list(ROLES)}, got {entry!r}")
        unknown = sorted(set(entry) - set(ROLES))
        if unknown:
            raise ValueError(f"{at}: unknown role(s) {unknown}; the roles are {list(ROLES)}")
        placed: dict[str, str] = {}
        for role in ROLES:
            names = entry.get(role, [])
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise ValueError(f"{at}.{role} must be a list of class names, got {names!r}")
            for name in names:
                if name not in classes:
                    raise ValueError(f"{at}.{role} names {name!r}, which is not one of the model's classes "
                                     f"{list(classes)}; use the card's class names exactly")
                if name in placed:
                    raise ValueError(f"{at}: class {name!r} is under both {placed[name]!r} and {role!r}; give "
                                     "each class one role")
                placed[name] = role
        missing = [c for c in classes if c not in placed]
        if missing:
            raise ValueError(f"{at} does not place class(es) {missing}; put each of the model's classes under one "
                             f"of {list(ROLES)}")
        if not entry.get("counted"):
            raise ValueError(f"{at}.counted is empty: a differential needs at least one counted class")
        out[str(specimen)] = SpecimenSpec(str(specimen), *(tuple(entry.get(r, ())) for r in ROLES))
    return out


def _check_specimen(specimen: Any, where: str) -> None:
    if specimen not in SPECIMENS:
        raise ValueError(f"{where}: specimen {specimen!r} is not one of {list(SPECIMENS)}")


@dataclass(frozen=True)
class SpecimenCheck:
    """Whether a model is meant for a sample's specimen, and the rule its results follow.

    ``declared`` is the bottom line: when False, ``message`` says why the results are not a validated differential
    of this specimen, and every screen and report that shows them must show it.
    """

    specimen: str
    declared: bool
    declared_specimens: tuple[str, ...] | None  # None: the card has no specimens section
    spec: SpecimenSpec
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"specimen": self.specimen, "declared": self.declared,
                "declared_specimens": None if self.declared_specimens is None else list(self.declared_specimens),
                "rule": {"specimen": self.spec.specimen, **self.spec.to_dict()}, "message": self.message}


def specimen_check(card: Mapping[str, Any], specimen: str) -> SpecimenCheck:
    """The rule for a sample of ``specimen`` analysed with the model of ``card``.

    Declared: that specimen's rule. Not declared: the rule of the first specimen the card declares (the card's own
    statement of which classes are leukocytes still holds), else every class counted; ``message`` says so.

    Raises:
        ValueError: the card's section is invalid (see :func:`parse_section`).
    """
    classes = list(card["classes"])
    name = card.get("id", "?")
    if SECTION not in card:
        return SpecimenCheck(specimen, False, None, SpecimenSpec(specimen, tuple(classes)), (
            f"Model {name} does not state which specimens it is meant for (its card has no '{SECTION}' section), "
            f"so it is not validated for {specimen} samples; every one of its classes is counted. Add the section "
            "with `python -m phenotyping calibrate --model DIR --specimen blood --specimens-only`."))
    specs = parse_section(card[SECTION], classes, where=f"model card {name}")
    if specimen in specs:
        return SpecimenCheck(specimen, True, tuple(specs), specs[specimen])
    if not specs:
        return SpecimenCheck(specimen, False, (), SpecimenSpec(specimen, tuple(classes)), (
            f"Model {name} is not meant for {specimen} samples: its card declares no clinical specimen. The "
            f"percentages are a composition of its classes ({', '.join(classes)}), not a differential of this "
            "specimen."))
    first = next(iter(specs.values()))
    return SpecimenCheck(specimen, False, tuple(specs), first, (
        f"Model {name} is not meant for {specimen} samples: its card declares {', '.join(specs)} only. The results "
        f"are counted by its {first.specimen} rule (counted: {', '.join(first.counted)}) and are not a validated "
        f"{specimen} differential."))


@dataclass(frozen=True)
class ApartCount:
    """A class a specimen's differential does not count, reported apart by its ``role``: ``per_100_leukocytes``
    as cells per 100 counted cells, ``noted`` as % of the counted and noted cells, ``counted_apart`` as a number of
    cells (``value`` = the count, no CI). ``value`` and the CI are None when there is no denominator."""

    label: str
    role: str
    count: int
    value: float | None
    ci_low: float | None
    ci_high: float | None
    unit: str


def apart_counts(labels: Sequence[str], spec: SpecimenSpec, *, confidence: float = 0.95) -> tuple[ApartCount, ...]:
    """The apart-reported classes of ``spec`` among ``labels`` (every classified cell).

    Per 100 leukocytes: ``100 k / n`` with ``n`` the counted cells; its CI is the Clopper-Pearson interval of
    ``k / (k + n)`` mapped through ``p -> 100 p / (1 - p)`` (monotone, so exact as well). Noted: ``100 k / m``
    with ``m`` the counted plus noted cells, Clopper-Pearson CI.
    """
    if spec.per_100_leukocytes or spec.noted:  # here, not at the top: agreement.stats brings scipy.stats (0.4-0.9 s),
        from phenotyping.agreement.stats import clopper_pearson  # which a sample without such classes never needs

    n = sum(1 for lab in labels if lab in spec.counted)
    m = n + sum(1 for lab in labels if lab in spec.noted)
    out = []
    for role, names, unit in (("per_100_leukocytes", spec.per_100_leukocytes, "/100 leukocytes"),
                              ("counted_apart", spec.counted_apart, "cells"),
                              ("noted", spec.noted, "% of counted and noted cells")):
        for c in names:
            k = sum(1 for lab in labels if lab == c)
            value = lo = hi = None
            if role == "counted_apart":
                value = float(k)
            elif role == "noted" and m:
                lo, hi = (100 * x for x in clopper_pearson(k, m, confidence=confidence))
                value = 100 * k / m
            elif role == "per_100_leukocytes" and n:
                p_lo, p_hi = clopper_pearson(k, k + n, confidence=confidence)
                value, lo, hi = 100 * k / n, 100 * p_lo / (1 - p_lo), 100 * p_hi / (1 - p_hi)
            out.append(ApartCount(c, role, k, value, lo, hi, unit))
    return tuple(out)
