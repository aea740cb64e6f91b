"""Write the demo model from its training run: the last epoch's weights as float16.

Usage: python models/finalize_demo.py RUN_DIR OUT.safetensors   (run from the repository root)
Writes OUT and its .json sidecar (configuration and training record; for a run started from another
checkpoint, that checkpoint's training record too, as ``previous_stage``).
"""

import argparse
from pathlib import Path

from ctlesion.checkpoint import load_detector, read_checkpoint_info, save_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("run", type=Path)
parser.add_argument("out", type=Path)
args = parser.parse_args()
last = sorted(args.run.glob("epoch_*.safetensors"))[-1]
model, info = load_detector(last)
training = dict(info["training"], source_checkpoint=last.name,
                description="Demo model trained on simulated lesions in real CT (not DeepLesion).")
if training.get("init_from"):  # a later stage: keep the record of the stage it started from
    training["previous_stage"] = read_checkpoint_info(Path(training["init_from"])).get("training")
save_checkpoint(model, args.out, training=training, half=True)
print(f"wrote {args.out} from {last}")
