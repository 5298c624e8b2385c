"""Image-QC exclusions of valid cells, per site and class, under a model card's ``qc`` thresholds (docs/BENCHMARKS.md).

Every image of the three WBC sites is a curated single leukocyte (or PBC erythroblast/platelet), so every exclusion
is a valid cell thrown away. Prints a Markdown table and, with ``--json``, writes the numbers.

    python docs/make_wbc_manifest.py --out /tmp/wbc3/all/manifest.csv
    python docs/wbc_qc_table.py --model models/wbc-hybrid --manifest /tmp/wbc3/all/manifest.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def exclusions(model: Path, manifest: Path, *, every: dict[str, int]) -> dict[str, dict]:
    """``{site: {"n", "excluded", "reasons", "classes": {class: [n, excluded]}}}``; ``every[site]`` = k keeps every
    k-th cell of that site (1: all)."""
    from phenotyping.analysis.qc import QCConfig, check_images
    from phenotyping.training.data import load_rows, read_cell

    cfg = QCConfig.from_dict(json.loads((model / "model_card.json").read_text(encoding="utf-8"))["qc"])
    by_site: dict[str, list[dict]] = defaultdict(list)
    for r in load_rows(manifest):
        by_site[r["site"]].append(r)
    out = {}
    for site, rows in sorted(by_site.items()):
        rows = rows[::every.get(site, 1)]
        res = []
        for start in range(0, len(rows), 200):  # decode a few hundred at a time
            res += check_images([read_cell(r["path"]) for r in rows[start:start + 200]], cfg)
        classes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r, q in zip(rows, res):
            classes[r["cell_type"]][0] += 1
            classes[r["cell_type"]][1] += int(not q.passed)
        out[site] = {"n": len(rows), "excluded": sum(not q.passed for q in res),
                     "reasons": dict(Counter(q.code for q in res if q.code)), "classes": dict(sorted(classes.items()))}
    return out


def markdown(table: dict[str, dict]) -> str:
    classes = sorted({c for s in table.values() for c in s["classes"]})
    lines = ["| site | cells | excluded | reasons | " + " | ".join(classes) + " |",
             "|---|---:|---:|---|" + "---:|" * len(classes)]
    for site, s in table.items():
        cells = [f"{100 * s['classes'][c][1] / s['classes'][c][0]:.1f} % of {s['classes'][c][0]}"
                 if c in s["classes"] else "–" for c in classes]
        reasons = ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) or "none"
        lines.append(f"| {site} | {s['n']} | {100 * s['excluded'] / s['n']:.1f} % | {reasons} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--manifest", required=True, type=Path, help="from docs/make_wbc_manifest.py (has a site column)")
    p.add_argument("--pbc-every", type=int, default=1, help="keep every k-th PBC cell (PBC is large)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    table = exclusions(args.model, args.manifest, every={"pbc": args.pbc_every})
    print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
