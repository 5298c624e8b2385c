"""Per-site metrics of a WBC model on one split of its three-site manifest (docs/BENCHMARKS.md).

``evaluate --split test`` scores the whole split; this breaks it down by the manifest's ``site`` column, each site
scored on the classes it has (accuracy, macro-F1, per-class recall; ``accuracy_site_classes_only``: the accuracy
when the model may only choose among the classes the site's labels contain, which shows how many errors are calls of
classes the site never labels). ``--split all`` scores every cell of the manifest
(for a site the model never saw).

    python docs/wbc_site_eval.py --model models/wbc-hybrid --manifest /tmp/wbc3/all/manifest.csv --split test
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def site_metrics(model: Path, manifest: Path, split: str, *, tta: str = "none") -> dict[str, dict]:
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.models.forward import predict_arrays
    from phenotyping.models.tta import with_tta
    from phenotyping.training.data import load_images, load_rows
    from phenotyping.training.evaluate import classification_metrics

    lm = load_model_dir(model)
    net = with_tta(lm.model, lm.preprocess, tta)
    rows = load_rows(manifest)
    if split != "all":
        with (model / "split.csv").open(newline="", encoding="utf-8") as fh:
            ids = {r["cell_id"] for r in csv.DictReader(fh) if r["split"] == split}
        rows = [r for r in rows if r["cell_id"] in ids]
    rows = [r for r in rows if r["cell_type"] in lm.classes]
    by_site: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_site[r["site"]].append(r)
    out = {}
    for site, rs in sorted(by_site.items()):
        x = lm.preprocess.normalise(load_images([r["path"] for r in rs], lm.preprocess.img_size,
                                                crop=lm.preprocess.crop), batched=True)
        logits = predict_arrays(net, x)["logits"]
        pred = logits.argmax(1)
        y = np.array([lm.classes.index(r["cell_type"]) for r in rs])
        m = classification_metrics(y, pred, lm.classes)
        closed = np.where(np.isin(np.arange(len(lm.classes)), y), logits, -np.inf).argmax(1)
        out[site] = {"n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                     "accuracy_site_classes_only": round(float((closed == y).mean()), 4),
                     "recall": {c: round(v["recall"], 3) for c, v in m["per_class"].items() if v["n"]},
                     "n_per_class": {c: v["n"] for c, v in m["per_class"].items() if v["n"]}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--manifest", required=True, type=Path, help="from docs/make_wbc_manifest.py (has a site column)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--tta", choices=["none", "dihedral"], default="none", help="as predict --tta")
    args = p.parse_args(argv)
    print(json.dumps(site_metrics(args.model, args.manifest, args.split, tta=args.tta), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
