"""Figures of the demo model's card that `ctlesion evaluate` does not print itself.

Usage (from the repository root):
  python models/demo_card.py threshold DATA PREDICTIONS_JSON [--split val] [--max-fp-per-image F]
      Choose the default score threshold on a validation split (DATA/DL_info.csv and the
      predictions of `ctlesion evaluate` on it): the lowest threshold at which the false
      positives per image stay <= F (default 0.125) and, with --normal RESULTS_JSON (detect run at
      a low threshold on CT without lesions), each such study keeps at most N lesions
      (--max-lesions-per-normal-study, default 1); written as ``operating_point`` into models/ctlesion_demo_sim.json, which
      `ctlesion detect` uses by default.
  python models/demo_card.py real RESULTS_JSON... [--out FILE]
      Per study of `ctlesion detect` results: lesions reported, their scores and sizes, seconds
      per network slice (from a seconds.txt beside results.json: the whole command's time), and
      mask shape figures on each lesion's key slice (mask area / area of the mask's bounding box:
      1 for a rectangle, pi/4 for an ellipse; RECIST long axis / bounding-box diagonal).
  python models/demo_card.py masks DATA WEIGHTS [--split val] [--num N] [--out FILE]
      Mask quality against the true masks of a simulated split (DATA/masks/): on N key slices
      (a seeded sample), each lesion's highest-scoring detection with IoU >= 0.5, its mask
      (probability >= 0.5, as `detect` thresholds it) against the lesion's true mask: Dice,
      mask area / area of its bounding box (the true masks' too), RECIST long axis / box diagonal.
  python models/demo_card.py paired DATA SPLIT PREDICTIONS_A PREDICTIONS_B [--resamples R] [--out FILE]
      Paired bootstrap of the difference B - A in sensitivity (DeepLesion FROC, IoU >= 0.5) between
      two predictions files on the same key slices: each resample draws the images once and scores
      both on them, so the interval is the difference's, not two overlapping intervals.
  python models/demo_card.py kinds DATA SPLIT PREDICTIONS_JSON [--out FILE]
      Sensitivity (DeepLesion FROC, IoU >= 0.5; false positives counted over all lesions) per
      lesion kind of the simulation (nodule, part_solid, lymph_node, lytic, ...), which DL_info
      does not hold: each lesion row is given the kind of the simulated lesion it annotates, read
      from DATA/simulation.json. FILE keeps that mapping too, so the figures can be re-derived
      without simulation.json (tests/test_shipped_model.py).
  python models/demo_card.py misses DATA SPLIT PREDICTIONS_JSON [--out FILE]
      Where a split's lesions are found (DeepLesion FROC, IoU >= 0.5): per lesion, the false
      positives per image ranked above its first hit (none: never boxed at any score), its long
      diameter and, where DATA/masks holds the true masks, its contrast on the key slice (mean HU
      inside the mask minus the median HU of a 3-pixel ring around it); then the lesions found at
      <= 4 FP/image, later and never, by size (< 10, 10-20, >= 20 mm) and by |contrast| (< 40,
      >= 40 HU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from ctlesion.evaluate.bootstrap import percentile_interval, resample_counts
from ctlesion.evaluate.froc import DEFAULT_FPS_PER_IMAGE, match_detections, weighted_sensitivity
from ctlesion.evaluate.predictions import align_predictions, read_predictions
from ctlesion.evaluate.scoring import KEY_SLICE_LAYOUT, averaged_rates, score_matching
from ctlesion.evaluate.split import load_evaluation_set

SIDECAR = Path("models/ctlesion_demo_sim.json")


def _matching(evaluation_set, predictions_path: Path):
    """The DeepLesion FROC matching (IoU >= 0.5) of a predictions file on a split's key slices."""
    detections = align_predictions(read_predictions(predictions_path), evaluation_set.keys, predictions_path)
    return match_detections(detections, evaluation_set.ground_truth)


def _false_positives_so_far(matching) -> np.ndarray:
    """(num_detections,) int: false positives ranked at or above each detection (score order)."""
    is_fp = np.zeros(matching.num_detections, bool)
    is_fp[matching.fp_rank] = True
    return np.cumsum(is_fp)


