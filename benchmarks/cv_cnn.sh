#!/usr/bin/env bash
# Full slice-CNN cross-validation, the pooled OOF metrics, and the final fit on all patients.
# Resumable: re-running skips finished folds (each fold resumes from its last.pt; a finished fold only
# re-writes its oof.csv).
#
#   nohup benchmarks/cv_cnn.sh [CONFIG] [OUT] > runs/cnn_ctich/train.log 2>&1 &
#   JOBS=2 nohup benchmarks/cv_cnn.sh configs/cnn_multi_256.yaml runs/cnn_multi_256 > train.log 2>&1 &
#
# CONFIG defaults to configs/cnn_ctich.yaml, OUT to runs/cnn_ctich. Needs the cache named in CONFIG
# (ichd preprocess ../shared/data/ct-ich --out cache/ctich-128 --size 128).
# JOBS=N (default 1) trains N chains of folds at once (chain j: folds j, j+N, ...; the last chain, which has
# the fewest folds, also runs the final fit); with the config's `threads: 1` two chains use both cores of a 2-core machine
# better than one process with 2 threads.
set -euo pipefail
CONFIG=${1:-configs/cnn_ctich.yaml}
OUT=${2:-runs/cnn_ctich}
JOBS=${JOBS:-1}
FOLDS=$(python -c "import sys; from ichd.training.config import load_cnn_config as l; print(l(sys.argv[1]).data.folds)" "$CONFIG")
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
start=$(date +%s)
echo "[cv_cnn] $(date -u +%FT%TZ) config=$CONFIG out=$OUT folds=$FOLDS jobs=$JOBS host=$(hostname) cpus=$(nproc)"
chain() {
  local j=$1
  for ((k = j; k < FOLDS; k += JOBS)); do
    echo "[cv_cnn] $(date -u +%FT%TZ) chain $j: fold $k"
    ichd -v train cnn --config "$CONFIG" --fold "$k" --out "$OUT"
  done
  if ((JOBS > 1 && j == JOBS - 1)); then   # the chain with the fewest folds also does the final fit
    echo "[cv_cnn] $(date -u +%FT%TZ) chain $j: final fit on all patients"
    ichd -v train cnn --config "$CONFIG" --fold all --out "$OUT"
  fi
}
pids=()
for ((j = 0; j < JOBS; j++)); do
  chain "$j" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
ichd train merge "$OUT"
cv_end=$(date +%s)
echo "[cv_cnn] $(date -u +%FT%TZ) cross-validation wall time $((cv_end - start)) s"
echo "[cv_cnn] $(date -u +%FT%TZ) final fit on all patients"
ichd -v train cnn --config "$CONFIG" --fold all --out "$OUT"   # already done (resumes as finished) when JOBS > 1
end=$(date +%s)
echo "[cv_cnn] $(date -u +%FT%TZ) done; final fit $((end - cv_end)) s, total $((end - start)) s"
