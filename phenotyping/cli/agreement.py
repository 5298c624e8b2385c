"""``python -m phenotyping agreement --paired CSV [--measure absolute|percent|ratio]``."""

from __future__ import annotations

import argparse

from phenotyping.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agreement", help="method-comparison statistics per class from a paired CSV",
        description="Bland-Altman (bias, SD, limits of agreement with CIs, proportional bias), Passing-Bablok, Deming, "
                    "Lin's CCC and Pearson's r per cell type, differences test - reference. The CSV has columns "
                    "sample_id, cell_type, reference, test (percentages), optionally reference_total and test_total "
                    "(then reference/test are cell counts, converted to percentages). Prints JSON "
                    '{"cell_types": {name: {...}}}; undefined statistics are null with the reason under "errors".',
    )  # fmt: skip
    p.add_argument("--paired", required=True, help="paired CSV (see above)")
    p.add_argument("--measure", default="absolute", choices=["absolute", "percent", "ratio"],
                   help="differences as absolute values, percent of the pair mean, or ratios (log scale)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of all confidence intervals")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.study import compare_class, paired_from_csv

    paired = paired_from_csv(args.paired)
    out = {}
    for name, pc in paired.items():
        try:
            res = compare_class(name, pc.sample_ids, pc.reference, pc.test, reference_totals=pc.reference_totals,
                                test_totals=pc.test_totals, measure=args.measure, confidence=args.confidence)
        except ValueError as e:
            raise ValueError(f"cell type {name!r}: {e}") from e
        out[name] = res.summary()
    print_json({"cell_types": out, "measure": args.measure, "differences": "test - reference"})
    return 0
