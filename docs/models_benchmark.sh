#!/usr/bin/env bash
# Reproduces the "Models" section of docs/BENCHMARKS.md (2-core CPU, nice'd). Usage: bash docs/models_benchmark.sh OUTDIR
# Each run writes OUTDIR/<name>/ (model folder), OUTDIR/<name>.train.json / .log and OUTDIR/<name>.eval.json;
# wall times are in the card (training.wall_time_s) and OUTDIR/<name>.time.
set -euo pipefail
OUT=${1:?usage: models_benchmark.sh OUTDIR}
PY=".venv/bin/python"
D=../shared/data
J="$D/ifc-jurkat-labelfree/manifest.csv"
mkdir -p "$OUT"
run() {  # name, train args…  (skips runs already finished; a failed run is recorded in OUT/failed.txt, not fatal)
  local name=$1; shift
  [ -f "$OUT/$name.time" ] && return 0
  local t0=$(date +%s.%N)
  if nice -n 10 $PY -m phenotyping train "$@" --out "$OUT/$name" > "$OUT/$name.train.json" 2> "$OUT/$name.log"; then
    echo "$(date +%s.%N) - $t0" | bc > "$OUT/$name.time"
  else
    echo "$name: $(tail -1 "$OUT/$name.log")" >> "$OUT/failed.txt"
  fi
}
ev() {  # name, evaluate args…  (only for runs that trained)
  local name=$1; shift
  [ -f "$OUT/$name.time" ] || return 0
  nice -n 10 $PY -m phenotyping evaluate --model "$OUT/$name" "$@" > "$OUT/$name${EVSUFFIX:-}.eval.json"
}
JARGS=(--manifest "$J" --label-column phase --target-columns dna_content --channels brightfield,darkfield --seed 0)
WBC=(--classes neutrophil,lymphocyte,monocyte,eosinophil --label-column cell_type --seed 0)
BCCD=(--classes Neutrophil,Lymphocyte,Monocyte,Eosinophil --label-column cell_type --seed 0 --data-licence MIT)

# 1. wbc-smear cross-source (4 classes; basophils dropped: 1 and 3 cells)
run wbc-segwbc-hybrid --manifest "$D/wbc-smear/segwbc-d1/manifest.csv" "${WBC[@]}" --arch hybrid_wide --epochs 60 \
    --patience 15 --test-fraction 0
EVSUFFIX=-on-bccd ev wbc-segwbc-hybrid --manifest "$D/wbc-smear/bccd" --label-column cell_type --drop-unknown
run wbc-bccd-hybrid --manifest "$D/wbc-smear/bccd" "${BCCD[@]}" --arch hybrid_wide --epochs 60 --patience 15 \
    --test-fraction 0
EVSUFFIX=-on-segwbc ev wbc-bccd-hybrid --manifest "$D/wbc-smear/segwbc-d1/manifest.csv" --drop-unknown

# 2. ifc-jurkat-labelfree, every architecture; test split = 15 % stratified hold-out written by train
for a in hybrid hybrid_wide cnn knn svm vit_small; do
  run "jurkat-$a" "${JARGS[@]}" --arch "$a" --epochs 40 --patience 10; ev "jurkat-$a" --manifest "$J" --split test
done

# 3. data-volume curve on ifc-jurkat (same split; training-set fraction varies)
for f in 0.01 0.03 0.1 0.3 1.0; do
  for a in hybrid cnn knn svm; do
    [ "$f" = "1.0" ] && continue   # 100 % = the runs of section 2
    run "vol-$a-$f" "${JARGS[@]}" --arch "$a" --epochs 30 --patience 8 --fraction "$f"
    ev "vol-$a-$f" --manifest "$J" --split test
  done
done

# 4. the slow ones last: resnet18, and the published stand-in (~0.58 G multiply-adds per cell: 5 epochs)
run jurkat-resnet18 "${JARGS[@]}" --arch resnet18 --epochs 25 --patience 6; ev jurkat-resnet18 --manifest "$J" --split test
run jurkat-published_standin "${JARGS[@]}" --arch published_standin --img-size 28 --epochs 5 --patience 3
ev jurkat-published_standin --manifest "$J" --split test
# the stand-in again with four times the budget (about 23 min), so that "equal or better accuracy" is not won by
# under-training it
run jurkat-published_standin-20ep "${JARGS[@]}" --arch published_standin --img-size 28 --epochs 20 --patience 5
ev jurkat-published_standin-20ep --manifest "$J" --split test

# 5. a longer budget: the 40-epoch hybrid was still improving at epoch 31 of 40. Hybrid and cnn with 100 epochs
#    (patience 25) and each multi-task weighting, plus one learning rate; the shipped models/jurkat-hybrid is the run
#    with the best validation accuracy (jurkat-hybrid-e100-fixed, retrained with --out models/jurkat-hybrid)
for a in hybrid cnn; do
  for loss in uncertainty fixed; do
    run "jurkat-$a-e100-$loss" "${JARGS[@]}" --arch "$a" --epochs 100 --patience 25 --loss "$loss"
    ev "jurkat-$a-e100-$loss" --manifest "$J" --split test
  done
done
run jurkat-hybrid-e100-lr4 "${JARGS[@]}" --arch hybrid --epochs 100 --patience 25 --lr 0.004
ev jurkat-hybrid-e100-lr4 --manifest "$J" --split test
