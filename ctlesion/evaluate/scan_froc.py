"""Lesion-level 3D FROC per scan (LUNA16 style): sensitivity at false positives per scan.

Source: the LUNA16 challenge (Setio et al., "Validation, comparison, and combination of
algorithms for automatic detection of pulmonary nodules in computed tomography images",
Medical Image Analysis 42, 2017): lesion-level sensitivity against the average number of false
positives per scan, read at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP/scan (:data:`FPS_PER_SCAN`); the
competition performance metric (CPM) is the mean of those seven sensitivities (the ``mean`` of a
row); 95 % confidence intervals by bootstrapping scans.

The unit is the whole scan; the rules are those of the DeepLesion FROC
(:mod:`ctlesion.evaluate.froc`, rules 1-2, :func:`~ctlesion.evaluate.froc.match_overlaps`): the
predicted lesions of all scans are ranked together by descending score; one whose best overlap
with the ground-truth lesions of its own scan is below the threshold (or whose scan has no
lesion) is a false positive; a ground-truth lesion is hit by the first-ranked prediction that
overlaps it by >= the threshold; a prediction that only overlaps lesions already hit is neither a
true nor a false positive (LUNA16: several candidates in one nodule count once). A prediction
overlapping several lesions enough hits them all. Sensitivities are read off the curve as in
:mod:`ctlesion.evaluate.froc` (rule 4: top of vertical runs, last sensitivity beyond the end).
Tied scores keep scan order, then prediction order (rule 1); LUNA16's released script builds its
curve per distinct score instead, so tied scores are where figures can differ from it.

Overlaps (:func:`scan_overlaps`), from a predicted and a ground-truth label map of one grid:

* ``"centre"``: 1 where the predicted lesion's centre lies inside the ground-truth lesion, else
  0: the label-map counterpart of LUNA16's hit rule (a candidate hits a nodule when its location
  lies within the nodule's radius of the nodule's centre; here: within the lesion's mask). The
  centre is the centroid of the predicted lesion's voxels rounded to the nearest voxel (halves
  round up); it may fall outside the lesion's own voxels (a crescent), and it is the centre that
  counts. Any threshold in (0, 1] gives the same hits (use 1.0).
* ``"iou"``: the 3D intersection over union of the two voxel sets. The threshold is the IoU a
  hit needs, inclusive (``IoU >= threshold``, as DeepLesion's IoU >= 0.5); nnDetection
  (Baumgartner et al., MICCAI 2021) reports FROC at IoU 0.1.

The report (:func:`score_scans`) has the scans of all slice intervals, thin scans
(interval <= 2 mm) and thick scans (>= 5 mm), each subset scored on its own scans, the
thin-minus-thick gap of the CPM, and the CPM per size band of the lesions' long axis (false
positives per scan over all scans), the machinery of :func:`ctlesion.evaluate.scoring.score_matching`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from ctlesion.choices import SCAN_CRITERIA
from ctlesion.evaluate.froc import match_overlaps
from ctlesion.evaluate.scoring import (
    INTERVAL_TOLERANCE_MM,
    ReportLayout,
    Scores,
    averaged_rates,
    image_subset_masks,
    score_matching,
    size_band_masks,
)

#: False positives per scan at which LUNA16 reads the FROC (Setio et al. 2017); their mean is the CPM.
FPS_PER_SCAN = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


#: Scan subsets by slice interval: JSON name -> label.
SCAN_SUBSETS: dict[str, str] = {"all": "all", "thin_le_2mm": "thin (<= 2 mm)", "thick_ge_5mm": "thick (>= 5 mm)"}

#: Per-scan reports: the CPM (mean over every rate given, LUNA16) under the key ``mean``.
SCAN_LAYOUT = ReportLayout(
    unit="scan", mean_key="mean", mean_label="CPM", max_averaged_rate=math.inf,
    thin="thin_le_2mm", thick="thick_ge_5mm",
)


def _check_label_map(labels: np.ndarray, count: int, what: str) -> np.ndarray:
    """Validate one (Z, Y, X) integer label map with labels 0..count; return it as an array."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{what} must be a (Z, Y, X) label map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must hold integer labels, got dtype {labels.dtype}")
    if count < 0:
        raise ValueError(f"the number of {what} lesions must be >= 0, got {count}")
    if labels.min(initial=0) < 0:
        raise ValueError(f"{what} holds negative labels")
    if labels.max(initial=0) > count:
        raise ValueError(f"{what} holds label {labels.max()} above its {count} lesions")
    return labels


