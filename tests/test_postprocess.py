"""Linking per-slice detections into 3D lesions, RECIST axes, voxel -> LPS boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctlesion.postprocess import (
    PERPENDICULAR_TOLERANCE_DEG,
    Lesion,
    SliceDetections,
    box_lps_mm,
    disjoint_lesions,
    link_detections,
    recist_axes,
    recist_axes_mm,
)
from ctlesion.volume import Volume

SHAPE_YX = (64, 80)


def slice_dets(k: int, *items: tuple[tuple[int, int, int, int], float]) -> SliceDetections:
    """Detections on detector slice k; each mask is 0.9 inside its (integer) box, 0.1 outside."""
    boxes = np.array([b for b, _ in items], dtype=np.float32).reshape(-1, 4)
    scores = np.array([s for _, s in items], dtype=np.float32)
    masks = np.full((len(items), *SHAPE_YX), 0.1, dtype=np.float32)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x2] = 0.9
    return SliceDetections(slice_index=k, boxes_px=boxes, scores=scores, masks=masks)


def box_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    out = np.zeros(SHAPE_YX, dtype=bool)
    out[y1:y2, x1:x2] = True
    return out


def link(per_slice, **kwargs):
    args = dict(detector_interval_mm=5.0, input_interval_mm=5.0, spacing_yx_mm=(0.8, 0.5), num_input_slices=12)
    args.update(kwargs)
    return link_detections(per_slice, **args)


def painted(lesion: Lesion, num_z: int = 12) -> np.ndarray:
    labels = np.zeros((num_z, *SHAPE_YX), dtype=np.uint8)
    lesion.paint(labels, 1)
    return labels == 1


def test_thick_input_links_consecutive_slices_only():
    a3, a4, a5 = (10, 10, 30, 30), (11, 10, 31, 30), (12, 11, 31, 31)
    far = (50, 40, 70, 60)
    per_slice = [
        slice_dets(3, (a3, 0.7)),
        slice_dets(4, (a4, 0.9), (far, 0.6), ((0, 0, 5, 5), 0.3)),  # the last is below threshold
        slice_dets(5, (a5, 0.8)),
        slice_dets(7, ((12, 11, 31, 31), 0.55)),  # same place, but slice 6 is missing: new lesion
    ]
    lesions = link(per_slice)
    assert [round(les.score, 6) for les in lesions] == [0.9, 0.6, 0.55]
    main = lesions[0]
    assert main.box_vox == (10.0, 10.0, 3.0, 31.0, 31.0, 5.0)
    assert main.key_slice == 4
    expected = np.zeros((12, *SHAPE_YX), dtype=bool)
    expected[3], expected[4], expected[5] = box_mask(a3), box_mask(a4), box_mask(a5)
    np.testing.assert_array_equal(painted(main), expected)
    voxel_ml = 5.0 * 0.8 * 0.5 / 1000
    assert main.volume_ml == pytest.approx(expected.sum() * voxel_ml, rel=1e-12)
    # RECIST on the key slice: a 20 x 20 pixel square at 0.5 (x) by 0.8 (y) mm: 10 x 16 mm.
    assert main.long_axis_mm == pytest.approx(math.hypot(10.0, 16.0), abs=1e-9)
    # Its end points are opposite corners of the key slice's box, in input pixel coordinates.
    assert sorted(main.long_axis_px) in ([(11.0, 10.0), (31.0, 30.0)], [(11.0, 30.0), (31.0, 10.0)])
    assert lesions[1].box_vox == (50.0, 40.0, 4.0, 70.0, 60.0, 4.0)
    assert lesions[2].box_vox[2::3] == (7.0, 7.0)


def test_thin_input_maps_detector_slices_to_nearest_input_slices():
    # Input 1 mm, detector 2 mm: detector slice k lies at input slice 2k. Chain on k = 2, 3 covers
    # input slices z with round(z / 2) in {2, 3}: z = 3, 4 (nearest k = 2) and 5, 6 (k = 3).
    b2, b3 = (20, 20, 40, 36), (22, 21, 41, 37)
    per_slice = [slice_dets(2, (b2, 0.6)), slice_dets(3, (b3, 0.95))]
    (lesion,) = link(per_slice, detector_interval_mm=2.0, input_interval_mm=1.0, num_input_slices=10)
    assert lesion.box_vox[2::3] == (3.0, 6.0)
    assert lesion.key_slice == 6
    assert lesion.score == pytest.approx(0.95)
    got = painted(lesion, num_z=10)
    for z in range(10):
        want = box_mask(b2) if z in (3, 4) else box_mask(b3) if z in (5, 6) else np.zeros(SHAPE_YX, bool)
        np.testing.assert_array_equal(got[z], want, err_msg=f"slice {z}")
    assert lesion.volume_ml == pytest.approx(got.sum() * 1.0 * 0.8 * 0.5 / 1000, rel=1e-12)


def test_input_slices_past_the_last_detector_slice_join_its_lesions():
    # Input 1 mm, 8 slices; detector 2 mm, 4 slices (k = 0..3 at z = 0, 2, 4, 6): z = 7 rounds to
    # k = 4, which does not exist. Knowing K = 4 it joins the chain ending on k = 3; not knowing K,
    # it stays outside (the old behaviour, for callers that omit empty slices).
    b2, b3 = (20, 20, 40, 36), (22, 21, 41, 37)
    per_slice = [slice_dets(2, (b2, 0.6)), slice_dets(3, (b3, 0.95))]
    args = dict(detector_interval_mm=2.0, input_interval_mm=1.0, num_input_slices=8)
    (known,) = link(per_slice, num_detector_slices=4, **args)
    (unknown,) = link(per_slice, **args)
    assert known.box_vox[2::3] == (3.0, 7.0) and unknown.box_vox[2::3] == (3.0, 6.0)
    got = painted(known, num_z=8)
    np.testing.assert_array_equal(got[7], box_mask(b3))
    np.testing.assert_array_equal(got[:7], painted(unknown, num_z=8)[:7])


def test_greedy_linking_takes_best_overlap_and_each_box_once():
    seed = (10, 10, 30, 30)
    good, poor = (11, 11, 31, 31), (18, 18, 38, 38)  # IoU with the seed: 0.82 and 0.22
    other_seed = (19, 19, 39, 39)  # lower score, overlaps `poor` best
    per_slice = [
        slice_dets(0, (seed, 0.9), (other_seed, 0.7)),
        slice_dets(1, (poor, 0.85), (good, 0.6)),
    ]
    lesions = link(per_slice)
    assert len(lesions) == 2
    first, second = lesions
    assert first.box_vox == (10.0, 10.0, 0.0, 31.0, 31.0, 1.0)  # seed + good (not the higher-scored poor)
    # `poor` was not taken by the first chain; it seeds the second and links to other_seed.
    assert second.box_vox == (18.0, 18.0, 0.0, 39.0, 39.0, 1.0)
    assert second.score == pytest.approx(0.85) and second.key_slice == 1


def test_below_link_iou_starts_a_new_lesion():
    per_slice = [slice_dets(0, ((10, 10, 30, 30), 0.9)), slice_dets(1, ((20, 20, 40, 40), 0.8))]
    assert len(link(per_slice, iou_threshold=0.3)) == 2  # IoU 100 / 700 = 0.14
    assert len(link(per_slice, iou_threshold=0.1)) == 1


def test_nested_detections_of_one_spot_are_one_lesion():
    # A box nested in a larger one on the same slices (2D IoU 0.25: the detector's NMS keeps
    # both) links into two chains; all of the smaller mask lies inside the larger: one lesion.
    outer, inner = (10, 10, 30, 30), (15, 15, 25, 25)
    per_slice = [slice_dets(k, (outer, 0.7), (inner, 0.9 - 0.01 * k)) for k in (3, 4, 5)]
    (lesion,) = link(per_slice)
    assert lesion.score == pytest.approx(0.87) and lesion.key_slice == 3
    np.testing.assert_array_equal(painted(lesion)[3], box_mask(inner))
    assert lesion.volume_ml == pytest.approx(3 * 100 * 5.0 * 0.8 * 0.5 / 1000, rel=1e-12)


def test_partial_overlap_is_cut_from_the_lower_score_and_measured_again():
    first = (10, 10, 30, 30)
    second = (26, 10, 46, 30)  # shares columns 26-29 with `first` on slices 3-4 (4 of 20 columns)
    per_slice = [slice_dets(3, (first, 0.9), (second, 0.6)), slice_dets(4, (first, 0.8), (second, 0.7))]
    high, low = link(per_slice)
    assert (high.score, low.score) == (pytest.approx(0.9), pytest.approx(0.7))
    labels = np.zeros((12, *SHAPE_YX), np.uint8)
    high.paint(labels, 1)
    low.paint(labels, 2)
    own = box_mask((30, 10, 46, 30))
    np.testing.assert_array_equal(labels[4] == 2, own)
    assert (labels == 1).sum() == 2 * 400  # the higher score keeps every voxel
    assert low.volume_ml == pytest.approx(2 * own.sum() * 5.0 * 0.8 * 0.5 / 1000, rel=1e-12)
    # Its axes are measured on its own 16 x 20 px cross-section (8 x 16 mm), not the 20 x 20 box.
    assert low.long_axis_mm == pytest.approx(math.hypot(8.0, 16.0), abs=1e-9)
    assert min(x for x, _ in low.long_axis_px) == pytest.approx(30.0)


def test_disjoint_lesions_drops_empty_masks_and_moves_a_lost_key_slice():
    spacing = (5.0, 0.8, 0.5)
    big = Lesion(score=0.9, box_vox=(0, 0, 0, 20, 20, 2), key_slice=1, long_axis_mm=0, short_axis_mm=0,
                 volume_ml=0, mask_zyx=np.ones((3, 20, 20), bool), mask_offset_zyx=(0, 0, 0))
    tail = np.zeros((4, 20, 20), bool)  # slices 1-4
    tail[:, :4, :4] = True  # 32 of these 64 voxels on slices 1-2 lie in the big lesion (32 % of 100) ...
    tail[3, 4:10, 4:10] = True  # ... and its largest own cross-section is on slice 4
    moved = Lesion(score=0.5, box_vox=(0, 0, 1, 20, 20, 4), key_slice=2, long_axis_mm=0, short_axis_mm=0,
                   volume_ml=0, mask_zyx=tail, mask_offset_zyx=(1, 0, 0))
    empty = Lesion(score=0.95, box_vox=(0, 0, 0, 5, 5, 0), key_slice=0, long_axis_mm=0, short_axis_mm=0,
                   volume_ml=0, mask_zyx=np.zeros((1, 5, 5), bool), mask_offset_zyx=(0, 0, 0))
    kept = disjoint_lesions([moved, big, empty], spacing)
    assert [les.score for les in kept] == [0.9, 0.5]
    cut = kept[1]
    assert cut.mask_offset_zyx == (3, 0, 0) and cut.key_slice == 4  # slice 2 kept only shared voxels
    assert cut.volume_ml == pytest.approx((16 + 16 + 36) * 5.0 * 0.8 * 0.5 / 1000, rel=1e-12)
    assert cut.long_axis_mm == pytest.approx(math.hypot(10 * 0.5, 10 * 0.8), abs=1e-9)
    with pytest.raises(ValueError, match="duplicate_overlap"):
        disjoint_lesions([big], spacing, duplicate_overlap=0.0)


def test_no_detections_give_no_lesions():
    empty = SliceDetections(0, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, *SHAPE_YX)))
    assert link([empty]) == []
    assert link([slice_dets(0, ((1, 1, 5, 5), 0.2))]) == []


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="appears twice"):
        link([slice_dets(1, ((1, 1, 5, 5), 0.9)), slice_dets(1, ((1, 1, 5, 5), 0.9))])
    with pytest.raises(ValueError, match="smaller than the input interval"):
        link([slice_dets(1, ((1, 1, 5, 5), 0.9))], detector_interval_mm=1.0, input_interval_mm=2.0)
    with pytest.raises(ValueError, match="outside the input volume"):
        link([slice_dets(12, ((1, 1, 5, 5), 0.9))])
    bad = SliceDetections(0, np.zeros((2, 4), np.float32), np.ones(2, np.float32), np.zeros((1, *SHAPE_YX)))
    with pytest.raises(ValueError, match="masks must be"):
        link([bad])


def _ellipse_mask(shape_yx, spacing_yx_mm, centre_xy_mm, semi_axes_mm, angle_deg):
    """Pixels whose centres lie inside an ellipse given in mm (x = column)."""
    yy, xx = np.mgrid[: shape_yx[0], : shape_yx[1]]
    x_mm = (xx + 0.5) * spacing_yx_mm[1] - centre_xy_mm[0]
    y_mm = (yy + 0.5) * spacing_yx_mm[0] - centre_xy_mm[1]
    t = np.deg2rad(angle_deg)
    u = x_mm * np.cos(t) + y_mm * np.sin(t)
    v = -x_mm * np.sin(t) + y_mm * np.cos(t)
    return (u / semi_axes_mm[0]) ** 2 + (v / semi_axes_mm[1]) ** 2 <= 1.0


@pytest.mark.parametrize("radius_px", [6.3, 10.0, 17.7, 31.5])
def test_recist_disc_within_a_pixel(radius_px):
    mask = _ellipse_mask((90, 90), (1.0, 1.0), (44.3, 45.6), (radius_px, radius_px), 0.0)
    long_mm, short_mm = recist_axes_mm(mask, (0.7, 0.7))
    # Pixel-square convention: boundary pixels' corners stick out by up to ~1 pixel in all.
    for axis in (long_mm, short_mm):
        assert 2 * radius_px * 0.7 - 0.7 <= axis <= 2 * radius_px * 0.7 + 1.5 * 0.7
    assert short_mm <= long_mm


@pytest.mark.parametrize("spacing_yx_mm", [(1.0, 1.0), (0.5, 0.8), (1.2, 0.6)])
def test_recist_rotated_ellipse_with_anisotropic_spacing(spacing_yx_mm):
    shape = (int(80 / spacing_yx_mm[0]), int(80 / spacing_yx_mm[1]))
    mask = _ellipse_mask(shape, spacing_yx_mm, (40.2, 39.7), (25.0, 9.0), 30.0)
    long_mm, short_mm = recist_axes_mm(mask, spacing_yx_mm)
    pixel = max(spacing_yx_mm)
    assert 50.0 - pixel <= long_mm <= 50.0 + 1.5 * pixel
    assert 18.0 - pixel <= short_mm <= 18.0 + 1.5 * pixel


def test_recist_rectangle_exact():
    # 20 x 6 pixels at 0.8 (y) x 0.5 (x) mm = 10 mm wide, 4.8 mm tall. Long axis: the diagonal.
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:11, 7:27] = True
    long_mm, short_mm = recist_axes_mm(mask, (0.8, 0.5))
    width, height = 10.0, 4.8
    assert long_mm == pytest.approx(math.hypot(width, height), abs=1e-9)
    # Longest chord within 5 deg of perpendicular to the diagonal: the steepest allowed line
    # spans the full height, length height / cos(atan(height / width) + 5 deg).
    expected_short = height / math.cos(math.atan(height / width) + math.radians(5.0))
    assert short_mm == pytest.approx(expected_short, abs=1e-6)
    # A square: both axes are its diagonal.
    square = np.zeros((30, 40), dtype=bool)
    square[3:13, 4:14] = True
    assert recist_axes_mm(square, (0.7, 0.7)) == pytest.approx((7 * math.sqrt(2), 7 * math.sqrt(2)), abs=1e-9)


@pytest.mark.parametrize("spacing_yx_mm", [(1.0, 1.0), (0.5, 0.8), (1.2, 0.6)])
def test_recist_end_points_measure_the_axes(spacing_yx_mm):
    shape = (int(80 / spacing_yx_mm[0]), int(80 / spacing_yx_mm[1]))
    mask = _ellipse_mask(shape, spacing_yx_mm, (40.2, 39.7), (25.0, 9.0), 30.0)
    axes = recist_axes(mask, spacing_yx_mm)
    mm = np.array([spacing_yx_mm[1], spacing_yx_mm[0]])  # (x, y) px -> mm
    long_ends, short_ends = np.array(axes.long_px) * mm, np.array(axes.short_px) * mm
    assert np.linalg.norm(long_ends[1] - long_ends[0]) == pytest.approx(axes.long_mm, abs=1e-9)
    assert np.linalg.norm(short_ends[1] - short_ends[0]) == pytest.approx(axes.short_mm, abs=1e-9)
    long_dir, short_dir = np.diff(long_ends, axis=0)[0], np.diff(short_ends, axis=0)[0]
    cos = abs(long_dir @ short_dir) / (np.linalg.norm(long_dir) * np.linalg.norm(short_dir))
    assert math.degrees(math.acos(cos)) >= 90.0 - PERPENDICULAR_TOLERANCE_DEG - 1e-6
    # The long axis runs along the ellipse's 30 deg major axis, through its centre.
    angle = math.degrees(math.atan2(long_dir[1], long_dir[0])) % 180.0
    assert abs(angle - 30.0) < 6.0
    np.testing.assert_allclose(long_ends.mean(axis=0), (40.2, 39.7), atol=2 * max(spacing_yx_mm))
    ys, xs = np.nonzero(mask)  # every end point lies on the mask's pixel squares' hull
    for x, y in np.vstack([axes.long_px, axes.short_px]):
        assert xs.min() - 1e-9 <= x <= xs.max() + 1 + 1e-9 and ys.min() - 1e-9 <= y <= ys.max() + 1 + 1e-9


def test_recist_empty_and_errors():
    assert recist_axes_mm(np.zeros((8, 8), bool), (1.0, 1.0)) == (0.0, 0.0)
    assert recist_axes(np.zeros((8, 8), bool), (1.0, 1.0)).long_px is None
    with pytest.raises(ValueError, match="2-D"):
        recist_axes_mm(np.zeros((2, 8, 8), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        recist_axes_mm(np.ones((8, 8), bool), (0.0, 1.0))


def test_box_lps_mm_axis_aligned_and_flipped():
    volume = Volume(hu=np.zeros((10, 20, 30), np.int16), spacing_zyx_mm=(5.0, 0.8, 0.5), origin_lps_mm=(-100.0, -50.0, 200.0))
    # x: pixels 4..9 span continuous [4, 10) -> voxel indices 3.5 .. 9.5 -> -98.25 .. -95.25 mm
    # y: [2, 6) -> 1.5 .. 5.5 -> -48.8 .. -45.6 mm; z: slices 3..5 -> 2.5 .. 5.5 -> 212.5 .. 227.5
    got = box_lps_mm((4, 2, 3, 10, 6, 5), volume)
    np.testing.assert_allclose(got, [-98.25, -48.8, 212.5, -95.25, -45.6, 227.5], atol=1e-12)
    # Slices stored feet-first (z axis pointing inferior): min/max swap along z.
    flipped = Volume(
        hu=volume.hu, spacing_zyx_mm=(5.0, 0.8, 0.5), origin_lps_mm=(-100.0, -50.0, 200.0),
        direction_lps=np.diag([1.0, 1.0, -1.0]),
    )
    np.testing.assert_allclose(
        box_lps_mm((4, 2, 3, 10, 6, 5), flipped), [-98.25, -48.8, 172.5, -95.25, -45.6, 187.5], atol=1e-12
    )
