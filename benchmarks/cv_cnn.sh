#!/usr/bin/env bash
# Full slice-CNN cross-validation on CT-ICH, then the pooled OOF metrics, then the final fit on all patients.
# Resumable: re-running skips finished folds (each fold resumes from its last.pt; a finished fold only
# re-writes its oof.csv).
#
#   nohup benchmarks/cv_cnn.sh [CONFIG] [OUT] > runs/cnn_ctich/train.log 2>&1 &
#
# CONFIG defaults to configs/cnn_ctich.yaml, OUT to runs/cnn_ctich. Needs the cache named in CONFIG
# (ichd preprocess ../shared/data/ct-ich --out cache/ctich-128 --size 128).
set -euo pipefail
CONFIG=${1:-configs/cnn_ctich.yaml}
OUT=${2:-runs/cnn_ctich}
FOLDS=$(python -c "import sys; from ichd.training.config import load_cnn_config as l; print(l(sys.argv[1]).data.folds)" "$CONFIG")
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
start=$(date +%s)
echo "[cv_cnn] $(date -u +%FT%TZ) config=$CONFIG out=$OUT folds=$FOLDS host=$(hostname) cpus=$(nproc)"
for ((k = 0; k < FOLDS; k++)); do
  echo "[cv_cnn] $(date -u +%FT%TZ) fold $k"
  ichd -v train cnn --config "$CONFIG" --fold "$k" --out "$OUT"
done
ichd train merge "$OUT"
cv_end=$(date +%s)
echo "[cv_cnn] $(date -u +%FT%TZ) cross-validation wall time $((cv_end - start)) s"
echo "[cv_cnn] $(date -u +%FT%TZ) final fit on all patients"
ichd -v train cnn --config "$CONFIG" --fold all --out "$OUT"
end=$(date +%s)
echo "[cv_cnn] $(date -u +%FT%TZ) done; final fit $((end - cv_end)) s, total $((end - start)) s"