def _centre_overlaps(predicted: np.ndarray, num_predicted: int, truth: np.ndarray, num_truth: int) -> np.ndarray:
    """(P, G): 1.0 where predicted lesion p's rounded centroid lies in ground-truth lesion g."""
    flat = np.flatnonzero(predicted.ravel() != 0)
    labels = predicted.ravel()[flat].astype(np.int64)
    voxels = np.bincount(labels, minlength=num_predicted + 1)[1:]
    present = np.flatnonzero(voxels)
    centre = tuple(
        np.floor(np.bincount(labels, weights=axis, minlength=num_predicted + 1)[1:][present] / voxels[present] + 0.5)
        .astype(np.int64)
        for axis in np.unravel_index(flat, predicted.shape)
    )
    overlaps = np.zeros((num_predicted, num_truth))
    inside = truth[centre].astype(np.int64)
    overlaps[present[inside > 0], inside[inside > 0] - 1] = 1.0
    return overlaps


def _iou_overlaps(predicted: np.ndarray, num_predicted: int, truth: np.ndarray, num_truth: int) -> np.ndarray:
    """(P, G) 3D IoU of the voxel sets, every intersection from one joint histogram of the labels."""
    either = np.flatnonzero((predicted.ravel() != 0) | (truth.ravel() != 0))
    pair = predicted.ravel()[either].astype(np.int64) * (num_truth + 1) + truth.ravel()[either].astype(np.int64)
    joint = np.bincount(pair, minlength=(num_predicted + 1) * (num_truth + 1)).reshape(num_predicted + 1, -1)
    intersection = joint[1:, 1:]
    union = joint[1:].sum(axis=1)[:, None] + joint[:, 1:].sum(axis=0)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros(intersection.shape), where=union > 0)


def scan_overlaps(
    predicted_zyx: np.ndarray, num_predicted: int, truth_zyx: np.ndarray, num_truth: int, criterion: str
) -> np.ndarray:
    """Overlap of each predicted lesion with each ground-truth lesion of one scan (module docstring).

    Args:
        predicted_zyx: (Z, Y, X) integer label map, predicted lesions labelled 1..P, 0 background.
        num_predicted: P, the number of predicted lesions (a label without voxels is allowed).
        truth_zyx: (Z, Y, X) integer label map of the same grid, ground-truth lesions 1..G.
        num_truth: G, the number of ground-truth lesions.
        criterion: ``"centre"`` (is the predicted lesion's rounded centroid, in voxel indices,
            inside the lesion: 1.0 or 0.0; a predicted label without voxels gives a row of 0) or
            ``"iou"`` (3D IoU of the voxel sets, in [0, 1]).

    Returns:
        (P, G) float64 overlaps, row p - 1 for predicted label p, column g - 1 for lesion g; fed
        to :func:`score_scans` with the predictions' scores.

    Raises:
        ValueError: unknown criterion, maps that are not 3-D, differ in shape or are not integer,
            negative counts or labels, or labels above the given counts.
    """
    if criterion not in SCAN_CRITERIA:
        raise ValueError(f"criterion must be one of {SCAN_CRITERIA}, got {criterion!r}")
    num_predicted, num_truth = operator.index(num_predicted), operator.index(num_truth)
    predicted = _check_label_map(predicted_zyx, num_predicted, "predicted_zyx")
    truth = _check_label_map(truth_zyx, num_truth, "truth_zyx")
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted_zyx and truth_zyx must share one grid, got {predicted.shape} and {truth.shape}")
    overlap_fn = _centre_overlaps if criterion == "centre" else _iou_overlaps
    return overlap_fn(predicted, num_predicted, truth, num_truth)


