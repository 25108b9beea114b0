#!/usr/bin/env bash
# Default model (3.0.0; 3.2.0 = context head l2 0.2; 3.3.0 = + the scan's mean embedding, l2 0.5) (issue 20): a frozen
# ImageNet encoder + neighbour- and scan-context head, from its repeated patient CV.
# 1. the run (configs/frozen_default.yaml; embeddings cached, ~7 min per encoder on 2 cores, heads ~10 min):
#      ichd train frozen --config configs/frozen_default.yaml
# 2. this script: `ichd evaluate` on repeat 0's OOF predictions with the other repeats (--repeat), pooled and per
#    source (the per-source evaluations use the pooled thresholds), then the bundle with its model card.
#      benchmarks/frozen_default.sh [RUN] [EVAL_PREFIX] [build_bundle.py options]
#      (defaults: runs/frozen_default runs/eval_frozen_default)
# 3.1.0 and later add the lesion map head (issue 22) to the same final model, fitted on the 26 masked hu-slices:
#      ichd train lesion-map --cnn runs/frozen_default/final/cnn.pt --out runs/lesion_map
#      CNN=runs/lesion_map/cnn.pt benchmarks/frozen_default.sh
# (CNN unset: the final model without a lesion head, whose maps are Grad-CAM.)
set -euo pipefail
RUN=${1:-runs/frozen_default}
EVAL=${2:-runs/eval_frozen_default}
shift $(( $# > 2 ? 2 : $# ))   # further arguments go to scripts/build_bundle.py (e.g. --limit TEXT)
NAME=${NAME:-ctich-rsna-frozen-lite0}
VERSION=${VERSION:-3.3.0}
CNN=${CNN:-$RUN/final/cnn.pt}
export NO_ALBUMENTATIONS_UPDATE=1
benchmarks/evaluate_oof.sh "$RUN" "$EVAL"
python scripts/build_bundle.py --cnn "$CNN" --seq "$RUN/final/sequence.pt" --evaluation "$EVAL" \
    --name "$NAME" --version "$VERSION" \
    --training-source ct-ich:all --training-source rsna-series:all --training-cache cache/multi-256 \
    --source-evaluation "ct-ich=${EVAL}_ct-ich" --source-evaluation "rsna-series=${EVAL}_rsna-series" \
    --training "data=ichd preprocess \$ICHD_DATA/ct-ich \$ICHD_DATA/rsna-series/dicom --out cache/multi-256 --size 256 --normalization half (3177 slices: 2501 CT-ICH + 676 rsna-series)" \
    --training "model=ichd train frozen --config configs/frozen_default.yaml: frozen ImageNet encoder (no fine-tuning); slice head and context head (the slice, its neighbours' mean and the scan's mean embedding; a one-slice input gets the training scans' mean) fitted on the cached embeddings with the RSNA weighted log loss + L2, each calibrated (Platt) on an inner patient CV of its training folds; 5-fold patient CV repeated with 3 fold seeds (repeat 0 = the 2.0.0 folds); OOF predictions $RUN/r*/oof.csv" \
    --training "selection=benchmarks/frozen_sweep.py (docs/results.md, 'Frozen encoders (issue 20)'): chosen on the pooled and per-fold OOF slice any-AUC of rsna-series and CT-ICH; later changes (3.2.0 L2, 3.3.0 scan mean) by the same 3-repeat rule (docs/results.md, 'How the default is chosen')" \
    --training "evaluation=benchmarks/frozen_default.sh $RUN $EVAL (ichd evaluate with --repeat, pooled and --source per source with the pooled thresholds)" \
    --training "evidence map=ichd train lesion-map --cnn $RUN/final/cnn.pt --out runs/lesion_map: a per-pixel logistic regression over the frozen encoder's maps at blocks 2, 4, 10 and the input windows on a 64 x 64 grid, fitted on the 26 masked hu-slices (16 CT-ICH patients); pointing game 77 % [60, 92] out of sample (leave one patient out; Grad-CAM 8 %), benchmarks/evidence_maps.py" \
    --limit "Its real-DICOM numbers rest on 6 bleeding rsna-series series: out-of-fold slice any-AUC 0.79-0.85 over three CV fold seeds, scan any-AUC 0.60-0.66, with wide intervals (docs/results.md, 'Frozen encoders and the default model')." \
    --limit "On real DICOM never trained on (benchmarks/real_dicom.py): 6 of the 7 RSNA sample bleeds called at the single-slice operating point, 1 of 3 negatives flagged; the contrast-enhanced CQ500-CT-0 (readers: no ICH) scores p(any) 0.54 and is kept from a positive call only by the contrast guard (not assessable)." \
    --limit "Brain-window PNG/JPG input loses 0.12-0.15 slice any-AUC with this model against the same series as DICOM (benchmarks/windowed_png.py); ichd predict --window therefore uses the windowed-image variant (ctich-rsna-frozen-lite0-windowed, alias default-windowed), which loses 0.07-0.10: give DICOM when you can." \
    --limit "The evidence map (lesion map) was fitted and measured on 26 masked slices of 16 CT-ICH patients only (out of sample: pointing game 77 %, 95 % CI 60-92 %, against 65 % for a plain 40-70 HU intensity rule); its localisation on other scanners is unmeasured, and it is the same map for every subtype." \
    --limit "Subtypes are weak: slice AUC near chance for subarachnoid and intraventricular hemorrhage; 6 of 20 rsna-series scans get a subtype their labels lack at the shipped thresholds." \
    "$@"
