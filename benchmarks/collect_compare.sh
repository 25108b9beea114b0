#!/usr/bin/env bash
# Copy finished comparison runs (those with summary.json) from runs/compare into benchmarks/results/compare for
# committing: summaries, configs, OOF predictions, metrics, evaluations and logs; model weights (*.pt, *.joblib)
# and embeddings (*.npy, *.npz) stay behind.
#   benchmarks/collect_compare.sh [RUNS_DIR] [DEST]
set -euo pipefail
SRC=${1:-runs/compare}
DEST=${2:-benchmarks/results/compare}
mkdir -p "$DEST"
for run in "$SRC"/*/; do
  name=$(basename "$run")
  [[ -f "$run/summary.json" ]] || continue
  mkdir -p "$DEST/$name"
  tar -C "$run" --exclude='*.pt' --exclude='*.joblib' --exclude='*.npy' --exclude='*.npz' -cf - . \
    | tar -C "$DEST/$name" -xf -
  if [[ -f "$SRC/$name.log" ]]; then cp "$SRC/$name.log" "$DEST/"; fi
  echo "collected $name"
done
