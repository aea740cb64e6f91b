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

The subset / group / bootstrap machinery (:func:`score_matching`) works on any
:class:`~ctlesion.evaluate.froc.Matching`; a :class:`ReportLayout` names its unit, its averaged
rates and its thin / thick subsets. :func:`score_split` is it for key slices
(:data:`KEY_SLICE_LAYOUT`); :func:`ctlesion.evaluate.scan_froc.score_scans` for whole scans.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
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

#: Tolerance (mm) of a slice interval's comparison with a nominal one: intervals measured from
#: DICOM positions carry float round-off.
INTERVAL_TOLERANCE_MM = 1e-6


@dataclass(frozen=True)
class ReportLayout:
    """The names and the averaged rates of one kind of FROC report (:func:`score_matching`).

    Attributes:
        unit: what false positives are counted over, ``"image"`` or ``"scan"``; it names the
            report's keys ``fps_per_<unit>``, ``num_<unit>s`` and ``num_<unit>s_with_lesions``.
        mean_key: key of a row's mean sensitivity (``"avg_0.5_4"``, ``"mean"``).
        mean_label: that mean's name in messages (``"avg[0.5-4]"``).
        max_averaged_rate: the mean averages the rates <= this (``math.inf``: every rate).
        thin: image subset on the left of the ``thin_minus_thick_<mean_key>`` gap.
        thick: image subset on its right.
    """

    unit: str
    mean_key: str
    mean_label: str
    max_averaged_rate: float
    thin: str
    thick: str


#: Key slices (SPEC section 8): avg[0.5-4] is the mean sensitivity at the rates <= 4 FP/image.
KEY_SLICE_LAYOUT = ReportLayout(
    unit="image", mean_key="avg_0.5_4", mean_label="avg[0.5-4]", max_averaged_rate=4.0,
    thin="thin_le_2mm", thick="thick_5mm",
)