def operating_points(data_dir: Path, split: str, predictions_path: Path) -> tuple[list[dict], int, int]:
    """(threshold, FP per image, sensitivity) at every distinct score of a split's detections
    (DeepLesion FROC rules, :mod:`ctlesion.evaluate.froc`); also the numbers of images and lesions."""
    evaluation_set = load_evaluation_set(data_dir, split)
    detections = align_predictions(read_predictions(predictions_path), evaluation_set.keys, predictions_path)
    matching = match_detections(detections, evaluation_set.ground_truth)
    scores = np.sort(np.concatenate([d[:, 4] for d in detections]))[::-1]
    false_positives = _false_positives_so_far(matching)
    hit_rank = np.sort(matching.hit_rank[matching.hit_rank < matching.num_detections])
    points = []
    for rank, score in enumerate(scores):
        if rank + 1 < len(scores) and scores[rank + 1] == score:
            continue  # ties: all detections of one score are kept or dropped together
        points.append({"score_threshold": float(score),
                       "fp_per_image": float(false_positives[rank] / matching.num_images),
                       "sensitivity": float(np.searchsorted(hit_rank, rank, side="right") / len(matching.hit_rank))})
    return points, matching.num_images, len(matching.hit_rank)


def normal_study_threshold(results_paths: list[Path], max_lesions: int) -> float:
    """The lowest score threshold at which every study of `ctlesion detect` results (run at a
    low threshold on CT without known lesions) keeps at most ``max_lesions`` lesions."""
    threshold = 0.0
    for path in results_paths:
        for study in json.loads(Path(path).read_text())["studies"]:
            scores = sorted((lesion["score"] for lesion in study["lesions"]), reverse=True)
            if len(scores) > max_lesions:
                threshold = max(threshold, math.nextafter(scores[max_lesions], 1.0))
    return threshold


def choose_threshold(data_dir: Path, split: str, predictions_path: Path, max_fp_per_image: float,
                     normal_results: list[Path] = (), max_lesions_per_normal_study: int = 1) -> dict:
    """The lowest score threshold with at most ``max_fp_per_image`` false positives per key slice
    of the split and at most ``max_lesions_per_normal_study`` lesions in each normal study."""
    points, images, lesions = operating_points(data_dir, split, predictions_path)
    allowed = [p for p in points if p["fp_per_image"] <= max_fp_per_image]
    by_rate = (allowed[-1] if allowed else points[0])["score_threshold"]
    by_normal = normal_study_threshold(list(normal_results), max_lesions_per_normal_study)
    threshold = max(by_rate, by_normal)
    kept = [p for p in points if p["score_threshold"] >= threshold]
    point = kept[-1] if kept else {"fp_per_image": 0.0, "sensitivity": 0.0}
    # Rounded up (never keeps what it should drop) to 4 decimals: a confident model's top scores on a
    # normal study can differ in the fourth (3h5: 0.9953, 0.9951), where 3 would drop both.
    return {"score_threshold": math.ceil(threshold * 10_000) / 10_000,
            "fp_per_image": round(point["fp_per_image"], 4),
            "sensitivity": round(point["sensitivity"], 4), "max_fp_per_image": max_fp_per_image,
            "threshold_by_fp_rate": round(by_rate, 4),
            "normal_studies": [Path(p).stem for p in normal_results],
            "max_lesions_per_normal_study": max_lesions_per_normal_study,
            "threshold_by_normal_studies": round(by_normal, 4),
            "chosen_on": f"{split} split of the simulated evaluation data ({images} key slices, {lesions} lesions)"
                         + (" and the validation patient's CT without synthetic lesions" if normal_results else ""),
            "rule": "lowest score threshold with at most max_fp_per_image false positives per key slice of "
                    "the split and at most max_lesions_per_normal_study lesions in each normal study"}


