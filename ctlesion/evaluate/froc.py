"""DeepLesion FROC: sensitivity at a given number of false positives per image.

The protocol of the DeepLesion benchmark (Yan et al., CVPR 2018; the evaluation code released
with 3DCE, MULAN and AlignShift), SPEC section 8 and ``../shared/reference/README.md``:

1. The detections of all images are ranked together by descending score. Ties keep image
   order, then detection order (a stable sort; the released code's ``argsort()[::-1]`` leaves
   tie order unspecified, so tied scores are the only place results can differ from it).
2. A detection whose best IoU with the ground-truth boxes of its own image is below the
   threshold (or whose image has no boxes) is a false positive. Otherwise it marks every
   not-yet-hit box of its image with IoU >= threshold as hit; a detection that only overlaps
   boxes already hit is neither a true nor a false positive.
3. IoU uses the legacy inclusive-pixel convention: width = x2 - x1 + 1, height = y2 - y1 + 1.
   (It lives only here; the rest of ctlesion uses continuous coordinates, width = x2 - x1.)
4. After each ranked detection the curve has a point (false positives so far / images,
   boxes hit so far / boxes). The sensitivity at a false-positive rate is the linear
   interpolation of that curve, taking the top of each vertical run (``numpy.interp``
   semantics); rates beyond the curve's end take its last sensitivity. This reproduces the
   reference figures in ``../shared/reference/froc_reference.json``. (SciPy's ``interp1d``, used
   by some released scripts, takes the bottom of vertical runs instead: it can report one
   fewer hit exactly at a rate equal to a reachable false-positive count.)

Because a box is hit by the first-ranked detection that overlaps it by at least the threshold,
the whole curve is computed without a Python loop over detections: one IoU per (detection,
box of the same image) pair, a group maximum per detection (false positive or not) and a group
minimum of ranks per box (when it is hit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FPS_PER_IMAGE = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _as_boxes(array: np.ndarray, columns: int, what: str, image: int) -> np.ndarray:
    """Validate one image's (N, columns) array; size-0 input of any shape means "none"."""
    boxes = np.asarray(array, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, columns), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != columns:
        raise ValueError(f"{what} of image {image} must have shape (N, {columns}), got {boxes.shape}")
    if columns == 5 and np.isnan(boxes[:, 4]).any():
        raise ValueError(f"{what} of image {image} has NaN scores")
    if not np.isfinite(boxes[:, :4]).all():
        raise ValueError(f"{what} of image {image} has non-finite coordinates")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"{what} of image {image} has boxes with x2 < x1 or y2 < y1")
    return boxes


def _check_inputs(
    detections: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray], iou_threshold: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(detections) != len(ground_truth):
        raise ValueError(
            f"detections and ground_truth must have one entry per image, got {len(detections)} "
            f"and {len(ground_truth)}"
        )
    if len(detections) == 0:
        raise ValueError("no images to score (detections and ground_truth are empty)")
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    dets = [_as_boxes(d, 5, "detections", i) for i, d in enumerate(detections)]
    gts = [_as_boxes(g, 4, "ground_truth", i) for i, g in enumerate(ground_truth)]
    if sum(len(g) for g in gts) == 0:
        raise ValueError("ground_truth holds no boxes at all: sensitivity is undefined")
    return dets, gts


