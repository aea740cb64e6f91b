"""Give a one-window model more HU windows as input channels, computing exactly what it computed.

Usage: python models/widen_windows.py IN.safetensors OUT.safetensors --window LOW HIGH [--window ...]
(run from the repository root). The new channels' stem weights start at zero
(:func:`ctlesion.networks.input_windows.widen_input_windows`); a fine-tuning run
(`ctlesion train --init-from OUT.safetensors`) then learns them. OUT's sidecar keeps IN's training
record as ``previous_stage``.
"""

import argparse
from pathlib import Path

from ctlesion.checkpoint import load_detector, save_checkpoint
from ctlesion.networks.detector import AlignShiftDetector
from ctlesion.networks.input_windows import widen_input_windows

parser = argparse.ArgumentParser()
parser.add_argument("weights", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--window", type=float, nargs=2, action="append", required=True, metavar=("LOW", "HIGH"))
args = parser.parse_args()
model, info = load_detector(args.weights)
config, state = widen_input_windows(model.config, model.state_dict(), tuple(map(tuple, args.window)))
widened = AlignShiftDetector(config)
widened.load_state_dict(state)
training = {"description": f"{args.weights.name} with the input windows {list(config.input_windows_hu)} "
                           "(new channels' stem weights zero)", "previous_stage": info.get("training")}
save_checkpoint(widened, args.out, training=training)
print(f"wrote {args.out}: input windows {config.input_windows_hu} in {config.hu_window}")
