#!/usr/bin/env bash
# `ichd evaluate` of a CV run's pooled OOF predictions as the bundles' model cards use it: pooled (with the other
# CV repeats' OOF files, RUN/r1.. , as --repeat), then per source (ct-ich, rsna-series) with the pooled
# thresholds. Used by benchmarks/frozen_default.sh and benchmarks/frozen_windowed.sh.
#   benchmarks/evaluate_oof.sh RUN EVAL      -> EVAL/, EVAL_ct-ich/, EVAL_rsna-series/
set -euo pipefail
RUN=${1:?usage: benchmarks/evaluate_oof.sh RUN EVAL}
EVAL=${2:?usage: benchmarks/evaluate_oof.sh RUN EVAL}
DATA=${ICHD_DATA:-../shared/data}
L1=$DATA/ct-ich/labels.csv
L2=$DATA/rsna-series/labels.csv
export NO_ALBUMENTATIONS_UPDATE=1
repeats=()
for r in "$RUN"/r[1-9]*/oof.csv; do [ -f "$r" ] && repeats+=(--repeat "$r"); done
ichd evaluate "$RUN/oof.csv" "$L1" "$L2" --partial-scans ${repeats[@]+"${repeats[@]}"} --out "$EVAL" \
    --sensitivity 0.95 --bootstrap 1000 --seed 0 --overwrite
for src in ct-ich rsna-series; do
  ichd evaluate "$RUN/oof.csv" "$L1" "$L2" --partial-scans --source "$src" --thresholds-from "$EVAL/thresholds.json" \
      --out "${EVAL}_$src" --sensitivity 0.95 --bootstrap 1000 --seed 0 --overwrite
done