@dataclass(frozen=True, eq=False)
class Scores:
    """The figures of one scored split.

    Attributes:
        report: JSON-ready ``{"summary", <lesion tables>}`` (see :func:`score_matching`; key
            slices: ``{"summary", "lesion_types", "lesion_sizes"}``, :func:`score_split`).
        curves: image subset name -> ``(fp_per_image, sensitivity)`` FROC curve, for plots (the
            false positives per image, or per scan).
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
        "thick_5mm": np.abs(interval - 5.0) < INTERVAL_TOLERANCE_MM,
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


def _row(sens: np.ndarray, mean_mask: np.ndarray, mean_key: str, samples: np.ndarray | None, **counts: int) -> dict:
    """One table row: sensitivities (K,), their mean over ``mean_mask``, counts, and CIs from (R, K) samples."""
    row = {"sensitivity": [float(s) for s in sens], mean_key: float(np.mean(sens[mean_mask])), **counts}
    if samples is not None:
        bounds = percentile_interval(samples, CI_LEVEL)
        mean_bounds = percentile_interval(samples[:, mean_mask].mean(axis=1), CI_LEVEL)
        row["ci95"] = {
            "sensitivity": [[_json_float(lo), _json_float(hi)] for lo, hi in bounds],
            mean_key: [_json_float(v) for v in mean_bounds],
        }
    return row


def averaged_rates(fps: Sequence[float], layout: ReportLayout) -> tuple[np.ndarray, np.ndarray]:
    """The rates of ``fps`` and which of them the layout's mean averages.

    Args:
        fps: false-positive rates (per image or per scan).
        layout: the report's :class:`ReportLayout`.

    Returns:
        ``(rates, mean_mask)``: (K,) float64 rates and (K,) bool, rates <= ``layout.max_averaged_rate``.

    Raises:
        ValueError: if no rate is averaged (e.g. key slices: no rate <= 4, or ``fps`` is empty).
    """
    rates = np.asarray(fps, dtype=np.float64)
    mean_mask = rates <= layout.max_averaged_rate
    if not mean_mask.any():
        wanted = "a rate" if math.isinf(layout.max_averaged_rate) else f"a rate <= {layout.max_averaged_rate:g}"
        raise ValueError(f"{layout.mean_label} needs {wanted} among fps, got {list(fps)}")
    return rates, mean_mask


def _check_masks(subsets: Mapping[str, np.ndarray], groups: list[np.ndarray], matching: Matching) -> None:
    if "all" not in subsets or not np.asarray(subsets["all"], dtype=bool).all():
        raise ValueError('subsets must hold "all", every image selected')
    for name, mask in subsets.items():
        if np.shape(mask) != (matching.num_images,):
            raise ValueError(f"subset {name!r} must have shape ({matching.num_images},), got {np.shape(mask)}")
    for mask in groups:
        if np.shape(mask) != matching.lesion_image.shape:
            raise ValueError(f"lesion groups must have shape {matching.lesion_image.shape}, got {np.shape(mask)}")


def _sensitivities(
    matching: Matching, rates: np.ndarray, subsets: dict[str, np.ndarray], all_columns: np.ndarray,
    resamples: int, seed: int, unit: str,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """Point estimates (K, S) and bootstrap samples (R, K, S) per subset; S > 1 for ``"all"`` only."""

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
        logger.info("bootstrap: %d resamples of %d %ss in %.1f s", resamples, matching.num_images, unit,
                    time.perf_counter() - started)
    return point, samples


def _summary(
    layout: ReportLayout, rates: np.ndarray, mean_mask: np.ndarray, subsets: dict[str, np.ndarray],
    lesion_image: np.ndarray, point: dict[str, np.ndarray], samples: dict[str, np.ndarray | None],
) -> dict:
    """``report["summary"]``: the rates, a row per subset, and the thin-minus-thick gap (module docstring)."""
    mean_key = layout.mean_key
    summary: dict = {f"fps_per_{layout.unit}": [float(r) for r in rates]}
    for name, mask in subsets.items():
        block = samples[name]
        summary[name] = _row(point[name][:, 0], mean_mask, mean_key, None if block is None else block[:, :, 0],
                             **{f"num_{layout.unit}s": int(mask.sum()), "num_lesions": int(mask[lesion_image].sum())})
    if layout.thin in summary and layout.thick in summary:
        gap_key = f"thin_minus_thick_{mean_key}"
        summary[gap_key] = summary[layout.thin][mean_key] - summary[layout.thick][mean_key]
        if samples[layout.thin] is not None:
            gap = (samples[layout.thin][:, mean_mask, 0].mean(axis=1)
                   - samples[layout.thick][:, mean_mask, 0].mean(axis=1))
            summary[f"{gap_key}_ci95"] = [_json_float(v) for v in percentile_interval(gap, CI_LEVEL)]
    return summary


def score_matching(
    matching: Matching,
    layout: ReportLayout,
    subsets: Mapping[str, np.ndarray],
    lesion_tables: Mapping[str, Mapping[str, np.ndarray]],
    *,
    fps: Sequence[float],
    resamples: int,
    seed: int,
) -> Scores:
    """Score a matching overall, on subsets of images, per lesion group, with bootstrap CIs.

    Shared by key slices (:func:`score_split`) and whole scans
    (:func:`ctlesion.evaluate.scan_froc.score_scans`); the rules are those of the module
    docstring, "image" standing for the unit of ``layout``.

    Args:
        matching: from :func:`ctlesion.evaluate.froc.match_overlaps` (or ``match_detections``).
        layout: the report's names and averaged rates (:class:`ReportLayout`).
        subsets: name -> (num_images,) bool image subset, each scored on its own images; must
            hold ``"all"`` (every image). Subsets without lesions are left out of the report.
        lesion_tables: table name -> {group name -> (G,) bool lesion group} (lesions in
            ``matching`` order); groups are scored over all images.
        fps: false-positive rates (per unit) at which sensitivity is read.
        resamples: bootstrap resamples over images (0: no confidence intervals).
        seed: bootstrap seed.

    Returns:
        :class:`Scores` with ``report = {"summary": ..., **tables}``. ``summary`` maps
        ``fps_per_<unit>`` to the rates and each subset holding lesions to a row
        ``{"sensitivity": [K fractions], <mean_key>, "num_<unit>s", "num_lesions"[, "ci95":
        {"sensitivity": [[lo, hi]] * K, <mean_key>: [lo, hi]}]}``, plus
        ``thin_minus_thick_<mean_key>`` (and its ``_ci95``) when both subsets exist. Each table
        maps group names to rows with ``num_lesions`` and ``num_<unit>s_with_lesions``.
        ``curves`` holds one curve per reported subset.

    Raises:
        ValueError: if no rate is averaged, a rate is negative or not finite, ``subsets`` lacks
            ``"all"``, a mask has the wrong shape, or ``resamples`` < 0.
    """
    rates, mean_mask = averaged_rates(fps, layout)
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    groups = [(table, name, np.asarray(mask, dtype=bool)) for table, masks in lesion_tables.items()
              for name, mask in masks.items()]
    _check_masks(subsets, [mask for _, _, mask in groups], matching)
    lesion_image = matching.lesion_image
    kept = {name: np.asarray(mask, dtype=bool) for name, mask in subsets.items()}
    kept = {name: mask for name, mask in kept.items() if mask[lesion_image].any()}
    all_columns = np.column_stack([np.ones(len(lesion_image), bool), *(mask for _, _, mask in groups)])
    point, samples = _sensitivities(matching, rates, kept, all_columns, resamples, seed, layout.unit)

    tables: dict[str, dict] = {table: {} for table in lesion_tables}
    for column, (table, name, mask) in enumerate(groups, start=1):
        block = samples["all"]
        tables[table][name] = _row(point["all"][:, column], mean_mask, layout.mean_key,
                                   None if block is None else block[:, :, column], num_lesions=int(mask.sum()),
                                   **{f"num_{layout.unit}s_with_lesions": len(np.unique(lesion_image[mask]))})
    summary = _summary(layout, rates, mean_mask, kept, lesion_image, point, samples)
    curves = {name: curve_from_matching(matching, mask) for name, mask in kept.items()}
    return Scores(report={"summary": summary, **tables}, curves=curves, matching=matching)


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

    :func:`score_matching` with :data:`KEY_SLICE_LAYOUT`, the image subsets of
    :func:`image_subset_masks` and the lesion tables ``lesion_types`` (:func:`lesion_type_masks`)
    and ``lesion_sizes`` (:func:`size_band_masks`).

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
        ValueError: if ``detections`` does not fit the images, holds bad boxes, no rate is <= 4,
            or ``resamples`` < 0.
    """
    averaged_rates(fps, KEY_SLICE_LAYOUT)  # fail before the matching
    matching = match_detections(detections, evaluation_set.ground_truth, iou_threshold, criterion)
    tables = {"lesion_types": lesion_type_masks(evaluation_set.lesion_types),
              "lesion_sizes": size_band_masks(evaluation_set.long_diameter_mm)}
    return score_matching(matching, KEY_SLICE_LAYOUT, image_subset_masks(evaluation_set.slice_interval_mm), tables,
                          fps=fps, resamples=resamples, seed=seed)
