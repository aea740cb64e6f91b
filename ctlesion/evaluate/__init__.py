"""Evaluation: the DeepLesion FROC protocol (sensitivity at false positives per image), reports and plots."""

from ctlesion.evaluate.froc import (
    CRITERIA,
    DEFAULT_FPS_PER_IMAGE,
    Matching,
    curve_from_matching,
    froc_curve,
    inclusive_iobb,
    inclusive_iou,
    match_detections,
    sensitivity_at_fps,
    weighted_sensitivity,
)

__all__ = [
    "CRITERIA",
    "DEFAULT_FPS_PER_IMAGE",
    "Matching",
    "curve_from_matching",
    "froc_curve",
    "inclusive_iobb",
    "inclusive_iou",
    "match_detections",
    "sensitivity_at_fps",
    "weighted_sensitivity",
]
