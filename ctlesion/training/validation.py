"""The validation after each epoch: the DeepLesion FROC of the val split, or per-slice figures on the
val cases of a dataset of volumes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ctlesion.networks.detector import AlignShiftDetector
from ctlesion.training.data import volume_split
from ctlesion.training.options import TrainOptions

Validation = Callable[[AlignShiftDetector, torch.device], "dict | None"]


def validation(options: TrainOptions) -> Validation:
    """The run's validation, ``validate(model, device) -> dict | None`` (None without a val split):
    the DeepLesion FROC of the val split (``evaluate_model``), or for volumes the per-slice figures
    on the val cases' largest lesion cross-sections, whose items are built at the first call and
    kept for the later epochs."""
    from ctlesion.evaluate.run import evaluate_model  # noqa: PLC0415 (evaluation imports the loader stack)
    from ctlesion.evaluate.volumes import validate_on_key_slices  # noqa: PLC0415

    if options.lesion_label is None:
        return lambda model, device: evaluate_model(model, options.data_dir, "val", device=device, progress=False)
    items = None

    def on_volumes(model: AlignShiftDetector, device: torch.device) -> dict | None:
        nonlocal items
        if items is None:
            items = volume_split(options, "val", with_masks=False, other_slices_per_lesion=0, negative_fraction=0.0)
        return validate_on_key_slices(model, items, device=device)

    return on_volumes
