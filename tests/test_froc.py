"""DeepLesion FROC: reference figures, hand-worked cases, a loop oracle and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctlesion.evaluate import (
    DEFAULT_FPS_PER_IMAGE,
    curve_from_matching,
    froc_curve,
    inclusive_iobb,
    inclusive_iou,
    match_detections,
    sensitivity_at_fps,
    weighted_sensitivity,
)

REFERENCE_JSON = Path(__file__).resolve().parent / "data" / "froc_reference.json"
EMPTY_DET = np.zeros((0, 5))
EMPTY_GT = np.zeros((0, 4))


def det(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def gt(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def official_curve(detections, ground_truth, iou_threshold=0.5):
    """Loop transcription of the released DeepLesion FROC (3DCE/MULAN ``FROC``), stable ranking."""
    n_img = len(detections)
    img_idx = np.concatenate([[i] * len(d) for i, d in enumerate(detections)]).astype(int)
    boxes = np.vstack([d.reshape(-1, 5) for d in detections])
    order = np.argsort(-boxes[:, 4], kind="stable")
    hits = [np.zeros(len(g), dtype=bool) for g in ground_truth]
    n_hits = n_miss = 0
    tps, fps = [], []
    for i in order:
        gts = ground_truth[img_idx[i]]
        overlaps = inclusive_iou(np.repeat(boxes[i : i + 1, :4], len(gts), axis=0), gts)
        if len(overlaps) == 0 or overlaps.max() < iou_threshold:
            n_miss += 1
        else:
            for j in range(len(overlaps)):
                if overlaps[j] >= iou_threshold and not hits[img_idx[i]][j]:
                    hits[img_idx[i]][j] = True
                    n_hits += 1
        tps.append(n_hits)
        fps.append(n_miss)
    n_gt = sum(len(g) for g in ground_truth)
    return np.array(fps, dtype=float) / n_img, np.array(tps, dtype=float) / n_gt


def test_matches_reference_figures():
    if not REFERENCE_JSON.is_file():
        pytest.skip(f"reference figures not found at {REFERENCE_JSON}")
    ref = json.loads(REFERENCE_JSON.read_text())
    detections = [np.array(image["detections"], dtype=np.float64) for image in ref["images"]]
    ground_truth = [np.array(image["ground_truth"], dtype=np.float64) for image in ref["images"]]
    got = sensitivity_at_fps(detections, ground_truth, ref["fps_per_image"], ref["iou_threshold"])
    np.testing.assert_allclose(got, ref["sensitivity"], rtol=0, atol=1e-12)
    # The reference has no tied scores, so the documented stable tie order is not at stake here.
    scores = np.concatenate([d[:, 4] for d in detections if len(d)])
    assert len(np.unique(scores)) == len(scores)


def test_inclusive_iou_hand_computed():
    # a: 11 x 11 = 121 px, b: 11 x 6 = 66 px; overlap x 5..10 (6 px) by y 0..5 (6 px) = 36 px.
    iou = inclusive_iou(gt((0, 0, 10, 10)), gt((5, 0, 15, 5)))
    assert iou[0] == pytest.approx(36 / (121 + 66 - 36), abs=1e-15)
    # Touching boxes share one pixel column in the inclusive convention.
    assert inclusive_iou(gt((0, 0, 9, 9)), gt((9, 0, 18, 9)))[0] == pytest.approx(10 / 190, abs=1e-15)
    assert inclusive_iou(gt((0, 0, 9, 9)), gt((11, 0, 20, 9)))[0] == 0.0


def test_second_hit_on_same_lesion_is_neither_tp_nor_fp():
    detections = [det((10, 10, 50, 50, 0.9), (11, 11, 50, 50, 0.8), (200, 200, 220, 220, 0.7))]
    ground_truth = [gt((10, 10, 50, 50), (300, 300, 340, 340))]
    fp, sens = froc_curve(detections, ground_truth)
    np.testing.assert_array_equal(fp, [0, 0, 0, 1])  # the duplicate adds no false positive
    np.testing.assert_array_equal(sens, [0, 0.5, 0.5, 0.5])  # nor a hit


def test_detection_overlapping_two_lesions_marks_both():
    # Two identical lesion boxes (e.g. two readers' marks): one detection hits both.
    detections = [det((0, 0, 40, 40, 0.9))]
    ground_truth = [gt((0, 0, 40, 40), (1, 1, 40, 40), (100, 100, 120, 120))]
    fp, sens = froc_curve(detections, ground_truth)
    np.testing.assert_allclose(sens, [0, 2 / 3])
    np.testing.assert_array_equal(fp, [0, 0])


def test_all_false_positives_give_zero():
    detections = [det((0, 0, 5, 5, 0.9), (60, 60, 70, 70, 0.5)), EMPTY_DET]
    ground_truth = [gt((30, 30, 50, 50)), gt((10, 10, 20, 20))]
    np.testing.assert_array_equal(sensitivity_at_fps(detections, ground_truth), np.zeros(6))


def test_rates_between_points_and_beyond_the_curve_end():
    # Two images, three lesions. Ranked: TP(a) FP TP(b) FP TP(c): FP/image 0, .5, .5, 1, 1.
    detections = [
        det((0, 0, 10, 10, 0.9), (300, 300, 310, 310, 0.8), (50, 50, 60, 60, 0.5)),
        det((100, 100, 120, 120, 0.7), (400, 400, 410, 410, 0.6)),
    ]
    ground_truth = [gt((0, 0, 10, 10), (50, 50, 60, 60)), gt((100, 100, 120, 120))]
    fp, sens = froc_curve(detections, ground_truth)
    np.testing.assert_allclose(fp, [0, 0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(sens, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    got = sensitivity_at_fps(detections, ground_truth, fps=(0.25, 0.5, 1, 2, 16))
    # 0.25: before the 1st FP -> 1/3; 0.5: every hit before the 2nd FP -> 2/3;
    # 1, 2 and 16 are at or beyond the curve's end (1 FP/image): its last sensitivity.
    np.testing.assert_allclose(got, [1 / 3, 2 / 3, 1, 1, 1], atol=1e-15)


def test_images_without_lesions_count_false_positives():
    detections = [det((0, 0, 10, 10, 0.9)), det((0, 0, 10, 10, 0.95))]
    ground_truth = [gt((0, 0, 10, 10)), EMPTY_GT]
    fp, sens = froc_curve(detections, ground_truth)
    np.testing.assert_allclose(fp, [0, 0.5, 0.5])
    np.testing.assert_allclose(sens, [0, 0, 1])


def test_ties_rank_in_image_then_detection_order():
    # Equal scores: image 0's false positive ranks before image 1's hit.
    detections = [det((200, 200, 210, 210, 0.5)), det((0, 0, 10, 10, 0.5))]
    ground_truth = [gt((0, 0, 10, 10)), gt((0, 0, 10, 10))]
    fp, sens = froc_curve(detections, ground_truth)
    np.testing.assert_allclose(fp, [0, 0.5, 0.5])
    np.testing.assert_allclose(sens, [0, 0, 0.5])


def test_vectorised_curve_matches_loop_oracle_on_random_data():
    rng = np.random.default_rng(7)
    detections, ground_truth = [], []
    for _ in range(40):
        n_gt = int(rng.integers(0, 4))
        corner = rng.uniform(0, 200, (n_gt, 2))
        boxes = np.c_[corner, corner + rng.uniform(5, 40, (n_gt, 2))]
        n_det = int(rng.integers(0, 12))
        corner = rng.uniform(0, 200, (n_det, 2))
        dets = np.c_[corner, corner + rng.uniform(5, 40, (n_det, 2)), rng.uniform(size=n_det)]
        for j in range(min(n_gt, n_det)):  # near-hits, some above and some below IoU 0.5
            dets[j, :4] = boxes[j] + np.tile(rng.normal(0, 3, 2), 2)
        detections.append(dets)
        ground_truth.append(boxes)
    fp, sens = froc_curve(detections, ground_truth)
    fp_ref, sens_ref = official_curve(detections, ground_truth)
    np.testing.assert_allclose(fp[1:], fp_ref, atol=1e-15)
    np.testing.assert_allclose(sens[1:], sens_ref, atol=1e-15)
    assert 0 < sens[-1] < 1 and fp[-1] > 0  # a non-trivial case


@pytest.mark.parametrize(
    ("detections", "ground_truth", "message"),
    [
        ([det((0, 0, 1, 1, 0.5))], [gt((0, 0, 1, 1)), EMPTY_GT], "one entry per image"),
        ([], [], "no images"),
        ([det((0, 0, 1, 1, 0.5))], [EMPTY_GT], "no boxes at all"),
        ([det((5, 0, 1, 1, 0.5))], [gt((0, 0, 1, 1))], "x2 < x1"),
        ([det((0, 0, 1, 1, 0.5))], [gt((0, 5, 1, 1))], "x2 < x1 or y2 < y1"),
        ([det((0, 0, 1, 1, np.nan))], [gt((0, 0, 1, 1))], "NaN scores"),
        ([np.zeros((2, 4))], [gt((0, 0, 1, 1))], r"shape \(N, 5\)"),
        ([det((0, 0, 1, 1, 0.5))], [np.zeros((1, 5))], r"shape \(N, 4\)"),
    ],
)
def test_bad_input_raises(detections, ground_truth, message):
    with pytest.raises(ValueError, match=message):
        sensitivity_at_fps(detections, ground_truth)


def test_bad_rates_raise():
    with pytest.raises(ValueError, match="fps must be"):
        sensitivity_at_fps([det((0, 0, 1, 1, 0.5))], [gt((0, 0, 1, 1))], fps=(-1, 1))


def test_inclusive_iobb_hand_computed():
    # Detection 10 x 10 = 100 px; overlap x 5..9 (5 px) by y 0..9 (10 px) = 50 px of it.
    assert inclusive_iobb(gt((0, 0, 9, 9)), gt((5, 0, 14, 9)))[0] == pytest.approx(0.5, abs=1e-15)
    # A small detection inside a large lesion covers it by IoBB 1 but not by IoU (100 / 10000).
    small, lesion = gt((20, 20, 29, 29)), gt((0, 0, 99, 99))
    assert inclusive_iobb(small, lesion)[0] == 1.0
    assert inclusive_iou(small, lesion)[0] == pytest.approx(0.01, abs=1e-15)


def test_iobb_criterion_changes_which_detections_hit():
    detections = [det((20, 20, 29, 29, 0.9), (0, 0, 99, 99, 0.8))]  # inside the lesion; covering the small one
    ground_truth = [gt((0, 0, 99, 99), (40, 40, 49, 49))]
    fp, sens = froc_curve(detections, ground_truth, criterion="iou")
    # IoU: the small box is a FP; the big one equals lesion 1 (IoU 1) and overlaps lesion 2 by 100 / 10000.
    np.testing.assert_allclose(fp, [0, 1, 1])
    np.testing.assert_allclose(sens, [0, 0, 0.5])
    fp, sens = froc_curve(detections, ground_truth, criterion="iobb")
    # IoBB: the small box lies inside lesion 1 (hit); the big one covers lesion 2 by 100 / 10000 of its area,
    # and lesion 1 by all of it, but lesion 1 is already hit: neither TP nor FP.
    np.testing.assert_allclose(fp, [0, 0, 0])
    np.testing.assert_allclose(sens, [0, 0.5, 0.5])
    with pytest.raises(ValueError, match="criterion"):
        froc_curve(detections, ground_truth, criterion="dice")


def random_case(rng, num_images, max_gt=4, max_det=12):
    detections, ground_truth = [], []
    for _ in range(num_images):
        n_gt = int(rng.integers(0, max_gt))
        corner = rng.uniform(0, 200, (n_gt, 2))
        boxes = np.c_[corner, corner + rng.uniform(5, 40, (n_gt, 2))]
        n_det = int(rng.integers(0, max_det))
        corner = rng.uniform(0, 200, (n_det, 2))
        dets = np.c_[corner, corner + rng.uniform(5, 40, (n_det, 2)), rng.uniform(size=n_det)]
        for j in range(min(n_gt, n_det)):
            dets[j, :4] = boxes[j] + np.tile(rng.normal(0, 3, 2), 2)
        detections.append(dets)
        ground_truth.append(boxes)
    return detections, ground_truth


def test_weighted_subset_equals_scoring_the_subset_on_its_own():
    detections, ground_truth = random_case(np.random.default_rng(3), 40)
    keep = np.random.default_rng(4).random(40) < 0.5
    matching = match_detections(detections, ground_truth)
    rates = (0.125, 0.5, 1, 2, 4, 8, 16)
    got = weighted_sensitivity(matching, keep[None].astype(int), rates)[0, :, 0]
    subset = [i for i in range(40) if keep[i]]
    expected = sensitivity_at_fps([detections[i] for i in subset], [ground_truth[i] for i in subset], rates)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    fp, sens = curve_from_matching(matching, keep)
    fp_ref, sens_ref = froc_curve([detections[i] for i in subset], [ground_truth[i] for i in subset])
    np.testing.assert_allclose(fp, fp_ref, atol=1e-15)
    np.testing.assert_allclose(sens, sens_ref, atol=1e-15)


def test_weighted_counts_equal_scoring_the_repeated_images():
    # A bootstrap resample as counts gives what scoring the explicitly repeated images gives.
    detections, ground_truth = random_case(np.random.default_rng(5), 30)
    matching = match_detections(detections, ground_truth)
    counts = np.random.default_rng(6).multinomial(30, np.full(30, 1 / 30), size=4)
    got = weighted_sensitivity(matching, counts, DEFAULT_FPS_PER_IMAGE)[:, :, 0]
    for row, weights in zip(got, counts, strict=True):
        images = np.repeat(np.arange(30), weights)
        expected = sensitivity_at_fps([detections[i] for i in images], [ground_truth[i] for i in images])
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-15)
    assert len({tuple(r) for r in got}) > 1  # the resamples differ


def oracle_group_sensitivity(detections, ground_truth, in_group, rates):
    """Loop oracle: hits of the group's lesions before the false positives exceed rate x images."""
    boxes = np.vstack([d.reshape(-1, 5) for d in detections])
    img_idx = np.concatenate([[i] * len(d) for i, d in enumerate(detections)]).astype(int)
    hit = [np.zeros(len(g), bool) for g in ground_truth]
    events = []  # (false positives so far, group hits so far) after each detection
    n_fp = n_hit = 0
    for i in np.argsort(-boxes[:, 4], kind="stable"):
        gts = ground_truth[img_idx[i]]
        overlaps = inclusive_iou(np.repeat(boxes[i : i + 1, :4], len(gts), axis=0), gts)
        if len(overlaps) == 0 or overlaps.max() < 0.5:
            n_fp += 1
        for j in np.flatnonzero(overlaps >= 0.5):
            if not hit[img_idx[i]][j]:
                hit[img_idx[i]][j] = True
                n_hit += int(in_group[img_idx[i]][j])
        events.append((n_fp, n_hit))
    total = sum(int(g.sum()) for g in in_group)
    out = []
    for rate in rates:
        reached = [h for f, h in events if f / len(detections) <= rate]
        out.append((reached[-1] if reached else 0) / total)
    return np.array(out)


