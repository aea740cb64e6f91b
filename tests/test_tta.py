"""Test-time augmentation: flipping detections back, weighted boxes fusion, and the flip-equivariance
and score threshold of ``predict_windows(..., flip=True)``."""

import numpy as np
import pytest
import torch

from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.predict import flip_detections, fuse_views, predict_windows
from ctlesion.preprocess import InPlaneTransform


def _view(boxes, scores, masks=None):
    view = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.ones(len(scores), dtype=torch.int64)}
    if masks is not None:
        view["masks"] = torch.tensor(masks, dtype=torch.float32)
    return view


@pytest.mark.parametrize(("convention", "right"), [("torchvision", 100.0), ("mmdet1", 99.0)])
def test_flip_detections_mirrors_boxes_and_masks_and_is_its_own_inverse(convention, right):
    masks = torch.zeros(1, 1, 4, 100)
    masks[0, 0, :, 10:20] = 1.0
    view = {**_view([[10, 5, 20, 30]], [0.7]), "masks": masks}
    flipped = flip_detections(view, 100, convention)
    assert flipped["boxes"].tolist() == [[right - 20, 5, right - 10, 30]]
    assert flipped["masks"][0, 0, 0, 80:90].eq(1).all() and flipped["masks"].sum() == masks.sum()
    back = flip_detections(flipped, 100, convention)
    assert torch.equal(back["boxes"], view["boxes"]) and torch.equal(back["masks"], masks)
    assert torch.equal(flipped["scores"], view["scores"])


def test_fuse_views_weighted_boxes_fusion_by_hand():
    """Solovyev et al. 2021: score-weighted mean boxes, scores summed over the number of views."""
    first = _view([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.4], masks=[[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    second = _view([[1, 1, 11, 11], [0, 0, 10, 10.5]], [0.6, 0.3], masks=[[[[0.0, 1.0]]], [[[0.5, 0.5]]]])
    fused = fuse_views([first, second])
    # (0.9 * 0 + 0.6 * 1) / 1.5 = 0.4 for the pair; the second view's other box overlaps the pair's box,
    # but that cluster already holds its view, so it stands alone (score 0.3 / 2).
    torch.testing.assert_close(fused["boxes"], torch.tensor([[0.4, 0.4, 10.4, 10.4], [50, 50, 60, 60],
                                                             [0, 0, 10, 10.5]]))
    torch.testing.assert_close(fused["scores"], torch.tensor([0.75, 0.2, 0.15]))
    torch.testing.assert_close(fused["masks"][0], torch.tensor([[[0.6, 0.4]]]))  # (0.9 m1 + 0.6 m2) / 1.5
    torch.testing.assert_close(fused["masks"][1], torch.tensor([[[1.0, 1.0]]]))  # alone: its own mask, not halved
    assert fused["labels"].tolist() == [1, 1, 1]
    kept = fuse_views([first, second], score_min=0.2, max_detections=1)
    torch.testing.assert_close(kept["scores"], torch.tensor([0.75]))
    zero = fuse_views([_view([[0, 0, 10, 10]], [0.0]), _view([[2, 0, 12, 10]], [0.0])])
    torch.testing.assert_close(zero["boxes"], torch.tensor([[1.0, 0, 11, 10]]))  # equal weights, no 0 / 0
    empty = fuse_views([_view([], []), _view([], [])])
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)


def _symmetric_case():
    torch.manual_seed(0)
    model = AlignShiftDetector(DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=16, fc_channels=32)).eval()
    images = torch.rand(2, 1, 3, 64, 64)
    transforms = [InPlaneTransform(scale=1.0, src_shape_yx=(64, 64), size_px=64)] * 2
    return model, images, torch.tensor([2.0, 5.0]), transforms


def test_test_time_flip_is_flip_equivariant():
    """Flipped input, fused detections: the mirror image of those of the input (up to float rounding)."""
    model, images, intervals, transforms = _symmetric_case()
    plain = predict_windows(model, images, intervals, transforms, flip=True, clip=False)
    mirrored = predict_windows(model, images.flip(-1), intervals, transforms, flip=True, clip=False)
    for a, b in zip(plain, mirrored):
        assert len(a.scores) > 0
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
        back = b.boxes_px.copy()
        back[:, [0, 2]] = 64.0 - b.boxes_px[:, [2, 0]]
        np.testing.assert_allclose(back, a.boxes_px, atol=1e-3)
        np.testing.assert_allclose(b.masks[..., ::-1], a.masks, atol=1e-4)


def test_test_time_flip_score_min_keeps_exactly_the_fused_detections_above_it():
    model, images, intervals, transforms = _symmetric_case()
    every = predict_windows(model, images, intervals, transforms, flip=True)
    threshold = float(np.median(np.concatenate([w.scores for w in every])))
    some = predict_windows(model, images, intervals, transforms, flip=True, score_min=threshold)
    plain = predict_windows(model, images, intervals, transforms)
    for full, kept, single in zip(every, some, plain):
        above = full.scores >= threshold
        assert 0 < above.sum() < len(full.scores)
        np.testing.assert_array_equal(kept.scores, full.scores[above])
        np.testing.assert_array_equal(kept.boxes_px, full.boxes_px[above])
        np.testing.assert_allclose(kept.masks, full.masks[above], atol=1e-6)
        assert not np.array_equal(full.scores[: len(single.scores)], single.scores)  # the views were fused
