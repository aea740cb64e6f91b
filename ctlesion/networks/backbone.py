"""The detector's backbones: DenseNet-121 (the paper's) or a torchvision ResNet, 3D with slice
shifts, or 2.5D (SPEC section 6).

Released configuration of the AlignShift paper (MICCAI 2020): DenseNet-121 truncated after
dense block 3, converted to 3D (:func:`ctlesion.networks.convert.convert_to_3d`: 1 x k x k
convolutions, BatchNorm3d, depth never pooled, the shift inside the dense layers), a learned
Conv3d with kernel (D, 1, 1) after each dense block collapsing depth to a 2D map, and a top-down
FPN with 1x1 laterals (256, 512, 1024 -> C), nearest upsampling and no smoothing, producing ONE
map at stride 4. The paper's 2.5D baseline instead feeds the D slices as the input channels of
the 2D DenseNet (same truncation and FPN).

Other DenseNets (``backbone`` "densenet169", "densenet201") are converted the same way (blocks
1-3); ResNets ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d",
"wide_resnet50_2"; not in the paper, which compares networks on DenseNet-121 only) follow the
same plan: the stem and stages 1-3
(``layer1``-``layer3``, strides 4, 8, 16, as DenseNet-121's blocks 1-3) converted to 3D by
:func:`~ctlesion.networks.convert.convert_to_3d` (the shift in each residual block before its
first 3 x 3 convolution), a depth reduction per stage and the same single-map FPN; for 2.5D the
D slices are the input channels of the 2D ResNet.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import DenseNet, ResNet, densenet121
from torchvision.models.resnet import Bottleneck

from ctlesion.choices import BACKBONES
from ctlesion.networks.convert import convert_to_3d
from ctlesion.networks.densenet3d import dense_block_channels
from ctlesion.networks.layers import stem_conv_for

log = logging.getLogger(__name__)


class DepthReduction(nn.Module):
    """Learned Conv3d with kernel (D, 1, 1) collapsing D slices into one 2D map.

    Initialised to the mean over slices (identity on channels) so the untrained network starts
    from an average of the slices' features; training then learns its own weighting. The
    authors' released layer has no bias (``bias=False``).
    """

    def __init__(self, channels: int, num_slices: int, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=(num_slices, 1, 1), bias=bias)
        with torch.no_grad():
            self.conv.weight.zero_()
            idx = torch.arange(channels)
            self.conv.weight[idx, idx] = 1.0 / num_slices
            if bias:
                self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> (B, C, H, W)."""
        return self.conv(x).squeeze(2)


def top_down_single_map(lateral: nn.ModuleList, maps: list[Tensor]) -> Tensor:
    """Top-down FPN (1x1 laterals, nearest upsampling, no smoothing) to the finest map only.

    Args:
        lateral: one 1x1 Conv2d per level, finest first.
        maps: 2D maps (B, C_l, H_l, W_l), finest first, each level half the size of the previous.

    Returns:
        (B, C, H_0, W_0): lateral_0(m_0) + up(lateral_1(m_1) + up(...)).
    """
    out = lateral[-1](maps[-1])
    for level in range(len(maps) - 2, -1, -1):
        fine = lateral[level](maps[level])
        out = fine + F.interpolate(out, size=fine.shape[-2:], mode="nearest")
    return out


def _check_images(images: Tensor, num_slices: int, in_channels: int = 1) -> None:
    if images.dim() != 5 or images.shape[1] != in_channels or images.shape[2] != num_slices:
        raise ValueError(f"images must be (B, {in_channels}, {num_slices}, H, W), got {tuple(images.shape)}")


