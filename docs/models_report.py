"""Build the tables of the "Models" section of docs/BENCHMARKS.md and the data-volume plot from a benchmark folder.

Usage: .venv/bin/python docs/models_report.py OUTDIR   (OUTDIR as written by docs/models_benchmark.sh)
Prints Markdown on stdout; writes docs/data_volume.png and docs/data_volume.svg.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# training budgets that differ from the default in docs/models_benchmark.sh (kNN and SVM ignore epochs)
_EPOCHS = {"resnet18": "--epochs 25 --patience 6", "published_standin": "--img-size 28 --epochs 5 --patience 3",
           "knn": "", "svm": ""}


def _load(out: Path, name: str, suffix: str = "") -> tuple[dict, dict, float] | None:
    ev = out / f"{name}{suffix}.eval.json"
    if not ev.is_file():
        return None
    card = json.loads((out / name / "model_card.json").read_text())
    wall = float((out / f"{name}.time").read_text())
    return json.loads(ev.read_text()), card, wall


def _row(label: str, cmd: str, res: tuple[dict, dict, float]) -> str:
    ev, card, wall = res
    r = ev["targets"].get("dna_content", {}).get("pearson")
    return (f"| {label} | `{cmd}` | {card['training']['config']['seed']} | {wall:.0f} | {ev['n']} | "
            f"{ev['accuracy']:.3f} | {ev['balanced_accuracy']:.3f} | {ev['macro_f1']:.3f} | "
            f"{'—' if r is None else f'{r:.3f}'} |")


def main(out: Path) -> None:
    head = ("| model | command (train; then `evaluate --model DIR … --split test`) | seed | wall s | n test | "
            "accuracy | balanced acc. | macro-F1 | Pearson r |\n|---|---|---|---|---|---|---|---|---|")
    print("### ifc-jurkat-labelfree: 7 phases + dna_content, 15 % stratified test split\n")
    print(head)
    for a in ["hybrid", "hybrid_wide", "cnn", "resnet18", "vit_small", "knn", "svm", "published_standin"]:
        res = _load(out, f"jurkat-{a}")
        if res:
            cmd = " ".join(filter(None, ["train --arch", a, _EPOCHS.get(a, "--epochs 40 --patience 10"), "--seed 0"]))
            print(_row(a, cmd, res))
    longer = [(f"jurkat-{a}-e100-{loss}", f"{a}, 100 epochs, {loss} weights",
               f"train --arch {a} --epochs 100 --patience 25 --loss {loss} --seed 0")
              for a in ("hybrid", "cnn") for loss in ("uncertainty", "fixed")]
    longer += [("jurkat-hybrid-e100-lr4", "hybrid, 100 epochs, lr 0.004",
                "train --arch hybrid --epochs 100 --patience 25 --lr 0.004 --seed 0"),
               ("jurkat-published_standin-20ep", "published_standin, 20 epochs",
                "train --arch published_standin --img-size 28 --epochs 20 --patience 5 --seed 0")]
    for name, label, cmd in longer:
        res = _load(out, name)
        if res:
            print(_row(label, cmd, res))
    print("\n### wbc-smear cross-source: train on one source, test on all cells of the other\n")
    print(head.replace("`evaluate --model DIR … --split test`", "`evaluate` on the other source"))
    for name, suffix, label in [("wbc-segwbc-hybrid", "-on-bccd", "segwbc-d1 → bccd"),
                                ("wbc-bccd-hybrid", "-on-segwbc", "bccd → segwbc-d1")]:
        res = _load(out, name, suffix)
        if res:
            print(_row(label, "train --arch hybrid_wide --epochs 60 --patience 15 --test-fraction 0 --seed 0", res))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [0.01, 0.03, 0.1, 0.3, 1.0]
    fig, ax = plt.subplots(figsize=(6, 4))
    print("\n### Data-volume curve (ifc-jurkat, test accuracy vs training fraction)\n")
    print("| model | " + " | ".join(f"{f:.0%}" for f in fractions) + " |\n|---|" + "---|" * len(fractions))
    for a in ["hybrid", "cnn", "knn", "svm"]:
        xs, ys = [], []
        for f in fractions:
            res = _load(out, f"jurkat-{a}" if f == 1.0 else f"vol-{a}-{f}")
            if res:
                xs.append(f * 100)
                ys.append(res[0]["accuracy"])
        print(f"| {a} | " + " | ".join(f"{y:.3f}" for y in ys) + " |")
        if xs:
            ax.plot(xs, ys, marker="o", label=a)
    ax.set_xscale("log")
    ax.set_xlabel("training-set fraction (%)")
    ax.set_ylabel("test accuracy (7 phases)")
    ax.set_title("ifc-jurkat-labelfree: accuracy vs training data")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "data_volume.png", dpi=120)
    fig.savefig(DOCS / "data_volume.svg")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