def scan_subset_masks(slice_interval_mm: np.ndarray) -> dict[str, np.ndarray]:
    """(num_scans,) bool masks of :data:`SCAN_SUBSETS` from each scan's slice interval (mm).

    Thin is the key slices' thin (:func:`ctlesion.evaluate.scoring.image_subset_masks`,
    <= 2 mm); thick is >= 5 mm (up to :data:`~ctlesion.evaluate.scoring.INTERVAL_TOLERANCE_MM`).
    """
    interval = np.asarray(slice_interval_mm, dtype=np.float64)
    key_slice = image_subset_masks(interval)
    return {"all": key_slice["all"], "thin_le_2mm": key_slice["thin_le_2mm"],
            "thick_ge_5mm": interval >= 5.0 - INTERVAL_TOLERANCE_MM}


def _per_item(values: Sequence[float], length: int, name: str, minimum: float, strict: bool) -> np.ndarray:
    """Validate a (length,) array of finite values above ``minimum`` (or at least it, not ``strict``)."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {array.shape}")
    low = array <= minimum if strict else array < minimum
    if not np.isfinite(array).all() or low.any():
        raise ValueError(f"{name} must be finite and {'>' if strict else '>='} {minimum:g}")
    return array


def score_scans(
    scores: Sequence[np.ndarray],
    overlaps: Sequence[np.ndarray],
    *,
    threshold: float,
    slice_interval_mm: Sequence[float],
    lesion_long_axis_mm: Sequence[float],
    fps: Sequence[float] = FPS_PER_SCAN,
    resamples: int = 1000,
    seed: int = 0,
) -> Scores:
    """Lesion-level FROC per scan (LUNA16), by slice interval and lesion size, with bootstrap CIs.

    Args:
        scores: one (P_i,) float array of predicted-lesion scores per scan (higher = more confident).
        overlaps: one (P_i, G_i) float array per scan, e.g. :func:`scan_overlaps` (a scan without
            lesions: shape (P_i, 0); they are allowed and add false positives).
        threshold: minimum overlap for a hit, inclusive, in (0, 1]: the IoU for ``"iou"``
            overlaps (nnDetection: 0.1); any value for the 0/1 ``"centre"`` overlaps (e.g. 1.0).
        slice_interval_mm: (num_scans,) slice interval of each scan, mm, > 0.
        lesion_long_axis_mm: (G,) long axis of each ground-truth lesion, mm, >= 0, lesions of
            all scans concatenated in scan order (column order within a scan).
        fps: false positives per scan at which sensitivity is read (LUNA16: :data:`FPS_PER_SCAN`);
            the ``mean`` (CPM) averages all of them.
        resamples: bootstrap resamples of scans (0: no confidence intervals).
        seed: bootstrap seed.

    Returns:
        :class:`~ctlesion.evaluate.scoring.Scores`. ``report["summary"]`` maps ``fps_per_scan`` to
        the rates and each subset of :data:`SCAN_SUBSETS` holding lesions to a row
        ``{"sensitivity": [K fractions], "mean", "num_scans", "num_lesions"[, "ci95":
        {"sensitivity": [[lo, hi]] * K, "mean": [lo, hi]}]}``, plus ``thin_minus_thick_mean``
        (and ``thin_minus_thick_mean_ci95``) when both subsets exist. ``report["lesion_sizes"]``
        maps the size bands holding lesions (:func:`ctlesion.evaluate.scoring.size_band_masks`:
        < 10, 10-30, > 30 mm) to rows with ``num_lesions`` and ``num_scans_with_lesions``.
        ``curves`` maps each reported subset to ``(fp_per_scan, sensitivity)``.

    Raises:
        ValueError: no scan, no lesion in any scan, lengths or shapes that do not fit, NaN scores,
            non-finite or negative overlaps, ``threshold`` outside (0, 1], bad rates (empty,
            negative, not finite), non-positive or non-finite slice intervals, bad long axes, or
            ``resamples`` < 0.
    """
    averaged_rates(fps, SCAN_LAYOUT)  # fail before the matching
    matching = match_overlaps(scores, overlaps, threshold)
    interval = _per_item(slice_interval_mm, matching.num_images, "slice_interval_mm", 0.0, strict=True)
    long_axis = _per_item(lesion_long_axis_mm, len(matching.lesion_image), "lesion_long_axis_mm", 0.0, strict=False)
    return score_matching(matching, SCAN_LAYOUT, scan_subset_masks(interval),
                          {"lesion_sizes": size_band_masks(long_axis)}, fps=fps, resamples=resamples, seed=seed)
