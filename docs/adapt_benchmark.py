"""Adapting a model to a new lab from a few labelled cells (issue 15, part 5), end to end.

1. A parent model trained without bccd: segwbc-d1 + PBC (the five leukocyte classes, a stratified share of the
   training split, 48 px, a plain CNN, per-image normalisation and appearance augmentation, so it fits a 2-core CPU).
2. bccd split once (seeded, per class) into a labelling pool and a fixed test set, the same for every arm.
3. Labelling orders over the pool: the review queue's order (most informative first, the margin uncertainty of
   ``phenotyping.analysis.review.uncertainty`` over the parent's calibrated probabilities) and random orders (seeds).
4. For N in 25, 50, 100: the first N cells of each order, fine-tuned with ``python -m phenotyping train --init-from``
   (its defaults), each child evaluated on the fixed test set (accuracy, macro-F1, per-class recall).
5. ``docs/adapt_benchmark.json`` (every figure and command) and ``docs/adapt_benchmark.png`` (the plot).

    python docs/adapt_benchmark.py --work /tmp/adapt-bench

Writes only under ``--work`` (manifests linking to ../shared/data, the models) and the two docs files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte"]
PARENT_ARGS = ["--label-column", "cell_type", "--classes", ",".join(CLASSES), "--arch", "cnn", "--img-size", "48",
               "--epochs", "8", "--fraction", "0.3", "--test-fraction", "0", "--normalisation", "per-image",
               "--augment-appearance", "--seed", "0"]


def run(cmd: list[str], log: list[dict]) -> dict:
    """Run a phenotyping command, record it (as typed, from the repository root) and its wall time; its JSON."""
    t0 = time.perf_counter()
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-4000:])
        raise SystemExit(f"failed ({res.returncode}): {shlex.join(cmd)}")
    log.append({"command": shlex.join(cmd).replace(sys.executable, "python"),
                "wall_s": round(time.perf_counter() - t0, 1)})
    out = res.stdout.strip()
    return json.loads(out) if out.startswith("{") else {}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def pool_and_test(rows: list[dict[str, str]], seed: int) -> tuple[list[int], list[int]]:
    """Half of each class to the labelling pool, the other half to the fixed test set (seeded)."""
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for c in sorted({r["cell_type"] for r in rows}):
        idx = rng.permutation([i for i, r in enumerate(rows) if r["cell_type"] == c]).tolist()
        pool += idx[: len(idx) // 2]
        test += idx[len(idx) // 2:]
    return sorted(pool), sorted(test)


def outputs(model_dir: Path, paths: list[Path], cache: dict) -> tuple[list[str], np.ndarray]:
    """The model's classes and calibrated probabilities (n, K) on ``paths``."""
    from phenotyping.models.checkpoint import load_model_dir
    from phenotyping.models.forward import predict_arrays, softmax
    from phenotyping.training.data import load_images

    lm = load_model_dir(model_dir)
    key = (tuple(map(str, paths)), lm.preprocess.img_size)
    if key not in cache:
        cache[key] = load_images(paths, lm.preprocess.img_size)
    o = predict_arrays(lm.model, lm.preprocess.normalise(cache[key], batched=True))
    return lm.classes, softmax(o["logits"], lm.temperature)


def score(model_dir: Path, rows: list[dict[str, str]], folder: Path, cache: dict) -> dict:
    from phenotyping.training.evaluate import classification_metrics

    classes, probs = outputs(model_dir, [folder / r["path"] for r in rows], cache)
    y = np.array([classes.index(r["cell_type"]) for r in rows])
    m = classification_metrics(y, probs.argmax(1), classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "recall": {c: v["recall"] for c, v in m["per_class"].items() if v["n"]}}


def queue_order(parent: Path, rows: list[dict[str, str]], pool: list[int], folder: Path, cache: dict) -> list[int]:
    """The pool in the review queue's most-informative-first order (margin uncertainty; ties by position)."""
    from phenotyping.analysis.review import uncertainty

    classes, probs = outputs(parent, [folder / rows[i]["path"] for i in pool], cache)
    u = [uncertainty(dict(zip(classes, map(float, p))), "margin") for p in probs]
    return [pool[j] for j in sorted(range(len(pool)), key=lambda j: (-u[j], j))]


