"""mmdetection-1 box geometry as drop-in torchvision detection components.

The AlignShift authors trained their released DeepLesion detectors with mmdetection 1.0
(vendored in M3DV/AlignShift). Its box geometry differs from torchvision's in small ways that
change every box and mask a model predicts, so running their weights exactly needs their
conventions. Each component here takes the role and the call signature of the torchvision part
it replaces on :class:`~ctlesion.networks.detector.AlignShiftDetector`:

* :class:`LegacyAnchorGenerator` for ``rpn.anchor_generator`` (mmdetection 1.0
  ``mmdet/core/anchor/anchor_generator.py``, ``AnchorGenerator``);
* :class:`LegacyBoxCoder` for ``rpn.box_coder`` and ``roi_heads.box_coder``
  (``mmdet/core/bbox/transforms.py``, ``bbox2delta`` / ``delta2bbox``);
* :class:`LegacyRoIAlign` for ``roi_heads.box_roi_pool`` and ``roi_heads.mask_roi_pool``
  (``mmdet/ops/roi_align/src/roi_align_kernel.cu``, ``ROIAlignForward``);
* :func:`paste_masks_legacy` for torchvision's ``paste_masks_in_image`` after the RoI heads
  (``mmdet/models/mask_heads/fcn_mask_head.py``, ``FCNMaskHead.get_seg_masks``);
* :class:`LegacyRegionProposalNetwork` for ``rpn`` (their proposal selection,
  ``mmdet/models/anchor_heads/rpn_head.py``, ``get_bboxes_single``) and
  :func:`postprocess_detections_legacy` for ``RoIHeads.postprocess_detections``
  (``mmdet/models/bbox_heads/bbox_head.py``, ``get_det_bboxes``; ``multiclass_nms``), both with
  :func:`clip_boxes_legacy` and :func:`batched_nms_legacy` in place of torchvision's
  ``clip_boxes_to_image`` and ``batched_nms`` (``delta2bbox(..., max_shape)``,
  ``mmdet/ops/nms/src/nms_kernel.cu``).

Coordinate conventions. torchvision (and the rest of ctlesion, SPEC section 10) treats a box
(x1, y1, x2, y2) in px as continuous: width x2 - x1, centre (x1 + x2) / 2. mmdetection 1 treats
the corners as inclusive pixel indices: width x2 - x1 + 1, same centre. Boxes produced by these
components are in that inclusive convention; they are still (N, 4) float tensors (x1, y1, x2, y2)
with x = column, so every torchvision routine accepts them. Outside a legacy-configured model
(e.g. scoring), the +1 convention lives only in the DeepLesion-protocol IoU.

References:
    Ren et al., "Faster R-CNN", NeurIPS 2015, eq. (2) (box parameterisation);
    Girshick et al., "Rich feature hierarchies ...", CVPR 2014, appendix C (the +1 pixel widths);
    He et al., "Mask R-CNN", ICCV 2017 (RoIAlign, mask pasting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, batched_nms, roi_align

#: mmdetection-1 anchor scales of the released AlignShift configs (``anchor_scales``), x base size.
LEGACY_ANCHOR_SCALES = (4, 6, 8, 12, 24, 48)
#: Anchor aspect ratios h / w (``anchor_ratios``).
LEGACY_ANCHOR_RATIOS = (0.5, 1.0, 2.0)
#: torchvision-style regression weights = 1 / ``target_stds`` of the released configs.
LEGACY_RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
LEGACY_ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: delta2bbox's ``wh_ratio_clip`` = 16 / 1000: |dw|, |dh| <= log(1000 / 16).
LEGACY_BBOX_XFORM_CLIP = abs(math.log(16 / 1000))


def legacy_base_anchors(base_size_px: float, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """The A = len(ratios) * len(scales) anchors of one feature-map cell at the origin.

    mmdetection 1.0 ``AnchorGenerator.gen_base_anchors`` (``scale_major=True``, ``ctr=None``, with
    the AlignShift authors' centre (base - 1) / 2): for each ratio r (outer loop) and scale s
    (inner loop), w = base * s / sqrt(r), h = base * s * sqrt(r), and the box
    ``(cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2)`` with
    cx = cy = (base - 1) / 2, rounded half-to-even. Computed in float32 as theirs (the rounding
    then matches bit for bit); the values are integers.

    Args:
        base_size_px: base anchor side, px (the feature stride in their configs).
        scales: anchor scales (multiples of the base size).
        ratios: aspect ratios h / w.

    Returns:
        (A, 4) float32, (x1, y1, x2, y2) in px, inclusive-pixel convention (width x2 - x1 + 1).
    """
    scales_t = torch.tensor([float(s) for s in scales], dtype=torch.float32)
    ratios_t = torch.tensor([float(r) for r in ratios], dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (base_size_px * w_ratios[:, None] * scales_t[None, :]).reshape(-1)
    hs = (base_size_px * h_ratios[:, None] * scales_t[None, :]).reshape(-1)
    ctr = 0.5 * (base_size_px - 1)
    return torch.stack(
        [ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)], dim=-1
    ).round()


class LegacyAnchorGenerator(AnchorGenerator):
    """mmdetection-1 anchors with torchvision's ``AnchorGenerator`` interface.

    Every feature map gets the anchors of :func:`legacy_base_anchors` (base size = that map's
    stride unless ``base_size_px`` is given) shifted by (j * stride, i * stride) for cell (i, j):
    location-major order (cell by cell, rows first, then the A anchors of a cell: ratio-major,
    scale-minor), which is both torchvision's layout and mmdetection's ``grid_anchors``, and which
    matches torchvision's ``RPNHead`` output flattening. The stride is image size // feature size
    as in torchvision (4 for a 512-px input and a 128 x 128 map). Unlike torchvision's, the anchor
    sides do not depend on the input size other than through the stride; with the paper's
    settings they are 16-192 px (x ratio) for any input size.

    Args:
        scales: anchor scales, multiples of the base size (mmdetection's ``anchor_scales``).
        aspect_ratios: h / w ratios (``anchor_ratios``).
        base_size_px: base anchor side in px (``anchor_base_sizes``); None = the feature stride.

    Call: ``(image_list: ImageList, feature_maps: list[Tensor (B, C, H_f, W_f)])`` ->
    list of B tensors (sum over maps of H_f * W_f * A, 4) in the feature maps' dtype and device,
    (x1, y1, x2, y2) px, inclusive-pixel convention (width x2 - x1 + 1), not clipped to the image.

    Raises:
        ValueError: empty scales or ratios; a map whose vertical and horizontal strides differ
            while ``base_size_px`` is None.
    """

    def __init__(
        self,
        scales: Sequence[float] = LEGACY_ANCHOR_SCALES,
        aspect_ratios: Sequence[float] = LEGACY_ANCHOR_RATIOS,
        base_size_px: float | None = None,
    ):
        if not scales or not aspect_ratios:
            raise ValueError("LegacyAnchorGenerator needs at least one scale and one aspect ratio")
        super().__init__(sizes=(tuple(scales),), aspect_ratios=(tuple(aspect_ratios),))
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in aspect_ratios)
        self.base_size_px = base_size_px
        # torchvision's cell anchors are unused; keep the attribute valid for code that reads it.
        self.cell_anchors = [legacy_base_anchors(base_size_px or 1.0, self.scales, self.ratios)]

    def num_anchors_per_location(self) -> list[int]:
        """[A] with A = len(scales) * len(aspect_ratios) (18 for the paper), as torchvision's."""
        return [len(self.scales) * len(self.ratios)]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        image_h, image_w = image_list.tensors.shape[-2:]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        per_map = []
        for feature in feature_maps:
            grid_h, grid_w = feature.shape[-2:]
            stride_h, stride_w = image_h // grid_h, image_w // grid_w
            base = self.base_size_px
            if base is None:
                if stride_h != stride_w:
                    raise ValueError(
                        f"feature map {grid_h}x{grid_w} of a {image_h}x{image_w} image has strides "
                        f"{stride_h} (y) and {stride_w} (x); legacy anchors need one stride or base_size_px"
                    )
                base = stride_h
            base_anchors = legacy_base_anchors(base, self.scales, self.ratios).to(dtype=dtype, device=device)
            shift_x = torch.arange(grid_w, device=device).to(dtype) * stride_w
            shift_y = torch.arange(grid_h, device=device).to(dtype) * stride_h
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=1)
            per_map.append((shifts[:, None, :] + base_anchors[None, :, :]).reshape(-1, 4))
        anchors = torch.cat(per_map)
        return [anchors for _ in image_list.image_sizes]


class LegacyBoxCoder(BoxCoder):
    """mmdetection-1 ``bbox2delta`` / ``delta2bbox`` with torchvision's ``BoxCoder`` interface.

    Faster R-CNN parameterisation (Ren et al. 2015, eq. 2) with inclusive-pixel widths: for a
    reference box P and a target G, w = x2 - x1 + 1, cx = (x1 + x2) / 2 (same for y), and
    ``d = ((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph)) * weights``. Decoding
    divides by the weights (mmdetection multiplies by ``target_stds`` = 1 / weights, as done here
    for bit-level agreement), clamps dw and dh to +/- ``bbox_xform_clip`` (both signs, unlike
    torchvision's upper clamp only) and returns ``x1 = gx - gw / 2 + 0.5, x2 = gx + gw / 2 - 0.5``.
    No clipping to the image: torchvision's RPN and RoIHeads clip afterwards (to [0, W]; see the
    module notes for mmdetection's [0, W - 1]). Means are 0 (the released configs).

    Args:
        weights: (wx, wy, ww, wh) = 1 / ``target_stds``: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5)
            for the box head (stds 0.1, 0.1, 0.2, 0.2).
        bbox_xform_clip: |dw|, |dh| bound after un-weighting; log(1000 / 16) as delta2bbox's
            ``wh_ratio_clip = 16 / 1000``.
    """

    def __init__(self, weights: tuple[float, float, float, float],
                 bbox_xform_clip: float = LEGACY_BBOX_XFORM_CLIP) -> None:
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be 4 positive numbers, got {weights}")
        super().__init__(tuple(float(w) for w in weights), bbox_xform_clip)

    def _stds(self, like: Tensor) -> Tensor:
        return torch.tensor([1.0 / w for w in self.weights], dtype=like.dtype, device=like.device)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Regression targets of ``reference_boxes`` (ground truth) relative to ``proposals``.

        mmdetection 1.0 ``bbox2delta(proposals, gt, means=0, stds=1 / weights)`` (theirs casts to
        float32 first; here the inputs' dtype is kept).

        Args:
            reference_boxes: (N, 4) target boxes, px, inclusive-pixel convention.
            proposals: (N, 4) reference boxes (anchors / proposals), same convention.

        Returns:
            (N, 4) deltas (dx, dy, dw, dh) x weights, in ``reference_boxes``' dtype.
        """
        dtype = reference_boxes.dtype
        proposals = proposals.to(dtype)
        px = (proposals[:, 0] + proposals[:, 2]) * 0.5
        py = (proposals[:, 1] + proposals[:, 3]) * 0.5
        pw = proposals[:, 2] - proposals[:, 0] + 1.0
        ph = proposals[:, 3] - proposals[:, 1] + 1.0
        gx = (reference_boxes[:, 0] + reference_boxes[:, 2]) * 0.5
        gy = (reference_boxes[:, 1] + reference_boxes[:, 3]) * 0.5
        gw = reference_boxes[:, 2] - reference_boxes[:, 0] + 1.0
        gh = reference_boxes[:, 3] - reference_boxes[:, 1] + 1.0
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        return deltas / self._stds(deltas)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Boxes from deltas: mmdetection 1.0 ``delta2bbox(boxes, rel_codes, 0, 1 / weights)``, unclipped.

        Args:
            rel_codes: (N, 4 * K) deltas (K boxes per reference box, e.g. one per class), as
                laid out by torchvision's RPN (anchor order) and box predictor.
            boxes: (N, 4) reference boxes (anchors or proposals), px, inclusive-pixel convention.

        Returns:
            (N, 4 * K) boxes (x1, y1, x2, y2) px, inclusive-pixel convention, in ``rel_codes``'
            dtype.
        """
        boxes = boxes.to(rel_codes.dtype)
        stds = self._stds(rel_codes).repeat(rel_codes.shape[1] // 4)
        deltas = rel_codes * stds
        dx, dy = deltas[:, 0::4], deltas[:, 1::4]
        clip = self.bbox_xform_clip
        dw = deltas[:, 2::4].clamp(min=-clip, max=clip)
        dh = deltas[:, 3::4].clamp(min=-clip, max=clip)
        px = ((boxes[:, 0] + boxes[:, 2]) * 0.5)[:, None]
        py = ((boxes[:, 1] + boxes[:, 3]) * 0.5)[:, None]
        pw = (boxes[:, 2] - boxes[:, 0] + 1.0)[:, None]
        ph = (boxes[:, 3] - boxes[:, 1] + 1.0)[:, None]
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        gx = px + pw * dx
        gy = py + ph * dy
        decoded = torch.stack([gx - gw * 0.5 + 0.5, gy - gh * 0.5 + 0.5, gx + gw * 0.5 - 0.5, gy + gh * 0.5 - 0.5],
                              dim=-1)
        return decoded.reshape(rel_codes.shape)


def _legacy_axis_weights(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis with mmdetection-1's ``bilinear_interpolate`` boundary rules.

    A sample outside [-1, size] contributes 0; one in [-1, 0] reads index 0 with full weight; one at
    or beyond size - 1 reads index size - 1 with full weight.

    Returns:
        (low index, high index, low weight, high weight), each like ``coords`` (int64 / dtype).
    """
    valid = ((coords >= -1.0) & (coords <= size)).to(coords.dtype)
    c = coords.clamp(min=0.0)
    low = c.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    c = torch.where(at_edge, low, c)
    low_i = low.long()
    high_i = torch.where(at_edge, low_i, low_i + 1)
    frac = c - low
    return low_i, high_i, (1.0 - frac) * valid, frac * valid


def legacy_roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                     sampling_ratio: int) -> Tensor:
    """mmdetection-1 RoIAlign in plain PyTorch (gather + einsum; differentiable w.r.t. ``features``).

    Mirrors ``ROIAlignForward`` of ``mmdet/ops/roi_align/src/roi_align_kernel.cu``: start =
    x1 * scale, end = (x2 + 1) * scale, extent max(end - start, 0) (no minimum of 1, although the
    kernel's comment says so), bins extent / output size, ``sampling_ratio``^2 regularly spaced
    samples per bin (at (i + 0.5) / n of the bin), bilinear taps as
    :func:`_legacy_axis_weights`, averaged. Memory is about K * C * (2 n P)^2 values, so
    :class:`LegacyRoIAlign` uses it only for the RoIs torchvision's kernel treats differently.

    Args:
        features: (B, C, H, W) feature map.
        rois: (K, 5) (batch index, x1, y1, x2, y2), px of the image, inclusive-pixel convention.
        output_size: (P_h, P_w) bins.
        spatial_scale: feature px per image px (1 / stride).
        sampling_ratio: samples per bin and axis, >= 1.

    Returns:
        (K, C, P_h, P_w) in ``features``' dtype.
    """
    if sampling_ratio < 1:
        raise ValueError(f"legacy_roi_align needs sampling_ratio >= 1, got {sampling_ratio}")
    out_h, out_w = output_size
    height, width = features.shape[-2:]
    rois = rois.detach().to(features.dtype)
    batch = rois[:, 0].long()
    start_x, start_y = rois[:, 1] * spatial_scale, rois[:, 2] * spatial_scale
    end_x, end_y = (rois[:, 3] + 1) * spatial_scale, (rois[:, 4] + 1) * spatial_scale
    bin_w = (end_x - start_x).clamp(min=0.0) / out_w
    bin_h = (end_y - start_y).clamp(min=0.0) / out_h
    n = sampling_ratio
    offsets = torch.arange(n, dtype=features.dtype, device=features.device) + 0.5

    def sample_coords(start: Tensor, bin_size: Tensor, bins: int) -> Tensor:  # (K, bins, n)
        index = torch.arange(bins, dtype=features.dtype, device=features.device)
        return (start[:, None, None] + index[None, :, None] * bin_size[:, None, None]
                + offsets[None, None, :] * bin_size[:, None, None] / n)

    ylo, yhi, wylo, wyhi = _legacy_axis_weights(sample_coords(start_y, bin_h, out_h), height)
    xlo, xhi, wxlo, wxhi = _legacy_axis_weights(sample_coords(start_x, bin_w, out_w), width)
    k = rois.shape[0]
    y_index = torch.stack([ylo, yhi], dim=-1).reshape(k, -1)  # (K, P_h * n * 2)
    x_index = torch.stack([xlo, xhi], dim=-1).reshape(k, -1)
    wy = torch.stack([wylo, wyhi], dim=-1)  # (K, P_h, n, 2)
    wx = torch.stack([wxlo, wxhi], dim=-1)
    taps = features[batch[:, None, None], :, y_index[:, :, None], x_index[:, None, :]]  # (K, Y, X, C)
    taps = taps.reshape(k, out_h, n, 2, out_w, n, 2, -1)
    return torch.einsum("kpia,kqjb,kpiaqjbc->kcpq", wy, wx, taps) / (n * n)


class LegacyRoIAlign(MultiScaleRoIAlign):
    """mmdetection-1 RoIAlign (single feature level) with torchvision's ``MultiScaleRoIAlign`` interface.

    mmdetection 1.0 ``RoIAlign(out_size, spatial_scale, sample_num)`` behind ``SingleRoIExtractor``
    (kernel ``mmdet/ops/roi_align/src/roi_align_kernel.cu``): the box's end coordinates get +1
    (inclusive pixels) before scaling, ``aligned=False`` (no half-pixel offset), the RoI extent is
    clamped at 0 (not 1). torchvision's legacy kernel (``roi_align(..., aligned=False)``) has the
    same sampling and bilinear boundary rules but clamps the extent at 1 feature px; it is used
    for every RoI whose extent is >= 1 feature px on both axes (there the two agree exactly),
    and :func:`legacy_roi_align` for the others (boxes under stride - 1 px, e.g. < 3 px at stride 4).

    Args:
        featmap_names: the one feature-map key to pool from (``["0"]`` in ctlesion).
        output_size: bins per side (7 for the box head, 14 for the mask head) or (P_h, P_w).
        sampling_ratio: samples per bin and axis (their ``sample_num = 2``); >= 1.
        spatial_scale: feature px per image px; None = inferred as torchvision does (power of 2
            nearest feature size / image size, 0.25 at stride 4).

    Call: ``(x: dict[str, Tensor (B, C, H_f, W_f)], boxes: list of B tensors (K_b, 4) px
    (x1, y1, x2, y2) inclusive-pixel convention, image_shapes: list of (H, W))`` ->
    (sum K_b, C, P_h, P_w) in the features' dtype, RoIs in image order.

    Raises:
        ValueError: more than one feature map name, or ``sampling_ratio`` < 1.
    """

    def __init__(self, featmap_names: list[str], output_size: int | tuple[int, int], sampling_ratio: int = 2,
                 spatial_scale: float | None = None):
        if len(featmap_names) != 1:
            raise ValueError(f"LegacyRoIAlign pools one feature map, got {featmap_names}")
        if sampling_ratio < 1:
            raise ValueError(f"LegacyRoIAlign needs sampling_ratio >= 1 (theirs is 2), got {sampling_ratio}")
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        self.spatial_scale = spatial_scale

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        features = x[self.featmap_names[0]]
        scale = self.spatial_scale
        if scale is None:
            if not image_shapes:
                raise ValueError("image_shapes must not be empty")
            image_h = max(shape[0] for shape in image_shapes)
            scale = 2.0 ** round(math.log2(features.shape[-2] / image_h))
        rois = torch.cat([
            torch.cat([torch.full_like(b[:, :1], i, dtype=features.dtype), b.to(features.dtype)], dim=1)
            for i, b in enumerate(boxes)
        ]) if boxes else features.new_zeros((0, 5))
        tv_rois = torch.cat([rois[:, :3], rois[:, 3:] + 1], dim=1)
        pooled = roi_align(features, tv_rois, self.output_size, spatial_scale=scale,
                           sampling_ratio=self.sampling_ratio, aligned=False)
        extent_x = tv_rois[:, 3] * scale - tv_rois[:, 1] * scale
        extent_y = tv_rois[:, 4] * scale - tv_rois[:, 2] * scale
        small = torch.nonzero((extent_x < 1) | (extent_y < 1)).flatten()
        if small.numel() == 0:
            return pooled
        exact = legacy_roi_align(features, rois[small], self.output_size, scale, self.sampling_ratio)
        return pooled.index_put((small,), exact)


def _opencv_linear_matrix(src: int, dst: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(dst, src) matrix of OpenCV ``INTER_LINEAR`` resizing along one axis.

    Output pixel d samples the source at (d + 0.5) * src / dst - 0.5 (half-pixel centres),
    clamped to [0, src - 1] (OpenCV's ``resize`` / ``mmcv.imresize`` default).
    """
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1 / inv_scale_x, inv_scale_x = dst / src
    coords = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0.0, max=src - 1)
    low = coords.floor().long()
    high = (low + 1).clamp(max=src - 1)
    frac = coords - low
    matrix = torch.zeros(dst, src, dtype=torch.float64)
    rows = torch.arange(dst)
    matrix[rows, low] += 1.0 - frac
    matrix[rows, high] += frac
    return matrix.to(dtype=dtype, device=device)


def paste_masks_legacy(masks: Tensor, boxes: Tensor, img_shape: tuple[int, int], padding: int = 1) -> Tensor:
    """Paste per-box mask probabilities into the image: mmdetection 1.0 ``FCNMaskHead.get_seg_masks``.

    Drop-in for torchvision's ``paste_masks_in_image(masks, boxes, img_shape)``. For box k: the
    corners are truncated to int (toward zero, their ``astype(np.int32)``), w = max(x2 - x1 + 1, 1)
    and h = max(y2 - y1 + 1, 1) px (inclusive pixels), the M x M probabilities are resized
    bilinearly to h x w as OpenCV ``INTER_LINEAR`` (their ``mmcv.imresize``: half-pixel centres,
    edge clamping, no antialiasing) and written at rows y1 .. y1 + h - 1, columns x1 .. x1 + w - 1,
    cropped to the image; the rest is 0. Probabilities are returned, not thresholded: their code
    keeps pixels with probability **> 0.5** (``mask_thr_binary``, strict). Their code raises (and
    leaves the mask empty) where the box leaves the image; boxes clipped to [0, W - 1] x
    [0, H - 1] as theirs never do, and here such boxes are cropped instead.

    Args:
        masks: (K, 1, M, M) float mask probabilities (after the sigmoid) of each box's class.
        boxes: (K, 4) float px (x1, y1, x2, y2), inclusive-pixel convention, in the image's frame.
        img_shape: (H, W) of the image, px.
        padding: accepted for signature compatibility with torchvision; ignored (mmdetection
            does not pad the mask).

    Returns:
        (K, 1, H, W) probabilities in ``masks``' dtype and device.
    """
    del padding
    img_h, img_w = int(img_shape[0]), int(img_shape[1])
    out = masks.new_zeros((masks.shape[0], 1, img_h, img_w))
    corners = boxes.detach().to("cpu", torch.float64).trunc().long().tolist()
    m_h, m_w = masks.shape[-2:]
    for k, (x1, y1, x2, y2) in enumerate(corners):
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        top, left = max(y1, 0), max(x1, 0)
        bottom, right = min(y1 + h, img_h), min(x1 + w, img_w)
        if bottom <= top or right <= left:
            continue
        rows = _opencv_linear_matrix(m_h, h, masks.dtype, masks.device)[top - y1 : bottom - y1]
        cols = _opencv_linear_matrix(m_w, w, masks.dtype, masks.device)[left - x1 : right - x1]
        out[k, 0, top:bottom, left:right] = rows @ masks[k, 0] @ cols.T
    return out


def clip_boxes_legacy(boxes: Tensor, image_shape: tuple[int, int]) -> Tensor:
    """Clip boxes to the image as mmdetection 1.0 ``delta2bbox(..., max_shape=(H, W))`` does.

    x to [0, W - 1] and y to [0, H - 1] px (the last pixel index, inclusive-pixel convention),
    where torchvision's ``clip_boxes_to_image`` clips to [0, W] and [0, H]. Their RPN proposals
    and final detections are clipped this way, which also keeps every pasted mask inside the image.

    Args:
        boxes: (..., 4) float px (x1, y1, x2, y2).
        image_shape: (H, W) px.

    Returns:
        Clipped copy of ``boxes``, same shape and dtype.
    """
    height, width = image_shape
    x = boxes[..., 0::2].clamp(min=0, max=width - 1)
    y = boxes[..., 1::2].clamp(min=0, max=height - 1)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def batched_nms_legacy(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-category NMS with mmdetection-1 IoU (inclusive pixels: areas (x2 - x1 + 1)(y2 - y1 + 1)).

    Same contract as ``torchvision.ops.batched_nms``: greedy in decreasing score, a box is dropped
    when its IoU with a kept box of its category is **> iou_threshold** (their CUDA kernel
    ``nms_kernel.cu``, which their GPU runs used; their CPU fallback drops at >=). Computed as
    torchvision's NMS on boxes whose x2 and y2 are moved by +1, which is the same IoU.

    Args:
        boxes: (N, 4) float px (x1, y1, x2, y2), inclusive-pixel convention.
        scores: (N,) float.
        idxs: (N,) int64 category of each box; boxes of different categories never suppress.
        iou_threshold: IoU above which the lower-scored box is dropped.

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    shifted = torch.cat([boxes[:, :2], boxes[:, 2:] + 1], dim=1)
    return batched_nms(shifted, scores, idxs, iou_threshold)


class LegacyRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with mmdetection-1 proposal selection (``RPNHead.get_bboxes_single``).

    Per image: the ``pre_nms_top_n`` highest objectness scores, their decoded boxes clipped to
    [0, W - 1] x [0, H - 1] (:func:`clip_boxes_legacy`; no minimum size, their ``min_bbox_size``
    0), NMS with inclusive-pixel IoU (:func:`batched_nms_legacy`, single level), then the
    ``post_nms_top_n`` best. torchvision instead clips to [0, W], drops boxes under 1e-3 px and
    uses continuous IoU. Training (anchor matching, losses) is torchvision's.
    """

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """(B, A, 4) decoded proposals and (B * A, 1) logits -> per image (K, 4) boxes and (K,) scores."""
        if len(num_anchors_per_level) != 1:
            raise ValueError(f"mmdetection-1 proposal selection is single-level here, got {len(num_anchors_per_level)}")
        scores_all = torch.sigmoid(objectness.detach().reshape(proposals.shape[0], -1))
        boxes_out, scores_out = [], []
        for boxes, scores, image_shape in zip(proposals, scores_all, image_shapes):
            top = scores.topk(min(self.pre_nms_top_n(), scores.numel())).indices
            boxes, scores = clip_boxes_legacy(boxes[top], image_shape), scores[top]
            keep = batched_nms_legacy(boxes, scores, torch.zeros_like(top), self.nms_thresh)[: self.post_nms_top_n()]
            boxes_out.append(boxes[keep])
            scores_out.append(scores[keep])
        return boxes_out, scores_out


def postprocess_detections_legacy(class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                                  image_shapes: list[tuple[int, int]], box_coder: BoxCoder, score_thresh: float,
                                  nms_thresh: float, detections_per_img: int) -> tuple[list[Tensor], ...]:
    """mmdetection-1 box post-processing (``BBoxHead.get_det_bboxes`` + ``multiclass_nms``).

    Softmax scores, class-specific boxes decoded by ``box_coder`` and clipped to [0, W - 1] x
    [0, H - 1], per foreground class the boxes scoring > ``score_thresh``, NMS with
    inclusive-pixel IoU at ``nms_thresh``, then the ``detections_per_img`` best of all classes.
    Same inputs and outputs as torchvision's ``RoIHeads.postprocess_detections``. A box thinner
    than one pixel (x2 < x1, which mmdetection keeps) is returned with x2 = x1 (y likewise) so
    that every box is valid for the rest of ctlesion; which detections are kept, their order and
    scores are theirs.

    Args:
        class_logits: (N, C) logits of all images' RoIs; box_regression: (N, 4 C) deltas.
        proposals: per image (N_i, 4) RoIs, inclusive-pixel px.
        image_shapes: per image (H, W) px.
        box_coder: :class:`LegacyBoxCoder` with the RoI weights.

    Returns:
        Per image boxes (K, 4), scores (K,) and labels (K,) int64, by decreasing score.
    """
    num_classes = class_logits.shape[-1]
    per_image = [len(p) for p in proposals]
    decoded = box_coder.decode(box_regression, proposals).split(per_image)
    probabilities = torch.softmax(class_logits, -1).split(per_image)
    out_boxes, out_scores, out_labels = [], [], []
    for boxes, scores, image_shape in zip(decoded, probabilities, image_shapes):
        boxes = clip_boxes_legacy(boxes[:, 1:], image_shape).reshape(-1, 4)
        labels = torch.arange(1, num_classes, device=scores.device).expand(len(scores), -1).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms_legacy(boxes, scores, labels, nms_thresh)[:detections_per_img]
        boxes = boxes[keep]
        out_boxes.append(torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])], dim=1))
        out_scores.append(scores[keep])
        out_labels.append(labels[keep])
    return out_boxes, out_scores, out_labels
