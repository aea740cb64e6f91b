"""torchvision ResNets (and ResNeXt / Wide ResNet) converted to 3D with a slice shift per block.

Every k x k convolution becomes 1 x k x k, pools 1 x k x k, BatchNorm2d becomes BatchNorm3d,
the global average pool also averages over depth; depth is never strided. The shift
(AlignShift, TSM or none) sits in the residual branch of each block, right before its first
3x3 convolution (``conv2`` of a Bottleneck, ``conv1`` of a BasicBlock), as TSM (Lin et al.,
ICCV 2019) places it in ResNets; the identity path is never shifted. Weights are copied from
the 2D network, so with context "none" every slice is processed exactly as the 2D network
processes an image.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from ctlesion.networks.layers import ShiftConv3d, convert_layers, stem_conv_for


class ResidualBlock3d(nn.Module):
    """A torchvision BasicBlock or Bottleneck in 3D, with a shift before its first 3x3 conv.

    ``convs[i]`` / ``norms[i]`` are the block's conv{i+1} / bn{i+1}; ReLU follows every norm
    but the last, then the (converted) downsample path is added and a final ReLU applied, as in
    torchvision's ``forward``.
    """

    def __init__(self, block_2d: BasicBlock | Bottleneck, context: str, fold_div: int, padding: str,
                 ref_interval_mm: float):
        super().__init__()
        converted, _ = convert_layers(block_2d)
        names = ["conv1", "conv2", "conv3"] if isinstance(block_2d, Bottleneck) else ["conv1", "conv2"]
        shifted = next(name for name in names if getattr(block_2d, name).kernel_size != (1, 1))
        self.convs = nn.ModuleList(
            ShiftConv3d(getattr(converted, name), context, fold_div, padding, ref_interval_mm) if name == shifted
            else getattr(converted, name)
            for name in names
        )
        self.norms = nn.ModuleList(getattr(converted, name.replace("conv", "bn")) for name in names)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = converted.downsample

    def forward(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, D, H', W')."""
        out = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = conv(out, slice_interval_mm) if isinstance(conv, ShiftConv3d) else conv(out)
            out = norm(out)
            if i < len(self.convs) - 1:
                out = self.relu(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetStage3d(nn.Module):
    """One ResNet stage (``layer1`` ... ``layer4``): residual blocks in sequence."""

    def __init__(self, stage_2d: nn.Sequential, **shift_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock3d(block, **shift_kwargs) for block in stage_2d)

    def forward(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, slice_interval_mm)
        return x


class ResNet3d(nn.Module):
    """A torchvision ResNet in 3D (build it with :func:`ctlesion.networks.convert.convert_to_3d`).

    Structure: ``stem`` (conv1, bn1, relu, maxpool), ``stages`` (layer1-4), ``avgpool``
    (global over D, H, W) and ``fc``.

    Args:
        net_2d: the 2D ResNet (not modified).
        context: "alignshift", "tsm" or "none".
        in_channels: input channels of the stem (:func:`~ctlesion.networks.layers.adapt_stem_weight`).
        fold_div, padding, ref_interval_mm: shift settings (:class:`ShiftConv3d`).
    """

    def __init__(self, net_2d: ResNet, context: str, in_channels: int, fold_div: int = 8, padding: str = "zero",
                 ref_interval_mm: float = 2.0):
        super().__init__()
        shift = dict(context=context, fold_div=fold_div, padding=padding, ref_interval_mm=ref_interval_mm)
        stem = nn.Sequential(stem_conv_for(net_2d.conv1, in_channels), net_2d.bn1, net_2d.relu, net_2d.maxpool)
        self.stem, _ = convert_layers(stem)
        self.stages = nn.ModuleList(
            ResNetStage3d(getattr(net_2d, f"layer{i}"), **shift) for i in range(1, 5)
        )
        self.avgpool, _ = convert_layers(net_2d.avgpool)
        self.fc = copy.deepcopy(net_2d.fc)

    def forward_features(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """(B, C_in, D, H, W) -> the last stage's map (B, C, D, H/32, W/32)."""
        out = self.stem(x)
        for stage in self.stages:
            out = stage(out, slice_interval_mm)
        return out

    def forward(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """(B, C_in, D, H, W) -> logits (B, num_classes); equals the 2D ResNet on 1 slice with context "none"."""
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x, slice_interval_mm)), 1))