def study_figures(results_path: Path) -> list[dict]:
    results = json.loads(results_path.read_text())
    rows = []
    for study in results["studies"]:
        labels = np.asarray(nib.load(results_path.parent / study["label_map"]).dataobj) if study["label_map"] else None
        fills, axis_ratios = [], []
        for lesion in study["lesions"]:
            # The label map is (X, Y, Z) in NIfTI order; the key slice is a z index.
            mask = labels[:, :, lesion["key_slice"]].T == lesion["label"]
            ys, xs = np.nonzero(mask)
            if not len(xs):
                continue
            box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
            fills.append(mask.sum() / box_area)
            if lesion["long_axis_px"] is not None:
                (x0, y0), (x1, y1) = lesion["long_axis_px"]
                diagonal = np.hypot(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
                axis_ratios.append(np.hypot(x1 - x0, y1 - y0) / diagonal)
        num_z = study["shape_zyx"][0]
        interval = study["slice_interval_mm"]
        network_slices = (int(round((num_z - 1) * interval / study["resampled_to_mm"])) + 1
                          if study["resampled_to_mm"] else num_z)
        timing = results_path.parent / "seconds.txt"
        seconds = float(timing.read_text()) if timing.is_file() and len(results["studies"]) == 1 else None
        rows.append({"input": study["input"], "lesions": len(study["lesions"]),
                     "slice_interval_mm": round(interval, 3), "network_slices": network_slices,
                     "seconds": seconds, "seconds_per_network_slice":
                         None if seconds is None else round(seconds / network_slices, 2),
                     "scores": [round(lesion["score"], 4) for lesion in study["lesions"]],
                     "long_axes_mm": [round(lesion["long_axis_mm"], 1) for lesion in study["lesions"]],
                     "mask_fill_of_box_mean": round(float(np.mean(fills)), 3) if fills else None,
                     "long_axis_over_box_diagonal_mean": round(float(np.mean(axis_ratios)), 3) if axis_ratios else None})
    return rows


def mask_quality(data_dir: Path, weights: Path, split: str, num: int) -> dict:
    """Mask figures of ``weights`` on ``num`` key slices of ``split`` (module docstring, ``masks``)."""
    import torch
    from torchvision.ops import box_iou

    from ctlesion.checkpoint import load_detector
    from ctlesion.data.dataset import DeepLesionDataset
    from ctlesion.postprocess import recist_axes_mm

    model, _ = load_detector(weights)
    model.eval()
    dataset = DeepLesionDataset.for_detector(data_dir, split, model.config, with_masks=True)
    picked = np.random.default_rng(0).permutation(len(dataset))[:num]
    dice, fill, true_fill, axis_ratio, lesions = [], [], [], [], 0
    with torch.no_grad():
        for index in picked:
            image, interval, target = dataset[int(index)]
            output = model(image[None], torch.tensor([interval], dtype=torch.float32))[0]
            truth = target["masks"].numpy().astype(bool)
            lesions += len(truth)
            if not len(output["boxes"]) or not len(truth):
                continue
            iou = box_iou(output["boxes"], target["boxes"]).numpy()
            for g in range(len(truth)):
                candidates = np.flatnonzero(iou[:, g] >= 0.5)  # detections come sorted by score
                if not len(candidates):
                    continue
                mask = output["masks"][candidates[0], 0].numpy() >= 0.5
                ys, xs = np.nonzero(mask)
                if not len(xs):
                    dice.append(0.0)
                    continue
                dice.append(2 * (mask & truth[g]).sum() / (mask.sum() + truth[g].sum()))
                fill.append(mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)))
                tys, txs = np.nonzero(truth[g])
                true_fill.append(truth[g].sum() / ((txs.max() - txs.min() + 1) * (tys.max() - tys.min() + 1)))
                axis_ratio.append(recist_axes_mm(mask, (1.0, 1.0))[0]
                                  / np.hypot(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    mean = lambda values: round(float(np.mean(values)), 3) if values else None  # noqa: E731
    return {"data": str(data_dir), "split": split, "key_slices": len(picked), "lesions": lesions,
            "lesions_detected_iou_0_5": len(dice), "dice_mean": mean(dice), "mask_fill_of_box_mean": mean(fill),
            "true_mask_fill_of_box_mean": mean(true_fill), "long_axis_over_box_diagonal_mean": mean(axis_ratio),
            "rule": "per lesion, its highest-scoring detection with box IoU >= 0.5; mask = probability >= 0.5 "
                    "at the network's pixels"}


def paired_difference(data_dir: Path, split: str, path_a: Path, path_b: Path, resamples: int = 1000,
                      seed: int = 0) -> dict:
    """Sensitivity of B minus A at 0.5-16 FP per image and in avg[0.5-4], with a paired percentile
    bootstrap interval over images (Efron & Tibshirani 1993, ch. 13; the same resamples score both)."""
    evaluation_set = load_evaluation_set(data_dir, split)
    fps, averaged = averaged_rates(DEFAULT_FPS_PER_IMAGE, KEY_SLICE_LAYOUT)
    matchings = [_matching(evaluation_set, path) for path in (path_a, path_b)]
    everything = np.ones((1, len(evaluation_set.keys)), np.int64)
    point = [weighted_sensitivity(m, everything, fps)[0, :, 0] for m in matchings]
    draws = np.concatenate(list(resample_counts(len(evaluation_set.keys), resamples, seed)))
    samples = np.subtract(*(weighted_sensitivity(m, draws, fps)[:, :, 0] for m in matchings[::-1]))
    differences = np.column_stack([samples, samples[:, averaged].mean(axis=1)])
    interval = percentile_interval(differences)
    names = [f"at_{rate:g}_fp" for rate in fps] + ["avg_0.5_4"]
    values = np.append(point[1] - point[0], (point[1] - point[0])[averaged].mean())
    return {"split": split, "a": str(path_a), "b": str(path_b), "num_images": len(evaluation_set.keys),
            "resamples": resamples, "seed": seed,
            "b_minus_a": {name: {"difference": float(v), "ci95": [float(lo), float(hi)]}
                          for name, v, (lo, hi) in zip(names, values, interval)}}


def lesion_kinds(data_dir: Path, split: str) -> dict[str, list[str]]:
    """{key slice file name: the simulated lesion kind of each of its DL_info rows, in CSV order}.

    A row annotates a lesion of its series (``simulation.json``: lesions with their ``areas_px``
    per written slice, 0-based, and ``centre_zyx`` in written pixels for y and x): of the
    series' lesions with a section on the key slice, the one whose centre lies nearest the row
    box's centre in-plane.
    """
    simulation = json.loads((Path(data_dir) / "simulation.json").read_text())
    series = {(s["patient"], s["study"], s["series"]): s["lesions"] for s in simulation["series"]}
    kinds = {}
    for key in load_evaluation_set(data_dir, split).key_slices:
        patient, study, number = (int(part) for part in key.series_dir.split("_"))
        shown = [lesion for lesion in series[(patient, study, number)]
                 if lesion["areas_px"][key.slice_index - 1] > 0]
        centres = np.array([lesion["centre_zyx"][:0:-1] for lesion in shown])  # (L, 2) x, y
        box_centres = (key.boxes_px[:, :2] + key.boxes_px[:, 2:]) / 2
        nearest = np.linalg.norm(box_centres[:, None] - centres[None], axis=2).argmin(axis=1)
        kinds[key.file_name] = [shown[i]["kind"] for i in nearest]
    return kinds


def kind_sensitivity(data_dir: Path, split: str, predictions_path: Path, kinds: dict[str, list[str]]) -> dict:
    """Sensitivity at 0.5-16 FP per image (and avg[0.5-4]) of each lesion kind: a lesion table of
    :func:`ctlesion.evaluate.scoring.score_matching`, so the false positives are counted over every
    image of the split, as for the report's lesion types."""
    evaluation_set = load_evaluation_set(data_dir, split)
    per_lesion = np.array([kind for key in evaluation_set.keys for kind in kinds[key]])
    table = {name: per_lesion == name for name in sorted(set(per_lesion))}
    everything = {"all": np.ones(len(evaluation_set.keys), bool)}
    rows = score_matching(_matching(evaluation_set, predictions_path), KEY_SLICE_LAYOUT, everything,
                          {"kinds": table}, fps=DEFAULT_FPS_PER_IMAGE, resamples=0, seed=0).report["kinds"]
    return {name: {"lesions": row["num_lesions"],
                   **{f"at_{rate:g}_fp": value for rate, value in zip(DEFAULT_FPS_PER_IMAGE, row["sensitivity"])},
                   "avg_0.5_4": row["avg_0.5_4"]} for name, row in rows.items()}


def _contrast_hu(image_hu: np.ndarray, mask: np.ndarray, ring_px: int = 3) -> float:
    """Mean HU inside ``mask`` minus the median HU of the ``ring_px``-pixel ring around it (square
    dilation); (Y, X) HU image and (Y, X) bool mask of one key slice."""
    kernel = np.ones((2 * ring_px + 1, 2 * ring_px + 1), np.uint8)
    ring = (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & ~mask
    return float(image_hu[mask].mean() - np.median(image_hu[ring]))


def _found_counts(found_at: list[float | None]) -> dict:
    """Lesions found at <= 4 FP per image, found later, never found (``found_at``: None)."""
    hit = [f for f in found_at if f is not None]
    return {"lesions": len(found_at), "found_at_most_4_fp": sum(f <= 4 for f in hit),
            "found_later": sum(f > 4 for f in hit), "never": len(found_at) - len(hit)}


def lesion_misses(data_dir: Path, split: str, predictions_path: Path) -> dict:
    """Where a split's lesions are found (module docstring, ``misses``).

    ``found_at_fp_per_image`` is the number of false positives ranked above the lesion's first hit
    divided by the number of images (the DeepLesion FROC's x axis), None when no detection hits it.
    The true masks (``DATA/masks``, one per DL_info row: simulated sets, which have no noisy rows)
    give the contrast; without them it is None.

    Raises:
        CtlesionError: an unreadable key slice or masks file.
    """
    from ctlesion.data.mask_cache import read_true_masks, true_masks_path
    from ctlesion.io.deeplesion import read_png_hu

    evaluation_set = load_evaluation_set(data_dir, split)
    matching = _matching(evaluation_set, predictions_path)
    fp_above = _false_positives_so_far(matching)
    lesions, index = [], 0
    for key in evaluation_set.key_slices:
        masks = read_true_masks(true_masks_path(data_dir, key), tuple(key.image_size), key.num_lesions)
        if masks is not None:
            image_hu = read_png_hu(key.png_path(Path(data_dir) / "Images_png")).astype(np.float32)
        for row in range(key.num_lesions):
            rank = int(matching.hit_rank[index])
            index += 1
            found = float(fp_above[rank] / matching.num_images) if rank < matching.num_detections else None
            lesions.append({"file_name": key.file_name, "found_at_fp_per_image": found,
                            "long_mm": float(key.diameters_px[row, 0] * key.spacing_yx_mm[1]),
                            "contrast_hu": None if masks is None else round(_contrast_hu(image_hu, masks[row]), 1)})
    found_at = [lesion["found_at_fp_per_image"] for lesion in lesions]
    long_mm = np.array([lesion["long_mm"] for lesion in lesions])

    def by(groups: dict[str, np.ndarray]) -> dict:
        return {name: _found_counts([f for f, s in zip(found_at, select) if s]) for name, select in groups.items()}

    sizes = {"<10": long_mm < 10, "10-20": (long_mm >= 10) & (long_mm < 20), ">=20": long_mm >= 20}
    out = {"split": split, "predictions": str(predictions_path), **_found_counts(found_at), "by_size_mm": by(sizes)}
    if all(lesion["contrast_hu"] is not None for lesion in lesions):
        low = np.abs([lesion["contrast_hu"] for lesion in lesions]) < 40
        out["by_contrast_hu"] = by({"<40": low, ">=40": ~low})
    return {**out, "lesions_found": lesions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    threshold = commands.add_parser("threshold")
    threshold.add_argument("data", type=Path, help="DeepLesion-layout dataset (its DL_info.csv)")
    threshold.add_argument("predictions", type=Path, help="predictions.json of `ctlesion evaluate` on --split")
    threshold.add_argument("--split", default="val")
    threshold.add_argument("--max-fp-per-image", type=float, default=0.125)
    threshold.add_argument("--normal", type=Path, action="append", default=[],
                           help="results.json of `ctlesion detect --score-threshold 0.05` on CT without lesions")
    threshold.add_argument("--max-lesions-per-normal-study", type=int, default=1)
    real = commands.add_parser("real")
    real.add_argument("results", type=Path, nargs="+")
    real.add_argument("--out", type=Path)
    masks = commands.add_parser("masks")
    masks.add_argument("data", type=Path)
    masks.add_argument("weights", type=Path)
    masks.add_argument("--split", default="val")
    masks.add_argument("--num", type=int, default=60)
    masks.add_argument("--out", type=Path)
    paired = commands.add_parser("paired")
    paired.add_argument("data", type=Path)
    paired.add_argument("split")
    paired.add_argument("a", type=Path)
    paired.add_argument("b", type=Path)
    paired.add_argument("--resamples", type=int, default=1000)
    paired.add_argument("--out", type=Path)
    kinds = commands.add_parser("kinds")
    kinds.add_argument("data", type=Path)
    kinds.add_argument("split")
    kinds.add_argument("predictions", type=Path)
    kinds.add_argument("--out", type=Path)
    misses = commands.add_parser("misses")
    misses.add_argument("data", type=Path)
    misses.add_argument("split")
    misses.add_argument("predictions", type=Path)
    misses.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "threshold":
        point = choose_threshold(args.data, args.split, args.predictions, args.max_fp_per_image, args.normal,
                                 args.max_lesions_per_normal_study)
        info = json.loads(SIDECAR.read_text())
        info["operating_point"] = point
        SIDECAR.write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(point, indent=1))
        return 0
    if args.command == "kinds":
        mapping = lesion_kinds(args.data, args.split)
        figures = {"split": args.split, "predictions": str(args.predictions),
                   "sensitivity": kind_sensitivity(args.data, args.split, args.predictions, mapping),
                   "kinds": mapping}
        shown = figures["sensitivity"]  # the mapping goes to --out only
    elif args.command == "misses":
        figures = lesion_misses(args.data, args.split, args.predictions)
        shown = {name: value for name, value in figures.items() if name != "lesions_found"}  # per lesion: --out only
    elif args.command == "paired":
        figures = shown = paired_difference(args.data, args.split, args.a, args.b, args.resamples)
    elif args.command == "masks":
        figures = shown = mask_quality(args.data, args.weights, args.split, args.num)
    else:
        figures = shown = [row for path in args.results for row in study_figures(path)]
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(shown, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
