"""``python -m phenotyping evaluate``: metrics of a saved model on a labelled manifest, as JSON on stdout."""

from __future__ import annotations

import argparse
from pathlib import Path

from phenotyping.cli._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model folder on a labelled manifest (JSON)",
                       description="Print n, accuracy, balanced_accuracy, macro_f1, kappa, per_class, confusion (rows "
                                   "true, columns predicted), predicted_proportions, true_proportions, targets "
                                   "(pearson, spearman, mae, ccc), calibration (mean_confidence, accuracy, nll, ece, "
                                   "below_threshold, accuracy_above_threshold: the card's temperature-scaled "
                                   "probabilities and unidentified threshold) and tta as JSON.")
    p.add_argument("--model", required=True, type=Path, help="model folder (checkpoint.pt + model_card.json)")
    p.add_argument("--manifest", required=True, type=Path, help="manifest.csv or ImageFolder folder")
    p.add_argument("--label-column", default=None, help="default: the column the model was trained on")
    p.add_argument("--target-columns", default=None,
                   type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                   help="comma-separated targets to score (default: the model's targets, if in the manifest)")
    p.add_argument("--split", choices=["train", "val", "test"], default=None,
                   help="only the cells of this split of the model's own training manifest (from its split.csv)")
    p.add_argument("--drop-unknown", action="store_true",
                   help="drop cells whose label the model does not know (reported on stderr) instead of failing")
    p.add_argument("--tta", choices=["none", "dihedral"], default="none",
                   help="test-time augmentation, as predict --tta: dihedral averages the outputs over the flips and "
                        "90-degree rotations that keep the channels' meaning")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.training.evaluate import evaluate_model_dir

    print_json(evaluate_model_dir(args.model, args.manifest, label_column=args.label_column,
                                  target_columns=args.target_columns, split=args.split,
                                  drop_unknown=args.drop_unknown, tta=args.tta))
    return 0