def test_lesion_groups_count_false_positives_over_all_images():
    rng = np.random.default_rng(8)
    detections, ground_truth = random_case(rng, 40)
    in_group = [rng.random(len(g)) < 0.4 for g in ground_truth]
    matching = match_detections(detections, ground_truth)
    groups = np.concatenate(in_group)[:, None]
    got = weighted_sensitivity(matching, np.ones((1, 40), int), DEFAULT_FPS_PER_IMAGE, groups)[0, :, 0]
    np.testing.assert_allclose(got, oracle_group_sensitivity(detections, ground_truth, in_group,
                                                             DEFAULT_FPS_PER_IMAGE), atol=1e-15)
    assert 0 < got[-1] < 1


def test_weighted_sensitivity_is_nan_without_weighted_lesions():
    matching = match_detections([det((0, 0, 5, 5, 0.9)), EMPTY_DET], [EMPTY_GT, gt((0, 0, 5, 5))])
    got = weighted_sensitivity(matching, np.array([[2, 0], [1, 1]]), (1.0,))
    assert np.isnan(got[0, 0, 0]) and got[1, 0, 0] == 0.0
    with pytest.raises(ValueError, match="integer counts"):
        weighted_sensitivity(matching, np.array([[0.5, 1.0]]), (1.0,))
    with pytest.raises(ValueError, match="shape"):
        weighted_sensitivity(matching, np.ones((1, 3), int), (1.0,))
