"""The body of a CT slice, and what `detect` does with it: windows without body skipped, the
network's input cut to the body's bounding box (issue 15), detections centred outside the body
dropped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from ctlesion.body import body_box_px, body_mask, body_parts_mask, centred_inside
from ctlesion.detect import BODY_CROP_MARGIN_PX, DEFAULT_WEIGHTS, DetectOptions, detect_slices
from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.preprocess import body_crop, fit_in_plane
from ctlesion.volume import Volume

ABDOMEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_backgrounds" / \
    "acrin_flt_breast_001_abdomen_pelvis.nii.gz"


def trunk_slice(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A slice of HU with an elliptic trunk, two lungs and a table apart from the body; and the trunk."""
    yy, xx = np.mgrid[:size, :size] * (128 / size)
    hu = np.full((size, size), -1000.0)
    trunk = (yy - 60) ** 2 / 50**2 + (xx - 64) ** 2 / 40**2 <= 1
    hu[trunk] = 40.0
    lungs = ((yy - 55) ** 2 + (xx - 48) ** 2 <= 12**2) | ((yy - 55) ** 2 + (xx - 80) ** 2 <= 12**2)
    hu[lungs] = -850.0
    hu[(yy >= 120) & (yy < 124) & (xx >= 10) & (xx < 118)] = 200.0  # the scanner table
    return hu, trunk


def test_body_mask_keeps_the_largest_region_and_fills_the_lungs() -> None:
    hu, trunk = trunk_slice()
    np.testing.assert_array_equal(body_mask(hu), trunk)
    assert not body_mask(np.full((16, 16), -1000.0)).any()


def test_body_box_holds_the_trunk_and_the_arms_but_not_small_things() -> None:
    hu, trunk = trunk_slice()
    rows, cols = np.nonzero(trunk)
    assert body_box_px(hu, min_share=0.1) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)  # no table
    assert body_box_px(hu) == (rows.min(), 10, 124, 118)  # the table (3 % of the trunk's area) kept
    hu[60:62, 2:4] = 100.0  # a cable: left out
    hu[50:70, 110:122] = 40.0  # an arm beside the trunk (4 % of its area): kept
    assert body_box_px(hu) == (rows.min(), 10, 124, 122)
    assert body_box_px(np.full((16, 16), -1000.0)) is None


def test_body_parts_mask_is_the_body_boxs_regions_with_holes_filled() -> None:
    hu, trunk = trunk_slice()
    table = hu == 200.0
    np.testing.assert_array_equal(body_parts_mask(hu, min_share=0.1), trunk)  # lungs filled, no table
    np.testing.assert_array_equal(body_parts_mask(hu), trunk | table)  # the table, 3 % of the trunk's area, kept
    hu[60:62, 2:4] = 100.0  # a cable: left out
    np.testing.assert_array_equal(body_parts_mask(hu), trunk | table)
    assert not body_parts_mask(np.full((16, 16), -1000.0)).any()


def test_centred_inside_reads_the_mask_at_each_box_centre() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 3:8] = True  # rows 2..4, columns 3..7
    boxes = np.array([[3.0, 2.0, 8.0, 5.0],  # centre (5.5, 3.5): inside
                      [7.0, 4.0, 9.0, 6.0],  # centre (8.0, 5.0): column 8, row 5: outside
                      [6.0, 3.0, 9.9, 5.9],  # centre (7.95, 4.45): column 7, row 4: inside
                      [-30.0, -30.0, -10.0, -10.0]])  # off the grid: the corner pixel, outside
    assert centred_inside(boxes, mask).tolist() == [True, False, True, False]
    assert centred_inside(np.zeros((0, 4)), mask).shape == (0,)


def test_body_crop_is_aligned_holds_the_margin_and_stays_in_the_square() -> None:
    _, whole = fit_in_plane(np.zeros((3, 300, 400), np.float32), 512)  # scale 1.28
    box = (100, 150, 200, 250)  # source rows 100..199, columns 150..249
    y0, x0, y1, x1 = body_crop(whole, box, margin_px=20).crop_yx_px
    assert all(edge % 32 == 0 for edge in (y0, x0, y1, x1))
    assert y0 <= 100 * 1.28 - 20 < y0 + 32 and y1 - 32 < 200 * 1.28 + 20 <= y1
    assert x0 <= 150 * 1.28 - 20 < x0 + 32 and x1 - 32 < 250 * 1.28 + 20 <= x1
    assert body_crop(whole, (0, 0, 300, 400), margin_px=0).crop_yx_px == (0, 0, 384, 512)
    assert body_crop(whole, (0, 0, 300, 400), margin_px=200).crop_yx_px is None  # the whole square


