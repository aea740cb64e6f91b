"""The AlignShift lesion detector: 3D backbone + single-level Mask R-CNN from torchvision parts.

Assembly (SPEC section 6, released configuration of the AlignShift paper):

* backbone: :class:`~ctlesion.networks.backbone.AlignShiftDenseNet` -> one map at stride 4;
* RPN: anchors of side 16, 24, 32, 48, 96, 192 px for a 512-px input (scales 4, 6, 8, 12, 24,
  48 x base 4; scaled with the input size, :func:`anchor_sizes_px`) and ratios 0.5 / 1 / 2;
  IoU 0.7 / 0.3; 32 anchors per image at 50 % positive; 2000 (train) /
  300 (test) proposals after NMS 0.7;
* box head: RoIAlign 7 x 7, two FC layers, 2 classes (background, lesion); 64 RoIs per image
  at 25 % positive (IoU 0.5); test score >= 0.001, NMS 0.5, at most 50 detections per image;
* mask head: RoIAlign 14 x 14, 4 conv 256 + deconv -> 28 x 28, Dice loss.

torchvision provides every component (AnchorGenerator, RegionProposalNetwork, RoIHeads,
MultiScaleRoIAlign, the Fast R-CNN loss and box post-processing, mask projection and pasting).
The slice interval of each sample flows through :meth:`AlignShiftDetector.forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    paste_masks_in_image,
    project_masks_on_boxes,
)
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ctlesion.choices import DETECTOR_PARTS
from ctlesion.networks.backbone import build_backbone
from ctlesion.networks.config import DetectorConfig
from ctlesion.networks.input_windows import WindowChannels
from ctlesion.networks.mmdet_conventions import (
    LEGACY_ANCHOR_SCALES,
    LEGACY_ROI_WEIGHTS,
    LEGACY_RPN_WEIGHTS,
    LegacyAnchorGenerator,
    LegacyBoxCoder,
    LegacyRegionProposalNetwork,
    LegacyRoIAlign,
    paste_masks_legacy,
    postprocess_detections_legacy,
)

ANCHOR_SIZES_PX = (16, 24, 32, 48, 96, 192)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)


def anchor_sizes_px(image_size_px: int) -> tuple[int, ...]:
    """Anchor sides for an input of ``image_size_px``: the paper's 16-192 px are for 512-px images.

    A model with a smaller (or larger) input sees every lesion scaled by image_size_px / 512, so
    its anchors scale the same way (rounded, at least 2 px) and cover the same lesion sizes in mm.
    """
    return tuple(max(2, round(size * image_size_px / 512)) for size in ANCHOR_SIZES_PX)


def dice_loss(mask_logits: Tensor, targets: Tensor, eps: float = 1.0, reduction: str = "mean") -> Tensor:
    """Soft Dice loss 1 - (2|P.T| + eps) / (|P| + |T| + eps) per RoI, averaged unless ``reduction="none"``.

    Args:
        mask_logits: (N, M, M) logits of the lesion class.
        targets: (N, M, M) float targets in [0, 1].
        eps: smoothing term.
        reduction: "mean" (scalar) or "none" ((N,) losses).
    """
    probs = torch.sigmoid(mask_logits).flatten(1)
    targets = targets.flatten(1)
    numerator = 2.0 * (probs * targets).sum(1) + eps
    denominator = probs.sum(1) + targets.sum(1) + eps
    losses = 1.0 - numerator / denominator
    return losses if reduction == "none" else losses.mean()


class SeededSampler(BalancedPositiveNegativeSampler):
    """torchvision's balanced positive/negative sampler, optionally drawing from one generator per image.

    With ``generators`` set (one ``torch.Generator`` per image, for the duration of a forward
    pass, by :class:`AlignShiftDetector`), an image's sample depends only on its own seed, so a
    global batch split across processes samples exactly what one process would. Otherwise it
    draws from torch's global generator like torchvision's. Same rule as torchvision: at most
    ``batch_size_per_image * positive_fraction`` positives, negatives fill the rest.
    """

    generators: list[torch.Generator] | None = None

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if self.generators is None:
            return super().__call__(matched_idxs)
        pos_masks, neg_masks = [], []
        for matched, generator in zip(matched_idxs, self.generators, strict=True):
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos = positive[torch.randperm(positive.numel(), generator=generator)[:num_pos].to(positive.device)]
            neg = negative[torch.randperm(negative.numel(), generator=generator)[:num_neg].to(negative.device)]
            pos_mask = torch.zeros_like(matched, dtype=torch.uint8)
            neg_mask = torch.zeros_like(matched, dtype=torch.uint8)
            pos_mask[pos], neg_mask[neg] = 1, 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


class LesionRoIHeads(RoIHeads):
    """torchvision's RoIHeads with a Dice mask loss (AlignShift's released configuration), or
    Dice + binary cross-entropy (``mask_loss``).

    Reuses torchvision's sampling, Fast R-CNN loss, box post-processing and mask projection;
    only the order of those calls is written here.
    """

    def forward(self, features, proposals, image_shapes, targets=None, *, score_min: float = 0.0,
                with_masks: bool = True):
        """torchvision's RoIHeads forward; at inference only the detections scoring >= ``score_min``
        are kept (after the usual post-processing, so they are exactly those of ``score_min`` 0), and
        their masks are computed only ``with_masks`` (each RoI's mask is independent of the others)."""
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if self.training:
            loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
            positive = [torch.where(lab > 0)[0] for lab in labels]
            mask_boxes = [p[i] for p, i in zip(proposals, positive)]
            mask_logits = self._mask_logits(features, mask_boxes, image_shapes)
            losses["loss_mask"] = self._mask_loss(mask_logits, mask_boxes, targets,
                                                  [m[i] for m, i in zip(matched_idxs, positive)])
            return [], losses
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        if score_min > 0:
            keep = [s >= score_min for s in scores]
            boxes, scores, labels = ([x[k] for x, k in zip(xs, keep)] for xs in (boxes, scores, labels))
        detections = [dict(boxes=b, scores=s, labels=lab) for b, s, lab in zip(boxes, scores, labels)]
        if with_masks:
            mask_probs = maskrcnn_inference(self._mask_logits(features, boxes, image_shapes), labels)
            for det, masks in zip(detections, mask_probs):
                det["masks"] = masks
        return detections, {}

    def _mask_logits(self, features, boxes, image_shapes) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    #: Mask loss of training (:data:`ctlesion.choices.MASK_LOSSES`): "dice" (the released
    #: configuration) or "dice+bce" (Dice plus per-pixel binary cross-entropy, torchvision's
    #: Mask R-CNN loss; its gradient does not vanish where the sigmoid saturates).
    mask_loss: str = "dice"

    def _mask_loss(self, mask_logits: Tensor, boxes, targets, matched_idxs) -> Tensor:
        """The mask loss averaged over each image's positive RoIs, then over the images that have any.

        Per-image averaging makes the loss of a global batch the mean of its images' losses, so
        it does not depend on how the batch is split across processes (DDP averages gradients).
        """
        if mask_logits.numel() == 0:
            return mask_logits.sum() * 0.0
        size = mask_logits.shape[-1]
        mask_targets = torch.cat([
            project_masks_on_boxes(t["masks"], b, i, size) for t, b, i in zip(targets, boxes, matched_idxs)
        ])
        logits = mask_logits[:, 1]
        per_roi = dice_loss(logits, mask_targets, reduction="none")
        if self.mask_loss == "dice+bce":
            per_roi = per_roi + F.binary_cross_entropy_with_logits(logits, mask_targets, reduction="none").mean((1, 2))
        per_image = [chunk.mean() for chunk in per_roi.split([len(b) for b in boxes]) if chunk.numel()]
        return torch.stack(per_image).mean()


class AlignShiftDetector(nn.Module):
    """Mask R-CNN on the AlignShift 3D backbone for windows of D slices.

    ``forward(images, slice_interval_mm, targets=None)``:

    * images: (B, 1, D, S, S) float32 in [0, 1] (``config.hu_window`` mapped linearly), S =
      ``config.image_size_px``; the middle slice is the key slice; with ``config.input_windows_hu``
      the network first re-windows them into one channel per window
      (:class:`~ctlesion.networks.input_windows.WindowChannels`);
    * slice_interval_mm: (B,) float32, the interval the network sees (>= 2 mm, SPEC section 4);
    * targets (training): per image ``{"boxes": (N, 4) float px (x1, y1, x2, y2) on the key slice,
      "labels": (N,) int64 ones, "masks": (N, S, S) uint8}``; N may be 0. An optional int
      ``"sample_seed"`` on every target makes the RPN / RoI sampling of each image depend only
      on it (:class:`SeededSampler`): training then gives the same result however the batch
      is split across processes.

    Returns the loss dict in training mode; otherwise one dict per image with ``boxes`` (K, 4),
    ``scores`` (K,), ``labels`` (K,) and ``masks`` (K, 1, S, S) probabilities in [0, 1]. At
    inference, ``score_min`` keeps only the detections scoring at least that (exactly those of
    ``score_min=0`` above it; the mask head and pasting then run for them alone) and
    ``with_masks=False`` skips masks altogether (no ``masks`` key): what ``detect`` (its score
    threshold) and the key-slice evaluation (boxes only) ask for.

    Args:
        config: the configuration (``config.backbone``: the torchvision network the backbone is
            built from, :func:`~ctlesion.networks.backbone.build_backbone`).
        net_2d: that 2D network with the weights to start from (e.g. ImageNet); None: random.
    """

    def __init__(self, config: DetectorConfig, net_2d: nn.Module | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = build_backbone(
            config.context, config.num_slices, config.fpn_channels, backbone=config.backbone, fold_div=config.fold_div,
            padding=config.padding, ref_interval_mm=config.ref_interval_mm, net_2d=net_2d,
            reduction_bias=config.reduction_bias, in_channels=config.input_channels,
        )
        self.input_windows = (WindowChannels(config.hu_window, config.input_windows_hu)
                              if config.input_windows_hu else nn.Identity())
        self.rpn = _region_proposal_network(config)
        self.roi_heads = _roi_heads(config)
        self.paste_masks = paste_masks_legacy if config.box_convention == "mmdet1" else paste_masks_in_image

    def _seed_samplers(self, targets: list[dict] | None) -> None:
        """Per-image generators for the RPN and RoI samplers when every target has a ``sample_seed``."""
        seeds = [t.get("sample_seed") for t in targets] if self.training and targets else [None]
        if any(seed is None for seed in seeds):
            self.rpn.fg_bg_sampler.generators = self.roi_heads.fg_bg_sampler.generators = None
            return
        self.rpn.fg_bg_sampler.generators = [torch.Generator().manual_seed(2 * int(s)) for s in seeds]
        self.roi_heads.fg_bg_sampler.generators = [torch.Generator().manual_seed(2 * int(s) + 1) for s in seeds]

    def forward(self, images: Tensor, slice_interval_mm: Tensor, targets: list[dict] | None = None, *,
                score_min: float = 0.0, with_masks: bool = True):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        size = images.shape[-2:]
        features = {"0": self.backbone(self.input_windows(images), slice_interval_mm)}
        image_sizes = [tuple(size)] * images.shape[0]
        image_list = ImageList(images[:, 0, self.config.num_slices // 2 : self.config.num_slices // 2 + 1], image_sizes)
        self._seed_samplers(targets)
        try:
            proposals, rpn_losses = self.rpn(image_list, features, targets)
            detections, head_losses = self.roi_heads(features, proposals, image_sizes, targets, score_min=score_min,
                                                     with_masks=with_masks)
        finally:
            self._seed_samplers(None)
        if self.training:
            return {**rpn_losses, **head_losses}
        if with_masks:
            for det in detections:
                det["masks"] = self.paste_masks(det["masks"], det["boxes"], tuple(size))
        return detections


class LegacyLesionRoIHeads(LesionRoIHeads):
    """:class:`LesionRoIHeads` with mmdetection-1 box post-processing (clipping to the last pixel,
    inclusive-pixel NMS; :func:`~ctlesion.networks.mmdet_conventions.postprocess_detections_legacy`)."""

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):  # noqa: D102
        return postprocess_detections_legacy(class_logits, box_regression, proposals, image_shapes, self.box_coder,
                                             self.score_thresh, self.nms_thresh, self.detections_per_img)


def _region_proposal_network(config: DetectorConfig) -> RegionProposalNetwork:
    """The single-level RPN of SPEC section 6 with the box geometry of ``config.box_convention``:
    torchvision's, or mmdetection 1's (legacy anchors, box coder and proposal selection)."""
    settings = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=32, positive_fraction=0.5,
                    pre_nms_top_n=dict(training=12000, testing=6000),
                    post_nms_top_n=dict(training=2000, testing=config.rpn_proposals), nms_thresh=config.rpn_nms_iou)
    if config.box_convention == "mmdet1":
        anchors = LegacyAnchorGenerator(LEGACY_ANCHOR_SCALES, ANCHOR_RATIOS)
        rpn = LegacyRegionProposalNetwork(
            anchors, RPNHead(config.fpn_channels, anchors.num_anchors_per_location()[0]), **settings)
        rpn.box_coder = LegacyBoxCoder(LEGACY_RPN_WEIGHTS)
    else:
        anchors = AnchorGenerator(sizes=(anchor_sizes_px(config.image_size_px),), aspect_ratios=(ANCHOR_RATIOS,))
        rpn = RegionProposalNetwork(anchors, RPNHead(config.fpn_channels, anchors.num_anchors_per_location()[0]),
                                    **settings)
    rpn.fg_bg_sampler = SeededSampler(32, 0.5)
    return rpn


def _roi_heads(config: DetectorConfig) -> LesionRoIHeads:
    """Box and mask heads of SPEC section 6 with the box geometry of ``config.box_convention``
    (mmdetection 1: +1 RoI ends in RoIAlign, legacy box coder and post-processing)."""
    legacy = config.box_convention == "mmdet1"
    pool, heads = (LegacyRoIAlign, LegacyLesionRoIHeads) if legacy else (MultiScaleRoIAlign, LesionRoIHeads)
    channels, mask = config.fpn_channels, config.mask_channels
    roi_heads = heads(
        box_roi_pool=pool(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, config.fc_channels),
        box_predictor=FastRCNNPredictor(config.fc_channels, 2),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=64, positive_fraction=0.25,
        bbox_reg_weights=None, score_thresh=config.box_score_min, nms_thresh=config.box_nms_iou,
        detections_per_img=config.detections_per_image, mask_roi_pool=pool(["0"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [mask] * 4, 1), mask_predictor=MaskRCNNPredictor(mask, mask, 2),
    )
    if legacy:
        roi_heads.box_coder = LegacyBoxCoder(LEGACY_ROI_WEIGHTS)
    roi_heads.fg_bg_sampler = SeededSampler(64, 0.25)
    return roi_heads


def part_modules(model: AlignShiftDetector, part: str) -> tuple[nn.Module, ...]:
    """The modules of one of :data:`DETECTOR_PARTS`: the backbone (3D DenseNet + FPN), the RPN
    (its head: the anchors have no weights), the box head (two FC layers + predictor) or the
    mask head (4 convolutions + deconvolution predictor).

    Raises:
        ValueError: an unknown part.
    """
    heads = model.roi_heads
    modules = {"backbone": (model.backbone,), "rpn": (model.rpn,),
               "box-head": (heads.box_head, heads.box_predictor),
               "mask-head": (heads.mask_head, heads.mask_predictor)}
    if part not in modules:
        raise ValueError(f"unknown detector part {part!r} (expected one of {', '.join(DETECTOR_PARTS)})")
    return modules[part]


def freeze_parts(model: AlignShiftDetector, parts: tuple[str, ...]) -> None:
    """Stop training ``parts`` of the detector, in place: their parameters stop requiring gradients.

    Call :func:`hold_frozen_norms` after every ``model.train()`` too, so that their BatchNorm
    statistics stay as well and a frozen part computes what the checkpoint computed.

    Raises:
        ValueError: an unknown part.
    """
    for part in parts:
        for module in part_modules(model, part):
            module.requires_grad_(False)


def hold_frozen_norms(model: AlignShiftDetector, parts: tuple[str, ...]) -> None:
    """Put the normalisation layers of ``parts`` in eval mode (running statistics used, not updated).

    mmdetection's ``norm_eval`` for frozen stages; the rest of the model keeps its mode.
    """
    for part in parts:
        for module in part_modules(model, part):
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._NormBase):
                    layer.eval()


def to_channels_last(model: nn.Module) -> nn.Module:
    """Lay out every convolution weight channels-last, in place: 5-D (Conv3d) weights as
    ``torch.channels_last_3d``, 4-D (Conv2d) weights as ``torch.channels_last``.

    Convolutions then produce channels-last outputs from channels-last inputs (cuDNN's NHWC /
    NDHWC kernels, which tensor cores prefer under bf16 / fp16); the values are those of the
    contiguous model up to float round-off. Parameters keep their identity, so call it before
    the optimizer is built or after: ``load_state_dict`` keeps the layout.

    Returns:
        ``model``.
    """
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)) and module.weight.dim() in formats:
            module.weight.data = module.weight.data.contiguous(memory_format=formats[module.weight.dim()])
    return model


def build_detector(config: DetectorConfig) -> AlignShiftDetector:
    """Build a randomly initialised detector from its configuration."""
    return AlignShiftDetector(config)