class AlignShiftDenseNet(nn.Module):
    """A torchvision DenseNet (DenseNet-121, the paper's, by default; blocks 1-3) in 3D with slice
    shifts, depth reduction and a single-map FPN.

    Args:
        num_slices: window depth D (odd).
        context: "alignshift", "tsm" or "none" (see :class:`~ctlesion.networks.layers.ShiftConv3d`).
        fpn_channels: channels of the output map (paper: 512).
        fold_div: shifted channels per group = C // fold_div (paper: 8).
        padding: AlignShift border handling, "zero" or "keep".
        ref_interval_mm: reference interval r (paper: 2 mm).
        densenet_2d: optional torchvision DenseNet-121 whose weights are copied (e.g. ImageNet);
            its 3-channel stem is reduced to the middle input channel. Random init otherwise.
        reduction_bias: a bias in the depth reductions (the authors' released layers have none).
        in_channels: input channels C per slice (1; or one per input window,
            :class:`~ctlesion.networks.input_windows.WindowChannels`).

    Input (B, C, D, H, W) with H, W divisible by 16 and slice intervals (B,) in mm;
    output (B, fpn_channels, H / 4, W / 4).
    """

    def __init__(self, num_slices: int = 3, context: str = "alignshift", fpn_channels: int = 512,
                 fold_div: int = 8, padding: str = "zero", ref_interval_mm: float = 2.0,
                 densenet_2d: DenseNet | None = None, reduction_bias: bool = True, in_channels: int = 1):
        super().__init__()
        net = convert_to_3d(densenet_2d if densenet_2d is not None else densenet121(weights=None), context,
                            in_channels=in_channels, fold_div=fold_div, padding=padding,
                            ref_interval_mm=ref_interval_mm)
        self.stem = net.stem
        self.block1, self.block2, self.block3 = net.blocks[:3]
        self.transition1, self.transition2 = net.transitions[:2]
        channels = net.block_channels[:3]
        self.reduce = nn.ModuleList(DepthReduction(c, num_slices, reduction_bias) for c in channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, kernel_size=1) for c in channels)
        self.num_slices = num_slices
        self.in_channels = in_channels
        self.out_channels = fpn_channels

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute dense layers in the backward pass (less memory for the 7-slice model)."""
        for block in (self.block1, self.block2, self.block3):
            block.gradient_checkpointing = enabled

    def stages(self, images: Tensor, slice_interval_mm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """3D outputs of dense blocks 1-3: (B, 256, D, H/4, W/4), (B, 512, D, H/8, W/8), (B, 1024, D, H/16, W/16)."""
        c2 = self.block1(self.stem(images), slice_interval_mm)
        c3 = self.block2(self.transition1(c2), slice_interval_mm)
        c4 = self.block3(self.transition2(c3), slice_interval_mm)
        return c2, c3, c4

    def forward(self, images: Tensor, slice_interval_mm: Tensor) -> Tensor:
        """images: (B, C_in, D, H, W) float; slice_interval_mm: (B,) mm -> (B, C, H/4, W/4)."""
        _check_images(images, self.num_slices, self.in_channels)
        maps = [reduce(c) for reduce, c in zip(self.reduce, self.stages(images, slice_interval_mm))]
        return top_down_single_map(self.lateral, maps)


class DenseNet25d(nn.Module):
    """The 2.5D baseline: the D slices as input channels of a 2D DenseNet-121 (blocks 1-3) + FPN.

    The stem takes C x D channels (C input windows of D slices, window-major): for C x D = 3 the
    RGB stem as is, otherwise adapted (:func:`~ctlesion.networks.layers.adapt_stem_weight`).
    The slice interval is not used.

    Args:
        num_slices: window depth D (odd).
        fpn_channels: channels of the output map.
        densenet_2d: optional torchvision DenseNet-121 whose weights are copied.
        in_channels: input channels C per slice (1, or one per input window).

    Input (B, C, D, H, W); output (B, fpn_channels, H / 4, W / 4).
    """

    def __init__(self, num_slices: int = 3, fpn_channels: int = 512, densenet_2d: DenseNet | None = None,
                 in_channels: int = 1):
        super().__init__()
        net = densenet_2d if densenet_2d is not None else densenet121(weights=None)
        feats = copy.deepcopy(net.features)
        self.stem = nn.Sequential(stem_conv_for(feats.conv0, in_channels * num_slices), feats.norm0, feats.relu0,
                                  feats.pool0)
        self.block1, self.transition1 = feats.denseblock1, feats.transition1
        self.block2, self.transition2 = feats.denseblock2, feats.transition2
        self.block3 = feats.denseblock3
        channels = dense_block_channels(net)[:3]
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, kernel_size=1) for c in channels)
        self.num_slices = num_slices
        self.in_channels = in_channels
        self.out_channels = fpn_channels

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute dense layers in the backward pass (torchvision's ``memory_efficient``)."""
        for block in (self.block1, self.block2, self.block3):
            for layer in block.values():
                layer.memory_efficient = enabled

    def forward(self, images: Tensor, slice_interval_mm: Tensor | None = None) -> Tensor:
        """images: (B, C_in, D, H, W) float -> (B, C, H/4, W/4); ``slice_interval_mm`` is ignored."""
        _check_images(images, self.num_slices, self.in_channels)
        c2 = self.block1(self.stem(images.flatten(1, 2)))
        c3 = self.block2(self.transition1(c2))
        c4 = self.block3(self.transition2(c3))
        return top_down_single_map(self.lateral, [c2, c3, c4])


