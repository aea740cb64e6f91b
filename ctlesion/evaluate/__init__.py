"""Evaluation: the DeepLesion FROC protocol (sensitivity at false positives per image)."""

from ctlesion.evaluate.froc import DEFAULT_FPS_PER_IMAGE, froc_curve, inclusive_iou, sensitivity_at_fps

__all__ = ["DEFAULT_FPS_PER_IMAGE", "froc_curve", "inclusive_iou", "sensitivity_at_fps"]
