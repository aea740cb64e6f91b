#!/usr/bin/env bash
# Rebuild the shipped demo model (models/ctlesion_demo_sim.safetensors) from scratch, on CPU.
# Usage: models/train_demo.sh [WORK_DIR]   (needs ../shared/data for the second CT background)
# Takes about an hour on 2 CPU cores; the figures of its model card come from the last step.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/demo}
backgrounds=(--background sample_data/abdomen_ct_dicom --background ../shared/data/totalseg_example/example_ct.nii.gz)

ctlesion simulate --out "$work/sim" --num-series 160 --image-size 256 --seed 0 "${backgrounds[@]}"
ctlesion train --data "$work/sim" --out "$work/run" --epochs 8 --batch-size 4 --slices 3 --image-size 256 \
  --fpn-channels 256 --fc-channels 512 --hu-window -175 275 --warmup-iters 100 --lr-drop-epoch 6 --lr-drop-epoch 7 \
  --workers 1 --seed 0 \
  --device cpu
python - "$work/run" <<'PY'
import sys
from pathlib import Path
from ctlesion.checkpoint import load_detector, save_checkpoint
run = Path(sys.argv[1])
last = sorted(run.glob("epoch_*.safetensors"))[-1]
model, info = load_detector(last)
training = dict(info["training"], source_checkpoint=last.name,
                description="Demo model trained on CPU on simulated lesions in real CT (not DeepLesion).")
save_checkpoint(model, Path("models/ctlesion_demo_sim.safetensors"), training=training, half=True)
PY
ctlesion evaluate --data "$work/sim" --split test --weights models/ctlesion_demo_sim.safetensors \
  --out models/ctlesion_demo_sim_eval --device cpu
