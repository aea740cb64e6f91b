"""The one prediction path: network windows in, detections in source pixels out (optionally
with test-time augmentation: the left-right flipped windows too, fused by weighted boxes fusion).

``detect`` (every window of a volume, :func:`ctlesion.detect.detect_slices`), ``evaluate`` on
key slices and the validation after each training epoch
(:func:`ctlesion.evaluate.run.predict_items`) all run the detector through
:func:`predict_windows`, which maps its boxes and masks back through each window's
:class:`~ctlesion.preprocess.InPlaneTransform`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

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


@torch.no_grad()
def predict_windows(model: AlignShiftDetector, images: torch.Tensor, intervals_mm: torch.Tensor,
                    transforms: Sequence[InPlaneTransform], *, device: torch.device | str = "cpu",
                    score_min: float = 0.0, clip: bool = True, with_masks: bool = True,
                    precision: str = "fp32", flip: bool = False) -> list[WindowDetections]:
    """Run the detector (as it is: call ``model.eval()`` first) on a batch of windows.

    Args:
        model: the detector.
        images: (B, 1, D, H, W) float32 network inputs (:func:`ctlesion.preprocess.network_window`:
            the S x S square, or the window of it each transform's crop names).
        intervals_mm: (B,) float32 slice intervals the network sees.
        transforms: the B windows' in-plane transforms.
        device: where the model runs.
        score_min: detections below this score are dropped inside the detector, before its mask head
            runs (exactly those of 0 above it remain; with ``flip``, fused detections below it, each
            view dropping only what cannot reach it).
        clip: clip boxes to the source image (``detect``); the DeepLesion protocol scores them
            unclipped.
        with_masks: compute the masks and map them back to the source grid (bilinear); without,
            the detector skips its mask head and mask pasting.
        precision: "fp32", or "bf16" (``torch.autocast`` with bfloat16 on the model's device;
            :data:`ctlesion.choices.INFERENCE_PRECISIONS`).
        flip: test-time augmentation: also run the left-right flipped windows and fuse the two views'
            detections (:func:`fuse_views`), at twice the network time.

    Returns:
        One :class:`WindowDetections` per window.
    """
    device_type = torch.device(device).type
    views = (False, True) if flip else (False,)
    # A fused score is the mean over the views, so a member below n * score_min - (n - 1) cannot lift a
    # detection to score_min: the views drop exactly those before their mask heads run.
    view_score_min = max(0.0, len(views) * score_min - (len(views) - 1))
    width = images.shape[-1]
    per_view = []
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for flipped in views:
            inputs = images.flip(-1) if flipped else images
            found = model(inputs.to(device), intervals_mm.to(device), score_min=view_score_min, with_masks=with_masks)
            per_view.append([flip_detections(f, width, model.config.box_convention) if flipped else f for f in found])
    outputs = per_view[0] if not flip else [
        fuse_views(window, iou_min=FUSION_IOU, score_min=score_min, max_detections=model.config.detections_per_image)
        for window in zip(*per_view)]
    return [WindowDetections(boxes_px=transform.to_source(output["boxes"].cpu().double().numpy(), clip=clip),
                             scores=output["scores"].cpu().double().numpy(),
                             masks=transform.masks_to_source(output["masks"][:, 0].float().cpu().numpy())
                             if with_masks else None)
            for output, transform in zip(outputs, transforms)]


def augmentation_name(flip: bool) -> str:
    """How a run's detections were made, as recorded (``test_time_augmentation`` of results.json and
    evaluation.json): "flip" with the left-right flipped view fused in, else "none"."""
    return "flip" if flip else "none"


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
