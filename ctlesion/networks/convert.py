"""Any torchvision DenseNet or ResNet as a thickness-aware 3D network (AlignShift paper, section 2.2).

The paper's claim is that a parameter-free shift turns "theoretically any 2D pretrained
network" into a 3D one. :func:`convert_to_3d` does it for the DenseNet and ResNet families of
torchvision (ResNeXt and Wide ResNet included): k x k convolutions become 1 x k x k, pools
1 x k x k, BatchNorm2d becomes BatchNorm3d (or SyncBatchNorm), the 2D weights are copied, and
shift operators are placed where SPEC section 6 puts them (DenseNet: inside every dense layer
before the 1x1 and the 3x3 conv; ResNet: before the first 3x3 conv of every block).
"""

from __future__ import annotations

import logging

from torch import nn
from torchvision.models import DenseNet, ResNet

from ctlesion.networks.densenet3d import DenseNet3d
from ctlesion.networks.layers import CONTEXTS, POOLS_3D, ShiftConv3d
from ctlesion.networks.resnet3d import ResNet3d
from ctlesion.ops.shift import PADDINGS

log = logging.getLogger(__name__)


def _check(context: str, fold_div: int, padding: str, ref_interval_mm: float, in_channels: int | None) -> None:
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if not isinstance(fold_div, int) or fold_div < 2:
        raise ValueError(f"fold_div must be an integer >= 2, got {fold_div!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if not ref_interval_mm > 0:
        raise ValueError(f"ref_interval_mm must be > 0, got {ref_interval_mm!r}")
    if in_channels is not None and in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels!r}")


def _report(net: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names (in ``net``) of its 3D layers and of its shifted convolutions."""
    layers = tuple(name for name, m in net.named_modules()
                   if isinstance(m, (nn.Conv3d, nn.BatchNorm3d, nn.SyncBatchNorm, *POOLS_3D)))
    shifted = tuple(name for name, m in net.named_modules() if isinstance(m, ShiftConv3d) and m.context != "none")
    return layers, shifted


def convert_to_3d(
    model_2d: nn.Module,
    context: str = "alignshift",
    *,
    in_channels: int | None = None,
    fold_div: int = 8,
    padding: str = "zero",
    ref_interval_mm: float = 2.0,
    sync_batchnorm: bool = False,
) -> nn.Module:
    """Convert a torchvision DenseNet or ResNet into its 3D counterpart.

    The result's ``forward(x, slice_interval_mm=None)`` takes ``x`` of shape
    (B, C_in, D, H, W) and, for context "alignshift", the per-sample slice interval in mm (a
    (B,) tensor or a float; see :func:`ctlesion.ops.align_shift`); it returns the classifier
    logits (B, num_classes) after a global average over depth and plane, and
    ``forward_features`` returns the last feature map (B, C, D, H/32, W/32). With context
    "none" a 1-slice input gives exactly the 2D network's output. The converted modules are in
    ``.stem`` / ``.blocks`` + ``.transitions`` (DenseNet) or ``.stem`` / ``.stages`` (ResNet).

    Args:
        model_2d: a torchvision ``DenseNet`` or ``ResNet`` (not modified; its train/eval mode
            is kept).
        context: "alignshift" (shift by clamp(r / s, 0, 1) of a slice), "tsm" (one slice) or
            "none" (slice-wise 2D network).
        in_channels: input channels of the 3D stem; default: those of the 2D stem. A different
            count adapts the stem weights (1 channel: the middle one, SPEC section 6; see
            :func:`ctlesion.networks.layers.adapt_stem_weight`).
        fold_div: shifted channels per group = C // fold_div (paper: 8).
        padding: AlignShift border handling, "zero" (paper) or "keep" (released code).
        ref_interval_mm: reference interval r in mm (paper: 2).
        sync_batchnorm: use ``nn.SyncBatchNorm`` (for torch.distributed training).

    Returns:
        A new ``nn.Module`` (on the 2D model's device and dtype) with the attributes
        ``converted_layers`` (names of its 3D convolutions, norms and pools) and
        ``shifted_convs`` (names of the convolutions preceded by a shift), also logged.

    Raises:
        ValueError: an unsupported model family or a bad argument.
    """
    _check(context, fold_div, padding, ref_interval_mm, in_channels)
    shift = dict(fold_div=fold_div, padding=padding, ref_interval_mm=ref_interval_mm)
    if isinstance(model_2d, DenseNet):
        net = DenseNet3d(model_2d, context, in_channels or model_2d.features.conv0.in_channels, **shift)
    elif isinstance(model_2d, ResNet):
        net = ResNet3d(model_2d, context, in_channels or model_2d.conv1.in_channels, **shift)
    else:
        raise ValueError(
            f"cannot convert {type(model_2d).__name__}: supported families are torchvision DenseNet and ResNet"
        )
    net.train(model_2d.training)
    if sync_batchnorm:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.converted_layers, net.shifted_convs = _report(net)
    log.info("converted %s to 3D (%s): %d layers, %d shifted convolutions", type(model_2d).__name__, context,
             len(net.converted_layers), len(net.shifted_convs))
    return net
