#!/usr/bin/env bash
# Rebuild the shipped demo model (models/ctlesion_demo_sim.safetensors + .json) from the repository
# and ../shared/data (the train-split backgrounds of the default set; see models/README.md).
#
# Usage: models/train_demo.sh [WORK_DIR] [TRAIN_SECONDS]
#   On a CUDA GPU (the shipped model): whole 512-px slices, batch 16, bf16; the number of iterations
#   is set from a 40-iteration probe so that training lasts about TRAIN_SECONDS (default 300).
#   On CPU: 192-px crops at the 512-px scale, batch 4, for about TRAIN_SECONDS (default 9000).
#   The figures of the model card come from models/evaluate_demo.sh afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/demo}
python=${PYTHON:-python3}
ctlesion() { "$python" -m ctlesion "$@"; }
cuda=$("$python" -c "import torch; print(int(torch.cuda.is_available()))")
cpus=$("$python" -c "import os; print(len(os.sched_getaffinity(0)))")

ctlesion simulate --out "$work/sim_train" --split train --num-series 640 --image-size 512 --seed 1 \
  --workers "$cpus" --overwrite

common=(--data "$work/sim_train" --slices 3 --image-size 512 --fpn-channels 256 --fc-channels 512
        --hu-window -175 275 --seed 0 --workers $((cpus > 2 ? cpus - 2 : 1)) --overwrite)
if [[ $cuda == 1 ]]; then
  seconds=${2:-300}
  batch=16
  recipe=(--batch-size $batch --device cuda --precision bf16)
else
  seconds=${2:-9000}
  batch=4
  recipe=(--batch-size $batch --device cpu --crop-size 192 --negative-crop-fraction 0.1)
fi

# Probe: 40 iterations give the images per second of this machine (warm-up included: an underestimate).
ctlesion train "${common[@]}" "${recipe[@]}" --out "$work/probe" --epochs 1 --max-iters-per-epoch 40
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
echo "training: $epochs epochs of $per_epoch iterations (batch $batch), warm-up $warmup"
# The paper's schedule (lr x 0.1 after 45 % and 80 % of the epochs), SGD lr 0.02 per 4 images.
ctlesion train "${common[@]}" "${recipe[@]}" --out "$work/run" --epochs "$epochs" \
  --max-iters-per-epoch "$per_epoch" --warmup-iters "$warmup" --checkpoint-every 50

"$python" models/finalize_demo.py "$work/run"
