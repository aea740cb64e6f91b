"""Seconds per key slice and peak memory of `detect` on the shipped sample study.

Usage: python benchmarks/detect_speed.py [--weights W] [--device cpu|cuda] [--batch-size 4]

Prints the machine, the figures and the ratio of the detector's share of the time. Peak
memory is the process's maximum resident set size (CPU) and torch's peak allocation (CUDA).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import torch

from ctlesion.checkpoint import load_detector
from ctlesion.detect import DEFAULT_WEIGHTS, DetectOptions, detect_slices, detect_volume
from ctlesion.io import read_volume
from ctlesion.preprocess import resample_to_reference

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "abdomen_ct_dicom"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model, _ = load_detector(args.weights, args.device)
    options = DetectOptions(batch_size=args.batch_size)
    start = time.perf_counter()
    volume = read_volume(SAMPLE)
    read_s = time.perf_counter() - start
    network_volume = resample_to_reference(volume)
    detect_slices(model, network_volume, options=options, device=args.device)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        detect_volume(model, volume, options=options, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    best = min(timings)
    num = network_volume.shape_zyx[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads "
          f"({torch.get_num_threads()} used by torch), torch "
          f"{torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print(f"model: {args.weights.name}, {model.config.num_slices} slices, {model.config.image_size_px} px input")
    print(f"study: {SAMPLE.name}, {volume.shape_zyx} voxels, read in {read_s:.2f} s")
    print(f"detect: {best:.2f} s for {num} key slices = {best / num:.3f} s per key slice (best of {args.repeats})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.device.startswith("cuda"):
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