def test_a_cropped_transform_maps_boxes_and_masks_like_the_whole_square() -> None:
    rng = np.random.default_rng(0)
    _, whole = fit_in_plane(np.zeros((3, 300, 400), np.float32), 512)
    cropped = body_crop(whole, (100, 150, 200, 250), margin_px=0)
    y0, x0, y1, x1 = cropped.crop_yx_px
    source_boxes = np.array([[160.0, 110.0, 200.0, 150.0], [150.5, 100.25, 249.0, 199.5]])
    network_boxes = whole.boxes_to_network(source_boxes)
    np.testing.assert_allclose(cropped.boxes_to_network(source_boxes), network_boxes - [x0, y0, x0, y0])
    np.testing.assert_allclose(cropped.to_source(cropped.boxes_to_network(source_boxes)), source_boxes)
    source_masks = rng.random((2, 300, 400)) > 0.5
    source_masks[:, :, :150] = source_masks[:, :, 250:] = False  # inside the crop
    source_masks[:, :100] = source_masks[:, 200:] = False
    np.testing.assert_array_equal(cropped.masks_to_network(source_masks),
                                  whole.masks_to_network(source_masks)[:, y0:y1, x0:x1])
    network_masks = np.zeros((2, 512, 512), np.float32)
    network_masks[:, y0 + 5:y1 - 5, x0 + 5:x1 - 5] = rng.random((2, y1 - y0 - 10, x1 - x0 - 10))
    np.testing.assert_array_equal(cropped.masks_to_source(cropped.crop(network_masks)),
                                  whole.masks_to_source(network_masks))
    assert cropped.crop(np.zeros((4, 1, 3, 512, 512))).shape == (4, 1, 3, y1 - y0, x1 - x0)


class InputRecorder(torch.nn.Module):
    """A detector that records the (B, 1, D, H, W) shapes it is given."""

    def __init__(self, model: AlignShiftDetector):
        super().__init__()
        self.model, self.config, self.shapes = model, model.config, []

    def forward(self, images, intervals, targets=None, *, score_min: float = 0.0, with_masks: bool = True):
        self.shapes.append(tuple(images.shape))
        return self.model(images, intervals, score_min=score_min, with_masks=with_masks)


def test_detect_skips_windows_without_body_and_crops_to_the_body() -> None:
    torch.manual_seed(0)
    config = DetectorConfig(num_slices=3, image_size_px=128, fpn_channels=16, fc_channels=32, box_score_min=0.0)
    body = np.full((128, 128), -1000.0)
    body[40:90, 40:88] = 40.0  # crop: rows 32..95, columns 32..95
    hu = np.stack([np.full((128, 128), -1000.0)] * 2 + [body] * 4).astype(np.float32)
    volume = Volume(hu=hu, spacing_zyx_mm=(5.0, 0.8, 0.8))
    recorder = InputRecorder(AlignShiftDetector(config).eval())
    found = detect_slices(recorder, volume, options=DetectOptions(score_threshold=0.0, body_crop_margin_px=0,
                                                                  drop_outside_body=False))
    assert [d.slice_index for d in found] == list(range(6))
    assert len(found[0].scores) == len(found[1].scores) == 0 and all(len(d.scores) for d in found[2:])
    assert recorder.shapes == [(4, 1, 3, 64, 64)]  # one batch: the 4 slices with body, cut
    for d in found[2:]:  # boxes and masks on the source grid, within the crop
        assert d.masks.shape[1:] == (128, 128)
        assert (d.boxes_px[:, [0, 2]] >= 0).all() and (d.boxes_px[:, [0, 2]] <= 128).all()
        assert not d.masks[:, :, :32].any() and not d.masks[:, :, 96:].any()
        assert not d.masks[:, :32].any() and not d.masks[:, 96:].any()
    recorder.shapes.clear()
    everything = detect_slices(recorder, volume, options=DetectOptions(
        score_threshold=0.0, skip_no_body=False, body_crop_margin_px=None, drop_outside_body=False))
    assert recorder.shapes == [(4, 1, 3, 128, 128), (2, 1, 3, 128, 128)]
    assert all(len(d.scores) for d in everything)
    # By default, the detections centred outside the body are dropped: on the slices of air, all.
    inside = detect_slices(recorder, volume, options=DetectOptions(score_threshold=0.0, skip_no_body=False,
                                                                   body_crop_margin_px=None))
    for kept, every, z in zip(inside, everything, range(6)):
        centres = (every.boxes_px[:, :2] + every.boxes_px[:, 2:]) / 2
        expected = ((centres[:, 0] >= 40) & (centres[:, 0] < 88) & (centres[:, 1] >= 40) & (centres[:, 1] < 90)
                    if z >= 2 else np.zeros(len(every.scores), dtype=bool))
        assert 0 < expected.sum() < len(expected) or z < 2
        np.testing.assert_array_equal(kept.scores, every.scores[expected])
        np.testing.assert_array_equal(kept.boxes_px, every.boxes_px[expected])
        np.testing.assert_array_equal(kept.masks, every.masks[expected])


