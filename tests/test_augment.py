"""Tests of the training augmentation (ctlesion.data.augment) and its use in DeepLesionDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_deeplesion import build_tiny_deeplesion
from torch.utils.data import DataLoader

from ctlesion.data.augment import (
    AugmentConfig,
    AugmentDraw,
    affine_matrix,
    augment_item,
    carry_margins,
    draw_augmentation,
    flip_boxes_x,
    mask_box,
    transform_points,
    warp_masks,
    warp_window,
)
from ctlesion.data.dataset import DeepLesionDataset, collate_detection


def _rectangle_scene(shape_yx=(100, 100), rect=(20, 10, 40, 60), depth=3):
    """A window whose slices are d + 1 inside a rectangle (x1, y1, x2, y2 pixels) and 0 outside."""
    mask = np.zeros(shape_yx, dtype=bool)
    x1, y1, x2, y2 = rect
    mask[y1:y2, x1:x2] = True
    window = np.stack([mask * float(d + 1) for d in range(depth)]).astype(np.float32)
    return window, mask


def _recist_of_rectangle(rect) -> np.ndarray:
    """RECIST 'diameters' along the rectangle's diagonals: the quadrilateral is the rectangle."""
    x1, y1, x2, y2 = rect
    return np.array([x1, y1, x2, y2, x2, y1, x1, y2], dtype=np.float64)


# --------------------------------------------------------------------------- geometry


def test_pure_shift_moves_boxes_image_and_masks_by_the_shift() -> None:
    window, mask = _rectangle_scene(shape_yx=(80, 100))
    box = np.array([[17.3, 8.6, 44.2, 63.9]])
    draw = AugmentDraw(shift_frac_xy=(0.04, -0.025))  # (4, -2) px on a 100 x 80 image
    item = augment_item(window, box, draw, masks=mask[None])
    np.testing.assert_allclose(item.boxes_px, [[21.3, 6.6, 48.2, 61.9]], atol=1e-12)
    np.testing.assert_array_equal(item.window[:, 8:58, 24:44], window[:, 10:60, 20:40])
    assert item.window.sum() == window.sum()
    np.testing.assert_array_equal(mask_box(item.masks[0]), [24, 8, 44, 58])
    # A fractional shift moves the box exactly (corners, not the resampled mask).
    item = augment_item(window, box, AugmentDraw(shift_frac_xy=(0.0413, 0.0)), masks=mask[None])
    np.testing.assert_allclose(item.boxes_px, [[21.43, 8.6, 48.33, 63.9]], atol=1e-12)


def test_scale_about_the_centre_and_clipping() -> None:
    window, mask = _rectangle_scene(shape_yx=(80, 100))
    # x' = 50 + 1.5 (x - 50), y' = 40 + 1.5 (y - 40): (20, 10, 40, 60) -> (5, -5, 35, 70), clipped at y = 0.
    item = augment_item(window, np.array([[20.0, 10.0, 40.0, 60.0]]), AugmentDraw(scale=1.5))
    np.testing.assert_allclose(item.boxes_px, [[5.0, 0.0, 35.0, 70.0]], atol=1e-12)


def test_quarter_turn_of_a_rectangle() -> None:
    window, mask = _rectangle_scene()
    rect = (20, 10, 40, 60)
    draw = AugmentDraw(angle_deg=90.0)
    # Counter-clockwise as displayed about (50, 50): x' = y, y' = 100 - x.
    np.testing.assert_allclose(transform_points(affine_matrix(draw, (100, 100)), [[20.0, 10.0]]), [[10.0, 80.0]],
                               atol=1e-12)
    item = augment_item(window, np.array([rect], dtype=np.float64), draw, masks=mask[None])
    np.testing.assert_allclose(item.boxes_px, [[10.0, 60.0, 60.0, 80.0]], atol=1e-9)
    expected = np.zeros((100, 100), dtype=bool)
    expected[60:80, 10:60] = True
    np.testing.assert_array_equal(item.masks[0], expected)
    np.testing.assert_allclose(item.window, np.rot90(window, axes=(1, 2)), atol=1e-5)
    # Margins of the box around the lesion turn with it: left 3, top 2, right 4, bottom 3
    # become left 2 (old top), top 4 (old right), right 3 (old bottom), bottom 3 (old left).
    padded = np.array([[17.0, 8.0, 44.0, 63.0]])
    item = augment_item(window, padded, draw, masks=mask[None])
    np.testing.assert_allclose(item.boxes_px, [[8.0, 56.0, 63.0, 83.0]], atol=1e-9)
    # Without masks the RECIST quadrilateral gives the same boxes, exactly.
    item = augment_item(window, padded, draw, recist_px=_recist_of_rectangle(rect)[None])
    np.testing.assert_allclose(item.boxes_px, [[8.0, 56.0, 63.0, 83.0]], atol=1e-9)
    assert item.masks is None


