"""The one prediction path: network windows in, detections in source pixels out.

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
                    precision: str = "fp32") -> list[WindowDetections]:
    """Run the detector (as it is: call ``model.eval()`` first) on a batch of windows.

    Args:
        model: the detector.
        images: (B, 1, D, H, W) float32 network inputs (:func:`ctlesion.preprocess.network_window`:
            the S x S square, or the window of it each transform's crop names).
        intervals_mm: (B,) float32 slice intervals the network sees.
        transforms: the B windows' in-plane transforms.
        device: where the model runs.
        score_min: detections below this score are dropped inside the detector, before its mask head
            runs (exactly those of 0 above it remain).
        clip: clip boxes to the source image (``detect``); the DeepLesion protocol scores them
            unclipped.
        with_masks: compute the masks and map them back to the source grid (bilinear); without,
            the detector skips its mask head and mask pasting.
        precision: "fp32", or "bf16" (``torch.autocast`` with bfloat16 on the model's device;
            :data:`ctlesion.choices.INFERENCE_PRECISIONS`).

    Returns:
        One :class:`WindowDetections` per window.
    """
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        outputs = model(images.to(device), intervals_mm.to(device), score_min=score_min, with_masks=with_masks)
    return [WindowDetections(boxes_px=transform.to_source(output["boxes"].cpu().double().numpy(), clip=clip),
                             scores=output["scores"].cpu().double().numpy(),
                             masks=transform.masks_to_source(output["masks"][:, 0].float().cpu().numpy())
                             if with_masks else None)
            for output, transform in zip(outputs, transforms)]
