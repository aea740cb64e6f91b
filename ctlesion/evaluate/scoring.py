"""Scoring a split: FROC overall, by slice interval, by lesion type and size, with bootstrap CIs.

SPEC section 8 and issue 5:

* Image subsets by the series' slice interval: thin (<= 2 mm), thick (== 5 mm) and > 2 mm,
  each scored on its own images (its false positives over its own images).
* Lesion groups: ``Coarse_lesion_type`` (DeepLesion's eight coarse types) and the long RECIST
  diameter (< 10 mm, 10-30 mm, > 30 mm). A group changes which lesions the sensitivity is
  taken over; false positives per image stay those of all images of the split (the usual
  per-type breakdown, e.g. Yan et al. CVPR 2018, Table 2).
* avg[0.5-4]: the mean sensitivity at the rates <= 4 false positives per image (0.5, 1, 2, 4).
* 95 % confidence intervals: percentile bootstrap over images (:mod:`ctlesion.evaluate.bootstrap`).
  Every resample draws from all images of the split; a subset or group is scored on the drawn
  images it holds, so the thin-minus-thick gap gets its own interval. Resamples that draw no
  lesion of a group are left out of that group's interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctlesion.evaluate.bootstrap import percentile_interval, resample_counts
from ctlesion.evaluate.froc import (
    DEFAULT_FPS_PER_IMAGE,
    Matching,
    curve_from_matching,
    match_detections,
    weighted_sensitivity,
)
from ctlesion.evaluate.split import EvaluationSet

logger = logging.getLogger(__name__)

#: Image subsets by slice interval: JSON name -> label.
IMAGE_SUBSETS: dict[str, str] = {
    "all": "all",
    "thin_le_2mm": "thin (<= 2 mm)",
    "thick_5mm": "thick (5 mm)",
    "thick_gt_2mm": "> 2 mm",
}

#: DeepLesion ``Coarse_lesion_type`` codes (Yan et al., CVPR 2018); -1 marks unlabelled lesions.
LESION_TYPES: dict[int, str] = {
    1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney", 7: "soft_tissue", 8: "pelvis",
}

#: Size bands of the long RECIST diameter d: JSON name -> label (d < 10, 10 <= d <= 30, d > 30 mm).
SIZE_BANDS: dict[str, str] = {"lt_10mm": "< 10 mm", "10_30mm": "10-30 mm", "gt_30mm": "> 30 mm"}

#: Coverage of the confidence intervals.
CI_LEVEL = 0.95


@dataclass(frozen=True, eq=False)
class Scores:
    """The figures of one scored split.

    Attributes:
        report: JSON-ready ``{"summary", "lesion_types", "lesion_sizes"}`` (see :func:`score_split`).
        curves: image subset name -> ``(fp_per_image, sensitivity)`` FROC curve, for plots.
        matching: the matching outcome the figures come from.
    """

    report: dict
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    matching: Matching


def image_subset_masks(slice_interval_mm: np.ndarray) -> dict[str, np.ndarray]:
    """(num_images,) bool masks of :data:`IMAGE_SUBSETS` from each image's slice interval (mm)."""
    interval = np.asarray(slice_interval_mm, dtype=np.float64)
    return {
        "all": np.ones(interval.shape, dtype=bool),
        "thin_le_2mm": interval <= 2.0,
        "thick_5mm": np.abs(interval - 5.0) < 1e-6,
        "thick_gt_2mm": interval > 2.0,
    }


def lesion_type_masks(lesion_types: np.ndarray) -> dict[str, np.ndarray]:
    """(G,) bool masks per coarse lesion type present, in code order (-1 and unknown codes: ``unknown``)."""
    types = np.asarray(lesion_types)
    masks = {LESION_TYPES[code]: types == code for code in sorted(LESION_TYPES) if (types == code).any()}
    unknown = ~np.isin(types, list(LESION_TYPES))
    if unknown.any():
        masks["unknown"] = unknown
    return masks


def size_band_masks(long_diameter_mm: np.ndarray) -> dict[str, np.ndarray]:
    """(G,) bool masks of :data:`SIZE_BANDS` (d < 10, 10 <= d <= 30, d > 30 mm) for bands holding lesions."""
    d = np.asarray(long_diameter_mm, dtype=np.float64)
    masks = {"lt_10mm": d < 10.0, "10_30mm": (d >= 10.0) & (d <= 30.0), "gt_30mm": d > 30.0}
    return {name: mask for name, mask in masks.items() if mask.any()}


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _row(sens: np.ndarray, avg_mask: np.ndarray, samples: np.ndarray | None, **counts: int) -> dict:
    """One table row: sensitivities (K,), their avg[0.5-4], counts, and CIs from (R, K) samples."""
    row = {"sensitivity": [float(s) for s in sens], "avg_0.5_4": float(np.mean(sens[avg_mask])), **counts}
    if samples is not None:
        bounds = percentile_interval(samples, CI_LEVEL)
        avg_bounds = percentile_interval(samples[:, avg_mask].mean(axis=1), CI_LEVEL)
        row["ci95"] = {
            "sensitivity": [[_json_float(lo), _json_float(hi)] for lo, hi in bounds],
            "avg_0.5_4": [_json_float(v) for v in avg_bounds],
        }
    return row