def inclusive_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of paired boxes in the legacy inclusive-pixel convention.

    Source: the DeepLesion evaluation code (``IOU`` in 3DCE/MULAN/AlignShift): widths and heights
    are ``x2 - x1 + 1`` and ``y2 - y1 + 1``; non-overlapping pairs give 0.

    Args:
        boxes_a: (K, 4) float64 boxes (x1, y1, x2, y2), pixels.
        boxes_b: (K, 4) float64 boxes, paired row by row with ``boxes_a``.

    Returns:
        (K,) float64 IoU values in [0, 1].
    """
    iw = np.minimum(boxes_a[:, 2], boxes_b[:, 2]) - np.maximum(boxes_a[:, 0], boxes_b[:, 0]) + 1.0
    ih = np.minimum(boxes_a[:, 3], boxes_b[:, 3]) - np.maximum(boxes_a[:, 1], boxes_b[:, 1]) + 1.0
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0] + 1.0) * (boxes_a[:, 3] - boxes_a[:, 1] + 1.0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0] + 1.0) * (boxes_b[:, 3] - boxes_b[:, 1] + 1.0)
    return inter / (area_a + area_b - inter)


def froc_curve(
    detections: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray], iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """The full FROC curve of the DeepLesion protocol (module docstring, rules 1-3).

    Args:
        detections: one (N_i, 5) array per image, rows (x1, y1, x2, y2, score), pixels; an
            image without detections may be an empty array.
        ground_truth: one (M_i, 4) array per image, rows (x1, y1, x2, y2), pixels (inclusive
            DeepLesion convention); an image without lesions may be an empty array.
        iou_threshold: minimum inclusive-pixel IoU for a hit (DeepLesion: 0.5).

    Returns:
        ``(fp_per_image, sensitivity)``: two (1 + total detections,) float64 arrays. Point 0 is
        (0, 0) (nothing accepted yet); point j is the state after the j-th ranked detection.
        ``fp_per_image`` is non-decreasing; ``sensitivity`` is a fraction in [0, 1].

    Raises:
        ValueError: lengths differ, no images, no ground-truth box at all, wrong array shapes,
            NaN scores, non-finite coordinates, boxes with x2 < x1 or y2 < y1, or an
            ``iou_threshold`` outside (0, 1].
    """
    dets, gts = _check_inputs(detections, ground_truth, iou_threshold)
    num_images = len(dets)
    det_counts = np.array([len(d) for d in dets], dtype=np.int64)
    gt_counts = np.array([len(g) for g in gts], dtype=np.int64)
    det_all = np.concatenate(dets)  # image-major, detection order within an image
    gt_all = np.concatenate(gts)
    num_dets, num_gts = len(det_all), len(gt_all)

    # Rank: stable sort by descending score (ties keep image order, then detection order).
    order = np.argsort(-det_all[:, 4], kind="stable")
    rank = np.empty(num_dets, dtype=np.int64)
    rank[order] = np.arange(num_dets)

    # Every (detection, box of the same image) pair, grouped by detection.
    det_image = np.repeat(np.arange(num_images), det_counts)
    gt_start = np.concatenate(([0], np.cumsum(gt_counts)[:-1]))
    pairs_per_det = gt_counts[det_image]
    pair_det = np.repeat(np.arange(num_dets), pairs_per_det)
    pair_first = np.concatenate(([0], np.cumsum(pairs_per_det)[:-1]))
    pair_gt = gt_start[det_image[pair_det]] + np.arange(len(pair_det)) - pair_first[pair_det]
    iou = inclusive_iou(det_all[pair_det, :4], gt_all[pair_gt])

    # False positive: best IoU below the threshold (or no box in its image).
    best_iou = np.zeros(num_dets)
    with_pairs = pairs_per_det > 0
    if with_pairs.any():
        best_iou[with_pairs] = np.maximum.reduceat(iou, pair_first[with_pairs])
    is_fp = best_iou < iou_threshold

    # A box is hit by the first-ranked detection overlapping it by >= the threshold (such a
    # detection is never a false positive, and it marks every such box not yet hit).
    hit_rank = np.full(num_gts, num_dets, dtype=np.int64)  # num_dets = never hit
    qualifying = iou >= iou_threshold
    np.minimum.at(hit_rank, pair_gt[qualifying], rank[pair_det[qualifying]])
    hits_at_rank = np.bincount(hit_rank, minlength=num_dets + 1)[:num_dets]

    fp_per_image = np.concatenate(([0.0], np.cumsum(is_fp[order]) / num_images))
    sensitivity = np.concatenate(([0.0], np.cumsum(hits_at_rank) / num_gts))
    return fp_per_image, sensitivity


def sensitivity_at_fps(
    detections: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    fps: Sequence[float] = DEFAULT_FPS_PER_IMAGE,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Sensitivity at given false-positive rates per image (DeepLesion FROC, SPEC section 8).

    Interpolates :func:`froc_curve` linearly, taking the top of each vertical run (a rate equal
    to a reachable count of false positives gets every hit made before the next false
    positive); rates beyond the curve's end take its last sensitivity. This is exactly
    "the sensitivity reached before the number of false positives exceeds rate x images".

    Args:
        detections: one (N_i, 5) array per image (x1, y1, x2, y2, score), pixels.
        ground_truth: one (M_i, 4) array per image (x1, y1, x2, y2), pixels, inclusive.
        fps: false positives per image at which to read the curve, each >= 0
            (DeepLesion: 0.5, 1, 2, 4, 8, 16).
        iou_threshold: minimum inclusive-pixel IoU for a hit (DeepLesion: 0.5).

    Returns:
        (len(fps),) float64 sensitivities, fractions in [0, 1].

    Raises:
        ValueError: as :func:`froc_curve`, or if a rate in ``fps`` is negative or not finite.
    """
    rates = np.asarray(fps, dtype=np.float64).reshape(-1)
    if not np.isfinite(rates).all() or (rates < 0).any():
        raise ValueError(f"fps must be finite rates >= 0, got {list(fps)}")
    fp_per_image, sensitivity = froc_curve(detections, ground_truth, iou_threshold)
    # Last curve point at or left of each rate, then linear interpolation to the next point.
    # The next point is a false positive, so the segment is flat: equals numpy.interp on the
    # curve with its repeated abscissae, but without relying on interp's tie handling.
    left = np.searchsorted(fp_per_image, rates, side="right") - 1
    right = np.minimum(left + 1, len(fp_per_image) - 1)
    span = fp_per_image[right] - fp_per_image[left]
    t = np.divide(rates - fp_per_image[left], span, out=np.zeros_like(rates), where=span > 0)
    return sensitivity[left] + t * (sensitivity[right] - sensitivity[left])
