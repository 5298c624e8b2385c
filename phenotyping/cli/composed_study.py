"""``python -m phenotyping composed-study``: agreement on samples composed from held-out labelled cells."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phenotyping.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "composed-study", help="method comparison on samples composed from held-out labelled cells",
        description="Compose samples of known composition from a model's held-out cells, take a 200-cell 'manual "
                    "count' of each, and print Bland-Altman results per class for the model's raw, "
                    "prior-shift-corrected and reviewed differentials (JSON; --markdown for a table).")
    p.add_argument("--model", type=Path, required=True, help="model folder (checkpoint + card)")
    p.add_argument("--manifest", type=Path, required=True, help="labelled manifest.csv or ImageFolder folder")
    p.add_argument("--split", default="test", choices=["test", "val", "all"],
                   help="which of the model's own splits to draw from ('all' for a manifest from another source)")
    p.add_argument("--label-column", default=None)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--cells", type=int, default=400, help="cells per composed sample")
    p.add_argument("--manual-cells", type=int, default=200, help="cells in each sample's manual count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.agreement.composed import composed_study, markdown_table, predict_pool

    pool = predict_pool(args.model, args.manifest, split=None if args.split == "all" else args.split,
                        label_column=args.label_column)
    result = composed_study(pool, n_samples=args.samples, cells_per_sample=args.cells,
                            manual_cells=args.manual_cells, seed=args.seed)
    print_json(result)
    if args.markdown:
        print(markdown_table(result), file=sys.stderr)
    return 0