def score_split(
    evaluation_set: EvaluationSet,
    detections: Sequence[np.ndarray],
    *,
    fps: Sequence[float] = DEFAULT_FPS_PER_IMAGE,
    iou_threshold: float = 0.5,
    criterion: str = "iou",
    resamples: int = 1000,
    seed: int = 0,
) -> Scores:
    """Score detections on the images of a split, with breakdowns and bootstrap CIs.

    Args:
        evaluation_set: the images and lesions (:func:`ctlesion.evaluate.split.load_evaluation_set`).
        detections: one (N_i, 5) float64 array (x1, y1, x2, y2, score) per image of
            ``evaluation_set``, in its order, source pixels.
        fps: false positives per image at which sensitivity is read; avg[0.5-4] averages those <= 4.
        iou_threshold: minimum overlap for a hit.
        criterion: ``"iou"`` (DeepLesion) or ``"iobb"``.
        resamples: bootstrap resamples (0: no confidence intervals).
        seed: bootstrap seed.

    Returns:
        :class:`Scores`. ``report["summary"]`` maps ``fps_per_image`` to the rates and each image
        subset holding lesions (:data:`IMAGE_SUBSETS`) to a row ``{"sensitivity": [K fractions],
        "avg_0.5_4", "num_images", "num_lesions"[, "ci95": {"sensitivity": [[lo, hi]] * K,
        "avg_0.5_4": [lo, hi]}]}``, plus ``thin_minus_thick_avg_0.5_4`` (and its ``_ci95``) when
        both subsets exist. ``report["lesion_types"]`` and ``report["lesion_sizes"]`` map group
        names to rows with ``num_lesions`` and ``num_images_with_lesions``.

    Raises:
        ValueError: if ``detections`` does not fit the images, holds bad boxes, or no rate is <= 4.
    """
    rates = np.asarray(fps, dtype=np.float64)
    avg_mask = rates <= 4.0
    if not avg_mask.any():
        raise ValueError(f"avg[0.5-4] needs a rate <= 4 among fps, got {list(fps)}")
    matching = match_detections(detections, evaluation_set.ground_truth, iou_threshold, criterion)
    lesion_image = matching.lesion_image
    subsets = {name: mask for name, mask in image_subset_masks(evaluation_set.slice_interval_mm).items()
               if mask[lesion_image].any()}
    groups = {**lesion_type_masks(evaluation_set.lesion_types), **size_band_masks(evaluation_set.long_diameter_mm)}
    all_columns = np.column_stack([np.ones(len(lesion_image), bool), *groups.values()])

    def sensitivities(weights: np.ndarray, name: str) -> np.ndarray:
        return weighted_sensitivity(matching, weights, rates, all_columns if name == "all" else None)

    point = {name: sensitivities(mask[None].astype(np.int64), name)[0] for name, mask in subsets.items()}
    samples: dict[str, np.ndarray | None] = dict.fromkeys(subsets)
    if resamples > 0:
        started = time.perf_counter()
        blocks: dict[str, list[np.ndarray]] = {name: [] for name in subsets}
        for counts in resample_counts(matching.num_images, resamples, seed):
            for name, mask in subsets.items():
                blocks[name].append(sensitivities(counts * mask, name))
        samples = {name: np.concatenate(block) for name, block in blocks.items()}
        logger.info("bootstrap: %d resamples of %d images in %.1f s", resamples, matching.num_images,
                    time.perf_counter() - started)

    summary: dict = {"fps_per_image": [float(r) for r in rates]}
    for name, mask in subsets.items():
        block = samples[name]
        summary[name] = _row(point[name][:, 0], avg_mask, None if block is None else block[:, :, 0],
                             num_images=int(mask.sum()), num_lesions=int(mask[lesion_image].sum()))
    if "thin_le_2mm" in summary and "thick_5mm" in summary:
        summary["thin_minus_thick_avg_0.5_4"] = summary["thin_le_2mm"]["avg_0.5_4"] - summary["thick_5mm"]["avg_0.5_4"]
        if samples["thin_le_2mm"] is not None:
            gap = (samples["thin_le_2mm"][:, avg_mask, 0].mean(axis=1)
                   - samples["thick_5mm"][:, avg_mask, 0].mean(axis=1))
            summary["thin_minus_thick_avg_0.5_4_ci95"] = [_json_float(v) for v in percentile_interval(gap, CI_LEVEL)]

    breakdown: dict[str, dict] = {"lesion_types": {}, "lesion_sizes": {}}
    for column, (name, mask) in enumerate(groups.items(), start=1):
        table = "lesion_types" if name not in SIZE_BANDS else "lesion_sizes"
        block = samples["all"]
        breakdown[table][name] = _row(point["all"][:, column], avg_mask, None if block is None else block[:, :, column],
                                      num_lesions=int(mask.sum()),
                                      num_images_with_lesions=len(np.unique(lesion_image[mask])))
    curves = {name: curve_from_matching(matching, mask) for name, mask in subsets.items()}
    return Scores(report={"summary": summary, **breakdown}, curves=curves, matching=matching)
