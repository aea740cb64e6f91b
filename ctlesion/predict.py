"""The one prediction path: network windows in, detections in source pixels out (optionally
with test-time augmentation, :class:`TestTimeAugmentation`: the left-right flipped windows too,
fused by weighted boxes fusion, and/or the windows zoomed in, merged by non-maximum suppression).

``detect`` (every window of a volume, :func:`ctlesion.detect.detect_slices`), ``evaluate`` on
key slices and the validation after each training epoch
(:func:`ctlesion.evaluate.run.predict_items`) all run the detector through
:func:`predict_windows`, which maps its boxes and masks back through each window's
:class:`~ctlesion.preprocess.InPlaneTransform`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, nms

from ctlesion.networks.detector import AlignShiftDetector
from ctlesion.preprocess import InPlaneTransform


@dataclass(frozen=True)
class WindowDetections:
    """The detections of one window in its key slice's source pixels.

    Attributes:
        boxes_px: (N, 4) float64 (x1, y1, x2, y2), continuous source pixel coordinates.
        scores: (N,) float64, descending.
        masks: (N, Y, X) float32 mask probabilities on the source grid, or None when not asked for.
    """

    boxes_px: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None


@dataclass(frozen=True)
class TestTimeAugmentation:
    """The views the network sees at inference besides the plain windows (``detect`` and
    ``evaluate`` ``--tta`` and ``--tta-zoom``).

    Attributes:
        flip: also the left-right flipped windows; the two views' detections are fused by weighted
            boxes fusion (:func:`fuse_views`): twice the network time.
        zoom: also the windows upscaled in-plane by this factor (bilinear: at 1.5 a 512 x 512
            window runs at 768 x 768); its detections, mapped back (:func:`unzoom_detections`),
            are merged with the plain scale's by non-maximum suppression (:func:`merge_scales`):
            1 + zoom ** 2 times the network time (with ``flip``, twice that). Small lesions cover
            more anchors and receptive fields there (multi-scale testing; Singh & Davis, "An
            analysis of scale invariance in object detection - SNIP", CVPR 2018). None: the plain
            scale only.

    Raises:
        ValueError: for a zoom that is not a finite number > 1.
    """

    flip: bool = False
    zoom: float | None = None

    def __post_init__(self) -> None:
        if self.zoom is not None and not (math.isfinite(self.zoom) and self.zoom > 1.0):
            raise ValueError(f"the test-time zoom must be a number > 1, got {self.zoom:g}")

    @property
    def name(self) -> str:
        """As recorded (``test_time_augmentation`` of results.json and evaluation.json): "none",
        "flip", "zoom 1.5" or "flip+zoom 1.5"."""
        parts = (["flip"] if self.flip else []) + ([f"zoom {self.zoom:g}"] if self.zoom else [])
        return "+".join(parts) or "none"

    @property
    def description(self) -> str:
        """What the network saw besides the plain slices, for reports ("" for none)."""
        parts = (["left-right flipped slices too, the two views' detections fused (weighted boxes fusion)"]
                 if self.flip else []) + (
            [(f"the slices zoomed in x {self.zoom:g} too, merged with the plain scale's detections by non-maximum "
              "suppression")] if self.zoom else [])
        return "; ".join(parts)

    @classmethod
    def from_name(cls, name: str) -> TestTimeAugmentation:
        """The inverse of :attr:`name`.

        Raises:
            ValueError: for a name :attr:`name` does not write.
        """
        flip, zoom = False, None
        for part in [] if name == "none" else name.split("+"):
            if part == "flip" and not flip and zoom is None:
                flip = True
            elif part.startswith("zoom ") and zoom is None:
                try:
                    zoom = float(part.removeprefix("zoom "))
                except ValueError:
                    raise ValueError(f"unknown test-time augmentation {name!r}") from None
            else:
                raise ValueError(f"unknown test-time augmentation {name!r}")
        return cls(flip=flip, zoom=zoom)


#: No test-time augmentation: the plain windows only.
NO_AUGMENTATION = TestTimeAugmentation()


@torch.no_grad()
def predict_windows(model: AlignShiftDetector, images: torch.Tensor, intervals_mm: torch.Tensor,
                    transforms: Sequence[InPlaneTransform], *, device: torch.device | str = "cpu",
                    score_min: float = 0.0, clip: bool = True, with_masks: bool = True,
                    precision: str = "fp32",
                    augmentation: TestTimeAugmentation = NO_AUGMENTATION) -> list[WindowDetections]:
    """Run the detector (as it is: call ``model.eval()`` first) on a batch of windows.

    Args:
        model: the detector.
        images: (B, 1, D, H, W) float32 network inputs (:func:`ctlesion.preprocess.network_window`:
            the S x S square, or the window of it each transform's crop names).
        intervals_mm: (B,) float32 slice intervals the network sees.
        transforms: the B windows' in-plane transforms.
        device: where the model runs.
        score_min: detections below this score are dropped inside the detector, before its mask head
            runs (exactly those of 0 above it remain; with ``augmentation``, exactly the fused and
            merged detections above it: each view drops only what cannot reach it).
        clip: clip boxes to the source image (``detect``); the DeepLesion protocol scores them
            unclipped.
        with_masks: compute the masks and map them back to the source grid (bilinear); without,
            the detector skips its mask head and mask pasting.
        precision: "fp32", or "bf16" (``torch.autocast`` with bfloat16 on the model's device;
            :data:`ctlesion.choices.INFERENCE_PRECISIONS`).
        augmentation: test-time views besides the plain windows (:class:`TestTimeAugmentation`).

    Returns:
        One :class:`WindowDetections` per window.
    """
    zooms = (1.0, augmentation.zoom) if augmentation.zoom else (1.0,)
    per_scale = [_predict_scale(model, images, intervals_mm, zoom, device=device, score_min=score_min,
                                with_masks=with_masks, precision=precision, flip=augmentation.flip)
                 for zoom in zooms]
    outputs = per_scale[0] if len(per_scale) == 1 else [
        merge_scales(window, iou_max=model.config.box_nms_iou, max_detections=model.config.detections_per_image)
        for window in zip(*per_scale)]
    return [WindowDetections(boxes_px=transform.to_source(output["boxes"].cpu().double().numpy(), clip=clip),
                             scores=output["scores"].cpu().double().numpy(),
                             masks=transform.masks_to_source(output["masks"][:, 0].float().cpu().numpy())
                             if with_masks else None)
            for output, transform in zip(outputs, transforms)]


def _predict_scale(model: AlignShiftDetector, images: torch.Tensor, intervals_mm: torch.Tensor, zoom: float, *,
                   device: torch.device | str, score_min: float, with_masks: bool, precision: str,
                   flip: bool) -> list[dict]:
    """The detections of the windows upscaled by ``zoom`` (1: as they are), with ``flip`` fused with
    the flipped windows', mapped back to the windows' network pixels."""
    size_hw = tuple(images.shape[-2:])
    zoomed_hw = (round(size_hw[0] * zoom), round(size_hw[1] * zoom))
    if zoom != 1.0:
        images = F.interpolate(images.flatten(1, 2), size=zoomed_hw, mode="bilinear",
                               align_corners=False).unflatten(1, images.shape[1:3])
    views = (False, True) if flip else (False,)
    # A fused score is the mean over the views, so a member below n * score_min - (n - 1) cannot lift a
    # detection to score_min: the views drop exactly those before their mask heads run.
    view_score_min = max(0.0, len(views) * score_min - (len(views) - 1))
    device_type = torch.device(device).type
    per_view = []
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for flipped in views:
            inputs = images.flip(-1) if flipped else images
            found = model(inputs.to(device), intervals_mm.to(device), score_min=view_score_min, with_masks=with_masks)
            per_view.append([flip_detections(f, images.shape[-1], model.config.box_convention) if flipped else f
                             for f in found])
    outputs = per_view[0] if not flip else [
        fuse_views(window, iou_min=FUSION_IOU, score_min=score_min, max_detections=model.config.detections_per_image)
        for window in zip(*per_view)]
    if zoom == 1.0:
        return outputs
    return [unzoom_detections(output, zoomed_hw, size_hw) for output in outputs]


def unzoom_detections(detections: dict, zoomed_hw: tuple[int, int], size_hw: tuple[int, int]) -> dict:
    """Map the detections on a window upscaled to ``zoomed_hw`` back to the window of ``size_hw``.

    Args:
        detections: ``boxes`` (N, 4) (x1, y1, x2, y2) zoomed network pixels, ``scores``, ``labels``,
            optionally ``masks`` (N, 1, H', W') probabilities on the zoomed window.
        zoomed_hw: (H', W') the zoomed window's size in pixels.
        size_hw: (H, W) the window's size in pixels.

    Returns:
        The same keys: boxes divided by the zoom of each axis (W' / W, H' / H; mmdetection's
        ``bbox_mapping_back`` for its test scales), masks resampled to (H, W) (bilinear with
        antialiasing), scores and labels unchanged.
    """
    (zoomed_h, zoomed_w), (height, width) = zoomed_hw, size_hw
    factors = detections["boxes"].new_tensor([zoomed_w / width, zoomed_h / height] * 2)
    out = {**detections, "boxes": detections["boxes"] / factors}
    if "masks" in detections:
        masks = detections["masks"]
        out["masks"] = (F.interpolate(masks.float(), size=size_hw, mode="bilinear", align_corners=False,
                                      antialias=True).to(masks.dtype) if len(masks) else masks.new_zeros(
                                          (0, 1, height, width)))
    return out


def merge_scales(scales: Sequence[dict], *, iou_max: float = 0.5, max_detections: int = 100) -> dict:
    """Merge one window's detections at several test scales by non-maximum suppression over their
    union: each finding keeps the score of its most confident scale and the other scales' boxes
    overlapping it by IoU > ``iou_max`` are dropped (multi-scale testing as in mmdetection, whose
    test-time scales' detections are merged, then suppressed with the detector's own NMS).

    Args:
        scales: per scale, one window's detections mapped back to it (:func:`unzoom_detections`):
            ``boxes`` (N, 4) (x1, y1, x2, y2) network pixels, ``scores`` (N,), ``labels`` (N,),
            optionally ``masks`` (N, 1, H, W) (in every scale or in none).
        iou_max: the detector's NMS IoU (``box_nms_iou``).
        max_detections: at most this many are kept, highest scores first.

    Returns:
        Detections with the same keys, sorted by descending score.
    """
    merged = {key: torch.cat([scale[key] for scale in scales]) for key in scales[0]}
    keep = nms(merged["boxes"].float(), merged["scores"].float(), iou_max)[:max_detections]
    return {key: value[keep] for key, value in merged.items()}


#: Weighted boxes fusion's IoU for "the same object seen in two views" (Solovyev et al. 2021, their
#: default 0.55).
FUSION_IOU = 0.55


def flip_detections(detections: dict, width_px: int, box_convention: str) -> dict:
    """Map a window's detections on the left-right flipped window back to the window.

    Args:
        detections: the detector's output for one window: ``boxes`` (N, 4) (x1, y1, x2, y2) network
            pixels, ``scores`` (N,), ``labels`` (N,), optionally ``masks`` (N, 1, H, W).
        width_px: the window's width W in network pixels.
        box_convention: "torchvision" (continuous coordinates: x -> W - x) or "mmdet1" (inclusive
            pixel coordinates: x -> W - 1 - x, mmdetection 1's ``bbox_flip``).

    Returns:
        The same keys, boxes and masks mirrored back (scores and labels unchanged).
    """
    right = width_px - 1 if box_convention == "mmdet1" else width_px
    boxes = detections["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = right - detections["boxes"][:, 2], right - detections["boxes"][:, 0]
    out = {**detections, "boxes": boxes}
    if "masks" in detections:
        out["masks"] = detections["masks"].flip(-1)
    return out


def fuse_views(views: Sequence[dict], *, iou_min: float = FUSION_IOU, score_min: float = 0.0,
               max_detections: int = 100) -> dict:
    """Weighted boxes fusion of one window's detections under several test-time views.

    Solovyev, Wang and Gabruseva, "Weighted boxes fusion: Ensembling boxes from different object
    detection models", Image and Vision Computing 107 (2021): detections are taken in descending
    score; each joins the cluster whose fused box it overlaps most (IoU >= ``iou_min``) among those
    holding no detection of its view yet, or starts one. A cluster's box (and mask) is the
    score-weighted mean of its members'; its score is the sum of its members' scores over the number
    of views, so a finding seen in one view of two keeps half its score (the paper's rescaling).

    Args:
        views: per view, detections of the same window in its frame (:func:`flip_detections` for a
            flipped view): ``boxes`` (N, 4) float, ``scores`` (N,), ``labels`` (N,) int64, optionally
            ``masks`` (N, 1, H, W) float probabilities (in every view or in none).
        iou_min: the IoU at which two views' boxes count as the same finding.
        score_min: fused detections below this score are dropped.
        max_detections: at most this many fused detections are kept, highest scores first.

    Returns:
        Detections with the same keys, sorted by descending fused score.
    """
    boxes = torch.cat([v["boxes"] for v in views]).float()
    scores = torch.cat([v["scores"] for v in views]).float()
    weight = scores.clamp_min(1e-6)  # a score of 0 still weighs its member (no 0 / 0)
    view_of = [i for i, v in enumerate(views) for _ in range(len(v["scores"]))]
    members: list[list[int]] = []
    member_views: list[set[int]] = []
    fused_boxes = boxes.new_zeros((0, 4))
    for index in torch.argsort(scores, descending=True).tolist():
        overlap = box_iou(boxes[index : index + 1], fused_boxes)[0]
        overlap[[view_of[index] in seen for seen in member_views]] = -1.0
        if members and overlap.max() >= iou_min:
            cluster = int(overlap.argmax())
            members[cluster].append(index)
            member_views[cluster].add(view_of[index])
        else:
            cluster = len(members)
            members.append([index])
            member_views.append({view_of[index]})
            fused_boxes = torch.cat([fused_boxes, boxes[index : index + 1]])
        weights = weight[members[cluster]]
        fused_boxes[cluster] = (weights[:, None] * boxes[members[cluster]]).sum(0) / weights.sum()
    fused_scores = torch.stack([scores[m].sum() for m in members]) / len(views) if members else scores.new_zeros(0)
    order = torch.argsort(fused_scores, descending=True)
    order = order[fused_scores[order] >= score_min][:max_detections].tolist()
    dtype = views[0]["boxes"].dtype
    out = {"boxes": fused_boxes[order].to(dtype), "scores": fused_scores[order].to(views[0]["scores"].dtype),
           "labels": torch.cat([v["labels"] for v in views])[[members[c][0] for c in order]]}
    if "masks" in views[0]:
        masks = torch.cat([v["masks"] for v in views]).float()
        out["masks"] = torch.stack([(weight[members[c]][:, None, None, None] * masks[members[c]]).sum(0)
                                    / weight[members[c]].sum() for c in order]) if order else masks[:0]
        out["masks"] = out["masks"].to(views[0]["masks"].dtype)
    return out