def test_carry_margins_scales_and_flips() -> None:
    margins = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(carry_margins(margins, affine_matrix(AugmentDraw(scale=2.0), (10, 10))),
                               [2.0, 4.0, 6.0, 8.0])
    np.testing.assert_allclose(carry_margins(margins, affine_matrix(AugmentDraw(flip=True, angle_deg=10.0),
                                                                    (10, 10))), [3.0, 2.0, 1.0, 4.0])


def test_flip_mirrors_like_flip_boxes_x() -> None:
    window, mask = _rectangle_scene(shape_yx=(80, 100))
    boxes = np.array([[17.3, 8.6, 44.2, 63.9], [60.0, 5.0, 99.5, 20.0]])
    item = augment_item(window, boxes, AugmentDraw(flip=True), masks=np.stack([mask, mask]))
    np.testing.assert_array_equal(item.boxes_px, flip_boxes_x(boxes, 100))
    np.testing.assert_array_equal(item.window, window[:, :, ::-1])
    np.testing.assert_array_equal(item.masks[0], mask[:, ::-1])
    # Flip after a shift: x -> 100 - (x + 4).
    item = augment_item(window, boxes[:1], AugmentDraw(flip=True, shift_frac_xy=(0.04, 0.0)))
    np.testing.assert_allclose(item.boxes_px, [[100 - 48.2, 8.6, 100 - 21.3, 63.9]], atol=1e-12)
    np.testing.assert_array_equal(item.window[:, 10:60, 56:76], window[:, 10:60, 20:40][:, :, ::-1])


@pytest.mark.parametrize("seed", range(6))
def test_random_draws_keep_image_masks_and_boxes_consistent(seed: int) -> None:
    # A rotated ellipse lesion, tight box: after any draw the box is the bounding box of the
    # warped mask, and the warped image shows the lesion where the warped mask is.
    yy, xx = np.mgrid[0:120, 0:140] + 0.5
    u, v = (xx - 60) * 0.8 + (yy - 55) * 0.6, -(xx - 60) * 0.6 + (yy - 55) * 0.8
    mask = (u / 25) ** 2 + (v / 12) ** 2 <= 1
    window = np.stack([mask * 1.0, mask * 0.5]).astype(np.float32)
    box = mask_box(mask)[None]
    rng = np.random.default_rng(seed)
    draw = draw_augmentation(AugmentConfig(p_affine=1.0), rng)
    assert draw.angle_deg != 0.0
    item = augment_item(window, box, draw, masks=mask[None])
    np.testing.assert_allclose(item.boxes_px[0], mask_box(item.masks[0]), atol=1e-9)
    shown = item.window[0] > 0.5
    iou = (shown & item.masks[0]).sum() / (shown | item.masks[0]).sum()
    assert iou > 0.93
    np.testing.assert_allclose(item.window[1], 0.5 * item.window[0], atol=1e-6)
    # The lesion's area scales with the square of the scale factor.
    assert item.masks[0].sum() == pytest.approx(mask.sum() * draw.scale**2, rel=0.05)


def test_lesions_leaving_the_image_are_dropped_and_all_leaving_falls_back() -> None:
    window, _ = _rectangle_scene(shape_yx=(80, 100))
    boxes = np.array([[80.0, 10.0, 95.0, 30.0], [10.0, 10.0, 30.0, 30.0]])
    masks = np.zeros((2, 80, 100), dtype=bool)
    masks[0, 10:30, 80:95] = masks[1, 10:30, 10:30] = True
    item = augment_item(window, boxes, AugmentDraw(shift_frac_xy=(0.3, 0.0)), masks=masks)
    np.testing.assert_array_equal(item.kept, [1])
    np.testing.assert_allclose(item.boxes_px, [[40.0, 10.0, 60.0, 30.0]])
    assert item.masks.shape == (1, 80, 100) and mask_box(item.masks[0]).tolist() == [40, 10, 60, 30]
    # Only the right lesion, shifted out: the item keeps just its flip.
    draw = AugmentDraw(flip=True, shift_frac_xy=(0.3, 0.0))
    item = augment_item(window, boxes[:1], draw, masks=masks[:1])
    assert item.draw == AugmentDraw(flip=True)
    np.testing.assert_array_equal(item.boxes_px, flip_boxes_x(boxes[:1], 100))
    np.testing.assert_array_equal(item.window, window[:, :, ::-1])


