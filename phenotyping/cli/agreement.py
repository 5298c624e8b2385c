"""``python -m phenotyping agreement --paired CSV [--measure ...] [--scale percent|absolute] [--allowable ...]
[--decision-levels ...] [--bootstrap N] [--manual-cells N ...]``."""

from __future__ import annotations

import argparse
import sys

from phenotyping.cli._common import print_json


def _level(text: str) -> float:
    """A confidence level strictly between 0 and 1 (``--confidence 95`` is refused, not read as 95 %)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a level such as 0.95") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (exclusive); write 0.95 for 95 %")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agreement", help="method-comparison statistics per class from a paired CSV (CLSI EP09)",
        description="Bland-Altman (bias, SD, limits of agreement with CIs, proportional bias), Passing-Bablok, Deming, "
                    "Lin's CCC, Pearson's r and ICC per cell type, differences test - reference, with what a CLSI "
                    "EP09 comparison adds: predicted bias at decision levels, generalised-ESD outlier screening "
                    "(flagged, with results without them), a verdict against an allowable difference and warnings "
                    "(n < 40, n < 10, ties). The CSV has columns sample_id, cell_type, reference, test (percentages; "
                    "with --scale absolute any quantity such as cells/uL), optionally reference_total and test_total "
                    "(on every row or none: then reference/test are cell counts, converted to percentages) and "
                    "replicate (replicate pairs of a sample: repeated-measures Bland-Altman, Bland & Altman 2007, "
                    'MOVER CIs). Prints JSON {"cell_types": {name: {...}}}; each class is computed on its own: '
                    'what cannot be computed is null with the reason under "errors". Exits 2 only when no class '
                    "could be computed.",
    )  # fmt: skip
    p.add_argument("--paired", required=True, help="paired CSV (see above)")
    p.add_argument("--measure", default="absolute", choices=["absolute", "percent", "ratio"],
                   help="differences as absolute values, percent of the pair mean, or ratios (log scale)")
    p.add_argument("--scale", default="percent", choices=["percent", "absolute"],
                   help="what the values are: differential percentages 0-100 (default) or absolute quantities "
                        "such as cells/uL (no upper bound, no counting error)")  # fmt: skip
    p.add_argument("--confidence", type=_level, default=0.95, help="level of all confidence intervals, in (0, 1)")
    p.add_argument("--manual-cells", type=int, nargs="+", default=[200, 400], metavar="N",
                   help="report the counting error of manual differentials of N cells beside the limits of "
                        "agreement (default: 200 400); totals in the CSV are used as well")  # fmt: skip
    p.add_argument("--decision-levels", nargs="+", metavar="[CLASS=]X[,X...]",
                   help="medical decision levels (the values' units) for the predicted bias, per class or for "
                        "all (default: the lab setting agreement_decision_levels)")  # fmt: skip
    p.add_argument("--allowable", nargs="+", metavar="[CLASS=]A",
                   help="allowable difference in the measure's units (ratio: a factor above 1), per class or for "
                        "all; gives a verdict per class (default: the lab setting agreement_allowable)")  # fmt: skip
    p.add_argument("--regression", default="deming", choices=["deming", "passing-bablok"],
                   help="the line the decision-level bias is read from (default deming, jackknife CIs)")
    p.add_argument("--weighted-deming", action="store_true",
                   help="weighted Deming for a constant CV (Linnet 1990) instead of ordinary Deming")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="also give percentile bootstrap CIs (N >= 100 resamples) for Passing-Bablok and Deming, and "
                        "use them for the decision-level bias")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (results are reproducible)")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace):  # EP09Options, imported lazily
    from phenotyping.agreement.class_agreement import options_from_specs
    from phenotyping.settings import get_settings

    settings = get_settings()
    return options_from_specs(args.decision_levels, args.allowable,
                              default_levels=settings.agreement_decision_levels,
                              default_allowable=settings.agreement_allowable,
                              regression=args.regression.replace("-", "_"), weighted_deming=args.weighted_deming,
                              bootstrap=args.bootstrap, seed=args.seed)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from phenotyping.agreement import stats as ag
    from phenotyping.agreement.class_agreement import compare_class
    from phenotyping.agreement.paired import paired_from_csv

    options = _options(args)
    paired = paired_from_csv(args.paired, scale=args.scale)
    out, failed = {}, {}
    for name, pc in paired.items():
        res = compare_class(name, pc.sample_ids, pc.reference, pc.test, reference_totals=pc.reference_totals,
                            test_totals=pc.test_totals, measure=args.measure, confidence=args.confidence,
                            manual_cells=args.manual_cells, scale=args.scale, options=options)  # fmt: skip
        for line in ([res.note] if res.note else []) + list(res.warnings):
            print(f"cell type {name!r}: {line}", file=sys.stderr)
        if not res.computed:
            failed[name] = res.errors.get("bland_altman", "not computed")
            print(f"cell type {name!r}: no limits of agreement: {failed[name]}", file=sys.stderr)
        out[name] = res.summary()
    if len(failed) == len(out):
        raise ValueError("no cell type could be compared: " + "; ".join(f"{c}: {e}" for c, e in failed.items()))
    print_json({"cell_types": out, "measure": args.measure, "scale": args.scale, "confidence": args.confidence,
                "differences": "test - reference", "ccc_shifts": ag.CCC_SHIFTS,
                "manual_cells": list(args.manual_cells), "options": options.to_dict()})  # fmt: skip
    return 0
