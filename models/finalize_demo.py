"""Write the shipped demo model from a training run: its last epoch's weights as float16.

Usage: python models/finalize_demo.py RUN_DIR   (run from the repository root)
Writes models/ctlesion_demo_sim.safetensors and its .json sidecar (configuration, training record).
"""

import sys
from pathlib import Path

from ctlesion.checkpoint import load_detector, save_checkpoint

run = Path(sys.argv[1])
last = sorted(run.glob("epoch_*.safetensors"))[-1]
model, info = load_detector(last)
training = dict(info["training"], source_checkpoint=last.name,
                description="Demo model trained on simulated lesions in real CT (not DeepLesion).")
save_checkpoint(model, Path("models/ctlesion_demo_sim.safetensors"), training=training, half=True)
print("wrote models/ctlesion_demo_sim.safetensors from", last)
