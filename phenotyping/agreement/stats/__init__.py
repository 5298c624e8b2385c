"""Method-comparison statistics: pure functions that return frozen result objects.

Every function validates its numeric inputs (equal lengths, at least 3 pairs, no NaN/inf) and raises ``ValueError``
naming what is wrong. Results are frozen dataclasses with ``to_dict()``, which turns them into JSON-safe dicts
(non-finite numbers become ``None``). Plots take these results (``phenotyping.agreement.figures``); nothing here plots.

Conventions: ``reference`` is the comparison method (for the project: the manual cytospin count), ``test`` the new
method (the model); differences are always ``test - reference``. Only numpy and scipy are imported.
"""

from phenotyping.agreement.stats._base import MEASURES, X_AXIS, JsonResult, Measure, to_jsonable
from phenotyping.agreement.stats._bland_altman import (
    BlandAltmanResult,
    ProportionalBias,
    RegressionLimits,
    RepeatedBlandAltmanResult,
    bland_altman,
    bland_altman_repeated,
)
from phenotyping.agreement.stats._classification import (
    ClassPerformance,
    CountingSpread,
    KappaResult,
    classification_performance,
    clopper_pearson,
    cohen_kappa,
    counting_spread,
)
from phenotyping.agreement.stats._correlation import (
    ConcordanceResult,
    CorrelationResult,
    ICCResult,
    ccc,
    icc,
    pearson,
    spearman,
)
from phenotyping.agreement.stats._regression import CusumTest, DemingResult, PassingBablokResult, deming, passing_bablok

__all__ = [
    "MEASURES",
    "Measure",
    "X_AXIS",
    "BlandAltmanResult",
    "JsonResult",
    "ClassPerformance",
    "ConcordanceResult",
    "CorrelationResult",
    "CountingSpread",
    "CusumTest",
    "DemingResult",
    "ICCResult",
    "KappaResult",
    "PassingBablokResult",
    "ProportionalBias",
    "RegressionLimits",
    "RepeatedBlandAltmanResult",
    "bland_altman",
    "bland_altman_repeated",
    "ccc",
    "classification_performance",
    "clopper_pearson",
    "cohen_kappa",
    "counting_spread",
    "deming",
    "icc",
    "passing_bablok",
    "pearson",
    "spearman",
    "to_jsonable",
]
