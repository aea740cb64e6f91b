#!/usr/bin/env bash
# Rebuild the shipped demo model (models/ctlesion_demo_sim.safetensors + .json) from the repository
# and ../shared/data (the train-split backgrounds of the default set; see models/README.md).
#
# Usage: models/train_demo.sh [WORK_DIR] [GPU_SECONDS]
#   Stage 1 (needs a CUDA GPU): whole 512-px slices, batch 16, bf16 with channels-last layout (2.4x the
#     speed of the default layout on an H200: benchmarks/train_speed.py), random initialisation; the number
#     of iterations is set from a 40-iteration probe so that training lasts about GPU_SECONDS (default
#     240). Without a GPU, give an earlier stage-1 checkpoint instead: STAGE1=path models/train_demo.sh
#   Stage 2 (CPU or GPU): fine-tuning on 192-px crops at the 512-px scale, batch 4, 600 iterations
#     (about 55 minutes on 2 CPU cores).
#   The figures of the model card come from models/evaluate_demo.sh afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/demo}
source models/demo_env.sh
cuda=$("$python" -c "import torch; print(int(torch.cuda.is_available()))")
device=$([[ $cuda == 1 ]] && echo cuda || echo cpu)

ctlesion simulate --out "$work/sim_train" --split train --num-series 640 --image-size 512 --seed 1 \
  --workers "$cpus" --overwrite

common=(--data "$work/sim_train" --seed 0 --workers $((cpus > 2 ? cpus - 2 : 1)) --overwrite)
stage1=${STAGE1:-}
if [[ -z $stage1 ]]; then
  if [[ $cuda != 1 ]]; then
    echo "stage 1 needs a CUDA GPU; without one, give a stage-1 checkpoint: STAGE1=path $0" >&2
    exit 1
  fi
  seconds=${2:-240}
  batch=16
  stage1_options=("${common[@]}" --slices 3 --image-size 512 --fpn-channels 256 --fc-channels 512
                  --hu-window -175 275 --batch-size $batch --device cuda --precision bf16 --channels-last)
  # Probe: 40 iterations give the images per second of this machine (warm-up included: an underestimate).
  ctlesion train "${stage1_options[@]}" --out "$work/probe" --epochs 1 --max-iters-per-epoch 40
  read -r epochs per_epoch warmup < <("$python" - "$work" "$seconds" "$batch" <<'PY'
import csv, json, sys
from pathlib import Path
work, seconds, batch = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
rate = [r for r in map(json.loads, (work / "probe" / "metrics.jsonl").open()) if "images_per_s" in r][-1]["images_per_s"]
with (work / "sim_train" / "DL_info.csv").open() as handle:
    key_slices = {row["File_name"] for row in csv.DictReader(handle) if row["Train_Val_Test"].strip() == "1"}
full = -(-len(key_slices) // batch)
iterations = max(200, int(rate * seconds / batch))
epochs = min(24, max(6, round(iterations / full)))
print(epochs, min(full, max(1, iterations // epochs)), min(500, iterations // 8))
PY
  )
  echo "stage 1: $epochs epochs of $per_epoch iterations (batch $batch), warm-up $warmup"
  # The paper's schedule (lr x 0.1 after 45 % and 80 % of the epochs), SGD lr 0.02 per 4 images.
  ctlesion train "${stage1_options[@]}" --out "$work/stage1" --epochs "$epochs" \
    --max-iters-per-epoch "$per_epoch" --warmup-iters "$warmup" --checkpoint-every 50
  stage1=$work/stage1.safetensors
  "$python" models/finalize_demo.py "$work/stage1" "$stage1"
fi

# Stage 2: crops around lesions (10 % anywhere in the body) at the native scale, lr 0.02 for 4 images,
# x 0.1 after epochs 4 and 5 of 6 (100 iterations each); every weight starts from stage 1.
ctlesion train "${common[@]}" --init-from "$stage1" --out "$work/stage2" --crop-size 192 \
  --negative-crop-fraction 0.1 --batch-size 4 --epochs 6 --max-iters-per-epoch 100 --warmup-iters 50 \
  --lr-drop-epoch 4 --lr-drop-epoch 5 --checkpoint-every 25 --device "$device"
"$python" models/finalize_demo.py "$work/stage2" models/ctlesion_demo_sim.safetensors --after "$stage1"
