"""Test-time augmentation: flipping detections back, weighted boxes fusion, zoomed detections mapped
back and merged across scales, and the flip-equivariance, zoom mapping and score threshold of
``predict_windows(..., augmentation=...)``."""

import numpy as np
import pytest
import torch

from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.predict import TestTimeAugmentation as Augmentation  # not a test class
from ctlesion.predict import (
    flip_detections,
    fuse_views,
    merge_scales,
    predict_windows,
    unzoom_detections,
)
from ctlesion.preprocess import InPlaneTransform

FLIP = Augmentation(flip=True)


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
    plain = predict_windows(model, images, intervals, transforms, augmentation=FLIP, clip=False)
    mirrored = predict_windows(model, images.flip(-1), intervals, transforms, augmentation=FLIP, clip=False)
    for a, b in zip(plain, mirrored):
        assert len(a.scores) > 0
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
        back = b.boxes_px.copy()
        back[:, [0, 2]] = 64.0 - b.boxes_px[:, [2, 0]]
        np.testing.assert_allclose(back, a.boxes_px, atol=1e-3)
        np.testing.assert_allclose(b.masks[..., ::-1], a.masks, atol=1e-4)


@pytest.mark.parametrize("augmentation", [FLIP, Augmentation(zoom=1.5),
                                          Augmentation(flip=True, zoom=1.5)], ids=lambda a: a.name)
def test_test_time_augmentation_score_min_keeps_exactly_the_merged_detections_above_it(augmentation):
    model, images, intervals, transforms = _symmetric_case()
    every = predict_windows(model, images, intervals, transforms, augmentation=augmentation)
    threshold = float(np.median(np.concatenate([w.scores for w in every])))
    some = predict_windows(model, images, intervals, transforms, augmentation=augmentation, score_min=threshold)
    plain = predict_windows(model, images, intervals, transforms)
    for full, kept, single in zip(every, some, plain):
        above = full.scores >= threshold
        assert 0 < above.sum() < len(full.scores)
        np.testing.assert_array_equal(kept.scores, full.scores[above])
        np.testing.assert_array_equal(kept.boxes_px, full.boxes_px[above])
        np.testing.assert_allclose(kept.masks, full.masks[above], atol=1e-6)
        assert not np.array_equal(full.scores[: len(single.scores)], single.scores)  # the views were merged


def test_augmentation_names_round_trip_and_bad_zooms_are_refused():
    names = {Augmentation(): "none", FLIP: "flip", Augmentation(zoom=1.5): "zoom 1.5",
             Augmentation(flip=True, zoom=2.0): "flip+zoom 2"}
    for augmentation, name in names.items():
        assert augmentation.name == name
        assert Augmentation.from_name(name) == augmentation
    assert Augmentation().description == ""
    assert "weighted boxes fusion" in FLIP.description and "x 1.5" in Augmentation(zoom=1.5).description
    for zoom in (1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="zoom"):
            Augmentation(zoom=zoom)
    for name in ("mirror", "flip+flip", "zoom x", "zoom 1.5+flip+zoom 2"):
        with pytest.raises(ValueError, match="unknown"):
            Augmentation.from_name(name)


def test_unzoom_detections_divides_boxes_per_axis_and_resamples_masks():
    masks = torch.zeros(1, 1, 60, 90)
    masks[0, 0, 15:45, 30:60] = 1.0  # a 30 x 30 square on the 1.5 x zoomed 40 x 60 window
    view = {**_view([[30, 15, 60, 45]], [0.8]), "masks": masks}
    back = unzoom_detections(view, (60, 90), (40, 60))
    torch.testing.assert_close(back["boxes"], torch.tensor([[20.0, 10.0, 40.0, 30.0]]))
    assert back["masks"].shape == (1, 1, 40, 60)
    inside = back["masks"][0, 0] >= 0.5
    assert inside[10:30, 20:40].all() and inside.sum() == 400  # the 20 x 20 square, nothing else
    assert torch.equal(back["scores"], view["scores"]) and torch.equal(back["labels"], view["labels"])
    empty = unzoom_detections({**_view([], []), "masks": torch.zeros(0, 1, 60, 90)}, (60, 90), (40, 60))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 1, 40, 60)


def test_merge_scales_keeps_each_finding_at_its_most_confident_scale():
    plain = _view([[0, 0, 10, 10], [50, 50, 60, 60]], [0.6, 0.5], masks=[[[[1.0]]], [[[2.0]]]])
    zoomed = _view([[0, 0, 10, 11], [20, 20, 24, 24]], [0.9, 0.3], masks=[[[[3.0]]], [[[4.0]]]])
    merged = merge_scales([plain, zoomed], iou_max=0.5)
    # the zoomed box overlaps the plain one by IoU 10/11 > 0.5 and scores higher: it stands for both
    torch.testing.assert_close(merged["boxes"], torch.tensor([[0, 0, 10, 11], [50, 50, 60, 60], [20, 20, 24, 24]],
                                                             dtype=torch.float32))
    torch.testing.assert_close(merged["scores"], torch.tensor([0.9, 0.5, 0.3]))
    assert merged["masks"].flatten().tolist() == [3.0, 2.0, 4.0]
    assert merge_scales([plain, zoomed], max_detections=2)["scores"].tolist() == pytest.approx([0.9, 0.5])
    apart = merge_scales([plain, zoomed], iou_max=0.95)  # IoU 10/11 < 0.95: both kept
    assert len(apart["scores"]) == 4


def test_test_time_zoom_merges_the_plain_scale_with_the_zoomed_windows_run_on_their_own():
    """The zoom view mapped back by unzoom_detections equals the zoomed images run as windows of a 2 x
    in-plane transform (InPlaneTransform's own mapping back to source pixels)."""
    model, images, intervals, transforms = _symmetric_case()
    zoomed = predict_windows(model, images, intervals, transforms, augmentation=Augmentation(zoom=2.0),
                             clip=False, with_masks=False)
    plain = predict_windows(model, images, intervals, transforms, clip=False, with_masks=False)
    upscaled = torch.nn.functional.interpolate(images.flatten(1, 2), size=(128, 128), mode="bilinear",
                                               align_corners=False).unflatten(1, (1, 3))
    alone = predict_windows(model, upscaled, intervals, [InPlaneTransform(scale=2.0, src_shape_yx=(64, 64),
                                                                          size_px=128)] * 2,
                            clip=False, with_masks=False)
    for merged, first, second in zip(zoomed, plain, alone):
        expected = merge_scales([_view(first.boxes_px, first.scores), _view(second.boxes_px, second.scores)],
                                iou_max=model.config.box_nms_iou, max_detections=model.config.detections_per_image)
        assert np.isin(merged.scores, second.scores).any() and np.isin(merged.scores, first.scores).any()
        np.testing.assert_allclose(merged.scores, expected["scores"].numpy(), atol=1e-6)
        np.testing.assert_allclose(merged.boxes_px, expected["boxes"].numpy(), atol=1e-3)