def plot(result: dict, path: Path) -> None:
    """Accuracy and macro-F1 on the fixed test set against cells labelled, per labelling order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    ns = result["n_labelled"]
    for ax, key, name in zip(axes, ("accuracy", "macro_f1"), ("accuracy", "macro-F1")):
        for arm, style in (("queue", "o-"), ("random", "s--")):
            per_n = [[r["test"][key] for r in result["runs"] if r["arm"].startswith(arm) and r["n"] == n]
                     for n in ns]
            ax.plot(ns, [float(np.mean(v)) for v in per_n], style,
                    label="review-queue order (margin)" if arm == "queue"
                    else f"random order (mean of {len(result['random_seeds'])} seeds)")
            if arm == "random":
                ax.fill_between(ns, [min(v) for v in per_n], [max(v) for v in per_n], alpha=0.2,
                                label="random: range")
        ax.axhline(result["parent"]["test"][key], color="grey", ls=":", label="parent (no bccd cells)")
        ax.axhline(result["majority"][key], color="black", ls="-.", lw=0.8, label="always neutrophil")
        ax.set_xlabel("bccd cells labelled")
        ax.set_ylabel(f"{name} on {result['n_test']} fixed bccd test cells")
        ax.set_xticks(ns)
        ax.set_ylim(0, 1)
    axes[0].legend(loc="lower right", fontsize=7)
    fig.suptitle("Fine-tuning on a new lab's labelled cells (train --init-from, its defaults)")
    fig.tight_layout()
    fig.savefig(path)


def majority(rows: list[dict[str, str]]) -> dict:
    """Accuracy and macro-F1 of always answering the most frequent class (the reference a model must beat)."""
    from phenotyping.training.evaluate import classification_metrics

    present = sorted({r["cell_type"] for r in rows})
    y = np.array([present.index(r["cell_type"]) for r in rows])
    m = classification_metrics(y, np.full(len(y), np.bincount(y).argmax()), present)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/adapt-bench"), help="scratch folder (outside the repo)")
    p.add_argument("--n", type=int, nargs="+", default=[25, 50, 100], help="cells labelled per arm")
    p.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--reuse-parent", action="store_true", help="keep a parent already in --work")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "adapt_benchmark")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))        # run as a script: the project's packages from the repository
    t_all = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    py, log, cache = sys.executable, [], {}
    mk = [py, "docs/make_wbc_manifest.py"]
    run(mk + ["--out", str(work / "parent.csv"), "--without", "bccd"], log)
    run(mk + ["--out", str(work / "bccd.csv"), "--only", "bccd"], log)
    licence = subprocess.run(mk + ["--attribution"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    parent = work / "parent"
    if not (args.reuse_parent and (parent / "model_card.json").is_file()):
        run([py, "-m", "phenotyping", "train", "--manifest", str(work / "parent.csv"), *PARENT_ARGS,
             "--data-licence", licence, "--out", str(parent)], log)
    rows = read_rows(work / "bccd.csv")
    pool, test = pool_and_test(rows, seed=0)
    test_rows = [rows[i] for i in test]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load": os.getloadavg(),
              "machine": f"{os.cpu_count()} CPU cores", "parent_args": shlex.join(PARENT_ARGS),
              "n_pool": len(pool), "n_test": len(test), "n_labelled": args.n, "random_seeds": args.random_seeds,
              "test_per_class": {c: sum(r["cell_type"] == c for r in test_rows) for c in CLASSES},
              "majority": majority(test_rows),
              "parent": {"id": json.loads((parent / "model_card.json").read_text())["id"],
                         "test": score(parent, test_rows, work, cache)}, "runs": []}
    orders = {"queue": queue_order(parent, rows, pool, work, cache)}
    for s in args.random_seeds:
        orders[f"random-{s}"] = np.random.default_rng(100 + s).permutation(pool).tolist()
    for arm, order in orders.items():
        for n in args.n:
            manifest = write_rows(work / f"{arm}-{n}.csv", [rows[i] for i in order[:n]])
            out = work / f"child-{arm}-{n}"
            res = run([py, "-m", "phenotyping", "train", "--init-from", str(parent), "--manifest", str(manifest),
                       "--label-column", "cell_type", "--out", str(out)], log)
            result["runs"].append({"arm": arm, "n": n, "labelled_per_class": res["data_added"]["per_class"],
                                   "card_before": res["before"], "card_after": res["after"],
                                   "test": score(out, test_rows, work, cache)})
            print(f"{arm} n={n}: test accuracy {result['runs'][-1]['test']['accuracy']:.3f}", file=sys.stderr)
    result["commands"] = log
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("parent", "wall_s")} |
                     {"accuracy": {f"{r['arm']}-{r['n']}": round(r["test"]["accuracy"], 3) for r in result["runs"]}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