@pytest.mark.skipif(not (ABDOMEN.is_file() and DEFAULT_WEIGHTS.is_file()),
                    reason="../shared/data/ct_backgrounds or the shipped model absent")
def test_the_body_crop_keeps_the_shipped_models_detections() -> None:
    """Detections >= 0.2 of the shipped model on real abdominal CT, with and without the default
    crop: the same boxes within 1 px and scores within 0.01 (README 'Speed')."""
    from ctlesion.checkpoint import load_detector  # noqa: PLC0415
    from ctlesion.io import read_volume  # noqa: PLC0415

    model, _ = load_detector(DEFAULT_WEIGHTS, "cpu")
    volume = read_volume(ABDOMEN)
    volume = replace(volume, hu=volume.hu[44:48])
    whole, cropped = (detect_slices(model, volume, options=DetectOptions(score_threshold=0.2, body_crop_margin_px=m))
                      for m in (None, BODY_CROP_MARGIN_PX))
    assert sum(len(d.scores) for d in whole) >= 20
    for a, b in zip(whole, cropped):
        assert len(a.scores) == len(b.scores)
        iou = box_iou(torch.from_numpy(a.boxes_px), torch.from_numpy(b.boxes_px)).numpy()
        match = iou.argmax(1)
        assert (iou.max(1) > 0.9).all()
        assert np.abs(a.boxes_px - b.boxes_px[match]).max() <= 1.0
        assert np.abs(a.scores - b.scores[match]).max() <= 0.01


class OneFinding(torch.nn.Module):
    """A detector that finds the same square (network pixels 40..56) with score 0.9 in every window."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config, self.calls = config, 0

    def forward(self, images, intervals, targets=None, *, score_min: float = 0.0, with_masks: bool = True):
        self.calls += len(images)
        height, width = images.shape[-2:]
        masks = torch.zeros(1, 1, height, width)
        masks[..., 40:56, 40:56] = 1.0
        return [{"boxes": torch.tensor([[40.0, 40.0, 56.0, 56.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.ones(1, dtype=torch.int64), "masks": masks} for _ in range(len(images))]


def test_fast_runs_every_second_window_and_links_lesions_across_the_gaps() -> None:
    from ctlesion.detect import FAST_KEY_SLICE_STRIDE, detect_volume  # noqa: PLC0415

    config = DetectorConfig(num_slices=3, image_size_px=128, fpn_channels=16, fc_channels=32)
    for num_z in (7, 8):  # 8: the last slice lies past the last computed window (slices 0, 2, 4, 6)
        hu = np.full((num_z, 128, 128), 40.0, np.float32)  # body everywhere: nothing skipped, no crop
        volume = Volume(hu=hu, spacing_zyx_mm=(5.0, 0.8, 0.8))
        lesions = {}
        for stride in (1, FAST_KEY_SLICE_STRIDE):
            model = OneFinding(config)
            lesions[stride], _ = detect_volume(model, volume, options=DetectOptions(key_slice_stride=stride))
            assert model.calls == len(range(0, num_z, stride))
        (every,), (fast,) = lesions[1], lesions[FAST_KEY_SLICE_STRIDE]
        np.testing.assert_array_equal(every.box_vox, fast.box_vox)  # every slice: the windows between are linked
        assert fast.box_vox[2] == 0 and fast.box_vox[5] == num_z - 1 and fast.mask_zyx.shape == every.mask_zyx.shape
        assert fast.mask_zyx.sum() == every.mask_zyx.sum() == num_z * 16 * 16
