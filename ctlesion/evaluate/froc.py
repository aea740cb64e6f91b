"""DeepLesion FROC: sensitivity at a given number of false positives per image.

The protocol of the DeepLesion benchmark (Yan et al., CVPR 2018; the evaluation code released
with 3DCE, MULAN and AlignShift), SPEC section 8 and ``../shared/reference/README.md``:

1. The detections of all images are ranked together by descending score. Ties keep image
   order, then detection order (a stable sort; the released code's ``argsort()[::-1]`` leaves
   tie order unspecified, so tied scores are the only place results can differ from it).
   :mod:`ctlesion.evaluate.scoring` orders images by ``File_name``, as the released code does
   (``np.unique`` of the file names).
2. A detection whose best overlap with the ground-truth boxes of its own image is below the
   threshold (or whose image has no boxes) is a false positive. Otherwise it marks every
   not-yet-hit box of its image with overlap >= threshold as hit; a detection that only
   overlaps boxes already hit is neither a true nor a false positive.
3. The overlap is the IoU in the legacy inclusive-pixel convention: width = x2 - x1 + 1,
   height = y2 - y1 + 1 (criterion ``"iou"``, the DeepLesion protocol). The ``"iobb"``
   criterion (intersection over the detected box's area, same convention) is the variant of
   3DCE/MULAN-style 3D work. (The +1 convention lives only here; the rest of ctlesion uses
   continuous coordinates, width = x2 - x1.)
4. After each ranked detection the curve has a point (false positives so far / images,
   boxes hit so far / boxes). The sensitivity at a false-positive rate is the linear
   interpolation of that curve, taking the top of each vertical run (``numpy.interp``
   semantics); rates beyond the curve's end take its last sensitivity. This reproduces the
   reference figures in ``../shared/reference/froc_reference.json``. (SciPy's ``interp1d``, used
   by some released scripts, takes the bottom of vertical runs instead: it can report one
   fewer hit exactly at a rate equal to a reachable false-positive count.)

Rules 1-2 need only each detection's score and its overlap with each lesion of its image, so
they live in :func:`match_overlaps`, which any overlap feeds: the boxes of rule 3
(:func:`match_detections`) or the 3D lesions of whole scans (:mod:`ctlesion.evaluate.scan_froc`;
rule 2's "several candidates in one lesion count once" is also LUNA16's, Setio et al., Medical
Image Analysis 2017).

Because a detection is a false positive or not whatever the other images hold, and a box is
hit by the first-ranked detection of its image that overlaps it enough, the outcome of the
matching is computed once (:func:`match_overlaps`): which ranked detections are false
positives, and at which rank each box is hit. Everything else is a weighted count over that
outcome: the curve (:func:`curve_from_matching`), the sensitivities (:func:`weighted_sensitivity`),
subsets of images (weight 0 or 1 per image), subsets of lesions, and bootstrap resamples
(weight = how often an image was drawn). No Python loop runs over detections.

Interpolating the curve reduces to a count: a segment along which the false-positive rate
grows ends at a false positive, which adds no hit, so every segment with a slope is flat. The
sensitivity at rate ``f`` is therefore the share of boxes hit by the detections ranked before
the first false positive that brings the count above the largest ``k`` with ``k / images <= f``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctlesion.choices import CRITERIA

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


def _check_threshold(threshold: float, name: str) -> None:
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {threshold}")


def _check_inputs(
    detections: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray], iou_threshold: float, criterion: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(detections) != len(ground_truth):
        raise ValueError(
            f"detections and ground_truth must have one entry per image, got {len(detections)} "
            f"and {len(ground_truth)}"
        )
    if len(detections) == 0:
        raise ValueError("no images to score (detections and ground_truth are empty)")
    _check_threshold(iou_threshold, "iou_threshold")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    dets = [_as_boxes(d, 5, "detections", i) for i, d in enumerate(detections)]
    gts = [_as_boxes(g, 4, "ground_truth", i) for i, g in enumerate(ground_truth)]
    if sum(len(g) for g in gts) == 0:
        raise ValueError("ground_truth holds no boxes at all: sensitivity is undefined")
    return dets, gts


def _check_rates(fps: Sequence[float]) -> np.ndarray:
    rates = np.asarray(fps, dtype=np.float64).reshape(-1)
    if not np.isfinite(rates).all() or (rates < 0).any():
        raise ValueError(f"fps must be finite rates >= 0, got {list(np.asarray(fps).reshape(-1))}")
    return rates


def _intersection(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    iw = np.minimum(boxes_a[:, 2], boxes_b[:, 2]) - np.maximum(boxes_a[:, 0], boxes_b[:, 0]) + 1.0
    ih = np.minimum(boxes_a[:, 3], boxes_b[:, 3]) - np.maximum(boxes_a[:, 1], boxes_b[:, 1]) + 1.0
    return np.maximum(iw, 0.0) * np.maximum(ih, 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)


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
    inter = _intersection(boxes_a, boxes_b)
    return inter / (_area(boxes_a) + _area(boxes_b) - inter)


def inclusive_iobb(detected: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Element-wise intersection over the detected box's area, inclusive-pixel convention.

    The "IoBB" criterion of 3D lesion detection work (3DCE/MULAN style): the overlap counts
    how much of the detection lies on the lesion's box, so a small box inside a large lesion
    scores 1. Not symmetric: the first argument is the detection.

    Args:
        detected: (K, 4) float64 detected boxes (x1, y1, x2, y2), pixels.
        boxes: (K, 4) float64 ground-truth boxes, paired row by row.

    Returns:
        (K,) float64 values in [0, 1].
    """
    return _intersection(detected, boxes) / _area(detected)


