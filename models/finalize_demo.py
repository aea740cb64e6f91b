"""Write a stage of the demo model from its training run: the last epoch's weights as float16.

Usage: python models/finalize_demo.py RUN_DIR OUT.safetensors [--after EARLIER.safetensors]
(run from the repository root). Writes OUT and its .json sidecar (configuration, training record);
with --after, the record of the earlier stage it was fine-tuned from is kept under "stages".
"""

import argparse
import json
from pathlib import Path

from ctlesion.checkpoint import load_detector, read_checkpoint_info, save_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("run", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--after", type=Path)
args = parser.parse_args()
last = sorted(args.run.glob("epoch_*.safetensors"))[-1]
model, info = load_detector(last)
training = dict(info["training"], source_checkpoint=last.name,
                description="Demo model trained on simulated lesions in real CT (not DeepLesion).")
if args.after is not None:
    earlier = read_checkpoint_info(args.after)["training"]
    training["stages"] = [*earlier.pop("stages", []), earlier]
save_checkpoint(model, args.out, training=training, half=True)
print(f"wrote {args.out} from {last}")
print(json.dumps({k: training[k] for k in ("epochs", "batch_size", "max_iters_per_epoch")}))