def torchvision_2d(backbone: str) -> nn.Module:
    """A randomly initialised torchvision 2D network by name (:data:`ctlesion.choices.BACKBONES`).

    Raises:
        ValueError: an unknown name.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} must be one of {', '.join(BACKBONES)}")
    return getattr(torchvision.models, backbone)(weights=None)


def resnet_stage_channels(net: ResNet) -> tuple[int, int, int]:
    """Output channels of ``layer1``-``layer3`` of a torchvision ResNet (e.g. 256, 512, 1024 for ResNet-50)."""
    def channels(stage: nn.Sequential) -> int:
        last = stage[-1]
        return (last.conv3 if isinstance(last, Bottleneck) else last.conv2).out_channels

    return tuple(channels(getattr(net, f"layer{i}")) for i in (1, 2, 3))


class AlignShiftResNet(nn.Module):
    """A torchvision ResNet (stem and stages 1-3) in 3D with slice shifts, depth reduction and a single-map FPN.

    Args:
        resnet_2d: the 2D ResNet whose weights are copied (random or pretrained; not modified).
        num_slices, context, fpn_channels, fold_div, padding, ref_interval_mm, reduction_bias, in_channels:
            as :class:`AlignShiftDenseNet`.

    Input (B, C, D, H, W) with H, W divisible by 16 and slice intervals (B,) in mm;
    output (B, fpn_channels, H / 4, W / 4).
    """

    def __init__(self, resnet_2d: ResNet, num_slices: int = 3, context: str = "alignshift", fpn_channels: int = 512,
                 fold_div: int = 8, padding: str = "zero", ref_interval_mm: float = 2.0, reduction_bias: bool = True,
                 in_channels: int = 1):
        super().__init__()
        net = convert_to_3d(resnet_2d, context, in_channels=in_channels, fold_div=fold_div, padding=padding,
                            ref_interval_mm=ref_interval_mm)
        self.stem = net.stem
        self.stages = nn.ModuleList(net.stages[:3])
        channels = resnet_stage_channels(resnet_2d)
        self.reduce = nn.ModuleList(DepthReduction(c, num_slices, reduction_bias) for c in channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, kernel_size=1) for c in channels)
        self.num_slices = num_slices
        self.in_channels = in_channels
        self.out_channels = fpn_channels
        self.gradient_checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each stage in the backward pass (less memory, slower)."""
        self.gradient_checkpointing = enabled

    def forward(self, images: Tensor, slice_interval_mm: Tensor) -> Tensor:
        """images: (B, C_in, D, H, W) float; slice_interval_mm: (B,) mm -> (B, C, H/4, W/4)."""
        _check_images(images, self.num_slices, self.in_channels)
        x, maps = self.stem(images), []
        for stage, reduce in zip(self.stages, self.reduce):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(stage, x, slice_interval_mm, use_reentrant=False)
            else:
                x = stage(x, slice_interval_mm)
            maps.append(reduce(x))
        return top_down_single_map(self.lateral, maps)


class ResNet25d(nn.Module):
    """The 2.5D baseline on a ResNet: the D slices as input channels of the 2D ResNet (stages 1-3) + FPN.

    Args:
        resnet_2d: the 2D ResNet whose weights are copied (not modified).
        num_slices, fpn_channels, in_channels: as :class:`DenseNet25d`.
    """

    def __init__(self, resnet_2d: ResNet, num_slices: int = 3, fpn_channels: int = 512, in_channels: int = 1):
        super().__init__()
        net = copy.deepcopy(resnet_2d)
        self.stem = nn.Sequential(stem_conv_for(net.conv1, in_channels * num_slices), net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3])
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, kernel_size=1) for c in resnet_stage_channels(net))
        self.num_slices = num_slices
        self.in_channels = in_channels
        self.out_channels = fpn_channels
        self.gradient_checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each stage in the backward pass (less memory, slower)."""
        self.gradient_checkpointing = enabled

    def forward(self, images: Tensor, slice_interval_mm: Tensor | None = None) -> Tensor:
        """images: (B, C_in, D, H, W) float -> (B, C, H/4, W/4); ``slice_interval_mm`` is ignored."""
        _check_images(images, self.num_slices, self.in_channels)
        x, maps = self.stem(images.flatten(1, 2)), []
        for stage in self.stages:
            x = checkpoint(stage, x, use_reentrant=False) if self.gradient_checkpointing and self.training else stage(x)
            maps.append(x)
        return top_down_single_map(self.lateral, maps)


def build_backbone(context: str, num_slices: int, fpn_channels: int, *, backbone: str = "densenet121",
                   fold_div: int = 8, padding: str = "zero", ref_interval_mm: float = 2.0,
                   net_2d: nn.Module | None = None, reduction_bias: bool = True, in_channels: int = 1) -> nn.Module:
    """The detector backbone of a context and a 2D network family.

    Args:
        context: "alignshift", "tsm", "none" (3D) or "2.5d".
        num_slices, fpn_channels, fold_div, padding, ref_interval_mm, reduction_bias, in_channels: as
            :class:`AlignShiftDenseNet`.
        backbone: the torchvision network (:data:`ctlesion.choices.BACKBONES`).
        net_2d: that network with the weights to start from (e.g. ImageNet); None: random.

    Returns:
        :class:`DenseNet25d` / :class:`AlignShiftDenseNet` for a DenseNet, else
        :class:`ResNet25d` / :class:`AlignShiftResNet`.

    Raises:
        ValueError: an unknown backbone.
    """
    if net_2d is None:
        net_2d = torchvision_2d(backbone)
    if isinstance(net_2d, DenseNet):
        if context == "2.5d":
            return DenseNet25d(num_slices, fpn_channels, net_2d, in_channels)
        return AlignShiftDenseNet(num_slices, context, fpn_channels, fold_div, padding, ref_interval_mm, net_2d,
                                  reduction_bias, in_channels)
    if context == "2.5d":
        return ResNet25d(net_2d, num_slices, fpn_channels, in_channels)
    return AlignShiftResNet(net_2d, num_slices, context, fpn_channels, fold_div, padding, ref_interval_mm,
                            reduction_bias, in_channels)
