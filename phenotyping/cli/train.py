"""``python -m phenotyping train``: train a cell model on a manifest and write a model folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phenotyping.cli._common import comma_list, print_json


def add_specimen_options(p: argparse.ArgumentParser) -> None:
    """``--specimen`` / ``--specimen-classes``: the card's specimens section (train and calibrate)."""
    p.add_argument("--specimen", action="append", choices=["blood", "balf"], default=None, dest="specimen_names",
                   help="a specimen the model is meant for (repeat for both); roles from the class names: "
                        "erythroblasts per 100 leukocytes, platelets counted apart, epithelial cells noted (BALF), "
                        "the rest counted. Default: blood when every class is a blood-cell name, balf when a class "
                        "is a macrophage and every class a BAL cell name, else none")
    p.add_argument("--specimen-classes", type=json.loads, default=None, dest="specimens",
                   help='the whole section as JSON, e.g. \'{"balf": {"counted": ["macrophage", "lymphocyte", '
                        '"neutrophil", "eosinophil"], "noted": ["epithelial"]}}\' (roles: counted, '
                        'per_100_leukocytes, counted_apart, noted; every class under one role)')


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model; writes DIR with checkpoint.pt and model_card.json",
                       description="Train a cell model (see `phenotyping.models.list_models()`) on a manifest.csv or "
                                   "ImageFolder folder. Progress per epoch on stderr; a JSON summary on stdout.")
    p.add_argument("--manifest", required=True, type=Path, help="manifest.csv, or a folder with one subfolder per class")
    p.add_argument("--label-column", required=True, help="column with the class of each cell")
    p.add_argument("--target-columns", type=comma_list, default=[], help="comma-separated numeric columns to regress")
    p.add_argument("--group-column", default=None,
                   help="column (patient, sample) whose groups never straddle train/val/test or two CV folds")
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="first run K-fold cross-validation (grouped by --group-column when given) and record "
                        "per-fold and mean ± SD metrics in the JSON and the card; the saved model is then trained "
                        "on all cells as without --cv")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="fine-tune this model on the manifest's cells (its architecture, classes, preprocessing and "
                        "target scaling kept; labels outside its classes refused); --out must be a new folder; the "
                        "card's lineage holds the parent and before/after metrics on held-out new cells")
    p.add_argument("--arch", default=None, help="registered model name (default: hybrid)")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs; early stopping on validation (default 30; 40 with --init-from)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, initialisation, order, augmentation")
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--classes", type=comma_list, default=None, help="keep only these labels, in this order (others dropped)")
    p.add_argument("--channels", type=comma_list, default=None,
                   help="channel names, e.g. brightfield,darkfield or dpc_lr,dpc_tb (DPC names get direction-aware "
                        "augmentation)")
    p.add_argument("--log-targets", type=comma_list, default=[], help="targets to log-transform before standardising")
    p.add_argument("--img-size", type=int, default=None, help="input side length (default: image size, ≤ 64)")
    p.add_argument("--fraction", type=float, default=1.0, help="stratified share of the training split to use")
    p.add_argument("--batch-size", type=int, default=None, help="default 64; 16 with --init-from")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where a neural model trains (default: LEUKO_DEVICE, auto); CUDA adds mixed precision")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3; 3e-4 with --init-from)")
    p.add_argument("--patience", type=int, default=None,
                   help="epochs without validation improvement before stopping (default 6; 10 with --init-from)")
    p.add_argument("--loss", choices=["uncertainty", "fixed"], default="uncertainty",
                   help="multi-task weighting: learned uncertainty (Kendall 2018) or fixed equal weights")
    p.add_argument("--class-weights", choices=["balanced", "sqrt", "none"], default=None,
                   help="cross-entropy class weights of a neural model: balanced n/(K·n_k) (default; rare classes "
                        "weigh as much as common ones), sqrt (their square root: rare classes still learnt, less "
                        "accuracy traded on common ones) or none; the card's posterior prior follows")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="held-out test share (0 = none; default 0.15, 0.2 with --init-from, which needs one)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="validation share (early stopping, calibration; default 0.15, 0.2 with --init-from)")
    p.add_argument("--normalisation", choices=["dataset", "per-image"], default=None,
                   help="per-channel statistics of the training set (default), or each cell standardised by its "
                        "own (more robust across sites)")
    p.add_argument("--augment-appearance", action="store_true",
                   help="also augment scale, stain colour, blur and background (stained brightfield cells from "
                        "several sites; 2D only)")
    p.add_argument("--augment-hue", type=float, nargs="?", const=1.0, default=0.0, metavar="SHARE",
                   help="with --augment-appearance: also shift the stain's hue over the whole circle, scale its "
                        "saturation and sometimes remove it, in SHARE of the draws (default 1 when given; RGB; "
                        "a stain of another site)")
    p.add_argument("--crop", choices=["none", "nucleus"], default=None,
                   help="nucleus: crop every cell to a square around its stained nucleus before sizing, in training "
                        "and in every prediction (RGB smears from analysers or cameras of different magnification; "
                        "default none)")
    p.add_argument("--data-licence", default=None, help="licence of the training data (default: LICENSE beside it)")
    p.add_argument("--embed-model", type=Path, default=None, metavar="DIR",
                   help="with --arch knn/svm: fit on the penultimate features of this trained neural model (its "
                        "folder) instead of pixels; the classifier keeps a reference to it and loads it to predict")
    add_specimen_options(p)
    p.add_argument("--model-config", type=json.loads, default={},
                   help='JSON object of extra create_model keywords, e.g. \'{"drop": 0.2}\'')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.cli._train_init import run_init, train_defaults
    from phenotyping.training.train import TrainConfig, train

    if args.init_from is not None:
        return run_init(args)
    train_defaults(args)
    if args.epochs < 1:
        raise ValueError(f"--epochs must be ≥ 1, got {args.epochs}")
    if args.augment_hue and not args.augment_appearance:
        raise ValueError("--augment-hue extends --augment-appearance; give both")
    if not 0 <= args.augment_hue <= 1:
        raise ValueError(f"--augment-hue SHARE must be in [0, 1], got {args.augment_hue}")
    if args.class_weights != "balanced":
        from phenotyping.models._registry import model_family

        if model_family(args.arch) == "classical":
            raise ValueError(f"--class-weights {args.class_weights} is for neural models; {args.arch} keeps its own "
                             "(kNN none, SVM balanced)")
    unknown_log = [t for t in args.log_targets if t not in args.target_columns]
    if unknown_log:
        raise ValueError(f"--log-targets {unknown_log} are not among --target-columns {args.target_columns}")
    cfg = TrainConfig(arch=args.arch, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                      patience=args.patience, loss=args.loss, val_fraction=args.val_fraction,
                      test_fraction=args.test_fraction, img_size=args.img_size, fraction=args.fraction,
                      log_targets=tuple(args.log_targets), classes=tuple(args.classes) if args.classes else None,
                      channels=tuple(args.channels) if args.channels else None, data_licence=args.data_licence,
                      normalisation=args.normalisation.replace("-", "_"),
                      augment_appearance=args.augment_appearance, augment_hue=args.augment_hue, crop=args.crop,
                      class_weights=args.class_weights,
                      model_overrides=dict(args.model_config),
                      embed_model=str(args.embed_model) if args.embed_model else None,
                      specimens=args.specimens, specimen_names=tuple(args.specimen_names or ()))
    extra = {}
    if args.cv is not None:
        from phenotyping.training.cv import cross_validate

        extra["cross_validation"] = cross_validate(args.manifest, args.label_column, k=args.cv,
                                                   target_columns=args.target_columns,
                                                   group_column=args.group_column, config=cfg)
    card = train(args.manifest, args.label_column, args.out, target_columns=args.target_columns,
                 group_column=args.group_column, config=cfg, card_extra=extra, device=args.device)
    print_json({"model": str(args.out), "id": card["id"], "architecture": card["architecture"]["name"],
                "classes": card["classes"], "specimens": card["specimens"], "split": card["split"]["n"],
                "validation": {k: card["validation"][k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
                "validation_targets": card["validation"]["targets"],
                "test": None if card["test"] is None else
                {k: card["test"][k] for k in ("accuracy", "balanced_accuracy", "macro_f1")} |
                {"targets": card["test"]["targets"]},
                "wall_time_s": card["training"]["wall_time_s"]}
               | ({"cross_validation": {k: extra["cross_validation"][k] for k in ("k", "method", "summary", "folds")}}
                  if extra else {}))
    return 0
