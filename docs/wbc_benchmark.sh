#!/usr/bin/env bash
# Reproduces "WBC across three sites" in docs/BENCHMARKS.md and the shipped models/wbc-hybrid (2-core CPU, nice'd).
# Usage: bash docs/wbc_benchmark.sh WORKDIR      (WORKDIR outside the repository: it gets links to ../shared/data)
# Writes WORKDIR/{all,nobccd,noseg,bccd,seg}/manifest.csv, the model folders WORKDIR/runs/<name>/ with their
# train JSON and logs, and the per-site evaluations WORKDIR/runs/<name>.<what>.json.
set -euo pipefail
W=${1:?usage: wbc_benchmark.sh WORKDIR}
PY=".venv/bin/python"
M="docs/make_wbc_manifest.py"
mkdir -p "$W/runs"
$PY $M --out "$W/all/manifest.csv"
$PY $M --out "$W/nobccd/manifest.csv" --without bccd
$PY $M --out "$W/noseg/manifest.csv" --without segwbc-d1
$PY $M --out "$W/bccd/manifest.csv" --only bccd
$PY $M --out "$W/seg/manifest.csv" --only segwbc-d1
ATTR="$($PY $M --attribution)"
COMMON=(--label-column cell_type --arch hybrid --img-size 96 --epochs 30 --patience 10 --normalisation per-image
        --augment-appearance --crop nucleus --seed 0 --data-licence "$ATTR")
train() {  # name, manifest, extra args…  (skips a run already written)
  local name=$1 manifest=$2; shift 2
  [ -f "$W/runs/$name/model_card.json" ] && return 0
  nice -n 5 $PY -m phenotyping train --manifest "$manifest" "${COMMON[@]}" "$@" --out "$W/runs/$name" \
    > "$W/runs/$name.json" 2> "$W/runs/$name.log"
}
sites() {  # name, manifest, split, out suffix, extra args…
  local name=$1 manifest=$2 split=$3 what=$4; shift 4
  nice -n 5 $PY docs/wbc_site_eval.py --model "$W/runs/$name" --manifest "$manifest" --split "$split" "$@" \
    > "$W/runs/$name.$what.json"
}

# 1. all three sites: 70/15/15 split stratified by class; test split per site, plain and with dihedral TTA
train all-hybrid "$W/all/manifest.csv"
# image-QC thresholds from every site's training cells (each threshold the smallest per-site 1st percentile)
$PY -m phenotyping calibrate --model "$W/runs/all-hybrid" --manifest "$W/all/manifest.csv" --qc-group-column site \
  > "$W/runs/all-hybrid.calibrate.json"
sites all-hybrid "$W/all/manifest.csv" test sites-test
sites all-hybrid "$W/all/manifest.csv" test sites-test-tta --tta dihedral

# 2. leave one site out: train on the other two (85/15 train/validation), score every cell of the left-out site
train nobccd-hybrid "$W/nobccd/manifest.csv" --test-fraction 0
sites nobccd-hybrid "$W/bccd/manifest.csv" all on-bccd
sites nobccd-hybrid "$W/bccd/manifest.csv" all on-bccd-tta --tta dihedral
train noseg-hybrid "$W/noseg/manifest.csv" --test-fraction 0
sites noseg-hybrid "$W/seg/manifest.csv" all on-seg
sites noseg-hybrid "$W/seg/manifest.csv" all on-seg-tta --tta dihedral

# 3. the domain check of each leave-one-site-out model on its left-out site (predict prints "domain_check")
D=../shared/data
nice -n 5 $PY -m phenotyping predict --model "$W/runs/nobccd-hybrid" --manifest "$D/wbc-smear/bccd" \
  --bootstrap 0 --out "$W/runs/nobccd-hybrid.on-bccd.cells.csv" > "$W/runs/nobccd-hybrid.on-bccd.predict.json"
nice -n 5 $PY -m phenotyping predict --model "$W/runs/noseg-hybrid" --manifest "$D/wbc-smear/segwbc-d1/manifest.csv" \
  --bootstrap 0 --out "$W/runs/noseg-hybrid.on-seg.cells.csv" > "$W/runs/noseg-hybrid.on-seg.predict.json"
# ... and on copies of each model's own validation cells per site (up to 200; predict refuses paths that leave the
# manifest's folder, so the cells are copied into WORKDIR/subs/<model>-<site>-val)
own_val() {  # model name, its manifest
  local name=$1 manifest=$2
  for site in $($PY -c "import csv,sys; print(' '.join(sorted({r['site'] for r in csv.DictReader(open(sys.argv[1]))})))" "$manifest"); do
    local d="$W/subs/$name-$site-val"
    $PY - "$manifest" "$W/runs/$name/split.csv" "$site" "$d" <<'PY'
import csv, shutil, os, sys
from pathlib import Path
manifest, split_csv, site, out = sys.argv[1:5]
split = {r["cell_id"]: r["split"] for r in csv.DictReader(open(split_csv))}
rows = [r for r in csv.DictReader(open(manifest)) if r["site"] == site and split.get(r["cell_id"]) == "val"][:200]
Path(out).mkdir(parents=True, exist_ok=True)
with open(Path(out) / "manifest.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["cell_id", "path", "cell_type"])
    for i, r in enumerate(rows):
        dest = f"{i:04d}{Path(r['path']).suffix}"
        shutil.copyfile(os.path.realpath(Path(manifest).parent / r["path"]), Path(out) / dest)
        w.writerow([r["cell_id"], dest, r["cell_type"]])
PY
    nice -n 5 $PY -m phenotyping predict --model "$W/runs/$name" --manifest "$d/manifest.csv" --bootstrap 0 \
      --out "$d/cells.csv" > "$W/runs/$name.own-$site-val.predict.json"
  done
}
own_val all-hybrid "$W/all/manifest.csv"
own_val nobccd-hybrid "$W/nobccd/manifest.csv"
own_val noseg-hybrid "$W/noseg/manifest.csv"

# 4. ablations. The bccd-left-out run without the nucleus crop (full frames fitted to 64 px) and with it, both at
# the 64-px input of the model shipped until 2026-12-03; and the all-sites run at 64 px and with hybrid_wide at 64 px
train nobccd-nocrop "$W/nobccd/manifest.csv" --test-fraction 0 --crop none --img-size 64 --patience 8
sites nobccd-nocrop "$W/bccd/manifest.csv" all on-bccd
train nobccd-hybrid64 "$W/nobccd/manifest.csv" --test-fraction 0 --img-size 64 --patience 8
sites nobccd-hybrid64 "$W/bccd/manifest.csv" all on-bccd
train all-hybrid64 "$W/all/manifest.csv" --img-size 64 --patience 8
sites all-hybrid64 "$W/all/manifest.csv" test sites-test
train all-wide64 "$W/all/manifest.csv" --img-size 64 --arch hybrid_wide --epochs 40
sites all-wide64 "$W/all/manifest.csv" test sites-test
