#!/usr/bin/env bash
# The method comparison (issue 13): every experiment of configs/experiments/ on the same data (CT-ICH +
# rsna-series), the default model's patient folds and the same evaluation, then one Markdown table with each
# paper's own published numbers in a separate column.
#
#   nohup benchmarks/compare_methods.sh > runs/compare.log 2>&1 &
#   JOBS=2 PROFILE=cpu OUT=runs/compare benchmarks/compare_methods.sh            # the defaults
#   EXPERIMENTS="lrcn_pca_logreg radnet_densenet_bilstm" benchmarks/compare_methods.sh   # a subset
#   PROFILE=none benchmarks/compare_methods.sh     # the papers' own settings (256 px, their epochs: days on a CPU)
#
# PROFILE=cpu (default) applies each experiment's `profiles.cpu` block: 128 px, fewer epochs or draws for the big
# networks; what ran is recorded in each OUT/NAME/experiment.yaml and summary.json and printed in the table.
# JOBS=N experiments run at once (each uses one torch thread: `threads: 1`), cheapest first. Resumable: re-running
# resumes unfinished CNN folds from their last.pt (finished folds are only re-validated). A failed experiment is
# logged in OUT/failed.txt and the others go on. Needs $ICHD_DATA (default ../shared/data).
# Output: OUT/NAME/ (one `ichd experiments run` folder each), OUT/NAME.log, OUT/comparison.md.
#
# Estimated CPU time with PROFILE=cpu (one torch thread; from the real pipeline's ms per training / predicted slice,
# measured with `ichd experiments run NAME --profile cpu --max-steps 3 --folds 0` on the 2-core development VM):
#   lrcn_pca_logreg, lrcn_pca_rf 3 min each; progressive_custom_cnn 0.35 h; default_lite0 0.5 h;
#   progressive_resnet18 1.0 h; burduja_effnet_b4 1.1 h; radnet_densenet_bilstm 1.3 h; danilov_seresnext50_tta 1.5 h;
#   progressive_resnet50 1.7 h; burduja_resnext101 2.0 h; lrcn_vgg19_bilstm 2.1 h; jpg_vs_dicom_* 2.4 h each.
#   In all ~16.5 CPU hours: ~8.5-9 h wall with JOBS=2 on 2 cores.
set -uo pipefail
DATA=${ICHD_DATA:-../shared/data}
OUT=${OUT:-runs/compare}
JOBS=${JOBS:-2}
PROFILE=${PROFILE:-cpu}
FOLDS=${FOLDS:-}   # e.g. FOLDS=0: train only these CV folds (comma-separated; default all)
# Cheapest first, so the table fills early (estimates above).
DEFAULT_ORDER="lrcn_pca_logreg lrcn_pca_rf progressive_custom_cnn default_lite0 radnet_densenet_bilstm
progressive_resnet18 burduja_effnet_b4 danilov_seresnext50_tta progressive_resnet50 jpg_vs_dicom_rsna_dicom
jpg_vs_dicom_ctich_jpg lrcn_vgg19_bilstm burduja_resnext101"
EXPERIMENTS=${EXPERIMENTS:-$DEFAULT_ORDER}
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
echo "[compare] $(date -u +%FT%TZ) profile=$PROFILE folds=${FOLDS:-all} jobs=$JOBS out=$OUT host=$(hostname) cpus=$(nproc)"

# The caches the rows read (the same slices; the cpu profile uses 128 px only; `ichd preprocess` skips what is
# already cached).
sizes="128 256"
if [[ "$PROFILE" == "cpu" ]]; then sizes="128"; fi
for size in $sizes; do
  echo "[compare] $(date -u +%FT%TZ) cache/multi-$size"
  ichd preprocess "$DATA/ct-ich" "$DATA/rsna-series/dicom" --out "cache/multi-$size" --size "$size" \
      --normalization half || exit 1
done

profile_args=()
if [[ "$PROFILE" != "none" ]]; then profile_args=(--profile "$PROFILE"); fi
if [[ -n "$FOLDS" ]]; then profile_args+=(--folds "$FOLDS"); fi
run_one() {
  local name=$1
  local start; start=$(date +%s)
  echo "[compare] $(date -u +%FT%TZ) start $name"
  if ichd -v experiments run "$name" "${profile_args[@]}" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; then
    echo "[compare] $(date -u +%FT%TZ) done $name in $(( $(date +%s) - start )) s"
  else
    echo "$name" >> "$OUT/failed.txt"
    echo "[compare] $(date -u +%FT%TZ) FAILED $name after $(( $(date +%s) - start )) s (see $OUT/$name.log)"
  fi
}
export -f run_one
export OUT
export PROFILE_ARGS="${profile_args[*]}"
# shellcheck disable=SC2016
printf '%s\n' $EXPERIMENTS | xargs -P "$JOBS" -I{} bash -c 'profile_args=($PROFILE_ARGS); run_one "$@"' _ {}

runs=()
for name in $EXPERIMENTS; do
  if [[ -f "$OUT/$name/summary.json" ]]; then runs+=("$OUT/$name"); fi
done
if ((${#runs[@]})); then
  ichd experiments compare "${runs[@]}" --out "$OUT/comparison.md"
fi
echo "[compare] $(date -u +%FT%TZ) finished: ${#runs[@]} experiment(s) in $OUT/comparison.md"
if [[ -f "$OUT/failed.txt" ]]; then echo "[compare] failed: $(tr '\n' ' ' < "$OUT/failed.txt")"; exit 1; fi
