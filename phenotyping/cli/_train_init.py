"""``train --init-from MODEL_DIR``: fine-tune an existing model (:mod:`phenotyping.training.finetune`), and the
defaults ``train`` fills in when it trains from scratch (they differ: fewer epochs, a lower learning rate)."""

from __future__ import annotations

import argparse

from phenotyping.cli._common import print_json

#: ``train`` from scratch: the values of the options left unset (None) on the command line.
SCRATCH_DEFAULTS = {"arch": "hybrid", "epochs": 30, "batch_size": 64, "lr": 2e-3, "patience": 6,
                    "test_fraction": 0.15, "val_fraction": 0.15, "normalisation": "dataset",
                    "crop": "none", "class_weights": "balanced"}


def train_defaults(args: argparse.Namespace) -> None:
    """Fill in the from-scratch defaults for the options left unset."""
    for k, v in SCRATCH_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def _refuse_changes(args: argparse.Namespace, parent: dict) -> None:
    """Options that would change what fine-tuning keeps from the parent are refused, naming the parent's value."""
    arch = parent["architecture"]["name"]
    inp = parent.get("input") or {}
    given = {
        "--arch": args.arch is not None and args.arch != arch,
        "--classes": bool(args.classes), "--channels": bool(args.channels),
        "--img-size": args.img_size is not None and args.img_size != inp.get("img_size"),
        "--normalisation": args.normalisation is not None and
        args.normalisation.replace("-", "_") != (inp.get("normalisation") or {}).get("mode"),
        "--log-targets": bool(args.log_targets), "--model-config": bool(args.model_config),
        "--embed-model": args.embed_model is not None, "--cv": args.cv is not None,
        "--group-column": args.group_column is not None, "--fraction": args.fraction != 1.0,
        "--specimen/--specimen-classes": bool(args.specimen_names or args.specimens),
        "--augment-appearance": args.augment_appearance, "--augment-hue": args.augment_hue,
        "--crop": args.crop is not None and args.crop != inp.get("crop", "none"),
        "--class-weights": args.class_weights is not None and args.class_weights !=
        ((parent.get("training") or {}).get("config") or {}).get("class_weights", "balanced"),
    }
    bad = [k for k, v in given.items() if v]
    if bad:
        raise ValueError(f"--init-from {args.init_from} keeps the parent's architecture ({arch}), classes "
                         f"({', '.join(parent.get('classes', []))}), input ({inp.get('img_size')} px, channels "
                         f"{', '.join(inp.get('channels', []))}, {(inp.get('normalisation') or {}).get('mode')} "
                         f"normalisation, crop {inp.get('crop', 'none')}), targets, augmentation, class weights and specimens; drop {', '.join(bad)}")
    extra = [t for t in args.target_columns if t not in [x["name"] for x in parent.get("targets", [])]]
    if extra:
        raise ValueError(f"--target-columns {extra} are not targets of the parent model (it has "
                         f"{[x['name'] for x in parent.get('targets', [])] or 'none'}); fine-tuning keeps its targets")


def run_init(args: argparse.Namespace) -> int:
    """Fine-tune ``args.init_from`` on ``args.manifest`` and print the child's id, lineage and before/after."""
    from phenotyping.models.checkpoint import load_card
    from phenotyping.training.finetune import FinetuneConfig, check_out_dir, finetune

    check_out_dir(args.init_from, args.out)
    _refuse_changes(args, load_card(args.init_from))
    d = FinetuneConfig()
    cfg = FinetuneConfig(epochs=args.epochs or d.epochs, lr=args.lr or d.lr, patience=args.patience or d.patience,
                         batch_size=args.batch_size or d.batch_size, seed=args.seed,
                         val_fraction=d.val_fraction if args.val_fraction is None else args.val_fraction,
                         test_fraction=d.test_fraction if args.test_fraction is None else args.test_fraction,
                         data_licence=args.data_licence)
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be ≥ 1, got {cfg.epochs}")
    card = finetune(args.init_from, args.manifest, args.label_column, args.out, config=cfg, device=args.device)
    lin = card["lineage"]
    print_json({"model": str(args.out), "id": card["id"], "parent": lin["parent"]["id"],
                "classes": card["classes"], "data_added": {k: lin["data_added"][k] for k in ("n_cells", "per_class")},
                "held_out": {k: lin["held_out"][k] for k in ("split", "n", "method")},
                "before": lin["before"], "after": lin["after"],
                "wall_time_s": card["training"]["wall_time_s"]})
    return 0
