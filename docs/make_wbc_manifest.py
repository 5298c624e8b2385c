"""Write the three-site WBC training manifest (segwbc-d1, bccd, PBC) that models/wbc-hybrid was trained on.

The manifest references the images under ``../shared/data`` and copies nothing: beside it the script makes one symbolic
link per site (``<out folder>/<site>`` → the site's folder), and each ``path`` is relative to the manifest through that
link (manifests may not point outside their folder). Write it outside the repository (the data must not be copied
into the project). Columns: ``cell_id`` (``<site>-…``, unique), ``path``,
``cell_type`` (lower case; BCCD's folder names mapped onto the PBC names), ``site``. ``--without SITE`` leaves a site
out (leave-one-site-out runs); ``--only SITE`` keeps one (to evaluate on it).

    python docs/make_wbc_manifest.py --out /tmp/wbc3/manifest.csv
    python -m phenotyping train --manifest /tmp/wbc3/manifest.csv ... --data-licence "$(python docs/make_wbc_manifest.py --attribution)"
    python docs/make_wbc_manifest.py --out /tmp/wbc3/no-bccd.csv --without bccd
    python docs/make_wbc_manifest.py --out /tmp/wbc3/bccd.csv --only bccd
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITES = {
    "segwbc-d1": "wbc-smear/segwbc-d1/manifest.csv",
    "bccd": "wbc-smear/bccd",
    "pbc": "wbc-pbc/manifest.csv",
}
#: The data licences and attribution a model trained on the manifest must carry (``train --data-licence``).
ATTRIBUTION = (
    "GPL-3.0 (segwbc-d1: zxaoyou/segmentation_WBC, images from Jiangxi Tecom Science Corporation; Zheng et al. 2018, "
    "Micron 107:55); MIT (bccd: apple2373/BCCD, derived from the BCCD data set); CC-BY-4.0 (PBC: Acevedo A, Merino A, "
    "Alférez S, Molina Á, Boldú L, Rodellar J. A dataset of microscopic peripheral blood cell images for development "
    "of automatic recognition systems. Data in Brief 30 (2020) 105474, Mendeley Data; CellaVision DM96, Hospital "
    "Clinic of Barcelona; used under CC BY 4.0, attribution required)")
#: Class names used by the model: PBC's, lower case. BCCD's ImageFolder names map onto them.
NAMES = {"neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte", "ig", "erythroblast", "platelet"}


def site_rows(site: str, data: Path) -> list[dict[str, str]]:
    """The rows of one site with ``cell_id``, ``path`` (``<site>/…`` through the site's link), lower-case
    ``cell_type`` and ``site``."""
    src = data / SITES[site]
    folder = src if src.is_dir() else src.parent
    if not src.exists():
        raise FileNotFoundError(f"{src} not found: the {site} images are expected under {data}")
    out = []
    if src.is_dir():  # ImageFolder layout: folder = class
        for d in sorted(x for x in src.iterdir() if x.is_dir()):
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
                    out.append({"cell_id": f"{site}-{d.name}/{f.name}", "path": f"{site}/{f.relative_to(folder).as_posix()}",
                                "cell_type": d.name.lower(), "site": site})
    else:
        with src.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                cid = r["cell_id"] if r["cell_id"].startswith(site) else f"{site}-{r['cell_id']}"
                out.append({"cell_id": cid, "path": f"{site}/{r['path']}",
                            "cell_type": r["cell_type"].strip().lower(), "site": site})
    unknown = sorted({r["cell_type"] for r in out} - NAMES)
    if unknown:
        raise ValueError(f"{src}: class name(s) {unknown} are not among {sorted(NAMES)}; add a mapping")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attribution", action="store_true", help="print the licence/attribution text and exit")
    p.add_argument("--out", type=Path, help="manifest.csv to write (outside the repository)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    p.add_argument("--without", action="append", default=[], choices=sorted(SITES), help="leave this site out")
    p.add_argument("--only", action="append", default=[], choices=sorted(SITES), help="keep only this site")
    p.add_argument("--min-class-cells", type=int, default=5,
                   help="drop classes with fewer cells than this over the chosen sites (BCCD's 3 basophils alone)")
    args = p.parse_args(argv)
    if args.attribution:
        print(ATTRIBUTION)
        return 0
    if args.out is None:
        p.error("--out is required")
    sites = [s for s in (args.only or SITES) if s not in args.without]
    rows = [r for s in sites for r in site_rows(s, args.data.resolve())]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["cell_type"]] = counts.get(r["cell_type"], 0) + 1
    rows = [r for r in rows if counts[r["cell_type"]] >= args.min_class_cells]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for s in sites:
        link, src = args.out.parent / s, args.data.resolve() / SITES[s]
        target = src if src.is_dir() else src.parent
        if link.is_symlink() and link.resolve() != target.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["cell_id", "path", "cell_type", "site"])
        w.writeheader()
        w.writerows(rows)
    print(f"{args.out}: {len(rows)} cells from {', '.join(sites)}; {dict(sorted(counts.items()))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
