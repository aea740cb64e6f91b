#!/usr/bin/env bash
# The figures of the demo model's card (models/README.md), on CPU (about 3 hours on 2 cores).
# Usage: models/evaluate_demo.sh [WORK_DIR]   (after models/train_demo.sh; needs ../shared/data)
#   1. the default score threshold, chosen on the simulated validation split (written into
#      models/ctlesion_demo_sim.json as "operating_point", which `ctlesion detect` uses);
#   (a) FROC on the simulated test split            -> models/ctlesion_demo_sim_eval/
#   (b) FROC on the real DeepLesion key slices of ../shared/data/deeplesion_sample not used in
#       training (8 patients)                        -> models/ctlesion_demo_sim_eval/deeplesion_sample_heldout/
#   (c)-(e) `ctlesion detect` at the default threshold on the sample study and the other real CTs
#       (lesions reported, mask shape, seconds)      -> models/ctlesion_demo_sim_eval/real_ct.json
#   (d) masks against the true masks of the simulated validation split -> .../mask_quality.json
#   (f) test-time augmentation (--tta): val, (a), (b) and (c) again -> models/ctlesion_demo_sim_eval/tta/
#   (g) the same with --tta-zoom 1.5                                 -> models/ctlesion_demo_sim_eval/zoom/
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/demo}
source models/demo_env.sh
weights=models/ctlesion_demo_sim.safetensors
card=models/ctlesion_demo_sim_eval
shared=../shared/data

# Validation and test data: the val and test patients of the default background set (train_demo.sh
# simulates the train patients with another seed); kept from an earlier run when present
# (delete a sim_eval written before `simulate` wrote DeepLesion's boxes, 2026-12-05, or before nodes
# and masses kept off bulk soft tissue and subcutaneous fat, 2026-12-06: the card's sets are the current ones).
if [[ ! -f $work/sim_eval/DL_info.csv ]]; then
  ctlesion simulate --out "$work/sim_eval" --split val --split test --num-series 160 --image-size 512 --seed 0 \
    --workers "$cpus" --overwrite
fi
ctlesion evaluate --data "$work/sim_eval" --split val --weights "$weights" --out "$work/eval_val" --device cpu
mkdir -p "$card/sim_eval"  # the evaluation data's table and the val predictions, to re-derive the figures
cp "$work/sim_eval/DL_info.csv" "$card/sim_eval/"
cp "$work/eval_val/predictions.json" "$card/sim_eval/val_predictions.json"
# The validation patient's own CT (no synthetic lesion; no lesion known), read at a low threshold.
ctlesion detect "$shared/ct_backgrounds/cmb_crc_msb-01068_chest.nii.gz" --score-threshold 0.05 \
  --out "$work/val_normal/results.json" --device cpu
cp "$work/val_normal/results.json" "$card/sim_eval/val_normal_study_results.json"
"$python" models/demo_card.py threshold "$card/sim_eval" "$card/sim_eval/val_predictions.json" \
  --normal "$card/sim_eval/val_normal_study_results.json"

ctlesion evaluate --data "$work/sim_eval" --split test --weights "$weights" --out "$card" --device cpu
# (a) by the simulation's lesion kind (part-solid nodules, lytic and sclerotic bone lesions...),
# val and test; the files keep each row's kind, so tests re-derive the figures without simulation.json.
"$python" models/demo_card.py kinds "$work/sim_eval" val "$card/sim_eval/val_predictions.json" \
  --out "$card/sim_eval/val_lesion_kinds.json"
"$python" models/demo_card.py kinds "$work/sim_eval" test "$card/predictions.json" --out "$card/lesion_kinds.json"
# (a): where the test split's lesions are found (at <= 4 FP/image, later, never), by size and contrast.
"$python" models/demo_card.py misses "$work/sim_eval" test "$card/predictions.json" --out "$card/misses.json"
# (b): the real key slices of the patients stage 3 did not train on (models/mix_real_slices.py).
"$python" models/mix_real_slices.py heldout "$shared/deeplesion_sample" "$work/real_heldout"
ctlesion evaluate --data "$work/real_heldout" --split all --weights "$weights" \
  --out "$card/deeplesion_sample_heldout" --device cpu

# detect_real_cts FOLDER OUT_JSON [DETECT_OPTION...]: detect at the default threshold on each real
# CT (into FOLDER/<study>/), timed, then the card's per-study figures.
detect_real_cts() {
  local into=$1 out=$2 folder; shift 2
  local results=()
  for ct in sample_data/abdomen_ct_dicom "$shared/totalseg_example/example_ct_sm.nii.gz" \
            "$shared/ct_backgrounds/cmb_crc_msb-01068_chest.nii.gz" \
            "$shared/ct_backgrounds/lidc_idri_0001_chest.nii.gz"; do
    folder=$(basename "$ct"); folder=$into/${folder%.nii.gz}
    SECONDS=0
    ctlesion detect "$ct" --out "$folder/results.json" --device cpu "$@"
    mkdir -p "$folder" && echo "$SECONDS" > "$folder/seconds.txt"  # whole command: reading, network, outputs
    results+=("$folder/results.json")
  done
  "$python" models/demo_card.py real "${results[@]}" --out "$out"
}
detect_real_cts "$work/real" "$card/real_ct.json"
# (d) mask quality against the true masks of the simulated validation split.
"$python" models/demo_card.py masks "$work/sim_eval" "$weights" --split val --num 60 --out "$card/mask_quality.json"
# (f), (g): the same model with test-time augmentation, into $card/NAME/: the validation split (what
# decides), (a) and (b), each against the plain model by a paired bootstrap (the same resampled
# images score both), and (c) at the default threshold.
augmented() {
  local into=$card/$1; shift
  ctlesion evaluate --data "$work/sim_eval" --split val --weights "$weights" --out "$into/val" --device cpu "$@"
  ctlesion evaluate --data "$work/sim_eval" --split test --weights "$weights" --out "$into/test" --device cpu "$@"
  ctlesion evaluate --data "$work/real_heldout" --split all --weights "$weights" \
    --out "$into/deeplesion_sample_heldout" --device cpu "$@"
  "$python" models/demo_card.py paired "$work/sim_eval" val "$card/sim_eval/val_predictions.json" \
    "$into/val/predictions.json" --out "$into/paired_val.json"
  "$python" models/demo_card.py paired "$work/sim_eval" test "$card/predictions.json" "$into/test/predictions.json" \
    --out "$into/paired_test.json"
  "$python" models/demo_card.py paired "$work/real_heldout" all "$card/deeplesion_sample_heldout/predictions.json" \
    "$into/deeplesion_sample_heldout/predictions.json" --out "$into/paired_heldout.json"
  detect_real_cts "$work/real_$(basename "$into")" "$into/real_ct.json" "$@"
}
augmented tta --tta               # (f) left-right flipped slices too, fused
augmented zoom --tta-zoom 1.5     # (g) the slices zoomed in x 1.5 too, merged
