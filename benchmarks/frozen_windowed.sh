#!/usr/bin/env bash
# The windowed-image variant of the default model (issue 20 item 6), bundled as ctich-rsna-frozen-lite0-windowed
# with alias default-windowed: `ichd predict --window L,W` (and explain) use it for PNG/JPG slices when no other
# --model is given (ichd.models.bundled.model_for_input).
#   ichd preprocess $ICHD_DATA/ct-ich $ICHD_DATA/rsna-series/dicom --out cache/multi-256-win40_80 --size 256 \
#       --normalization half --simulate-window 40,80
#   ichd train frozen --config configs/frozen_windowed.yaml                          # ~14 min at load ~6
#   ichd train lesion-map --cnn runs/frozen_windowed/final/cnn.pt --out runs/lesion_map_windowed --no-lopo
#   benchmarks/frozen_windowed.sh
#   python benchmarks/windowed_png.py --run runs/frozen_windowed --out benchmarks/results/windowed_png_winaug
set -euo pipefail
RUN=${RUN:-runs/frozen_windowed}
EVAL=${EVAL:-runs/eval_frozen_windowed}
CNN=${CNN:-runs/lesion_map_windowed/cnn.pt}
export NO_ALBUMENTATIONS_UPDATE=1
benchmarks/evaluate_oof.sh "$RUN" "$EVAL"   # frozen_windowed has one repeat: no --repeat files
python scripts/build_bundle.py --cnn "$CNN" --seq "$RUN/final/sequence.pt" --evaluation "$EVAL" \
    --name ctich-rsna-frozen-lite0-windowed --version 3.1.0 --alias default-windowed \
    --training-source ct-ich:all --training-source rsna-series:all --training-cache cache/multi-256 \
    --source-evaluation "ct-ich=${EVAL}_ct-ich" --source-evaluation "rsna-series=${EVAL}_rsna-series" \
    --training "data=ichd preprocess \$ICHD_DATA/ct-ich \$ICHD_DATA/rsna-series/dicom --out cache/multi-256 --size 256 --normalization half, and the same with --simulate-window 40,80 --out cache/multi-256-win40_80 (every slice reduced to an 8-bit brain window, as a brain-window PNG export keeps it)" \
    --training "model=ichd train frozen --config configs/frozen_windowed.yaml: the default model's recipe (frozen ImageNet Lite0, linear head over the slice and 2 neighbours each side, Platt-calibrated per fold on an inner patient CV) with the brain-window rendering of every training slice added to the training rows (data.augment_caches); held-out predictions and calibration on the DICOM-HU cache; 5-fold patient CV, 1 repeat (the 2.0.0 folds); OOF predictions $RUN/oof.csv" \
    --training "evaluation=benchmarks/frozen_windowed.sh (ichd evaluate, pooled and per source with the pooled thresholds); brain-window PNG exports of rsna-series out of fold: benchmarks/windowed_png.py" \
    --training "evidence map=ichd train lesion-map --cnn $RUN/final/cnn.pt --no-lopo: the default model's lesion map head refitted on this model (same frozen encoder)" \
    --limit "For windowed PNG/JPG slices (ichd predict --window). On rsna-series exported as 8-bit brain-window PNGs (40/80 and 40/100 at 224 and 512 px) its out-of-fold slice any-AUC is 0.694-0.727 against 0.661-0.680 for the default model, still 0.07-0.10 below the same series as DICOM (benchmarks/windowed_png.py): give DICOM when you can." \
    --limit "On DICOM it is slightly worse than the default model (rsna-series out-of-fold slice any-AUC 0.793 vs 0.808 through ichd predict), which is why it is used only for windowed images." \
    --limit "Its real-DICOM numbers rest on 6 bleeding rsna-series series, with wide intervals; subtypes are weak (docs/results.md, 'Frozen encoders and the default model 3.0.0')." \
    "$@"