def test_draws_follow_the_recipe_and_the_seed() -> None:
    config = AugmentConfig()
    draws = [draw_augmentation(config, np.random.default_rng([0, i, 0])) for i in range(2000)]
    assert draws[7] == draw_augmentation(config, np.random.default_rng([0, 7, 0]))
    affine = [d for d in draws if d.has_affine]
    assert 0.77 < len(affine) / len(draws) < 0.83
    assert 0.47 < np.mean([d.flip for d in draws]) < 0.53
    angles = np.array([d.angle_deg for d in affine])
    scales = np.array([d.scale for d in affine])
    shifts = np.array([d.shift_frac_xy for d in affine])
    assert angles.min() >= -15 and angles.max() <= 15 and angles.max() - angles.min() > 28
    assert scales.min() >= 0.8 and scales.max() <= 1.2 and scales.max() - scales.min() > 0.38
    assert np.abs(shifts).max() <= 0.04 and np.abs(shifts).max() > 0.039
    # Flip-only draws: the first number drawn decides the flip (< flip_p).
    for i in range(20):
        rng = np.random.default_rng([3, i, 1])
        assert draw_augmentation(AugmentConfig.flip_only(0.5), np.random.default_rng([3, i, 1])).flip == (
            rng.random() < 0.5)
    with pytest.raises(ValueError, match="probabilities"):
        AugmentConfig(p_affine=1.5)
    with pytest.raises(ValueError, match="ranges"):
        AugmentConfig(rotate_deg=-1.0)


def test_warp_helpers_shapes_and_fill() -> None:
    window = np.ones((2, 30, 40), dtype=np.float32)
    matrix = affine_matrix(AugmentDraw(shift_frac_xy=(0.25, 0.0)), (30, 40))  # 10 px right
    out = warp_window(window, matrix, fill=0.0)
    assert out.shape == (2, 30, 40) and out.dtype == np.float32
    assert out[:, :, :10].max() == 0.0 and out[:, :, 10:].min() == 1.0
    masks = warp_masks(np.ones((1, 30, 40), dtype=bool), matrix)
    assert masks.dtype == bool and masks[0, :, :10].sum() == 0 and masks[0, :, 10:].all()


# --------------------------------------------------------------------------- in the dataset


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-made 96 px dataset (tests/tiny_deeplesion.py): 4 training key slices, 1-3 lesions each."""
    root = tmp_path_factory.mktemp("augment_sim") / "data"
    build_tiny_deeplesion(root, shape_yx=(96, 96))
    return root


def test_dataset_augmentation_is_consistent(sim_root: Path) -> None:
    plain = DeepLesionDataset(sim_root, "train", num_slices=3, image_size_px=64)
    augmented = DeepLesionDataset(sim_root, "train", num_slices=3, image_size_px=64,
                                  augment=AugmentConfig(p_affine=1.0), seed=5)
    changed = 0
    for index in range(len(plain)):
        image, interval, target = augmented[index]
        image_0, interval_0, target_0 = plain[index]
        assert interval == interval_0 and image.shape == image_0.shape == (1, 3, 64, 64)
        changed += not torch.equal(image, image_0)
        assert target["scale"] == pytest.approx(64 / 96)
        np.testing.assert_allclose(target["boxes"].numpy(), target["boxes_src_px"].numpy() * target["scale"],
                                   rtol=1e-6)
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) >= 1
        boxes = target["boxes"].numpy()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert boxes.min() >= 0 and boxes.max() <= 64
        for mask, box in zip(target["masks"].numpy(), boxes):
            ys, xs = np.nonzero(mask)
            assert len(ys) > 0
            assert box[0] - 1 <= xs.min() and xs.max() + 1 <= box[2] + 1
            assert box[1] - 1 <= ys.min() and ys.max() + 1 <= box[3] + 1
    assert changed == len(plain)


def _batches(dataset: DeepLesionDataset, workers: int) -> list:
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers, collate_fn=collate_detection)
    return list(loader)


def test_augmentation_is_seeded_and_independent_of_workers(sim_root: Path) -> None:
    dataset = DeepLesionDataset(sim_root, "train", num_slices=3, image_size_px=64, augment=AugmentConfig(),
                                seed=3, with_masks=False)
    dataset.set_epoch(4)
    serial, parallel = _batches(dataset, 0), _batches(dataset, 2)
    assert len(serial) == len(parallel) >= 2
    for (images_a, intervals_a, targets_a), (images_b, intervals_b, targets_b) in zip(serial, parallel):
        assert torch.equal(images_a, images_b) and torch.equal(intervals_a, intervals_b)
        for a, b in zip(targets_a, targets_b):
            assert torch.equal(a["boxes"], b["boxes"]) and a["key"] == b["key"]
    dataset.set_epoch(5)
    other = _batches(dataset, 0)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(serial, other))
