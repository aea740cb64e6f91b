#!/usr/bin/env bash
# The figures of the demo model's card (models/README.md), on CPU (about 90 minutes on 2 cores).
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
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/demo}
source models/demo_env.sh
weights=models/ctlesion_demo_sim.safetensors
card=models/ctlesion_demo_sim_eval
shared=../shared/data

# Validation and test data: the val and test patients of the default background set (train_demo.sh
# simulates the train patients with another seed); kept from an earlier run when present.
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
# (f) the same model with test-time augmentation (left-right flipped slices too, fused): the
# validation split (what decides), then (a) and (b).
ctlesion evaluate --data "$work/sim_eval" --split val --weights "$weights" --out "$card/tta/val" --device cpu --tta
ctlesion evaluate --data "$work/sim_eval" --split test --weights "$weights" --out "$card/tta/test" --device cpu --tta
ctlesion evaluate --data "$work/real_heldout" --split all --weights "$weights" \
  --out "$card/tta/deeplesion_sample_heldout" --device cpu --tta
# Paired bootstrap of the differences (the same resampled images score both).
"$python" models/demo_card.py paired "$work/sim_eval" val "$card/sim_eval/val_predictions.json" \
  "$card/tta/val/predictions.json" --out "$card/tta/paired_val.json"
"$python" models/demo_card.py paired "$work/sim_eval" test "$card/predictions.json" "$card/tta/test/predictions.json" \
  --out "$card/tta/paired_test.json"
"$python" models/demo_card.py paired "$work/real_heldout" all "$card/deeplesion_sample_heldout/predictions.json" \
  "$card/tta/deeplesion_sample_heldout/predictions.json" --out "$card/tta/paired_heldout.json"
# (c) with --tta, at the default threshold.
detect_real_cts "$work/real_tta" "$card/tta/real_ct.json" --tta
