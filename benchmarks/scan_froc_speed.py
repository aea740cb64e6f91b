"""Seconds to score lesion-level 3D FROC per scan (LUNA16 style): overlaps, matching, bootstrap.

Usage: python benchmarks/scan_froc_speed.py [--scans 100] [--lesions 50] [--shape 64,128,128]
                                            [--resamples 1000] [--repeats 3]

Synthetic scans (``synthetic_scans``): each ``--shape`` (Z, Y, X) grid holds ``--lesions``
ground-truth ellipsoids (in-plane radius 2-12 voxels at 0.8 mm, long axis 3-19 mm) and twice as
many predicted ellipsoids: one near each of 85 % of the lesions (shifted by about a fifth of its
radii, rescaled; scores 0.2-1), the rest anywhere (scores 0-0.6). Half the scans are 1 mm, half 5 mm. Label maps are int16; where
ellipsoids overlap the later one wins (a label may be left without voxels, which is allowed).

Prints the machine, then, timed separately (the making of the label maps is not timed):

(a) ``scan_overlaps`` from the label maps of all scans, for each criterion (``centre``, ``iou``):
    one pass over the scans, each generated just before it is timed, so that only one scan's maps
    are in memory;
(b) ``score_scans`` without bootstrap (matching, all / thin / thick, size bands): best of
    ``--repeats``; the goal for (a, iou) + (b) is under 5 s;
(c) ``score_scans`` with ``--resamples`` bootstrap resamples of scans: one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import timeit
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ctlesion.evaluate.scan_froc import SCAN_CRITERIA, scan_overlaps, score_scans

SPACING_YX_MM = 0.8
INTERVALS_MM = (1.0, 5.0)  # thin and thick, alternating over the scans


@dataclass(frozen=True)
class SyntheticScan:
    """One synthetic scan: label maps (Z, Y, X) int16, prediction scores, slice interval, lesion long axes (mm)."""

    predicted_zyx: np.ndarray
    num_predicted: int
    truth_zyx: np.ndarray
    num_truth: int
    scores: np.ndarray
    interval_mm: float
    long_axis_mm: np.ndarray


def paint_ellipsoid(labels: np.ndarray, label: int, centre_zyx: np.ndarray, radii_zyx: np.ndarray) -> None:
    """Write ``label`` into the voxels of an axis-aligned ellipsoid (centre and radii in voxels), in place."""
    low = np.maximum(np.floor(centre_zyx - radii_zyx).astype(int), 0)
    high = np.minimum(np.ceil(centre_zyx + radii_zyx).astype(int) + 1, labels.shape)
    grid = np.ogrid[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
    inside = sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre_zyx, radii_zyx)) <= 1.0
    labels[tuple(slice(lo, hi) for lo, hi in zip(low, high))][inside] = label


def synthetic_scan(rng: np.random.Generator, num_lesions: int, shape_zyx: tuple[int, int, int],
                   interval_mm: float) -> SyntheticScan:
    """One scan of the module docstring."""
    shape = np.array(shape_zyx, dtype=np.float64)
    truth = np.zeros(shape_zyx, np.int16)
    predicted = np.zeros(shape_zyx, np.int16)
    radius_yx = rng.uniform(2.0, 12.0, num_lesions)
    radii = np.c_[np.maximum(radius_yx * SPACING_YX_MM / interval_mm, 0.5), radius_yx, radius_yx]
    centres = rng.uniform(0.0, 1.0, (num_lesions, 3)) * (shape - 1)
    for label, (centre, radius) in enumerate(zip(centres, radii), start=1):
        paint_ellipsoid(truth, label, centre, radius)
    near = rng.random(num_lesions) < 0.85
    num_far = 2 * num_lesions - int(near.sum())
    pred_centres = np.r_[centres[near] + rng.normal(0.0, 0.2, (int(near.sum()), 3)) * radii[near],
                         rng.uniform(0.0, 1.0, (num_far, 3)) * (shape - 1)]
    pred_radii = np.r_[radii[near] * rng.uniform(0.7, 1.3, (int(near.sum()), 1)),
                       radii[rng.integers(0, num_lesions, num_far)]]
    for label, (centre, radius) in enumerate(zip(pred_centres, pred_radii), start=1):
        paint_ellipsoid(predicted, label, np.clip(centre, 0, shape - 1), radius)
    scores = np.r_[rng.uniform(0.2, 1.0, int(near.sum())), rng.uniform(0.0, 0.6, num_far)]
    return SyntheticScan(predicted, len(scores), truth, num_lesions, scores, interval_mm,
                         2.0 * radius_yx * SPACING_YX_MM)


def synthetic_scans(num_scans: int, num_lesions: int, shape_zyx: tuple[int, int, int],
                    seed: int = 0) -> Iterator[SyntheticScan]:
    """The scans of the module docstring, one at a time (1 mm and 5 mm alternating)."""
    rng = np.random.default_rng(seed)
    for scan in range(num_scans):
        yield synthetic_scan(rng, num_lesions, shape_zyx, INTERVALS_MM[scan % 2])


def best_of(repeats: int, func) -> float:
    """The fastest of ``repeats`` calls of ``func``, in seconds (the standard library's timer)."""
    return min(timeit.repeat(func, number=1, repeat=repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--lesions", type=int, default=50)
    parser.add_argument("--shape", default="64,128,128", help="Z,Y,X voxels of every scan")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
          f"numpy {np.__version__}")
    print(f"scans: {args.scans} x {args.lesions} lesions, {2 * args.lesions} predictions, grid {shape}")
    overlap_s = dict.fromkeys(SCAN_CRITERIA, 0.0)
    overlaps: dict[str, list[np.ndarray]] = {criterion: [] for criterion in SCAN_CRITERIA}
    scores, intervals, long_axes = [], [], []
    for scan in synthetic_scans(args.scans, args.lesions, shape):
        for criterion in SCAN_CRITERIA:
            start = time.perf_counter()
            overlaps[criterion].append(scan_overlaps(scan.predicted_zyx, scan.num_predicted, scan.truth_zyx,
                                                     scan.num_truth, criterion))
            overlap_s[criterion] += time.perf_counter() - start
        scores.append(scan.scores)
        intervals.append(scan.interval_mm)
        long_axes.append(scan.long_axis_mm)
    for criterion, seconds in overlap_s.items():
        print(f"(a) scan_overlaps, {criterion}, all scans: {seconds:.2f} s ({1000 * seconds / args.scans:.1f} ms/scan)")

    def score(criterion: str, resamples: int) -> dict:
        threshold = 0.1 if criterion == "iou" else 1.0
        return score_scans(scores, overlaps[criterion], threshold=threshold, slice_interval_mm=intervals,
                           lesion_long_axis_mm=np.concatenate(long_axes), resamples=resamples).report

    for criterion in SCAN_CRITERIA:
        plain_s = best_of(args.repeats, lambda criterion=criterion: score(criterion, 0))
        cpm = score(criterion, 0)["summary"]["all"]["mean"]
        print(f"(b) score_scans, {criterion}, no bootstrap: {plain_s:.3f} s (CPM {cpm:.3f}); "
              f"(a) + (b): {overlap_s[criterion] + plain_s:.2f} s (goal < 5 s)")
    boot_s = best_of(1, lambda: score("iou", args.resamples))
    print(f"(c) score_scans, iou, {args.resamples} bootstrap resamples: {boot_s:.2f} s")


if __name__ == "__main__":
    main()
