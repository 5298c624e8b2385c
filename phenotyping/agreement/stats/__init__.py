"""Method-comparison statistics: pure functions that return frozen result objects.

Bland-Altman (plain, repeated measures with MOVER CIs), Passing-Bablok, Deming (ordinary, weighted), predicted bias
at decision levels and bootstrap CIs, outlier screening (generalised ESD), CLSI EP09 acceptance and design
warnings, CCC, correlation, ICC, classification performance, kappa, counting spread.

Every function validates its numeric inputs (equal lengths, at least 3 pairs, no NaN/inf) and raises ``ValueError``
naming what is wrong. Results are frozen dataclasses with ``to_dict()``, which turns them into JSON-safe dicts
(non-finite numbers become ``None``). Plots take these results (``phenotyping.agreement.figures``); nothing here plots.

Conventions: ``reference`` is the comparison method (for the project: the manual cytospin count), ``test`` the new
method (the model); differences are always ``test - reference``. Only numpy and scipy are imported.
"""

from phenotyping.agreement.stats._base import (
    MEASURES,
    X_AXIS,
    JsonResult,
    Measure,
    to_jsonable,
)
from phenotyping.agreement.stats._bland_altman import (
    BlandAltmanResult,
    MoverLimits,
    ProportionalBias,
    RegressionLimits,
    RepeatedBlandAltmanResult,
    bland_altman,
    bland_altman_repeated,
    differences,
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
    CCC_SHIFTS,
    ConcordanceResult,
    CorrelationResult,
    ICCResult,
    ccc,
    icc,
    pearson,
    spearman,
)
from phenotyping.agreement.stats._decision import (
    REGRESSION_METHODS,
    BootstrapCI,
    DecisionLevelBias,
    LevelBias,
    RegressionMethod,
    decision_level_bias,
    regression_bootstrap,
)
from phenotyping.agreement.stats._deming import DemingResult, deming
from phenotyping.agreement.stats._ep09 import (
    EP09_MIN_SAMPLES,
    MIN_SAMPLES_FOR_CI,
    TIED_FRACTION_WARNING,
    Acceptance,
    acceptance,
    design_warnings,
    tied_fraction,
)
from phenotyping.agreement.stats._outliers import (
    OutlierScreen,
    default_max_outliers,
    generalized_esd,
)
from phenotyping.agreement.stats._regression import (
    CusumTest,
    PassingBablokResult,
    passing_bablok,
)

__all__ = [
    "CCC_SHIFTS",
    "EP09_MIN_SAMPLES",
    "MEASURES",
    "MIN_SAMPLES_FOR_CI",
    "REGRESSION_METHODS",
    "TIED_FRACTION_WARNING",
    "X_AXIS",
    "Acceptance",
    "BlandAltmanResult",
    "BootstrapCI",
    "ClassPerformance",
    "ConcordanceResult",
    "CorrelationResult",
    "CountingSpread",
    "CusumTest",
    "DecisionLevelBias",
    "DemingResult",
    "ICCResult",
    "JsonResult",
    "KappaResult",
    "LevelBias",
    "Measure",
    "MoverLimits",
    "OutlierScreen",
    "PassingBablokResult",
    "ProportionalBias",
    "RegressionLimits",
    "RegressionMethod",
    "RepeatedBlandAltmanResult",
    "acceptance",
    "bland_altman",
    "bland_altman_repeated",
    "ccc",
    "classification_performance",
    "clopper_pearson",
    "cohen_kappa",
    "counting_spread",
    "decision_level_bias",
    "default_max_outliers",
    "deming",
    "design_warnings",
    "differences",
    "generalized_esd",
    "icc",
    "passing_bablok",
    "pearson",
    "regression_bootstrap",
    "spearman",
    "tied_fraction",
    "to_jsonable",
]
