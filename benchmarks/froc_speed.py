"""Seconds to score a DeepLesion-sized split, with and without the bootstrap.

Usage: python benchmarks/froc_speed.py [--images 5000] [--detections 50] [--resamples 1000] [--repeats 3]

A synthetic split: each image holds 1-3 lesions and ``--detections`` detections, two of which
lie near lesions (some above IoU 0.5, some below), the rest anywhere; half the images are
1 mm, half 5 mm; lesion types and sizes vary. Prints the machine, then the best of
``--repeats`` runs of ``sensitivity_at_fps`` (the FROC alone) and of ``score_split`` (FROC
overall, thin, thick, > 2 mm, 8 types and 3 sizes; then with the bootstrap).
"""

from __future__ import annotations

import argparse
import os
import platform
import timeit
from pathlib import Path

import numpy as np

from ctlesion.evaluate import sensitivity_at_fps
from ctlesion.evaluate.scoring import score_split
from ctlesion.evaluate.split import EvaluationSet
from ctlesion.io.deeplesion import KeySlice


def synthetic_split(num_images: int, num_detections: int, seed: int = 0) -> tuple[EvaluationSet, list[np.ndarray]]:
    """A synthetic evaluation set and detections (module docstring)."""
    rng = np.random.default_rng(seed)
    keys, detections = [], []
    for i in range(num_images):
        num_lesions = int(rng.integers(1, 4))
        corner = rng.uniform(0, 400, (num_lesions, 2))
        boxes = np.c_[corner, corner + rng.uniform(10, 80, (num_lesions, 2))]
        corner = rng.uniform(0, 400, (num_detections, 2))
        dets = np.c_[corner, corner + rng.uniform(10, 80, (num_detections, 2)), rng.uniform(size=num_detections)]
        near = min(2, num_lesions, num_detections)
        dets[:near, :4] = boxes[:near] + np.tile(rng.normal(0, 4, (near, 2)), 2)
        dets[:near, 2:4] = np.maximum(dets[:near, 2:4], dets[:near, :2])
        detections.append(dets)
        keys.append(KeySlice(
            file_name=f"{i:06d}_01_01_001.png", series_dir=f"{i:06d}_01_01", slice_index=1,
            spacing_yx_mm=(0.7, 0.7), slice_interval_mm=1.0 if i % 2 else 5.0, split=3, boxes_px=boxes,
            recist_px=np.zeros((num_lesions, 8)), diameters_px=np.c_[rng.uniform(5, 70, num_lesions), np.ones(num_lesions)],
            lesion_types=rng.integers(1, 9, num_lesions), noisy=np.zeros(num_lesions, bool),
            slice_range=np.array([1, 1]), image_size=np.array([512, 512]), age=None, gender="",
        ))
    return EvaluationSet(csv_path=Path("synthetic"), split="test", key_slices=tuple(keys)), detections


def best_of(repeats: int, func) -> float:
    """The fastest of ``repeats`` calls of ``func``, in seconds (the standard library's timer)."""
    return min(timeit.repeat(func, number=1, repeat=repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=50)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    evaluation_set, detections = synthetic_split(args.images, args.detections)
    ground_truth = evaluation_set.ground_truth
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
          f"numpy {np.__version__}")
    print(f"split: {args.images} images x {args.detections} detections, {evaluation_set.num_lesions} lesions")
    froc_s = best_of(args.repeats, lambda: sensitivity_at_fps(detections, ground_truth))
    print(f"sensitivity_at_fps: {froc_s:.2f} s")
    plain_s = best_of(args.repeats, lambda: score_split(evaluation_set, detections, resamples=0))
    print(f"score_split, no bootstrap (4 image subsets, types, sizes): {plain_s:.2f} s")
    boot_s = best_of(1, lambda: score_split(evaluation_set, detections, resamples=args.resamples))
    print(f"score_split with {args.resamples} bootstrap resamples: {boot_s:.2f} s")


if __name__ == "__main__":
    main()
