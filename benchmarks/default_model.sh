#!/usr/bin/env bash
# Default model 2.0.0 from its cross-validation run: pooled and per-source OOF evaluation (95% patient-bootstrap
# CIs; thresholds chosen on the pooled OOF predictions), then the bundle (src/ichd/resources/models/NAME) with
# its model card. Needs the finished CV + final fit of configs/cnn_multi_256.yaml:
#
#   JOBS=2 benchmarks/cv_cnn.sh configs/cnn_multi_256.yaml runs/cnn_multi_256
#   benchmarks/default_model.sh [RUN] [EVAL_PREFIX]          # defaults: runs/cnn_multi_256 runs/eval_multi_256
set -euo pipefail
RUN=${1:-runs/cnn_multi_256}
EVAL=${2:-runs/eval_multi_256}
DATA=${ICHD_DATA:-../shared/data}
NAME=ctich-rsna-effnetlite0
VERSION=2.0.0
L1=$DATA/ct-ich/labels.csv
L2=$DATA/rsna-series/labels.csv
export NO_ALBUMENTATIONS_UPDATE=1
ichd evaluate "$RUN/oof.csv" "$L1" "$L2" --partial-scans --out "$EVAL" --sensitivity 0.95 --bootstrap 1000 --seed 0 --overwrite
for src in ct-ich rsna-series; do
  ichd evaluate "$RUN/oof.csv" "$L1" "$L2" --partial-scans --source "$src" --thresholds-from "$EVAL/thresholds.json" \
      --out "${EVAL}_$src" --sensitivity 0.95 --bootstrap 1000 --seed 0 --overwrite
done
python scripts/build_bundle.py --cnn "$RUN/foldall/final.pt" --evaluation "$EVAL" --name "$NAME" --version "$VERSION" \
    --training-source ct-ich:all --training-source rsna-series:all \
    --source-evaluation "ct-ich=${EVAL}_ct-ich" --source-evaluation "rsna-series=${EVAL}_rsna-series" \
    --training "data=ichd preprocess \$ICHD_DATA/ct-ich \$ICHD_DATA/rsna-series/dicom --out cache/multi-256 --size 256 --normalization half (3177 slices: 2501 CT-ICH + 676 rsna-series; 8 duplicate-position rsna-series slices dropped by ingest)" \
    --training "CNN=JOBS=2 benchmarks/cv_cnn.sh configs/cnn_multi_256.yaml $RUN: 5-fold patient CV (folds stratified by subtype, source and source x any) + final fit on all 102 patients; EfficientNet-Lite0 from ImageNet weights at 256 px, 4 epochs x 1280 drawn slices (40 % rsna-series, 30 % any-positive within each source), lr 3e-4/1e-4/3e-5/1e-5, domain augmentation in HU (gain/offset, noise, blur/sharpen, CT-ICH JPG round trip); OOF predictions $RUN/oof.csv" \
    --training "evaluation=benchmarks/default_model.sh $RUN $EVAL (ichd evaluate, pooled and --source per source with the pooled thresholds)" \
    --training "sequence stage=see docs/results.md, 'Sequence model ablation on the 2.0.0 CNN'" \
    --training "bundle=benchmarks/default_model.sh $RUN $EVAL" \
    --limit "**Misses most hemorrhage on held-out real DICOM** (benchmarks/real_dicom.py, docs/results.md): on the 10 RSNA sample slices (no overlap with rsna-series) it calls 1 of the 7 bleeds positive at the shipped threshold, and it calls the probably contrast-enhanced CQ500-CT-0 series (readers: no ICH) positive. Cross-validated on the 20 rsna-series patients its slice any-AUC is 0.695 — below a logistic regression on frozen ImageNet features trained on CT-ICH alone (0.819). Do not rely on it for real scanner DICOM."
