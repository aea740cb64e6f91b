"""Lesion-level 3D FROC per scan (LUNA16 style): hand-worked cases, overlaps from label maps, errors.

The hand-worked set (``hand_scores`` / ``hand_overlaps``; overlaps 0/1, threshold 1.0):

    A thin 1 mm:    a1  8 mm, a2 20 mm    predictions: .90 covers a1 and a2 (both hit), .40 on a1 again
    B thin 1.5 mm:  b1 40 mm                           .80 FP, .30 hit b1
    C thick 5 mm:   c1 15 mm, c2 12 mm                 .70 hit c1, .60 on c1 again, .50 FP (c2 never hit)
    D thick 5 mm:   no lesion                          .95 FP, .20 FP

Ranked: D-FP .95, A-hit .90 (a1, a2), B-FP .80, C-hit .70 (c1), C-dup .60, C-FP .50, A-dup .40,
B-hit .30 (b1), D-FP .20. The two duplicates are neither TP nor FP: 4 FPs in all.
All (4 scans, 5 lesions): a rate r allows floor(4 r) FPs; the next FP stops the list.
  0.125 -> 0 FPs: stops at .95: 0.    0.25 -> 1: stops at .80: a1, a2 = 2/5.
  0.5 -> 2: stops at .50: a1, a2, c1 = 3/5.    1 -> 4: every prediction: 4/5.
  2, 4, 8 lie beyond the curve's end (4 FPs / 4 scans = 1): its last sensitivity, 4/5.
  mean (CPM) = (0 + 0.4 + 0.6 + 4 x 0.8) / 7 = 4.2 / 7 = 0.6.
Thin (A, B: 2 scans, 3 lesions): A-hit .90 (2), B-FP .80, A-dup .40, B-hit .30.
  0.125 and 0.25 -> 0 FPs: stops at .80: 2/3; 0.5 and beyond -> 1 FP allowed, there is only 1: 3/3.
  mean = (2 x 2/3 + 5) / 7 = 19/21.
Thick (C, D: 2 scans, 2 lesions): D-FP .95, C-hit .70, C-dup .60, C-FP .50, D-FP .20.
  0.125, 0.25 -> 0 FPs: 0; 0.5 -> 1: stops at .50: 1/2; 1 -> 2: stops at .20: 1/2; beyond: 1/2.
  mean = 5 x 0.5 / 7 = 5/14. Gap thin - thick = 19/21 - 5/14 = 38/42 - 15/42 = 23/42.
Size bands (FPs over all 4 scans, as "all" above):
  < 10 mm {a1}: 0, then 1 from 0.25 on: mean 6/7.
  10-30 mm {a2, c2, c1}: 0; 1/3 (a2); 2/3 (a2, c1) from 0.5 on: mean (1/3 + 5 x 2/3) / 7 = 11/21.
  > 30 mm {b1}: hit at .30, after the 3rd FP: 0, 0, 0, then 1 from 1 FP/scan on: mean 4/7.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from ctlesion.evaluate import inclusive_iobb, inclusive_iou, match_detections
from ctlesion.evaluate.froc import match_overlaps
from ctlesion.evaluate.scan_froc import FPS_PER_SCAN, scan_overlaps, score_scans

REPO = Path(__file__).resolve().parents[1]
HAND_INTERVALS_MM = [1.0, 1.5, 5.0, 5.0]
HAND_LONG_AXES_MM = [8.0, 20.0, 40.0, 15.0, 12.0]  # a1, a2, b1, c1, c2


def hand_scores() -> list[np.ndarray]:
    return [np.array([0.90, 0.40]), np.array([0.80, 0.30]), np.array([0.70, 0.60, 0.50]), np.array([0.95, 0.20])]


def hand_overlaps() -> list[np.ndarray]:
    return [
        np.array([[1.0, 1.0], [1.0, 0.0]]),  # A: a1, a2
        np.array([[0.0], [1.0]]),  # B: b1
        np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]),  # C: c1, c2
        np.zeros((2, 0)),  # D: no lesion
    ]


def hand_report(**kwargs) -> dict:
    return score_scans(hand_scores(), hand_overlaps(), threshold=1.0, slice_interval_mm=HAND_INTERVALS_MM,
                       lesion_long_axis_mm=HAND_LONG_AXES_MM, resamples=0, **kwargs).report


def test_hand_worked_all_thin_thick_and_gap():
    summary = hand_report()["summary"]
    assert summary["fps_per_scan"] == list(FPS_PER_SCAN)
    np.testing.assert_allclose(summary["all"]["sensitivity"], [0, 0.4, 0.6, 0.8, 0.8, 0.8, 0.8], atol=1e-15)
    assert summary["all"]["mean"] == pytest.approx(0.6, abs=1e-15)
    assert (summary["all"]["num_scans"], summary["all"]["num_lesions"]) == (4, 5)
    np.testing.assert_allclose(summary["thin_le_2mm"]["sensitivity"], [2 / 3, 2 / 3, 1, 1, 1, 1, 1], atol=1e-15)
    assert summary["thin_le_2mm"]["mean"] == pytest.approx(19 / 21, abs=1e-15)
    assert (summary["thin_le_2mm"]["num_scans"], summary["thin_le_2mm"]["num_lesions"]) == (2, 3)
    np.testing.assert_allclose(summary["thick_ge_5mm"]["sensitivity"], [0, 0, 0.5, 0.5, 0.5, 0.5, 0.5], atol=1e-15)
    assert summary["thick_ge_5mm"]["mean"] == pytest.approx(5 / 14, abs=1e-15)
    assert (summary["thick_ge_5mm"]["num_scans"], summary["thick_ge_5mm"]["num_lesions"]) == (2, 2)
    assert summary["thin_minus_thick_mean"] == pytest.approx(23 / 42, abs=1e-15)
    assert "ci95" not in summary["all"] and "thin_minus_thick_mean_ci95" not in summary


def test_hand_worked_size_bands():
    sizes = hand_report()["lesion_sizes"]
    assert list(sizes) == ["lt_10mm", "10_30mm", "gt_30mm"]
    np.testing.assert_allclose(sizes["lt_10mm"]["sensitivity"], [0, 1, 1, 1, 1, 1, 1], atol=1e-15)
    assert sizes["lt_10mm"]["mean"] == pytest.approx(6 / 7, abs=1e-15)
    np.testing.assert_allclose(sizes["10_30mm"]["sensitivity"], [0, 1 / 3] + [2 / 3] * 5, atol=1e-15)
    assert sizes["10_30mm"]["mean"] == pytest.approx(11 / 21, abs=1e-15)
    np.testing.assert_allclose(sizes["gt_30mm"]["sensitivity"], [0, 0, 0, 1, 1, 1, 1], atol=1e-15)
    assert sizes["gt_30mm"]["mean"] == pytest.approx(4 / 7, abs=1e-15)
    assert [(r["num_lesions"], r["num_scans_with_lesions"]) for r in sizes.values()] == [(1, 1), (3, 2), (1, 1)]


def test_duplicates_are_neither_true_nor_false_positives_and_one_prediction_hits_two_lesions():
    matching = match_overlaps(hand_scores(), hand_overlaps(), 1.0)
    # Ranks: 0 D .95, 1 A .90, 2 B .80, 3 C .70, 4 C .60, 5 C .50, 6 A .40, 7 B .30, 8 D .20.
    np.testing.assert_array_equal(matching.fp_rank, [0, 2, 5, 8])  # not the duplicates at 4 and 6
    np.testing.assert_array_equal(matching.fp_image, [3, 1, 2, 3])
    np.testing.assert_array_equal(matching.hit_rank, [1, 1, 7, 3, 9])  # a1, a2 by rank 1; c2 never (9)
    np.testing.assert_array_equal(matching.lesion_image, [0, 0, 1, 2, 2])


def test_hand_worked_curve_and_scan_without_lesions():
    scores = score_scans(hand_scores(), hand_overlaps(), threshold=1.0, slice_interval_mm=HAND_INTERVALS_MM,
                         lesion_long_axis_mm=HAND_LONG_AXES_MM, resamples=0)
    fp, sens = scores.curves["all"]
    # After each ranked prediction (module docstring): FPs 1, 1, 2, 2, 2, 3, 3, 3, 4 over 4 scans.
    np.testing.assert_allclose(fp, [0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 1.0], atol=1e-15)
    np.testing.assert_allclose(sens, [0, 0, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6, 0.8, 0.8], atol=1e-15)
    # D alone holds no lesion: thick = C + D, and D's two predictions are its 2 of the 3 thick FPs.
    fp, sens = scores.curves["thick_ge_5mm"]
    np.testing.assert_allclose(fp, [0, 0.5, 0.5, 0.5, 1.0, 1.5], atol=1e-15)
    np.testing.assert_allclose(sens, [0, 0, 0.5, 0.5, 0.5, 0.5], atol=1e-15)
    assert set(scores.curves) == {"all", "thin_le_2mm", "thick_ge_5mm"}


def test_rates_beyond_the_curve_end_take_the_last_sensitivity():
    # One scan, two lesions: FP at .9, lesion 1 hit at .5 (IoU 0.3 >= 0.25), lesion 2 never.
    # Curve: (0, 0), (1, 0), (1, 0.5); it ends at 1 FP/scan. 0.5 FP/scan allows no FP: the list
    # stops at .9: 0. 1 allows 1: 1/2. 2 and 100 lie beyond the end: the last sensitivity, 1/2.
    report = score_scans([np.array([0.9, 0.5])], [np.array([[0.0, 0.0], [0.3, 0.1]])], threshold=0.25,
                         slice_interval_mm=[3.0], lesion_long_axis_mm=[5.0, 7.0], fps=(0.5, 1, 2, 100),
                         resamples=0).report
    assert report["summary"]["all"]["sensitivity"] == [0.0, 0.5, 0.5, 0.5]
    assert list(report["summary"]) == ["fps_per_scan", "all"]  # 3 mm: neither thin nor thick
    # The threshold is inclusive: IoU 0.3 hits at threshold 0.3, not above it.
    at = score_scans([np.array([0.9])], [np.array([[0.3]])], threshold=0.3, slice_interval_mm=[3.0],
                     lesion_long_axis_mm=[5.0], resamples=0).report["summary"]["all"]["mean"]
    above = score_scans([np.array([0.9])], [np.array([[0.3]])], threshold=0.31, slice_interval_mm=[3.0],
                        lesion_long_axis_mm=[5.0], resamples=0).report["summary"]["all"]["mean"]
    assert (at, above) == (1.0, 0.0)


def crescent_maps() -> tuple[np.ndarray, np.ndarray]:
    """A U-shaped prediction (label 1) on slices z = 0 and 1, and three ground-truth lesions.

    The U, the same on both slices, in (y, x): (0,0) (1,0) (2,0) (2,1) (2,2) (1,2) (0,2).
    Centroid: z = (7 x 0 + 7 x 1) / 14 = 0.5 -> 1 (halves round up); y = (0+1+2+2+2+1+0) / 7 = 8/7
    -> 1; x = (0+0+0+1+2+2+2) / 7 = 1 -> 1. The centre (1, 1, 1) is the U's hollow, not its voxel.
    Truth: lesion 1 = voxel (1, 1, 1) alone (the hollow), lesion 2 = the U's left arm at z = 1
    ((1, 0, 0), (1, 1, 0)), lesion 3 = voxel (0, 1, 1) (the hollow one slice lower).
    Predicted label 2 has no voxel; label 3 is voxel (0, 3, 3) on background.
    """
    predicted = np.zeros((2, 4, 4), np.int16)
    for y, x in [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (1, 2), (0, 2)]:
        predicted[:, y, x] = 1
    predicted[0, 3, 3] = 3
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[1, 1, 1] = 1
    truth[1, 0, 0] = truth[1, 1, 0] = 2
    truth[0, 1, 1] = 3
    return predicted, truth


def test_centre_criterion_uses_the_rounded_centroid_even_outside_the_lesion():
    predicted, truth = crescent_maps()
    got = scan_overlaps(predicted, 3, truth, 3, "centre")
    # The U's centre (1, 1, 1) is in lesion 1 only: not lesion 2, which it touches, nor lesion 3
    # (z = 0.5 rounds up). Label 2 is empty: zeros. Label 3's centre (0, 3, 3) is background.
    np.testing.assert_array_equal(got, [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert got.dtype == np.float64


def iou_maps() -> tuple[np.ndarray, np.ndarray]:
    """One slice, (y, x):

        predicted     truth
        1 1 0 0       1 0 0 0
        1 1 2 0       1 1 1 0
        0 0 2 2       0 0 0 2
    """
    predicted = np.array([[[1, 1, 0, 0], [1, 1, 2, 0], [0, 0, 2, 2]]])
    truth = np.array([[[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 2]]])
    return predicted, truth


def test_iou_criterion_hand_computed():
    predicted, truth = iou_maps()
    # p1 = 4 voxels, p2 = 3; t1 = 4, t2 = 1.
    # p1 & t1 = (0,0) (1,0) (1,1) = 3, union 4 + 4 - 3 = 5 -> 0.6; p1 & t2 = 0.
    # p2 & t1 = (1,2) = 1, union 3 + 4 - 1 = 6 -> 1/6; p2 & t2 = (2,3) = 1, union 3 + 1 - 1 = 3 -> 1/3.
    # Predicted label 3 and truth label 3 have no voxel: a row and a column of zeros.
    got = scan_overlaps(predicted, 3, truth, 3, "iou")
    np.testing.assert_allclose(got, [[0.6, 0, 0], [1 / 6, 1 / 3, 0], [0, 0, 0]], rtol=0, atol=1e-15)
    # Centres: p1 (0.5, 0.5) -> (1, 1) in t1; p2 (5/3, 7/3) -> (2, 2) background.
    np.testing.assert_array_equal(scan_overlaps(predicted, 2, truth, 2, "centre"), [[1, 0], [0, 0]])


def test_label_maps_to_scores_end_to_end():
    predicted, truth = iou_maps()
    overlaps = [scan_overlaps(predicted, 2, truth, 2, "iou")]
    # At IoU 0.5: p1 (.9) hits t1 (0.6); p2 (.8) best 1/3 -> FP. t2 missed. 1 FP over 1 scan:
    # at 0.125-0.5 FP/scan the list stops at p2: t1 = 1/2; from 1 on: still 1/2.
    report = score_scans([np.array([0.9, 0.8])], overlaps, threshold=0.5, slice_interval_mm=[0.625],
                         lesion_long_axis_mm=[3.0, 1.0], resamples=0).report
    assert report["summary"]["all"]["sensitivity"] == [0.5] * 7
    # At IoU 0.1 (nnDetection): p2 hits t2 (1/3) and t1 (1/6 >= 0.1 but already hit): 2/2, no FP.
    report = score_scans([np.array([0.9, 0.8])], overlaps, threshold=0.1, slice_interval_mm=[0.625],
                         lesion_long_axis_mm=[3.0, 1.0], resamples=0).report
    assert report["summary"]["all"]["sensitivity"] == [1.0] * 7


def bootstrap_set(num_scans: int = 30) -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[float]]:
    """Deterministic scans: 0-3 lesions, 0-6 predictions each, half thin, half thick."""
    rng = np.random.default_rng(11)
    scores, overlaps, intervals, long_axes = [], [], [], []
    for scan in range(num_scans):
        lesions, predictions = int(rng.integers(0, 4)), int(rng.integers(0, 7))
        overlap = (rng.random((predictions, lesions)) < 0.3).astype(np.float64)
        scores.append(rng.random(predictions))
        overlaps.append(overlap)
        intervals.append(1.0 if scan % 2 else 5.0)
        long_axes += list(rng.uniform(3, 50, lesions))
    return scores, overlaps, intervals, long_axes


def test_bootstrap_intervals_by_scan():
    scores, overlaps, intervals, long_axes = bootstrap_set()
    kwargs = {"threshold": 1.0, "slice_interval_mm": intervals, "lesion_long_axis_mm": long_axes, "resamples": 300}
    report = score_scans(scores, overlaps, **kwargs, seed=1).report
    summary = report["summary"]
    for name in ("all", "thin_le_2mm", "thick_ge_5mm"):
        lo, hi = summary[name]["ci95"]["mean"]
        assert lo <= summary[name]["mean"] <= hi and lo < hi, name
        assert len(summary[name]["ci95"]["sensitivity"]) == len(FPS_PER_SCAN)
    lo, hi = summary["thin_minus_thick_mean_ci95"]
    assert lo <= summary["thin_minus_thick_mean"] <= hi
    assert all("ci95" in row for row in report["lesion_sizes"].values())
    assert score_scans(scores, overlaps, **kwargs, seed=1).report == report  # same seed, same intervals
    assert score_scans(scores, overlaps, **kwargs, seed=2).report != report
    # The point estimates do not depend on the bootstrap.
    plain = score_scans(scores, overlaps, **{**kwargs, "resamples": 0}).report["summary"]["all"]
    assert plain["sensitivity"] == summary["all"]["sensitivity"] and plain["mean"] == summary["all"]["mean"]


def random_boxes(rng, num_images):
    detections, ground_truth = [], []
    for _ in range(num_images):
        n_gt, n_det = int(rng.integers(0, 4)), int(rng.integers(0, 10))
        corner = rng.uniform(0, 60, (n_gt, 2))
        boxes = np.c_[corner, corner + rng.uniform(5, 30, (n_gt, 2))]
        corner = rng.uniform(0, 60, (n_det, 2))
        dets = np.c_[corner, corner + rng.uniform(5, 30, (n_det, 2)), rng.integers(0, 5, n_det) / 4]  # ties
        for j in range(min(n_gt, n_det)):
            dets[j, :4] = boxes[j] + np.tile(rng.normal(0, 3, 2), 2)
            dets[j, 2:4] = np.maximum(dets[j, 2:4], dets[j, :2])
        detections.append(dets)
        ground_truth.append(boxes)
    return detections, ground_truth


@pytest.mark.parametrize(("criterion", "overlap_fn"), [("iou", inclusive_iou), ("iobb", inclusive_iobb)])
def test_match_detections_equals_match_overlaps_on_box_overlaps(criterion, overlap_fn):
    detections, ground_truth = random_boxes(np.random.default_rng(21), 60)
    overlaps = [overlap_fn(np.repeat(d[:, :4], len(g), axis=0), np.tile(g, (len(d), 1))).reshape(len(d), len(g))
                for d, g in zip(detections, ground_truth)]
    for threshold in (0.3, 0.5):
        expected = match_detections(detections, ground_truth, threshold, criterion)
        got = match_overlaps([d[:, 4] for d in detections], overlaps, threshold)
        assert (got.num_images, got.num_detections) == (expected.num_images, expected.num_detections)
        for field in ("ranked_image", "fp_rank", "fp_image", "lesion_image", "hit_rank"):
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
        assert 0 < len(got.fp_rank) < got.num_detections and (got.hit_rank < got.num_detections).any()


def test_score_scans_bad_input_raises():
    good = {"threshold": 1.0, "slice_interval_mm": HAND_INTERVALS_MM, "lesion_long_axis_mm": HAND_LONG_AXES_MM,
            "resamples": 0}
    cases = [
        (([np.array([0.5])], [np.zeros((1, 0))]), {"slice_interval_mm": [1.0], "lesion_long_axis_mm": []},
         "no ground-truth lesion at all"),
        ((hand_scores(), hand_overlaps()[:3]), {}, "one entry per image"),
        (([], []), {}, "no images"),
        ((hand_scores(), hand_overlaps()), {"threshold": 0.0}, r"threshold must be in \(0, 1\]"),
        ((hand_scores(), hand_overlaps()), {"threshold": 1.5}, r"threshold must be in \(0, 1\]"),
        ((hand_scores(), hand_overlaps()), {"slice_interval_mm": [1.0, 1.0, 5.0]}, r"slice_interval_mm must have shape \(4,\)"),
        ((hand_scores(), hand_overlaps()), {"slice_interval_mm": [1.0, 0.0, 5.0, 5.0]}, "finite and > 0"),
        ((hand_scores(), hand_overlaps()), {"lesion_long_axis_mm": [1.0] * 4}, r"lesion_long_axis_mm must have shape \(5,\)"),
        ((hand_scores(), hand_overlaps()), {"lesion_long_axis_mm": [1.0, 2, 3, 4, np.nan]}, "finite and >= 0"),
        ((hand_scores(), hand_overlaps()), {"fps": ()}, "needs a rate among fps"),
        ((hand_scores(), hand_overlaps()), {"fps": (1.0, -1.0)}, "fps must be"),
        ((hand_scores(), hand_overlaps()), {"resamples": -1}, "resamples must be >= 0"),
        (([np.array([0.5, np.nan])], [np.ones((2, 1))]), {"slice_interval_mm": [1.0], "lesion_long_axis_mm": [9.0]},
         "image 0 hold NaN scores"),
        (([np.array([0.5])], [np.ones((2, 1))]), {"slice_interval_mm": [1.0], "lesion_long_axis_mm": [9.0]},
         r"shape \(1, M\)"),
        (([np.array([0.5])], [np.ones(1)]), {"slice_interval_mm": [1.0], "lesion_long_axis_mm": [9.0]},
         r"shape \(1, M\)"),
        (([np.array([0.5]), np.array([0.4])], [np.ones((1, 1)), np.array([[np.nan]])]),
         {"slice_interval_mm": [1.0, 1.0], "lesion_long_axis_mm": [9.0, 9.0]}, "overlaps of image 1 must be finite"),
    ]
    for (scores, overlaps), changes, message in cases:
        with pytest.raises(ValueError, match=message):
            score_scans(scores, overlaps, **{**good, **changes})


def test_scan_overlaps_bad_input_raises():
    predicted, truth = iou_maps()
    cases = [
        ((predicted, 2, truth[:, :2], 2, "iou"), "share one grid"),
        ((predicted[0], 2, truth[0], 2, "iou"), r"\(Z, Y, X\) label map"),
        ((-predicted, 2, truth, 2, "centre"), "negative labels"),
        ((predicted, 1, truth, 2, "iou"), "label 2 above its 1 lesions"),
        ((predicted, 2, truth, 1, "centre"), "label 2 above its 1 lesions"),
        ((predicted, -1, truth, 2, "iou"), "must be >= 0"),
        ((predicted.astype(float), 2, truth, 2, "iou"), "integer labels"),
        ((predicted, 2, truth, 2, "dice"), "criterion must be one of"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            scan_overlaps(*args)


def test_speed_benchmark_builds_its_scans(monkeypatch):
    """The benchmark's synthetic scans (benchmarks/scan_froc_speed.py), tiny, score end to end."""
    spec = importlib.util.spec_from_file_location("scan_froc_speed", REPO / "benchmarks" / "scan_froc_speed.py")
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # its dataclass looks its module up
    spec.loader.exec_module(benchmark)
    scans = list(benchmark.synthetic_scans(3, 4, (16, 32, 32), seed=0))
    overlaps = [scan_overlaps(s.predicted_zyx, s.num_predicted, s.truth_zyx, s.num_truth, "iou") for s in scans]
    report = score_scans([s.scores for s in scans], overlaps, threshold=0.1, slice_interval_mm=[s.interval_mm for s in scans],
                         lesion_long_axis_mm=np.concatenate([s.long_axis_mm for s in scans]), resamples=0).report
    assert 0 < report["summary"]["all"]["mean"] <= 1
