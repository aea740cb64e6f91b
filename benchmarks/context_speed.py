"""Detector forward time per window for each context (AlignShift, TSM, 2.5D), side by side.

Usage: python benchmarks/context_speed.py [--device cpu|cuda] [--slices 7] [--image-size 512]
                                          [--repeats 3] [--batch-size 1] [--channels-last]

Builds the paper's configuration (DenseNet-121, FPN 512, FC 2048, random init) for every
context, runs inference (eval mode, no gradients) on random windows in one process, and prints
the median seconds per window, the ratio against the 2.5D baseline (the 2D network), the
parameter count, and the peak CUDA memory (on GPU). Repeats alternate between the contexts so
that machine noise hits them alike. With ``--channels-last`` each context also runs with the
same weights laid out channels-last (``to_channels_last``, channels-last input), side by side.
``--authors`` adds the AlignShift network with the authors' conventions (what
``ctlesion import-weights`` makes of their paper-size checkpoints: mmdetection-1 box geometry,
[0, 255] - 50 input, no depth-reduction bias); ``--weights FILE`` (repeatable) adds checkpoints
as they are (their own window depth and input size). The peak resident memory of the process is
printed at the end (CPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from ctlesion.checkpoint import load_detector
from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig, to_channels_last

CONTEXTS = ("2.5d", "tsm", "alignshift")


def _forward_s(model: AlignShiftDetector, images: torch.Tensor, intervals: torch.Tensor, device: str) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(images, intervals)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--slices", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true", help="also time channels-last layouts")
    parser.add_argument("--authors", action="store_true", help="also the AlignShift network with the authors' "
                        "conventions (an imported model's)")
    parser.add_argument("--weights", type=Path, action="append", default=[], help="also this checkpoint")
    args = parser.parse_args()

    torch.manual_seed(0)
    size, depth, batch = args.image_size, args.slices, args.batch_size
    images = torch.rand(batch, 1, depth, size, size, device=args.device)
    intervals = torch.full((batch,), 5.0, device=args.device)
    variants: dict[str, tuple[AlignShiftDetector, torch.Tensor]] = {}
    for c in CONTEXTS:
        model = AlignShiftDetector(DetectorConfig(context=c, num_slices=depth, image_size_px=size)).to(args.device)
        variants[model.config.name] = (model.eval(), images)
        if args.channels_last:
            twin = AlignShiftDetector(model.config).to(args.device).eval()
            twin.load_state_dict(model.state_dict())
            variants[f"{model.config.name} CL"] = (to_channels_last(twin),
                                                   images.contiguous(memory_format=torch.channels_last_3d))
    if args.authors:
        config = DetectorConfig(num_slices=depth, image_size_px=size, padding="keep", input_scaling="mmdet",
                                box_convention="mmdet1", reduction_bias=False)
        variants[f"{config.name} authors'"] = (AlignShiftDetector(config).to(args.device).eval(), images * 255 - 50)
    for path in args.weights:
        model, _ = load_detector(path, args.device)
        config = model.config
        variants[f"{path.stem} ({config.name})"] = (
            model, torch.rand(batch, 1, config.num_slices, config.image_size_px, config.image_size_px,
                              device=args.device))
    times: dict[str, list[float]] = {name: [] for name in variants}
    peak_mib: dict[str, float] = {}
    for name, (model, inputs) in variants.items():  # warm-up (and CUDA peak memory of one forward)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _forward_s(model, inputs, intervals, args.device)
        if args.device.startswith("cuda"):
            peak_mib[name] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(args.repeats):
        for name, (model, inputs) in variants.items():
            times[name].append(_forward_s(model, inputs, intervals, args.device))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads "
          f"({torch.get_num_threads()} used by torch), torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print(f"input: {batch} x {depth}-slice window(s) of {size} x {size} px; median of {args.repeats} repeats"
          + ("; CL: channels-last" if args.channels_last else ""))
    base = statistics.median(next(iter(times.values()))) / batch
    width = max(18, *(len(name) + 2 for name in variants))
    print(f"{'context':<{width}}{'s/window':>10}{'vs 2.5D':>9}{'params (M)':>12}" + ("  peak MiB" if peak_mib else ""))
    for name, (model, _) in variants.items():
        per_window = statistics.median(times[name]) / batch
        params = sum(p.numel() for p in model.parameters()) / 1e6
        line = f"{name:<{width}}{per_window:>10.3f}{per_window / base:>8.2f}x{params:>12.1f}"
        print(line + (f"{peak_mib[name]:>10.0f}" if peak_mib else ""))
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


if __name__ == "__main__":
    main()
