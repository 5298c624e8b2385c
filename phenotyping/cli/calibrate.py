"""``python -m phenotyping calibrate``: recompute a model card's post-fit sections (prior, confusion, image QC)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phenotyping.cli._common import print_json
from phenotyping.cli.train import add_specimen_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="recompute a model card's posterior prior, confident confusion and image-QC thresholds",
        description="Bring a model folder's card up to date without retraining: the prior its probabilities assume "
                    "(for EM correction), the validation confusion of cells above the unidentified threshold (for "
                    "the adjusted count) and image-QC thresholds learned from its training images. Uses the "
                    "folder's split.csv; weights, classes, temperature and threshold are unchanged. Prints the "
                    "new sections as JSON.")
    p.add_argument("--model", type=Path, required=True, help="model folder (checkpoint + card + split.csv)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="the manifest the model was trained on (default: the card's training.manifest)")
    p.add_argument("--qc-cells", type=int, default=2000, help="training images used for the QC thresholds")
    p.add_argument("--qc-group-column", default=None,
                   help="manifest column naming each cell's site: QC thresholds then pass ~99%% of every site's "
                        "training cells per check, not only of the largest site's")
    add_specimen_options(p)
    p.add_argument("--specimens-only", action="store_true",
                   help="only write the card's specimens section (from --specimen / --specimen-classes, else the "
                        "defaults from the class names); needs neither the training data nor the weights")
    p.add_argument("--domain-reference", action="store_true",
                   help="only write the card's domain section (reference of the training distribution and the "
                        "threshold of the per-sample domain check) from the training and held-out split")
    p.add_argument("--other-site", action="append", default=[], type=Path, metavar="MANIFEST",
                   help="with --domain-reference: cells of another site (manifest or image folder) to calibrate the "
                        "threshold against; repeatable")
    p.add_argument("--domain-cells", type=int, default=2000,
                   help="with --domain-reference: cells used per set (training, held-out, each other site)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.training.postfit import calibrate_model_dir, set_specimens

    names = tuple(args.specimen_names or ())
    if args.other_site and not args.domain_reference:
        raise ValueError("--other-site goes with --domain-reference")
    if args.domain_reference:
        from phenotyping.training.postfit import calibrate_domain_dir

        section = calibrate_domain_dir(args.model, args.manifest, other_sites=args.other_site,
                                       max_cells=args.domain_cells)
        print_json({"model_dir": str(args.model), "domain": {k: v for k, v in section.items() if k != "features"}})
        return 0
    if args.specimens_only:
        card = set_specimens(args.model, specimens=args.specimens, specimen_names=names)
        print_json({"model_id": card["id"], "specimens": card["specimens"]})
        return 0
    card = calibrate_model_dir(args.model, args.manifest, max_qc_cells=args.qc_cells, specimens=args.specimens,
                               specimen_names=names, qc_group_column=args.qc_group_column)
    print_json({"model_id": card["id"], "posterior_prior": card["training"]["posterior_prior"],
                "confusion_confident": card["validation"]["confusion_confident"], "qc": card["qc"],
                "qc_calibration": card["qc_calibration"], "specimens": card["specimens"], "postfit": card["postfit"]})
    return 0
