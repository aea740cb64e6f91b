"""The validation after each epoch: the DeepLesion FROC of the val split, or per-slice figures on the
val cases of a dataset of volumes."""

from __future__ import annotations

import torch

from ctlesion.networks.detector import (
    AlignShiftDetector,
)
from ctlesion.training.data import volume_split
from ctlesion.training.options import TrainOptions


def validate(model: AlignShiftDetector, options: TrainOptions, device: torch.device) -> dict | None:
    """The validation after an epoch: the DeepLesion FROC of the val split (``evaluate_model``), or
    for volumes the per-slice figures on the val cases' largest lesion cross-sections; None
    without a val split."""
    from ctlesion.evaluate.run import evaluate_model  # noqa: PLC0415 (evaluation imports the loader stack)
    from ctlesion.evaluate.volumes import validate_on_key_slices  # noqa: PLC0415

    if options.lesion_label is None:
        return evaluate_model(model, options.data_dir, "val", device=device, progress=False)
    items = volume_split(options, "val", with_masks=False, other_slices_per_lesion=0, negative_fraction=0.0)
    return validate_on_key_slices(model, items, device=device)
