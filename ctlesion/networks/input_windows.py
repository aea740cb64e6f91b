"""Several HU windows of the same slices as network input channels.

A detector whose configuration names ``input_windows_hu`` receives its input in one wide window
(``hu_window``, mapped onto [0, 1] by :func:`ctlesion.preprocess.network_input`) and re-windows
it, as its first step, into one channel per window: soft tissue next to lung and bone, as
multi-window lesion detectors do (MVP-Net, Li et al., MICCAI 2019). A one-window model can be
widened into such a model that computes exactly what it computed (:func:`widen_input_windows`),
so that the new windows are learnt by fine-tuning instead of from scratch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from ctlesion.networks.config import DetectorConfig

#: The stem convolution's weight in a detector's state dict, (O, C, 1, k, k) for the 3D contexts
#: and (O, C * D, k, k) for 2.5D (C input windows of D slices each, window-major).
STEM_WEIGHT_KEY = "backbone.stem.0.weight"


class WindowChannels(nn.Module):
    """Re-window a [0, 1] input given in ``hu_window`` into one [0, 1] channel per window.

    Channel k is ``clip((hu - low_k) / (high_k - low_k), 0, 1)`` with ``hu`` recovered from the
    input (``hu = hu_low + x * (hu_high - hu_low)``); every window lies inside ``hu_window``
    (:meth:`DetectorConfig.validate`), so nothing clipped by the input's own window is needed.

    Args:
        hu_window: (low, high) HU of the input's [0, 1] range.
        windows_hu: the K windows (low, high) in HU, K >= 1.

    Input (B, 1, D, H, W) float; output (B, K, D, H, W), same dtype.
    """

    def __init__(self, hu_window: tuple[float, float], windows_hu: tuple[tuple[float, float], ...]):
        super().__init__()
        low, high = (float(v) for v in hu_window)
        lows = torch.tensor([w[0] for w in windows_hu], dtype=torch.float64)
        widths = torch.tensor([w[1] - w[0] for w in windows_hu], dtype=torch.float64)
        # x in [0, 1] -> (low + x (high - low) - low_k) / width_k = x * gain_k + offset_k
        shape = (1, len(windows_hu), 1, 1, 1)
        self.register_buffer("gain", ((high - low) / widths).float().view(shape), persistent=False)
        self.register_buffer("offset", ((low - lows) / widths).float().view(shape), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return torch.clamp(images * self.gain.to(images.dtype) + self.offset.to(images.dtype), 0.0, 1.0)


def widen_input_windows(config: DetectorConfig, state: dict[str, Tensor],
                        extra_windows_hu: tuple[tuple[float, float], ...]) -> tuple[DetectorConfig, dict[str, Tensor]]:
    """A one-window detector turned into one taking its window plus ``extra_windows_hu``, same outputs.

    The new configuration's ``hu_window`` spans every window and its ``input_windows_hu`` is the
    old window followed by the extra ones; the stem's weights for the old window are kept and
    those of the new channels are zero, so that the widened detector computes what the old one
    did (up to float rounding of the re-windowing) until training gives the new channels weight.

    Args:
        config: the old detector's configuration (no ``input_windows_hu``, ``input_scaling`` "unit").
        state: its state dict (``STEM_WEIGHT_KEY`` among the keys); not modified.
        extra_windows_hu: windows (low, high) in HU to add, at least one.

    Returns:
        (new configuration, new state dict: the old tensors, the stem weight widened).

    Raises:
        ValueError: the old model already has input windows, uses another input scaling, no
            window is given, or a window is not (low < high).
    """
    if config.input_windows_hu:
        raise ValueError(f"the model already takes the windows {config.input_windows_hu}")
    if not extra_windows_hu:
        raise ValueError("give at least one window to add")
    windows = (tuple(config.hu_window), *(tuple(float(v) for v in w) for w in extra_windows_hu))
    span = (min(w[0] for w in windows), max(w[1] for w in windows))
    new_config = replace(config, hu_window=span, input_windows_hu=windows)
    new_config.validate()
    weight = state[STEM_WEIGHT_KEY]
    slices = 1 if config.context != "2.5d" else config.num_slices
    if weight.shape[1] != slices:
        raise ValueError(f"stem weight {tuple(weight.shape)} does not take {slices} input channel(s)")
    widened = torch.zeros((weight.shape[0], slices * len(windows), *weight.shape[2:]), dtype=weight.dtype)
    widened[:, :slices] = weight
    return new_config, {**state, STEM_WEIGHT_KEY: widened}