@dataclass(frozen=True, eq=False)
class Matching:
    """Outcome of the matching rules (module docstring, rules 1-3), independent of weights.

    Ranks count from 0 in the joint descending-score order of all detections. An "image" is
    the unit the false positives are counted over: a key slice, or a whole scan
    (:mod:`ctlesion.evaluate.scan_froc`).

    Attributes:
        num_images: number of images.
        num_detections: total number of detections D.
        ranked_image: (D,) int64 image of the detection at each rank.
        fp_rank: (F,) int64 ranks of the false positives, ascending.
        fp_image: (F,) int64 image of each of those false positives.
        lesion_image: (G,) int64 image of each ground-truth lesion (box), lesions concatenated in
            image order.
        hit_rank: (G,) int64 rank of the detection that hits each lesion; ``num_detections`` if never hit.
    """

    num_images: int
    num_detections: int
    ranked_image: np.ndarray
    fp_rank: np.ndarray
    fp_image: np.ndarray
    lesion_image: np.ndarray
    hit_rank: np.ndarray


def _check_overlaps(
    scores: Sequence[np.ndarray], overlaps: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate :func:`match_overlaps` inputs; return scores and overlaps concatenated, and the counts."""
    if len(scores) != len(overlaps):
        raise ValueError(
            f"scores and overlaps must have one entry per image, got {len(scores)} and {len(overlaps)}"
        )
    if len(scores) == 0:
        raise ValueError("no images to score (scores and overlaps are empty)")
    score_list = [np.asarray(s, dtype=np.float64) for s in scores]
    overlap_list = [np.asarray(o, dtype=np.float64) for o in overlaps]
    for image, (score, overlap) in enumerate(zip(score_list, overlap_list)):
        if score.ndim != 1:
            raise ValueError(f"scores of image {image} must have shape (N,), got {score.shape}")
        if overlap.ndim != 2 or overlap.shape[0] != len(score):
            raise ValueError(
                f"overlaps of image {image} must have shape ({len(score)}, M) for its {len(score)} scores, "
                f"got {overlap.shape}"
            )
    det_counts = np.array([len(s) for s in score_list], dtype=np.int64)
    gt_counts = np.array([o.shape[1] for o in overlap_list], dtype=np.int64)
    if gt_counts.sum() == 0:
        raise ValueError("overlaps hold no ground-truth lesion at all (every M_i is 0): sensitivity is undefined")
    score_all = np.concatenate(score_list)
    overlap_all = np.concatenate([o.ravel() for o in overlap_list])
    det_image = np.repeat(np.arange(len(score_list)), det_counts)
    if np.isnan(score_all).any():
        raise ValueError(f"scores of image {det_image[np.isnan(score_all).argmax()]} hold NaN scores")
    bad = ~(np.isfinite(overlap_all) & (overlap_all >= 0.0))
    if bad.any():
        image = np.repeat(np.arange(len(overlap_list)), det_counts * gt_counts)[bad.argmax()]
        raise ValueError(f"overlaps of image {image} must be finite and >= 0")
    return score_all, overlap_all, det_counts, gt_counts


def _pairs(det_counts: np.ndarray, gt_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, lesion of the same image) pair, detection-major (row-major per image).

    Args:
        det_counts: (I,) int64 detections per image.
        gt_counts: (I,) int64 lesions per image.

    Returns:
        ``(pair_det, pair_gt, pair_first, pairs_per_det)``: (P,) int64 indices into the
        concatenated detections and lesions, P = sum(det_counts * gt_counts), in the order of the
        images' (N_i, M_i) overlaps raveled; (D,) int64 index of each detection's first pair and
        its number of pairs (the lesions of its image).
    """
    det_image = np.repeat(np.arange(len(det_counts)), det_counts)
    gt_start = np.concatenate(([0], np.cumsum(gt_counts)[:-1]))
    pairs_per_det = gt_counts[det_image]
    pair_det = np.repeat(np.arange(len(det_image)), pairs_per_det)
    pair_first = np.concatenate(([0], np.cumsum(pairs_per_det)[:-1]))
    pair_gt = gt_start[det_image[pair_det]] + np.arange(len(pair_det)) - pair_first[pair_det]
    return pair_det, pair_gt, pair_first, pairs_per_det


def match_overlaps(scores: Sequence[np.ndarray], overlaps: Sequence[np.ndarray], threshold: float) -> Matching:
    """Rank all detections and decide which are false positives and when each lesion is hit.

    The matching rules 1-2 of the module docstring (DeepLesion protocol; for whole scans also
    LUNA16's rule that several candidates in one lesion count once, Setio et al. 2017), for any
    overlap measure: detections of all images are ranked by descending score (stable: ties
    keep image order, then detection order); a detection whose best overlap is below
    ``threshold`` (or whose image has no lesion) is a false positive; a lesion is hit at the
    rank of the first-ranked detection overlapping it by >= ``threshold``; a detection that only
    overlaps lesions already hit is neither a true nor a false positive.

    Args:
        scores: one (N_i,) float array of detection scores per image (or scan); any finite or
            infinite values, higher = more confident.
        overlaps: one (N_i, M_i) float array per image: the overlap of each detection with each
            ground-truth lesion of that image, >= 0 (an image without lesions: shape (N_i, 0);
            without detections: (0, M_i)).
        threshold: minimum overlap for a hit, in (0, 1].

    Returns:
        The :class:`Matching` (lesions in image order, then column order).

    Raises:
        ValueError: lengths differ, no images, no lesion at all, shapes that do not fit, NaN
            scores, non-finite or negative overlaps, or a ``threshold`` outside (0, 1].
    """
    _check_threshold(threshold, "threshold")
    score_all, overlap, det_counts, gt_counts = _check_overlaps(scores, overlaps)
    num_images, num_dets, num_gts = len(det_counts), len(score_all), int(gt_counts.sum())

    # Rank: stable sort by descending score (ties keep image order, then detection order).
    order = np.argsort(-score_all, kind="stable")
    rank = np.empty(num_dets, dtype=np.int64)
    rank[order] = np.arange(num_dets)

    # False positive: best overlap below the threshold (or no lesion in its image).
    pair_det, pair_gt, pair_first, pairs_per_det = _pairs(det_counts, gt_counts)
    best = np.zeros(num_dets)
    with_pairs = pairs_per_det > 0
    if with_pairs.any():
        best[with_pairs] = np.maximum.reduceat(overlap, pair_first[with_pairs])
    is_fp = best < threshold

    # A lesion is hit by the first-ranked detection overlapping it by >= the threshold (such a
    # detection is never a false positive, and it marks every such lesion not yet hit).
    hit_rank = np.full(num_gts, num_dets, dtype=np.int64)
    qualifying = overlap >= threshold
    np.minimum.at(hit_rank, pair_gt[qualifying], rank[pair_det[qualifying]])

    fp_rank = np.sort(rank[is_fp])
    ranked_image = np.repeat(np.arange(num_images), det_counts)[order]
    return Matching(
        num_images=num_images,
        num_detections=num_dets,
        ranked_image=ranked_image,
        fp_rank=fp_rank,
        fp_image=ranked_image[fp_rank],
        lesion_image=np.repeat(np.arange(num_images), gt_counts),
        hit_rank=hit_rank,
    )


def match_detections(
    detections: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    criterion: str = "iou",
) -> Matching:
    """Rank all detections and decide which are false positives and when each box is hit.

    The box overlaps of rule 3 (module docstring) fed to :func:`match_overlaps` (rules 1-2).

    Args:
        detections: one (N_i, 5) array per image, rows (x1, y1, x2, y2, score), pixels; an
            image without detections may be an empty array.
        ground_truth: one (M_i, 4) array per image, rows (x1, y1, x2, y2), pixels (inclusive
            DeepLesion convention); an image without lesions may be an empty array.
        iou_threshold: minimum overlap for a hit (DeepLesion: IoU 0.5), for either criterion.
        criterion: ``"iou"`` (:func:`inclusive_iou`) or ``"iobb"`` (:func:`inclusive_iobb`).

    Returns:
        The :class:`Matching`.

    Raises:
        ValueError: lengths differ, no images, no ground-truth box at all, wrong array shapes,
            NaN scores, non-finite coordinates, boxes with x2 < x1 or y2 < y1, an
            ``iou_threshold`` outside (0, 1], or an unknown criterion.
    """
    dets, gts = _check_inputs(detections, ground_truth, iou_threshold, criterion)
    det_counts = np.array([len(d) for d in dets], dtype=np.int64)
    gt_counts = np.array([len(g) for g in gts], dtype=np.int64)
    pair_det, pair_gt, _, _ = _pairs(det_counts, gt_counts)
    overlap_fn = inclusive_iou if criterion == "iou" else inclusive_iobb
    overlap = overlap_fn(np.concatenate(dets)[pair_det, :4], np.concatenate(gts)[pair_gt])
    ends = np.cumsum(det_counts * gt_counts).tolist()
    per_image = [overlap[end - n * m : end].reshape(n, m)
                 for end, n, m in zip(ends, det_counts.tolist(), gt_counts.tolist())]
    return match_overlaps([d[:, 4] for d in dets], per_image, iou_threshold)


def curve_from_matching(matching: Matching, images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The FROC curve of all images, or of a subset of them scored on its own.

    Args:
        matching: from :func:`match_detections`.
        images: (num_images,) bool, the images to keep; None keeps all.

    Returns:
        ``(fp_per_image, sensitivity)``: two (1 + D',) float64 arrays over the D' ranked
        detections of the kept images. Point 0 is (0, 0) (nothing accepted yet); point j is the
        state after the j-th ranked detection. ``fp_per_image`` is non-decreasing;
        ``sensitivity`` is a fraction in [0, 1] (0 throughout when the kept images hold no box).

    Raises:
        ValueError: if ``images`` does not have one entry per image.
    """
    keep_image = np.ones(matching.num_images, bool) if images is None else np.asarray(images, dtype=bool)
    if keep_image.shape != (matching.num_images,):
        raise ValueError(f"images must have shape ({matching.num_images},), got {keep_image.shape}")
    is_fp = np.zeros(matching.num_detections, dtype=bool)
    is_fp[matching.fp_rank] = True
    hit = (matching.hit_rank < matching.num_detections) & keep_image[matching.lesion_image]
    hits_at_rank = np.bincount(matching.hit_rank[hit], minlength=matching.num_detections)
    keep = keep_image[matching.ranked_image]
    num_images = max(int(keep_image.sum()), 1)
    num_lesions = max(int(keep_image[matching.lesion_image].sum()), 1)
    fp_per_image = np.concatenate(([0.0], np.cumsum(is_fp[keep]) / num_images))
    sensitivity = np.concatenate(([0.0], np.cumsum(hits_at_rank[keep]) / num_lesions))
    return fp_per_image, sensitivity


def froc_curve(
    detections: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    criterion: str = "iou",
) -> tuple[np.ndarray, np.ndarray]:
    """The full FROC curve of the DeepLesion protocol (module docstring, rules 1-3).

    Args:
        detections: one (N_i, 5) array per image, rows (x1, y1, x2, y2, score), pixels; an
            image without detections may be an empty array.
        ground_truth: one (M_i, 4) array per image, rows (x1, y1, x2, y2), pixels (inclusive
            DeepLesion convention); an image without lesions may be an empty array.
        iou_threshold: minimum overlap for a hit (DeepLesion: IoU 0.5).
        criterion: ``"iou"`` (DeepLesion) or ``"iobb"``.

    Returns:
        ``(fp_per_image, sensitivity)``: two (1 + total detections,) float64 arrays. Point 0 is
        (0, 0) (nothing accepted yet); point j is the state after the j-th ranked detection.
        ``fp_per_image`` is non-decreasing; ``sensitivity`` is a fraction in [0, 1].

    Raises:
        ValueError: as :func:`match_detections`.
    """
    return curve_from_matching(match_detections(detections, ground_truth, iou_threshold, criterion))


def _check_weights(matching: Matching, image_weights: np.ndarray) -> np.ndarray:
    weights = np.asarray(image_weights)
    if weights.ndim != 2 or weights.shape[1] != matching.num_images:
        raise ValueError(f"image_weights must have shape (R, {matching.num_images}), got {weights.shape}")
    if not (np.issubdtype(weights.dtype, np.integer) or weights.dtype == np.bool_):
        raise ValueError(f"image_weights must be integer counts, got dtype {weights.dtype}")
    if (weights < 0).any():
        raise ValueError("image_weights must be >= 0")
    return weights.astype(np.int64, copy=False)


def _allowed_false_positives(rates: np.ndarray, num_images: np.ndarray) -> np.ndarray:
    """(R, K) int64: the largest k with k / num_images <= rate (float division, as the curve's axis)."""
    n = num_images[:, None].astype(np.float64)
    k = np.floor(rates[None, :] * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where((k + 1.0) / n <= rates[None, :], k + 1.0, k)  # rate * n rounded down one too far
        k = np.where(k / n > rates[None, :], k - 1.0, k)  # or one too high
    k[num_images == 0] = 0.0
    return k.astype(np.int64)


def _first_exceeding(cumulative: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Row by row, the index of the first entry of ``cumulative`` above each limit.

    Args:
        cumulative: (R, F) integer array, non-decreasing along each row.
        limits: (R, K) int64.

    Returns:
        (R, K) int64 in [0, F] (F: no entry exceeds the limit).
    """
    limits = limits.astype(cumulative.dtype)  # same dtype: searchsorted would otherwise convert the row
    return np.stack([np.searchsorted(row, limit, side="right") for row, limit in zip(cumulative, limits)]).astype(
        np.int64
    ).reshape(limits.shape)


def weighted_sensitivity(
    matching: Matching,
    image_weights: np.ndarray,
    fps: Sequence[float] = DEFAULT_FPS_PER_IMAGE,
    lesion_groups: np.ndarray | None = None,
) -> np.ndarray:
    """Sensitivity at false-positive rates for weighted sets of images (and groups of lesions).

    Row r of ``image_weights`` counts image i ``image_weights[r, i]`` times: weights 0/1 select a
    subset of images scored on its own (SPEC section 8: thin, thick), and multiplicities drawn
    with replacement give a bootstrap resample. The result equals :func:`sensitivity_at_fps` on
    the images repeated that many times (ties between copies aside, which cannot change it).
    The number of images is the row's total weight; false positives count over all weighted
    images; a lesion group (column of ``lesion_groups``) changes which boxes the sensitivity
    is taken over, not the false positives (the usual per-type / per-size breakdown).

    Args:
        matching: from :func:`match_detections`.
        image_weights: (R, num_images) integer (or bool) counts >= 0.
        fps: false positives per image at which to read the curve, each >= 0.
        lesion_groups: (G, S) bool, box g in group s (boxes in :class:`Matching` order); None is
            one group of all boxes.

    Returns:
        (R, len(fps), S) float64 sensitivities, fractions in [0, 1]; NaN where a group holds
        no weighted box in that row.

    Raises:
        ValueError: on shapes that do not fit ``matching``, negative or non-integer weights, or
            negative / non-finite rates.
    """
    rates = _check_rates(fps)
    weights = _check_weights(matching, image_weights)
    groups = np.ones((len(matching.hit_rank), 1), bool) if lesion_groups is None else np.asarray(lesion_groups)
    if groups.ndim != 2 or groups.shape[0] != len(matching.hit_rank):
        raise ValueError(f"lesion_groups must have shape ({len(matching.hit_rank)}, S), got {groups.shape}")
    # False positives of images that no row weighs cannot move any cut-off: leave them out.
    active = weights.any(axis=0)[matching.fp_image]
    fp_rank, fp_image = matching.fp_rank[active], matching.fp_image[active]
    # int32 halves the memory traffic of the one (R, F) pass when the counts cannot overflow it.
    most_fp = int(np.bincount(fp_image, minlength=matching.num_images).max(initial=0))
    count_type = np.int32 if int(weights.sum(axis=1).max(initial=0)) * most_fp < 2**31 else np.int64
    cumulative_fp = np.cumsum(weights.astype(count_type)[:, fp_image], axis=1, dtype=count_type)  # (R, F)
    allowed = np.minimum(_allowed_false_positives(rates, weights.sum(axis=1)), np.iinfo(count_type).max)
    # Detections ranked before the first false positive over the allowance are accepted.
    cutoff_rank = np.append(fp_rank, matching.num_detections)[_first_exceeding(cumulative_fp, allowed)]
    lesion_weights = weights[:, matching.lesion_image].astype(np.float64)  # (R, G)
    accepted = matching.hit_rank[None, None, :] < cutoff_rank[:, :, None]  # (R, K, G)
    hits = (accepted * lesion_weights[:, None, :]) @ groups.astype(np.float64)  # (R, K, S)
    totals = lesion_weights @ groups.astype(np.float64)  # (R, S)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals[:, None, :] > 0, hits / totals[:, None, :], np.nan)


def sensitivity_at_fps(
    detections: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    fps: Sequence[float] = DEFAULT_FPS_PER_IMAGE,
    iou_threshold: float = 0.5,
    criterion: str = "iou",
) -> np.ndarray:
    """Sensitivity at given false-positive rates per image (DeepLesion FROC, SPEC section 8).

    The linear interpolation of :func:`froc_curve`, taking the top of each vertical run (a
    rate equal to a reachable count of false positives gets every hit made before the next
    false positive); rates beyond the curve's end take its last sensitivity. This is exactly
    "the sensitivity reached before the number of false positives exceeds rate x images"
    (module docstring), which is how it is computed.

    Args:
        detections: one (N_i, 5) array per image (x1, y1, x2, y2, score), pixels.
        ground_truth: one (M_i, 4) array per image (x1, y1, x2, y2), pixels, inclusive.
        fps: false positives per image at which to read the curve, each >= 0
            (DeepLesion: 0.5, 1, 2, 4, 8, 16).
        iou_threshold: minimum overlap for a hit (DeepLesion: IoU 0.5).
        criterion: ``"iou"`` (DeepLesion) or ``"iobb"``.

    Returns:
        (len(fps),) float64 sensitivities, fractions in [0, 1].

    Raises:
        ValueError: as :func:`match_detections`, or if a rate in ``fps`` is negative or not finite.
    """
    rates = _check_rates(fps)
    matching = match_detections(detections, ground_truth, iou_threshold, criterion)
    return weighted_sensitivity(matching, np.ones((1, matching.num_images), np.int64), rates)[0, :, 0]
