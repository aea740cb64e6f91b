"""Write the demo model from its training run: the last epoch's weights as float16.

Usage: python models/finalize_demo.py RUN_DIR OUT.safetensors   (run from the repository root)
Writes OUT and its .json sidecar (configuration and training record).
"""

import argparse
from pathlib import Path

from ctlesion.checkpoint import load_detector, save_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("run", type=Path)
parser.add_argument("out", type=Path)
args = parser.parse_args()
last = sorted(args.run.glob("epoch_*.safetensors"))[-1]
model, info = load_detector(last)
training = dict(info["training"], source_checkpoint=last.name,
                description="Demo model trained on simulated lesions in real CT (not DeepLesion).")
save_checkpoint(model, args.out, training=training, half=True)
print(f"wrote {args.out} from {last}")
