"""mmdetection-1 box geometry (ctlesion.networks.mmdet_conventions) against the authors' conventions.

Anchors and box decoding are checked against figures the authors' own code produced
(``../shared/reference/official_alignshift_x3_tiny.npz``; skipped when absent); RoIAlign against a
direct NumPy transcription of their CUDA kernel; mask pasting against OpenCV (their
``mmcv.imresize``) and hand-built cases; NMS against a transcription of their kernel's rule.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import roi_align

from ctlesion.networks.mmdet_conventions import (
    LEGACY_BBOX_XFORM_CLIP,
    LEGACY_ROI_WEIGHTS,
    LegacyAnchorGenerator,
    LegacyBoxCoder,
    LegacyRoIAlign,
    batched_nms_legacy,
    clip_boxes_legacy,
    legacy_base_anchors,
    legacy_roi_align,
    paste_masks_legacy,
    postprocess_detections_legacy,
)

#: Figures from the authors' code live beside the project, at ``../shared/reference`` from the repo root.
REFERENCE_NPZ = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_alignshift_x3_tiny.npz"


@pytest.fixture(scope="module")
def tiny_reference() -> dict[str, np.ndarray]:
    """Arrays of ``official_alignshift_x3_tiny.npz`` (float64); skips when ../shared/reference is absent."""
    if not REFERENCE_NPZ.is_file():
        pytest.skip(f"reference figures not found at {REFERENCE_NPZ} (../shared/reference is absent)")
    with np.load(REFERENCE_NPZ) as data:
        return {key: data[key] for key in data.files}


# ----------------------------------------------------------------------------------------- anchors


def test_base_anchors_by_hand():
    base = legacy_base_anchors(4, (4, 6, 8, 12, 24, 48), (0.5, 1.0, 2.0))
    assert base.shape == (18, 4)
    # ratio 0.5, scale 4: w = 16 sqrt(2), h = 8 sqrt(2) about a centre of 1.5, rounded.
    assert base[0].tolist() == [-9.0, -4.0, 12.0, 7.0]
    # ratio 1 (second block of 6), scale 4: a 16 px square with inclusive corners.
    assert base[6].tolist() == [-6.0, -6.0, 9.0, 9.0]
    assert (base[6, 2] - base[6, 0] + 1).item() == 16
    # ratio-major, scale-minor: the first six share ratio 0.5 and grow with the scale.
    widths = base[:6, 2] - base[:6, 0]
    assert torch.all(widths[1:] > widths[:-1])


def test_anchor_grid_layout_and_stride():
    gen = LegacyAnchorGenerator()
    assert gen.num_anchors_per_location() == [18]
    features = torch.zeros(2, 8, 128, 128)
    anchors = gen(ImageList(torch.zeros(2, 1, 512, 512), [(512, 512)] * 2), [features])
    assert len(anchors) == 2 and anchors[0].shape == (128 * 128 * 18, 4) and anchors[0].dtype == torch.float32
    base = legacy_base_anchors(4, (4, 6, 8, 12, 24, 48), (0.5, 1.0, 2.0))
    assert torch.equal(anchors[0][:18], base)
    assert torch.equal(anchors[0][18:36], base + torch.tensor([4.0, 0.0, 4.0, 0.0]))  # next column
    assert torch.equal(anchors[0][128 * 18 : 129 * 18], base + torch.tensor([0.0, 4.0, 0.0, 4.0]))  # next row
    assert torch.equal(anchors[0], anchors[1])
    fixed = LegacyAnchorGenerator(scales=(1,), aspect_ratios=(1.0,), base_size_px=16)
    one = fixed(ImageList(torch.zeros(1, 1, 64, 64), [(64, 64)]), [torch.zeros(1, 1, 16, 16)])[0]
    assert one[0].tolist() == [0.0, 0.0, 15.0, 15.0]


def test_anchor_rejects_unequal_strides():
    gen = LegacyAnchorGenerator()
    with pytest.raises(ValueError, match="strides"):
        gen(ImageList(torch.zeros(1, 1, 64, 128), [(64, 128)]), [torch.zeros(1, 1, 16, 16)])


def test_anchors_match_reference(tiny_reference):
    features = torch.from_numpy(tiny_reference["features"])
    image = torch.zeros(2, 1, 128, 128, dtype=torch.float64)
    anchors = LegacyAnchorGenerator()(ImageList(image, [(128, 128)] * 2), [features])
    assert anchors[0].dtype == torch.float64
    np.testing.assert_allclose(anchors[0].numpy(), tiny_reference["anchors"], rtol=1e-9, atol=0)


# -------------------------------------------------------------------------------------- box coder


def test_rpn_decoding_matches_reference(tiny_reference):
    anchors = torch.from_numpy(tiny_reference["anchors"])
    deltas = torch.from_numpy(tiny_reference["rpn_bbox_pred"][0]).permute(1, 2, 0).reshape(-1, 4)
    proposals = LegacyBoxCoder((1, 1, 1, 1)).decode_single(deltas, anchors)
    np.testing.assert_allclose(proposals.numpy(), tiny_reference["rpn_proposals_0"], rtol=1e-9, atol=1e-9)


def test_roi_decoding_matches_reference(tiny_reference):
    rois = torch.from_numpy(tiny_reference["rois"])
    deltas = torch.from_numpy(tiny_reference["roi_bbox_pred"])
    coder = LegacyBoxCoder((10, 10, 5, 5))
    decoded = coder.decode_single(deltas[:, 4:8], rois)
    np.testing.assert_allclose(decoded.numpy(), tiny_reference["roi_decoded"][:, 4:8], rtol=1e-9, atol=1e-9)
    # torchvision's list form (what RoIHeads calls), both classes, RoIs split over two images.
    listed = coder.decode(deltas, [rois[:2], rois[2:]])
    assert listed.shape == (6, 2, 4)
    np.testing.assert_allclose(listed.reshape(6, 8).numpy(), tiny_reference["roi_decoded"], rtol=1e-9, atol=1e-9)


def test_decode_by_hand():
    coder = LegacyBoxCoder((1, 1, 1, 1))
    box = torch.tensor([[0.0, 0.0, 15.0, 15.0]], dtype=torch.float64)  # 16 px wide, centre 7.5
    assert coder.decode_single(torch.zeros(1, 4, dtype=torch.float64), box).tolist() == box.tolist()
    doubled = coder.decode_single(torch.tensor([[0.0, 0.0, np.log(2.0), np.log(2.0)]], dtype=torch.float64), box)
    np.testing.assert_allclose(doubled.numpy(), [[-8.0, -8.0, 23.0, 23.0]], atol=1e-12)  # 32 px, same centre
    shifted = coder.decode_single(torch.tensor([[0.5, -0.25, 0.0, 0.0]], dtype=torch.float64), box)
    np.testing.assert_allclose(shifted.numpy(), [[8.0, -4.0, 23.0, 11.0]], atol=1e-12)
    # dw and dh are clamped on both sides to +/- log(1000 / 16).
    extreme = coder.decode_single(torch.tensor([[0.0, 0.0, -50.0, 50.0]], dtype=torch.float64), box)
    width = extreme[0, 2] - extreme[0, 0] + 1
    height = extreme[0, 3] - extreme[0, 1] + 1
    np.testing.assert_allclose([width.item(), height.item()], [16 / 62.5, 16 * 62.5], rtol=1e-12)
    assert LEGACY_BBOX_XFORM_CLIP == pytest.approx(np.log(62.5))


def test_weights_mean_inverse_stds_and_list_forms_use_legacy_rule():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=generator, dtype=torch.float64) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(40, 2, generator=generator, dtype=torch.float64) * 50], dim=1)
    deltas = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    coder = LegacyBoxCoder((10, 10, 5, 5))
    # Weights (10, 10, 5, 5) are their stds (0.1, 0.1, 0.2, 0.2): un-weighted deltas decode alike.
    np.testing.assert_allclose(
        coder.decode_single(deltas, boxes).numpy(),
        LegacyBoxCoder((1, 1, 1, 1)).decode_single(deltas * torch.tensor([0.1, 0.1, 0.2, 0.2] * 2,
                                                                         dtype=torch.float64), boxes).numpy(),
        rtol=1e-12, atol=1e-9,
    )
    listed = coder.decode(deltas, [boxes[:15], boxes[15:]]).reshape(40, 8)
    assert torch.equal(listed, coder.decode_single(deltas, boxes))
    assert not torch.allclose(listed, BoxCoder((10, 10, 5, 5)).decode(deltas, [boxes]).reshape(40, 8))
    targets = coder.encode([boxes[:15, :4] + 2, boxes[15:, :4] * 1.1], [boxes[:15], boxes[15:]])
    assert [t.shape for t in targets] == [(15, 4), (25, 4)]


def test_encode_decode_round_trip():
    generator = torch.Generator().manual_seed(1)
    xy = torch.rand(100, 2, generator=generator, dtype=torch.float64) * 200 - 50
    anchors = torch.cat([xy, xy + torch.rand(100, 2, generator=generator, dtype=torch.float64) * 80], dim=1)
    for weights in [(1, 1, 1, 1), (10, 10, 5, 5)]:
        coder = LegacyBoxCoder(weights)
        deltas = torch.randn(100, 4, generator=generator, dtype=torch.float64)
        decoded = coder.decode_single(deltas, anchors)
        np.testing.assert_allclose(coder.encode_single(decoded, anchors).numpy(), deltas.numpy(), atol=1e-9)
        np.testing.assert_allclose(coder.decode_single(coder.encode_single(anchors + 3, anchors), anchors).numpy(),
                                   (anchors + 3).numpy(), atol=1e-9)


def test_box_coder_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        LegacyBoxCoder((1, 1, 0, 1))


# --------------------------------------------------------------------------------------- RoIAlign


def _their_bilinear(data: np.ndarray, y: float, x: float) -> np.ndarray:
    """``bilinear_interpolate`` of mmdet/ops/roi_align/src/roi_align_kernel.cu on (C, H, W) data."""
    height, width = data.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(data.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * data[:, y_low, x_low] + hy * lx * data[:, y_low, x_high]
            + ly * hx * data[:, y_high, x_low] + ly * lx * data[:, y_high, x_high])


def _their_roi_align(features: np.ndarray, rois: np.ndarray, size: int, scale: float, sample_num: int) -> np.ndarray:
    """``ROIAlignForward`` of their kernel, transcribed loop for loop (float64)."""
    out = np.zeros((len(rois), features.shape[1], size, size))
    for n, (batch, x1, y1, x2, y2) in enumerate(rois):
        start_w, start_h = x1 * scale, y1 * scale
        end_w, end_h = (x2 + 1) * scale, (y2 + 1) * scale
        bin_h = max(end_h - start_h, 0.0) / size
        bin_w = max(end_w - start_w, 0.0) / size
        for ph in range(size):
            for pw in range(size):
                total = 0.0
                for iy in range(sample_num):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sample_num
                    for ix in range(sample_num):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sample_num
                        total = total + _their_bilinear(features[int(batch)], y, x)
                out[n, :, ph, pw] = total / (sample_num * sample_num)
    return out


#: Image px boxes for a 2 x 3 x 9 x 11 feature map at stride 4 (image 36 x 44): ordinary, at and
#: beyond the borders, thin (extent < 1 feature px on one or both axes), degenerate and outside.
_ROI_BOXES = [
    [0.0, 0.0, 0.0, 43.0, 35.0],
    [0.0, 5.3, 7.9, 20.2, 17.6],
    [1.0, -6.0, -3.5, 10.0, 8.0],
    [1.0, 30.0, 25.0, 50.0, 41.0],
    [0.0, 38.2, 30.1, 43.9, 35.9],
    [1.0, 12.4, 3.3, 13.9, 22.0],
    [0.0, 20.0, 20.0, 20.0, 20.0],
    [1.0, 7.7, 9.1, 8.2, 9.4],
    [0.0, 15.0, 15.0, 12.0, 30.0],
    [1.0, 60.0, 50.0, 70.0, 60.0],
    [0.0, -9.0, -9.0, -5.5, -6.0],
    [1.0, 42.5, 1.0, 44.0, 2.0],
]


def test_roi_align_matches_their_kernel():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 3, 9, 11, generator=generator, dtype=torch.float64)
    rois = torch.tensor(_ROI_BOXES, dtype=torch.float64)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    ordered = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    for size in (7, 3):
        expected = _their_roi_align(features.numpy(), ordered.numpy(), size, 0.25, 2)
        pool = LegacyRoIAlign(["0"], size, sampling_ratio=2)
        pooled = pool({"0": features, "other": features * 0}, boxes, [(36, 44)] * 2)
        assert pooled.shape == (12, 3, size, size) and pooled.dtype == torch.float64
        np.testing.assert_allclose(pooled.numpy(), expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(legacy_roi_align(features, ordered, (size, size), 0.25, 2).numpy(), expected,
                                   rtol=1e-9, atol=1e-12)
    # The thin boxes are where torchvision's kernel (extent clamped at 1 feature px) departs from theirs.
    plain = roi_align(features, torch.cat([ordered[:, :3], ordered[:, 3:] + 1], 1), 3, 0.25, 2, aligned=False)
    differs = ~torch.isclose(plain, torch.from_numpy(expected)).flatten(1).all(1)
    assert differs.any() and not differs[:2].any()


def test_roi_align_explicit_scale_and_sampling():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 9, 11, generator=generator, dtype=torch.float64)
    rois = torch.tensor(_ROI_BOXES, dtype=torch.float64)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    ordered = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    pool = LegacyRoIAlign(["0"], 4, sampling_ratio=3, spatial_scale=0.5)
    expected = _their_roi_align(features.numpy(), ordered.numpy(), 4, 0.5, 3)
    np.testing.assert_allclose(pool({"0": features}, boxes, [(18, 22)] * 2).numpy(), expected, rtol=1e-9, atol=1e-12)


def test_roi_align_gradcheck_and_empty():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(1, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    boxes = [torch.tensor([[2.3, 1.1, 17.0, 14.5], [9.0, 9.0, 9.5, 10.0], [20.0, 1.0, 27.0, 23.5]],
                          dtype=torch.float64)]
    pool = LegacyRoIAlign(["0"], 3, sampling_ratio=2)
    assert torch.autograd.gradcheck(lambda f: pool({"0": f}, boxes, [(24, 28)]), (features,))
    empty = pool({"0": features}, [torch.zeros(0, 4, dtype=torch.float64)], [(24, 28)])
    assert empty.shape == (0, 2, 3, 3)


def test_roi_align_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one feature map"):
        LegacyRoIAlign(["0", "1"], 7)
    with pytest.raises(ValueError, match="sampling_ratio"):
        LegacyRoIAlign(["0"], 7, sampling_ratio=0)


# ---------------------------------------------------------------------------------- mask pasting


def test_paste_constant_mask_fills_inclusive_box():
    masks = torch.full((1, 1, 28, 28), 0.8, dtype=torch.float64)
    boxes = torch.tensor([[3.7, 2.2, 10.9, 6.5]])
    out = paste_masks_legacy(masks, boxes, (16, 20))
    assert out.shape == (1, 1, 16, 20) and out.dtype == torch.float64
    expected = torch.zeros(16, 20, dtype=torch.float64)
    expected[2:7, 3:11] = 0.8  # corners truncated to (3, 2, 10, 6), w = 8, h = 5 inclusive pixels
    np.testing.assert_allclose(out[0, 0].numpy(), expected.numpy(), atol=1e-12)


def test_paste_matches_opencv_resize():
    generator = torch.Generator().manual_seed(5)
    masks = torch.rand(5, 1, 28, 28, generator=generator)
    # Upscaled, downscaled, exactly halved (OpenCV's area path), same size, and a 1 px box.
    boxes = torch.tensor([[10.0, 5.0, 70.9, 44.2], [2.0, 3.0, 12.0, 20.0], [30.0, 30.0, 43.0, 43.0],
                          [50.0, 40.0, 77.0, 67.0], [5.0, 60.0, 4.0, 60.0]])
    out = paste_masks_legacy(masks, boxes, (80, 90))
    for k, (x1, y1, x2, y2) in enumerate(boxes.numpy().astype(np.int32)):
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        canvas = np.zeros((80, 90), dtype=np.float32)
        canvas[y1 : y1 + h, x1 : x1 + w] = cv2.resize(masks[k, 0].numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(out[k, 0].numpy(), canvas, atol=2e-6)


def test_paste_box_partly_outside_is_cropped():
    generator = torch.Generator().manual_seed(6)
    masks = torch.rand(2, 1, 28, 28, generator=generator, dtype=torch.float64)
    boxes = torch.tensor([[-2.5, 12.3, 5.2, 30.0], [15.0, -7.9, 40.0, 3.0]], dtype=torch.float64)
    out = paste_masks_legacy(masks, boxes, (16, 20))
    # Box 0: corners (-2, 12, 5, 30) -> 8 x 19 px; rows 12..15, columns 0..5 are inside.
    full0 = cv2.resize(masks[0, 0].numpy(), (8, 19), interpolation=cv2.INTER_LINEAR)
    expected0 = np.zeros((16, 20))
    expected0[12:16, 0:6] = full0[0:4, 2:8]
    # Box 1: corners (15, -7, 40, 3) -> 26 x 11 px; rows 0..3, columns 15..19 are inside.
    full1 = cv2.resize(masks[1, 0].numpy(), (26, 11), interpolation=cv2.INTER_LINEAR)
    expected1 = np.zeros((16, 20))
    expected1[0:4, 15:20] = full1[7:11, 0:5]
    np.testing.assert_allclose(out[0, 0].numpy(), expected0, atol=1e-9)
    np.testing.assert_allclose(out[1, 0].numpy(), expected1, atol=1e-9)


def test_paste_empty_and_outside():
    out = paste_masks_legacy(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (16, 20))
    assert out.shape == (0, 1, 16, 20)
    outside = paste_masks_legacy(torch.ones(1, 1, 28, 28), torch.tensor([[30.0, 2.0, 40.0, 8.0]]), (16, 20))
    assert outside.shape == (1, 1, 16, 20) and outside.abs().sum() == 0


# ------------------------------------------------------------------------------- clipping and NMS


def test_clip_boxes_to_last_pixel():
    boxes = torch.tensor([[-3.0, -1.0, 25.0, 40.0], [2.0, 3.0, 4.0, 5.0]])
    clipped = clip_boxes_legacy(boxes, (16, 20))
    assert clipped.tolist() == [[0.0, 0.0, 19.0, 15.0], [2.0, 3.0, 4.0, 5.0]]


def _their_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS of their CUDA kernel: +1 areas, drop when IoU > threshold; kept by decreasing score."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        for j in order[position + 1 :]:
            w = max(min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1, 0.0)
            h = max(min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1, 0.0)
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > threshold:
                suppressed[j] = True
    return keep


def test_nms_uses_inclusive_pixel_iou():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.6], [0.0, 0.0, 9.0, 4.0]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    labels = torch.zeros(3, dtype=torch.int64)
    # +1 IoU of box 1 with box 0 is 0.56 (continuous 0.51): dropped at 0.55; box 2 has exactly 0.5: kept.
    assert batched_nms_legacy(boxes, scores, labels, 0.55).tolist() == [0, 2]
    assert batched_nms_legacy(boxes[[0, 2]], scores[[0, 2]], labels[:2], 0.5).tolist() == [0, 1]
    assert batched_nms_legacy(boxes, scores, torch.tensor([0, 1, 0]), 0.55).tolist() == [0, 1, 2]
    generator = torch.Generator().manual_seed(7)
    xy = torch.rand(200, 2, generator=generator, dtype=torch.float64) * 60
    random_boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=generator, dtype=torch.float64) * 30], dim=1)
    random_scores = torch.rand(200, generator=generator, dtype=torch.float64)
    expected = _their_nms(random_boxes.numpy(), random_scores.numpy(), 0.5)
    assert batched_nms_legacy(random_boxes, random_scores, torch.zeros(200, dtype=torch.int64), 0.5).tolist() == expected


# --------------------------------------------------------------------------- torchvision assembly


def test_components_run_inside_torchvision_heads():
    torch.manual_seed(0)
    anchors = LegacyAnchorGenerator()
    rpn = RegionProposalNetwork(
        anchors, RPNHead(8, anchors.num_anchors_per_location()[0]), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
        batch_size_per_image=32, positive_fraction=0.5, pre_nms_top_n={"training": 200, "testing": 100},
        post_nms_top_n={"training": 50, "testing": 30}, nms_thresh=0.7,
    )
    rpn.box_coder = LegacyBoxCoder((1.0, 1.0, 1.0, 1.0))
    heads = RoIHeads(
        LegacyRoIAlign(["0"], 7, sampling_ratio=2), TwoMLPHead(8 * 7 * 7, 16), FastRCNNPredictor(16, 2),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=16, positive_fraction=0.25,
        bbox_reg_weights=None, score_thresh=0.001, nms_thresh=0.5, detections_per_img=10,
    )
    heads.box_coder = LegacyBoxCoder((10.0, 10.0, 5.0, 5.0))
    features = {"0": torch.randn(2, 8, 16, 16)}
    images = ImageList(torch.zeros(2, 1, 64, 64), [(64, 64)] * 2)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 30.0, 25.0]]), "labels": torch.ones(1, dtype=torch.int64)},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    rpn.train()
    heads.train()
    proposals, rpn_losses = rpn(images, features, targets)
    _, head_losses = heads(features, proposals, images.image_sizes, targets)
    assert all(torch.isfinite(v) for v in {**rpn_losses, **head_losses}.values())
    rpn.eval()
    heads.eval()
    proposals, _ = rpn(images, features)
    detections, _ = heads(features, proposals, images.image_sizes)
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
    masks = paste_masks_legacy(torch.rand(len(detections[0]["boxes"]), 1, 28, 28), detections[0]["boxes"], (64, 64))
    assert masks.shape == (len(detections[0]["boxes"]), 1, 64, 64)


def test_postprocess_keeps_their_detections_and_makes_thin_boxes_valid():
    coder = LegacyBoxCoder(LEGACY_ROI_WEIGHTS)
    proposals = [torch.tensor([[10.0, 10.0, 29.0, 29.0], [100.0, 100.0, 100.0, 100.0]], dtype=torch.float64)]
    deltas = torch.zeros(2, 8, dtype=torch.float64)
    deltas[1, 6:] = -20.0  # class 1 of the second RoI shrinks below one pixel: x2 < x1 in their convention
    logits = torch.tensor([[0.0, 3.0], [0.0, 2.0]], dtype=torch.float64)
    (boxes,), (scores,), (labels,) = postprocess_detections_legacy(logits, deltas, proposals, [(512, 512)], coder,
                                                                   0.001, 0.5, 50)
    assert labels.tolist() == [1, 1] and scores[0] > scores[1]
    assert boxes[0].tolist() == [10.0, 10.0, 29.0, 29.0]
    assert bool((boxes[:, 2:] >= boxes[:, :2]).all()) and boxes[1, 0] == boxes[1, 2]
