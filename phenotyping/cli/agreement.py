"""``python -m phenotyping agreement --paired CSV [--measure absolute|percent|ratio] [--manual-cells N ...]``."""

from __future__ import annotations

import argparse
import sys

from phenotyping.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agreement", help="method-comparison statistics per class from a paired CSV",
        description="Bland-Altman (bias, SD, limits of agreement with CIs, proportional bias), Passing-Bablok, Deming, "
                    "Lin's CCC and Pearson's r per cell type, differences test - reference. The CSV has columns "
                    "sample_id, cell_type, reference, test (percentages), optionally reference_total and test_total "
                    "(then reference/test are cell counts, converted to percentages). Several rows of one sample and "
                    "cell type are replicates: that class gets repeated-measures Bland-Altman (Bland & Altman 2007). "
                    'Prints JSON {"cell_types": {name: {...}}}; each class is computed on its own: what cannot be '
                    'computed is null with the reason under "errors". Exits 2 only when no class could be computed.',
    )  # fmt: skip
    p.add_argument("--paired", required=True, help="paired CSV (see above)")
    p.add_argument("--measure", default="absolute", choices=["absolute", "percent", "ratio"],
                   help="differences as absolute values, percent of the pair mean, or ratios (log scale)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of all confidence intervals")
    p.add_argument("--manual-cells", type=int, nargs="+", default=[200, 400], metavar="N",
                   help="report the counting error of manual differentials of N cells beside the limits of "
                        "agreement (default: 200 400); totals in the CSV are used as well")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.agreement.paired import paired_from_csv
    from phenotyping.agreement.study import compare_class

    paired = paired_from_csv(args.paired)
    out, failed = {}, {}
    for name, pc in paired.items():
        res = compare_class(name, pc.sample_ids, pc.reference, pc.test, reference_totals=pc.reference_totals,
                            test_totals=pc.test_totals, measure=args.measure, confidence=args.confidence,
                            manual_cells=args.manual_cells)  # fmt: skip
        if res.note:
            print(f"cell type {name!r}: {res.note}", file=sys.stderr)
        if not res.computed:
            failed[name] = res.errors.get("bland_altman", "not computed")
            print(f"cell type {name!r}: no limits of agreement: {failed[name]}", file=sys.stderr)
        out[name] = res.summary()
    if len(failed) == len(out):
        raise ValueError("no cell type could be compared: " + "; ".join(f"{c}: {e}" for c, e in failed.items()))
    print_json({"cell_types": out, "measure": args.measure, "differences": "test - reference",
                "manual_cells": list(args.manual_cells)})  # fmt: skip
    return 0
